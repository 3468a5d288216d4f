//! Least privilege (issue 12, item 6): `pgcapi setup` run as the documented role that owns nothing
//! prints the SQL for the DBA and succeeds once it was applied; check shows the server's message for
//! a permission problem.

use super::*;

/// A command's exit code and output.
type Answer = (Option<i32>, String);

/// The publication's SQL that setup prints for the tables' owner.
const CREATE_PUBLICATION: &str =
    "CREATE PUBLICATION \"pgcapi\" FOR TABLE \"public\".\"leads\", \"public\".\"orders\" \
     WITH (publish = 'insert, update, delete');";

/// The shop and the README's role without its CREATE on the database; returns the role's URL.
async fn shop_and_app_role(db: &TestDb, admin: &tokio_postgres::Client) -> String {
    admin.batch_execute(SHOP_SQL).await.unwrap();
    admin
        .batch_execute(
            "create role pgcapi_app login replication; \
             grant select on all tables in schema public to pgcapi_app;",
        )
        .await
        .unwrap();
    let role_url = db
        .url()
        .replacen("postgres://postgres@", "postgres://pgcapi_app@", 1);
    assert_ne!(
        role_url,
        db.url(),
        "the test expects the superuser's URL without a password"
    );
    role_url
}

/// Setup without the CREATE on the database says so with the GRANT, which the DBA then runs.
async fn setup_asks_for_create_on_the_database(
    db: &TestDb,
    admin: &tokio_postgres::Client,
    (code, out): Answer,
) {
    assert_eq!(code, Some(3), "{out}");
    let grant = format!(
        "GRANT CREATE ON DATABASE \"{}\" TO \"pgcapi_app\";",
        db.name
    );
    assert!(
        out.contains(&grant)
            && out.contains("permission denied for database")
            && out.contains(&format!(
                "-- run as the owner of database {} or a superuser:",
                db.name
            )),
        "{out}"
    );
    admin.batch_execute(&grant).await.unwrap();
}

/// Setup as the role exited 3 with the publication's SQL and who runs it; check names the same.
fn setup_printed_the_publication_sql((code, out): Answer, check: Answer) {
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains(CREATE_PUBLICATION), "{out}");
    assert!(
        out.contains("-- run as role postgres (the owner of the tables) or a superuser:"),
        "{out}"
    );
    assert!(
        out.contains("ok    control schema pgcapi installed"),
        "{out}"
    );
    assert!(!out.contains("db error"), "{out}");
    let (code, out) = check;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "✗ publication pgcapi does not exist: PostgreSQL requires the owner of every table of a \
             publication, and role pgcapi_app does not own public.leads (owner postgres), \
             public.orders (owner postgres); so role postgres (the owner of the tables) or a \
             superuser runs: {CREATE_PUBLICATION}"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn setup_as_a_role_that_owns_nothing_prints_the_sql_then_succeeds_once_it_ran() {
    // GIVEN the shop, owned by the superuser, and the role the README documents: LOGIN REPLICATION,
    // SELECT on the tables, CREATE on the database
    let db = TestDb::start().await;
    let admin = db.connect().await;
    let role_url = shop_and_app_role(&db, &admin).await;
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let env = contract_env(&role_url, &sandbox.base_url());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, CONTRACT_TOML).unwrap();
    let command = |args: &'static [&'static str]| pgcapi(&env, args, &path);

    // (WHEN the CREATE on the database is missing, THEN setup says so with the GRANT for the DBA)
    setup_asks_for_create_on_the_database(&db, &admin, command(&["setup"]).await).await;

    // WHEN setup runs as that role, THEN it installs the control schema, exits 3 and prints the
    // publication's SQL and who runs it, the slot waits, and check names the SQL (not "run setup")
    let setup = command(&["setup"]).await;
    let slots = count(&admin, "select count(*) from pg_replication_slots").await;
    assert_eq!(slots, 0);
    setup_printed_the_publication_sql(setup, command(&["check"]).await);

    // WHEN the DBA runs the printed SQL as the tables' owner
    let sql: String = command(&["setup"])
        .await
        .1
        .lines()
        .filter(|l| l.starts_with("CREATE ") || l.starts_with("ALTER ") || l.starts_with("GRANT "))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(sql, CREATE_PUBLICATION);
    admin.batch_execute(&sql).await.unwrap();

    // THEN setup completes (slot created), check passes the database items
    let (code, out) = command(&["setup"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("replication slot pgcapi created"), "{out}");
    let (_, out) = command(&["check"]).await;
    assert!(
        !out.contains("✗ publication") && !out.contains("✗ replication slot"),
        "{out}"
    );

    // AND run, as that role, delivers an order to every destination
    let _run = spawn_run(&path, &env);
    admin.execute(PAID, &[&"9301"]).await.unwrap();
    let sent = "select count(*) from pgcapi.deliveries where state = 'sent'";
    wait_count(&admin, 60, "three sent rows", sent, 3).await;
}

#[tokio::test]
async fn check_shows_the_servers_message_for_a_permission_problem() {
    // GIVEN the control schema installed by the superuser, and a role that may not read it
    let shop = Shop::start(CONTRACT_TOML).await;
    shop.client
        .batch_execute(&format!(
            "create role pgcapi_reader login replication; \
             grant select on all tables in schema public to pgcapi_reader; \
             grant create on database {} to pgcapi_reader;",
            shop.db.name
        ))
        .await
        .unwrap();
    let url = shop
        .db
        .url()
        .replacen("postgres://postgres@", "postgres://pgcapi_reader@", 1);
    let env: Vec<(String, String)> = shop
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "PGCAPI_DATABASE_URL" => (k.clone(), url.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    // WHEN check runs as that role
    let (_, out) = pgcapi(&env, &["check"], &shop.config_path).await;
    // THEN it quotes the server: which schema, and the SQLSTATE; never a bare "db error"
    assert!(
        out.contains(
            "✗ reading the control schema: permission denied for schema pgcapi (SQLSTATE 42501)"
        ),
        "{out}"
    );
    assert!(!out.contains("db error"), "{out}");
}
