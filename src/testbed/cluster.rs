//! Throwaway PostgreSQL clusters for `pgcapi demo` and the tests.
//!
//! A cluster is `initdb` into a temporary directory, configured for logical replication, started on a free
//! port of 127.0.0.1 with `pg_ctl`, and stopped and deleted on drop. PostgreSQL refuses to run as root, so
//! when this process is root every server command runs as the `postgres` user through `runuser`.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why a throwaway cluster could not be created or controlled.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked at $PGCAPI_PG_BIN, `pg_config --bindir`, \
         /usr/lib/postgresql/*/bin and $PATH): install them, e.g. `apt-get install postgresql`, \
         or set PGCAPI_PG_BIN to the directory holding initdb and pg_ctl"
    )]
    NoBinaries,
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server command exited with an error.
    #[error("{command} failed ({status}): {output}")]
    Command {
        /// The command that failed.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error and output, and the server log tail where relevant.
        output: String,
    },
}

/// How clients authenticate to a throwaway cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No password (`trust`).
    Trust,
    /// `md5` password authentication for TCP connections.
    Md5,
    /// `scram-sha-256` password authentication for TCP connections.
    Scram,
}

/// Options for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Authentication method for TCP clients. Unix-socket connections always use `trust`.
    pub auth: Auth,
    /// Password of the `postgres` superuser (used with `Md5` and `Scram`).
    pub password: String,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// PEM certificate and key files to enable TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            auth: Auth::Trust,
            password: "pgcapi-test-password".to_string(),
            extra_conf: Vec::new(),
            tls: None,
        }
    }
}

/// A running throwaway PostgreSQL cluster; stopped and deleted on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
    options: ClusterOptions,
}

/// The superuser every throwaway cluster is created with.
pub const SUPERUSER: &str = "postgres";

impl Cluster {
    /// Creates and starts a cluster with `wal_level = logical` on a free port of 127.0.0.1.
    pub fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin_dir = find_bin_dir().ok_or(ClusterError::NoBinaries)?;
        let as_postgres_user = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("pgcapi-pg-")
            .tempdir()
            .map_err(|e| io("creating a temporary directory", e))?;
        if as_postgres_user {
            chown_to_postgres(dir.path())?;
        }
        let mut cluster = Cluster {
            dir,
            bin_dir,
            port: 0,
            as_postgres_user,
            options,
        };
        cluster.init()?;
        // Another process may take the port between choosing and binding it: try a few.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            cluster.write_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the cluster's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A `postgres://` URL for `database` as the superuser over TCP (with the password when one is set).
    pub fn url(&self, database: &str) -> String {
        match self.options.auth {
            Auth::Trust => format!(
                "postgres://{SUPERUSER}@127.0.0.1:{}/{database}?sslmode=disable",
                self.port
            ),
            _ => format!(
                "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}?sslmode=disable",
                self.options.password, self.port
            ),
        }
    }

    /// Stops the server with the given `pg_ctl` mode (`fast`, `immediate`, `smart`).
    pub fn stop(&self, mode: &str) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", mode, "-w", "-t", "60", "stop"],
        )
        .map(drop)
    }

    /// Starts the server again after [`Cluster::stop`], on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl_start()
    }

    /// Restarts a running server in one step (`pg_ctl restart -m {mode}`) and waits until it accepts
    /// connections again. With `fast`, every client is disconnected and open transactions roll back.
    pub fn restart_with_mode(&self, mode: &str) -> Result<(), ClusterError> {
        self.pg_ctl(&["-m", mode, "-w", "-t", "60", "restart"])
    }

    /// The last `lines` lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn init(&self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let pwfile = self.dir.path().join("pwfile");
        write_file(&pwfile, &self.options.password)?;
        let auth_host = match self.options.auth {
            Auth::Trust => "trust",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        };
        self.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                SUPERUSER,
                "--pwfile",
                path_str(&pwfile),
                "--auth-local=trust",
                &format!("--auth-host={auth_host}"),
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let socket_dir = self.socket_dir();
        fs::create_dir_all(&socket_dir).map_err(|e| io("creating the socket directory", e))?;
        if self.as_postgres_user {
            chown_to_postgres(&socket_dir)?;
        }
        let conf = self.server_conf(&socket_dir)?;
        append_file(&data.join("postgresql.conf"), &(conf.join("\n") + "\n"))?;
        // Replication connections need their own pg_hba lines.
        let hba =
            format!("local replication all trust\nhost replication all 127.0.0.1/32 {auth_host}\n");
        append_file(&data.join("pg_hba.conf"), &hba)
    }

    /// The lines `init` adds to `postgresql.conf`: loopback only, logical replication, no
    /// durability (a throwaway cluster), the password encryption of the chosen auth, TLS when asked
    /// (the certificate and key copied where the server may read them), then the caller's extras.
    fn server_conf(&self, socket_dir: &Path) -> Result<Vec<String>, ClusterError> {
        let encryption = if self.options.auth == Auth::Md5 {
            "md5"
        } else {
            "scram-sha-256"
        };
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            "wal_level = logical".to_string(),
            "max_replication_slots = 16".to_string(),
            "max_wal_senders = 16".to_string(),
            "max_connections = 100".to_string(),
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "full_page_writes = off".to_string(),
            "wal_sender_timeout = '60s'".to_string(),
            "log_min_messages = warning".to_string(),
            format!("password_encryption = '{encryption}'"),
        ];
        if let Some((cert, key)) = &self.options.tls {
            let cert_copy = self.dir.path().join("server.crt");
            let key_copy = self.dir.path().join("server.key");
            fs::copy(cert, &cert_copy).map_err(|e| io("copying the TLS certificate", e))?;
            fs::copy(key, &key_copy).map_err(|e| io("copying the TLS key", e))?;
            set_mode(&key_copy, 0o600)?;
            if self.as_postgres_user {
                chown_to_postgres(&cert_copy)?;
                chown_to_postgres(&key_copy)?;
            }
            conf.push("ssl = on".to_string());
            conf.push(format!("ssl_cert_file = '{}'", cert_copy.display()));
            conf.push(format!("ssl_key_file = '{}'", key_copy.display()));
        }
        conf.extend(self.options.extra_conf.iter().cloned());
        Ok(conf)
    }

    fn write_port(&self) -> Result<(), ClusterError> {
        append_file(
            &self.data_dir().join("postgresql.auto.conf"),
            &format!("port = {}\n", self.port),
        )
    }

    /// Runs `pg_ctl` on this cluster's data directory and server log with `args` after them.
    fn pg_ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let mut all = vec!["-D", path_str(&data), "-l", path_str(&log)];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all).map(drop)
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["-w", "-t", "60", "start"])
            .map_err(|e| match e {
                ClusterError::Command {
                    command,
                    status,
                    output,
                } => ClusterError::Command {
                    command,
                    status,
                    output: format!("{output}\nserver log:\n{}", self.log_tail(20)),
                },
                other => other,
            })
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let exe = self.bin_dir.join(program);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        command.args(args).current_dir(self.dir.path());
        // Keep the caller's libpq settings from leaking into pg_ctl's readiness checks.
        for var in [
            "PGHOST",
            "PGPORT",
            "PGDATABASE",
            "PGUSER",
            "PGPASSWORD",
            "PGSSLMODE",
        ] {
            command.env_remove(var);
        }
        let output = command
            .output()
            .map_err(|e| io(&format!("running {}", exe.display()), e))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(ClusterError::Command {
                command: format!("{program} {}", args.join(" ")),
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stderr),
                    String::from_utf8_lossy(&output.stdout)
                ),
            })
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Best effort: the directory is removed by TempDir afterwards.
        let _ = self.stop("immediate");
    }
}

/// Finds the directory holding `initdb` and `pg_ctl`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PGCAPI_PG_BIN").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let dir = entry.path().join("bin");
            has_tools(&dir).then_some((version, dir))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|dir| has_tools(dir)))
}

/// True when this process runs as root, which PostgreSQL refuses to run as.
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn chown_to_postgres(path: &Path) -> Result<(), ClusterError> {
    let uid = id_of("-u")?;
    let gid = id_of("-g")?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
        io(
            &format!("giving {} to the postgres user", path.display()),
            e,
        )
    })
}

fn id_of(flag: &str) -> Result<u32, ClusterError> {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .map_err(|e| io("looking up the postgres user", e))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| ClusterError::Command {
            command: format!("id {flag} postgres"),
            status: out.status.to_string(),
            output: "running as root needs a `postgres` OS user to run the server as \
                     (it comes with the postgresql package)"
                .to_string(),
        })
}

fn free_port() -> Result<u16, ClusterError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| io("finding a free TCP port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| io("finding a free TCP port", e))
}

fn write_file(path: &Path, text: &str) -> Result<(), ClusterError> {
    fs::write(path, text).map_err(|e| io(&format!("writing {}", path.display()), e))?;
    if running_as_root() {
        chown_to_postgres(path)?;
    }
    Ok(())
}

fn append_file(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io(&format!("opening {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| io(&format!("writing {}", path.display()), e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io(&format!("setting the mode of {}", path.display()), e))
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

fn io(what: &str, source: std::io::Error) -> ClusterError {
    ClusterError::Io {
        what: what.to_string(),
        source,
    }
}
