//! Connection settings parsed from a `postgres://` URL or a libpq `key=value` string.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// Whether and how to use TLS, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate; fall back to plain.
    #[default]
    Prefer,
    /// Always use TLS; verify the chain only when `sslrootcert` is given (as libpq does).
    Require,
    /// Always use TLS and verify the certificate chain, but not the host name.
    VerifyCa,
    /// Always use TLS and verify both the certificate chain and the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(invalid(
                "sslmode",
                "expected one of disable, prefer, require, verify-ca, verify-full",
            )),
        }
    }
}

/// Parsed connection settings: from a `postgres://` URL or a libpq `key=value` string.
///
/// A host starting with `/` is a Unix socket directory. A missing host means `localhost`, a missing port
/// 5432, a missing database the user's name. The user is required: parsing reads no environment.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Where the server listens.
    pub host: Host,
    /// The server's port (also names the Unix socket file).
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    /// The password, when the server asks for one.
    pub password: Option<String>,
    /// The database to connect to.
    pub dbname: String,
    /// Whether and how to use TLS.
    pub sslmode: SslMode,
    /// PEM file of trusted root certificates (`system` means the built-in web roots).
    pub sslrootcert: Option<PathBuf>,
    /// Shown in `pg_stat_activity` and `pg_stat_replication`.
    pub application_name: Option<String>,
    /// Limit on establishing the connection, authentication included.
    pub connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Why a connection string could not be parsed. Messages name the setting, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// A setting has a value we cannot use.
    #[error("connection setting `{key}`: {reason}")]
    Invalid {
        /// The setting's name.
        key: String,
        /// What is wrong with its value.
        reason: &'static str,
    },
    /// A setting we do not know or do not support.
    #[error("unknown or unsupported connection setting `{key}`")]
    UnknownKey {
        /// The setting's name.
        key: String,
    },
    /// The string is not a well-formed URL or `key=value` list.
    #[error("connection string is malformed: {0}")]
    Syntax(&'static str),
    /// A required setting is missing.
    #[error("connection setting `{0}` is required")]
    Missing(&'static str),
}

/// A [`ConnInfoError::Invalid`] for `key`.
fn invalid(key: &str, reason: &'static str) -> ConnInfoError {
    ConnInfoError::Invalid {
        key: key.to_string(),
        reason,
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut settings = Settings::default();
        if let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        {
            parse_url(rest, &mut settings)?;
        } else {
            parse_key_values(s, &mut settings)?;
        }
        settings.finish()
    }
}

/// Settings as text, before validation; a later value for the same key wins.
#[derive(Default)]
struct Settings {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    connect_timeout: Option<String>,
}

impl Settings {
    /// Records one setting by its libpq name.
    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        let slot = match key {
            "host" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "connect_timeout" => &mut self.connect_timeout,
            // TCP keepalive tuning is harmless to ignore: the server's wal_sender_timeout and our own
            // read timeouts detect dead peers.
            "keepalives" | "keepalives_idle" | "keepalives_interval" | "keepalives_count" => {
                return Ok(())
            }
            _ => {
                return Err(ConnInfoError::UnknownKey {
                    key: printable_key(key),
                })
            }
        };
        *slot = Some(value);
        Ok(())
    }

    /// Validates the settings and fills in libpq's defaults.
    fn finish(self) -> Result<ConnInfo, ConnInfoError> {
        let host = match self.host.filter(|h| !h.is_empty()) {
            None => Host::Tcp("localhost".to_string()),
            Some(h) if h.contains(',') => {
                return Err(invalid("host", "several hosts are not supported"))
            }
            Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
            Some(h) => Host::Tcp(h),
        };
        let port = match self.port.filter(|p| !p.is_empty()) {
            None => 5432,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(invalid("port", "expected a number from 1 to 65535")),
            },
        };
        let user = self
            .user
            .filter(|u| !u.is_empty())
            .ok_or(ConnInfoError::Missing("user"))?;
        let dbname = self
            .dbname
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        let sslmode = match self.sslmode {
            None => SslMode::default(),
            Some(m) => m.parse()?,
        };
        let connect_timeout = match self.connect_timeout.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => {
                let secs: i64 = t
                    .trim()
                    .parse()
                    .map_err(|_| invalid("connect_timeout", "expected whole seconds"))?;
                // As in libpq, zero or a negative number means no limit.
                u64::try_from(secs)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
            }
        };
        Ok(ConnInfo {
            host,
            port,
            user,
            password: self.password,
            dbname,
            sslmode,
            sslrootcert: self
                .sslrootcert
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            application_name: self
                .application_name
                .or(self.fallback_application_name)
                .filter(|a| !a.is_empty()),
            connect_timeout,
        })
    }
}

/// A key is echoed in errors only when it looks like a setting name, so that a stray password is not.
fn printable_key(key: &str) -> String {
    let looks_like_name = !key.is_empty()
        && key.len() <= 40
        && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if looks_like_name {
        key.to_string()
    } else {
        "<unprintable>".to_string()
    }
}

/// Parses what follows `postgres://`: `[user[:password]@][host][:port][/dbname][?key=value&...]`.
fn parse_url(rest: &str, settings: &mut Settings) -> Result<(), ConnInfoError> {
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match main.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (main, None),
    };
    // The password may hold an unencoded '@'; the host never does.
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                settings.set("user", percent_decode(user, "user")?)?;
            }
            if let Some(password) = password {
                settings.set("password", percent_decode(password, "password")?)?;
            }
            hostport
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(ConnInfoError::Syntax(
            "an IPv6 address lacks its closing ']'",
        ))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(ConnInfoError::Syntax(
                "unexpected text after an IPv6 address",
            ))?),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        settings.set("host", percent_decode(host, "host")?)?;
    }
    if let Some(port) = port {
        settings.set("port", percent_decode(port, "port")?)?;
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        settings.set("dbname", percent_decode(path, "dbname")?)?;
    }
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair
            .split_once('=')
            .ok_or(ConnInfoError::Syntax("a URL parameter lacks '='"))?;
        let key = percent_decode(key, "parameter name")?;
        let value = percent_decode(value, &key)?;
        settings.set(&key, value)?;
    }
    Ok(())
}

/// Decodes `%XX` escapes; `what` names the component in errors.
fn percent_decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(what, "bad percent-encoding"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(what, "percent-encoding is not UTF-8"))
}

/// Parses libpq's `key = value` list: values may be single-quoted, and `\` escapes the next character.
fn parse_key_values(s: &str, settings: &mut Settings) -> Result<(), ConnInfoError> {
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(());
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(match printable_key(&key).as_str() {
                "<unprintable>" => ConnInfoError::Syntax("a setting lacks '=' after its name"),
                _ => invalid(&key, "missing '=' after the setting name"),
            });
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(invalid(&printable_key(&key), "unterminated quoted value")),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(invalid(&printable_key(&key), "unterminated quoted value"))
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        settings.set(&key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `s`, failing the test with the error.
    fn parse(s: &str) -> ConnInfo {
        s.parse().unwrap_or_else(|e| panic!("parsing {s:?}: {e}"))
    }

    #[test]
    fn a_full_url_with_percent_encoding_is_decoded() {
        let info = parse(
            "postgres://app%40corp:p%40ss%3Aw0rd@db.example.com:6543/my%20db\
             ?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=pgcapi&connect_timeout=7",
        );
        assert_eq!(info.host, Host::Tcp("db.example.com".into()));
        assert_eq!(info.port, 6543);
        assert_eq!(info.user, "app@corp");
        assert_eq!(info.password.as_deref(), Some("p@ss:w0rd"));
        assert_eq!(info.dbname, "my db");
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert_eq!(info.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(info.application_name.as_deref(), Some("pgcapi"));
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_minimal_url_gets_libpq_defaults() {
        let info = parse("postgresql://alice@");
        assert_eq!(info.host, Host::Tcp("localhost".into()));
        assert_eq!(info.port, 5432);
        assert_eq!(info.dbname, "alice");
        assert_eq!(info.sslmode, SslMode::Prefer);
        assert_eq!(info.password, None);
        assert_eq!(info.connect_timeout, None);
    }

    #[test]
    fn a_url_may_name_an_ipv6_host() {
        let info = parse("postgres://u@[::1]:5433/d");
        assert_eq!(info.host, Host::Tcp("::1".into()));
        assert_eq!(info.port, 5433);
    }

    #[test]
    fn a_unix_socket_directory_is_recognised_in_urls_and_key_values() {
        let encoded = parse("postgres://u@%2Fvar%2Frun%2Fpostgresql:5433/d");
        assert_eq!(encoded.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(encoded.port, 5433);
        let query = parse("postgres://u@/d?host=/tmp/sock&port=5499");
        assert_eq!(query.host, Host::Unix("/tmp/sock".into()));
        assert_eq!(query.port, 5499);
        let kv = parse("host=/tmp user=u");
        assert_eq!(kv.host, Host::Unix("/tmp".into()));
    }

    #[test]
    fn key_values_accept_quotes_escapes_and_spaces_around_equals() {
        let info = parse(
            r"host = db.local port=5433 user='app user' password='it\'s \\ secret' dbname=shop application_name=a\ b",
        );
        assert_eq!(info.host, Host::Tcp("db.local".into()));
        assert_eq!(info.port, 5433);
        assert_eq!(info.user, "app user");
        assert_eq!(info.password.as_deref(), Some(r"it's \ secret"));
        assert_eq!(info.dbname, "shop");
        assert_eq!(info.application_name.as_deref(), Some("a b"));
    }

    #[test]
    fn every_libpq_sslmode_we_support_parses_and_others_are_rejected() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(parse(&format!("user=u sslmode={text}")).sslmode, mode);
            assert_eq!(mode.as_str(), text);
        }
        let err = "user=u sslmode=sometimes".parse::<ConnInfo>().unwrap_err();
        assert!(err.to_string().contains("sslmode"), "{err}");
        assert!(!err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn errors_name_the_bad_key_and_never_echo_the_password() {
        let err = "postgres://u:hunter2@h:notaport/d"
            .parse::<ConnInfo>()
            .unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = "user=u password=hunter2 colour=blue"
            .parse::<ConnInfo>()
            .unwrap_err();
        assert_eq!(
            err,
            ConnInfoError::UnknownKey {
                key: "colour".into()
            }
        );
        let err = "user=u password='hunter2".parse::<ConnInfo>().unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = "postgres://u:hunter2%zz@h/d"
            .parse::<ConnInfo>()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(
            "host=h".parse::<ConnInfo>().unwrap_err(),
            ConnInfoError::Missing("user")
        );
        assert!("user=u host=a,b".parse::<ConnInfo>().is_err());
        assert!("user=u connect_timeout=soon".parse::<ConnInfo>().is_err());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let info = parse("postgres://u:hunter2@h/d");
        let debug = format!("{info:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn a_zero_connect_timeout_means_no_limit() {
        assert_eq!(parse("user=u connect_timeout=0").connect_timeout, None);
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            "=",
            "'",
            "postgres://",
            "postgres://[",
            "postgres://u@h:/d?&&=",
            "a b c",
            "%",
            "x='",
            "postgres://u@h/d?sslmode",
            "k=\\",
        ] {
            let _ = s.parse::<ConnInfo>();
        }
    }
}
