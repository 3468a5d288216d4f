//! The replication connection and the SQL connect helper against real throwaway clusters.

use crate::support::TestDb;
use pgcapi::lsn::Lsn;
use pgcapi::pg::client as db;
use pgcapi::source::{
    ConnInfo, Host, ReplicationConnection, ReplicationMessage, ReplicationStream, SourceError,
    SslMode,
};
use pgcapi::testbed::cluster::{Auth, ClusterOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The startup options the capture worker will use.
const OPTIONS: &str =
    "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c wal_sender_timeout=60s";

/// How long any wait in these tests may take before it counts as a failure.
const DEADLINE: Duration = Duration::from_secs(30);

/// Connection settings for the test database, over TCP without TLS.
fn info(db: &TestDb) -> ConnInfo {
    db.url().parse().expect("the harness URL parses")
}

/// The full text of an error and its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs IDENTIFY_SYSTEM and returns its single row.
async fn identify(conn: &mut ReplicationConnection) -> Vec<Option<String>> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

#[tokio::test]
async fn identify_system_works_over_tcp_and_the_unix_socket_with_trust() {
    // GIVEN a trust cluster
    let db = TestDb::start().await;
    for info in [
        info(&db),
        ConnInfo {
            host: Host::Unix(db.cluster.socket_dir()),
            ..info(&db)
        },
    ] {
        // WHEN we open a replication connection and identify the system
        let mut conn = ReplicationConnection::connect(&info, OPTIONS)
            .await
            .unwrap();
        let row = identify(&mut conn).await;
        // THEN the row has systemid, timeline, xlogpos and the database name
        assert_eq!(row.len(), 4);
        assert!(row[0].as_deref().unwrap().parse::<u64>().is_ok(), "{row:?}");
        assert!(row[2].as_deref().unwrap().parse::<Lsn>().is_ok(), "{row:?}");
        assert_eq!(row[3].as_deref(), Some(db.name.as_str()));
        // AND the startup options took effect
        let rows = conn.simple_query("SHOW wal_sender_timeout").await.unwrap();
        assert_eq!(rows[0][0].as_deref(), Some("1min"));
        // AND a failing command leaves the connection usable
        let err = conn.simple_query("SELECT nonsense").await.unwrap_err();
        assert!(
            matches!(&err, SourceError::Server { code, .. } if code == "42703"),
            "{err:?}"
        );
        assert_eq!(identify(&mut conn).await.len(), 4);

        let client = db::connect(&info).await.unwrap();
        let row = client
            .query_one("select current_database()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db.name);
    }
}

/// Password login for both connections: the right password works, a wrong one fails without echoing it.
async fn check_password_auth(auth: Auth) {
    let db = TestDb::start_with(ClusterOptions {
        auth,
        ..ClusterOptions::default()
    })
    .await;
    let good = info(&db);
    assert!(good.password.is_some());
    let mut conn = ReplicationConnection::connect(&good, OPTIONS)
        .await
        .unwrap();
    identify(&mut conn).await;
    db::connect(&good).await.unwrap();

    let wrong_password = "not-the-Password-42";
    let bad = ConnInfo {
        password: Some(wrong_password.to_string()),
        ..good.clone()
    };
    let err = ReplicationConnection::connect(&bad, OPTIONS)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Auth(_)), "{err:?}");
    assert!(!chain(&err).contains(wrong_password), "{err}");
    assert!(!format!("{err:?}").contains(wrong_password), "{err:?}");
    let err = db::connect(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some("28P01"));
    assert!(!chain(&err).contains(wrong_password), "{err}");

    let none = ConnInfo {
        password: None,
        ..good
    };
    let err = ReplicationConnection::connect(&none, OPTIONS)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Auth(_)), "{err:?}");
}

#[tokio::test]
async fn md5_password_login_accepts_the_right_password_only() {
    check_password_auth(Auth::Md5).await;
}

#[tokio::test]
async fn scram_password_login_accepts_the_right_password_only() {
    check_password_auth(Auth::Scram).await;
}

/// A throwaway CA and a server certificate for `localhost` signed by it.
struct TestPki {
    /// Holds the files.
    _dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    ca: PathBuf,
    /// The server certificate (PEM).
    cert: PathBuf,
    /// The server key (PEM).
    key: PathBuf,
}

/// Generates a fresh CA and a `localhost` server certificate into a temporary directory.
fn make_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgcapi test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pki = TestPki {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        _dir: dir,
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// Whether the replication connection's session is encrypted, as the server sees it.
async fn replication_uses_ssl(info: &ConnInfo) -> Result<bool, SourceError> {
    let mut conn = ReplicationConnection::connect(info, OPTIONS).await?;
    let rows = conn
        .simple_query("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .await?;
    Ok(rows[0][0].as_deref() == Some("t"))
}

/// Whether the SQL connection's session is encrypted, as the server sees it.
async fn sql_uses_ssl(info: &ConnInfo) -> Result<bool, db::DbError> {
    let client = db::connect(info).await?;
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

/// Connects with each of `cases` on both connections and checks the outcome: Some(encrypted?) or
/// None for a refused connection.
async fn assert_each_mode(cases: impl IntoIterator<Item = (ConnInfo, Option<bool>)>) {
    for (settings, expected) in cases {
        let what = format!("{:?} {:?}", settings.sslmode, settings.host);
        let replication = replication_uses_ssl(&settings).await;
        let sql = sql_uses_ssl(&settings).await;
        match expected {
            Some(encrypted) => {
                assert_eq!(replication.unwrap(), encrypted, "replication {what}");
                assert_eq!(sql.unwrap(), encrypted, "sql {what}");
            }
            None => {
                let err = replication.unwrap_err();
                assert!(
                    matches!(err, SourceError::Tls(_)),
                    "replication {what}: {err:?}"
                );
                let err = sql.unwrap_err();
                assert!(chain(&err).contains("TLS"), "sql {what}: {}", chain(&err));
            }
        }
    }
}

/// Require fails against a server without TLS, and prefer falls back to plain text there.
async fn without_tls_require_fails_and_prefer_falls_back() {
    let plain = TestDb::start().await;
    let settings = ConnInfo {
        sslmode: SslMode::Require,
        ..info(&plain)
    };
    let err = ReplicationConnection::connect(&settings, OPTIONS)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Tls(_)), "{err:?}");
    assert!(db::connect(&settings).await.is_err());
    // AND prefer falls back to plain text there
    let settings = ConnInfo {
        sslmode: SslMode::Prefer,
        ..info(&plain)
    };
    assert!(!replication_uses_ssl(&settings).await.unwrap());
    assert!(!sql_uses_ssl(&settings).await.unwrap());
}

#[tokio::test]
async fn tls_modes_behave_as_in_libpq_for_both_connections() {
    // GIVEN a TLS-enabled SCRAM cluster whose certificate names `localhost`, signed by our test CA
    let pki = make_pki();
    let db = TestDb::start_with(ClusterOptions {
        auth: Auth::Scram,
        tls: Some((pki.cert.clone(), pki.key.clone())),
        ..ClusterOptions::default()
    })
    .await;
    let with = |host: &str, sslmode: SslMode, root: Option<&PathBuf>| ConnInfo {
        host: Host::Tcp(host.to_string()),
        sslmode,
        sslrootcert: root.cloned(),
        ..info(&db)
    };
    let other_pki = make_pki();

    // (settings, expected: Some(encrypted?) or None for a refused connection)
    let cases = [
        (with("127.0.0.1", SslMode::Disable, None), Some(false)),
        (with("127.0.0.1", SslMode::Prefer, None), Some(true)),
        (with("127.0.0.1", SslMode::Require, None), Some(true)),
        // verify-ca checks the chain only: connecting by IP is fine.
        (
            with("127.0.0.1", SslMode::VerifyCa, Some(&pki.ca)),
            Some(true),
        ),
        (
            with("localhost", SslMode::VerifyFull, Some(&pki.ca)),
            Some(true),
        ),
        // verify-full with a name the certificate does not carry fails.
        (with("127.0.0.1", SslMode::VerifyFull, Some(&pki.ca)), None),
        // An untrusted CA fails both verifying modes.
        (
            with("127.0.0.1", SslMode::VerifyCa, Some(&other_pki.ca)),
            None,
        ),
        (
            with("localhost", SslMode::VerifyFull, Some(&other_pki.ca)),
            None,
        ),
    ];
    assert_each_mode(cases).await;

    // AND require fails against a server without TLS, and prefer falls back to plain text there
    without_tls_require_fails_and_prefer_falls_back().await;
}

/// Reads messages until `pred` accepts one, failing at the deadline.
async fn next_until(
    stream: &mut ReplicationStream,
    mut pred: impl FnMut(&ReplicationMessage) -> bool,
) -> ReplicationMessage {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.next())
            .await
            .expect("a replication message before the deadline")
            .unwrap()
            .expect("the stream is still open");
        if pred(&message) {
            return message;
        }
    }
}

/// The confirmed flush LSN of slot `s`.
async fn slot_flush(client: &Client) -> Lsn {
    client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 's'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse::<Lsn>()
        .unwrap()
}

/// Reads one transaction's payloads up to its commit: their first bytes, and the commit's end LSN.
async fn read_transaction(stream: &mut ReplicationStream) -> (Vec<u8>, Lsn) {
    let mut tags = Vec::new();
    loop {
        // Racing next() against a short timeout checks that a cancelled call loses nothing.
        let message = match tokio::time::timeout(Duration::from_millis(1), stream.next()).await {
            Err(_) => continue,
            Ok(message) => message.unwrap().expect("the stream is open"),
        };
        if let ReplicationMessage::XLogData { data, .. } = message {
            tags.push(data[0]);
            if data[0] == b'C' {
                // Commit: flags (1), commit LSN (8), end LSN (8), timestamp (8).
                let end = Lsn(u64::from_be_bytes(data[10..18].try_into().unwrap()));
                return (tags, end);
            }
        }
    }
}

/// Asks for a keepalive and checks that it arrives, reporting a WAL end at or past `end`.
async fn keepalive_arrives(stream: &mut ReplicationStream, end: Lsn) {
    stream
        .send_status(Lsn::ZERO, Lsn::ZERO, Lsn::ZERO, true)
        .await
        .unwrap();
    let keepalive = next_until(stream, |m| {
        matches!(m, ReplicationMessage::Keepalive { .. })
    })
    .await;
    let ReplicationMessage::Keepalive { wal_end, .. } = keepalive else {
        unreachable!()
    };
    assert!(wal_end >= end);
}

/// Sends a status update with `end` and waits until the slot's confirmed_flush_lsn reaches it.
async fn feedback_advances_the_slot(stream: &mut ReplicationStream, client: &Client, end: Lsn) {
    stream.send_status(end, end, end, false).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if slot_flush(client).await >= end {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn did not reach {end}"
        );
        // Keep reading so the server is never blocked writing to us; a short wait bounds each poll.
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    }
}

/// Waits until slot `s` is no longer active.
async fn wait_slot_inactive(client: &Client) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let active: bool = client
            .query_one(
                "select active from pg_replication_slots where slot_name = 's'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !active {
            break;
        }
        assert!(Instant::now() < deadline, "the slot stayed active");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_committed_insert_streams_as_begin_relation_insert_commit_and_feedback_advances_the_slot()
{
    // GIVEN a table, a publication and a pgoutput slot
    let db = TestDb::start().await;
    let client = db.connect().await;
    for sql in [
        "create table orders (id int primary key, email text)",
        "create publication \"pub lication\" for table orders",
        "select pg_create_logical_replication_slot('s', 'pgoutput')",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let initial_flush = slot_flush(&client).await;

    // WHEN we start replication and insert a row
    let conn = ReplicationConnection::connect(&info(&db), OPTIONS)
        .await
        .unwrap();
    let mut stream = conn
        .start_logical("s", Lsn::ZERO, "pub lication")
        .await
        .unwrap();
    client
        .execute("insert into orders values (1, 'a@example.com')", &[])
        .await
        .unwrap();

    // THEN the payloads begin with B, R, I, C in order (keepalives may come in between)
    let (tags, end) = read_transaction(&mut stream).await;
    assert_eq!(tags, b"BRIC");
    assert!(end > initial_flush);

    // AND a keepalive we ask for arrives and can be answered
    keepalive_arrives(&mut stream, end).await;

    // AND a status update with the commit's end LSN advances confirmed_flush_lsn
    feedback_advances_the_slot(&mut stream, &client, end).await;

    // AND a second consumer of the same slot is told it is in use
    let second = ReplicationConnection::connect(&info(&db), OPTIONS)
        .await
        .unwrap();
    let err = second
        .start_logical("s", Lsn::ZERO, "pub lication")
        .await
        .unwrap_err();
    assert!(err.is_slot_in_use(), "{err:?}");

    // AND finishing the stream ends the session cleanly, freeing the slot
    stream.finish().await.unwrap();
    wait_slot_inactive(&client).await;
}
