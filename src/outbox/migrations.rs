//! The control schema's migrations: the SQL files under `sql/`, applied in order by `pgcapi setup`.

use super::Outbox;
use tokio_postgres::Client;

/// The control schema's SQL files, in the order they are applied.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_control_schema.sql",
        include_str!("../../sql/001_control_schema.sql"),
    ),
    ("003_retired.sql", include_str!("../../sql/003_retired.sql")),
    (
        "004_queued_at.sql",
        include_str!("../../sql/004_queued_at.sql"),
    ),
    (
        "005_dispatch_hot.sql",
        include_str!("../../sql/005_dispatch_hot.sql"),
    ),
    (
        "006_cheaper_writes.sql",
        include_str!("../../sql/006_cheaper_writes.sql"),
    ),
    (
        "007_capture_state.sql",
        include_str!("../../sql/007_capture_state.sql"),
    ),
    (
        "008_source_key.sql",
        include_str!("../../sql/008_source_key.sql"),
    ),
    (
        "009_platform_processing.sql",
        include_str!("../../sql/009_platform_processing.sql"),
    ),
    // Last, so that a numbered file may drop a view to change a column it reads.
    ("views.sql", include_str!("../../sql/views.sql")),
];

/// A migration file could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("installing {file}: {}", crate::pg::client::describe(source))]
pub struct InstallError {
    /// The file under `sql/`.
    pub file: &'static str,
    /// The database error (setup reads it: a missing privilege is a task for the DBA).
    #[source]
    pub source: tokio_postgres::Error,
}

impl Outbox {
    /// Installs (or upgrades) the control schema in `client`'s database: every file of [`MIGRATIONS`]
    /// in order, with this schema's name in place of `pgcapi`. Each file is idempotent, so running
    /// this again changes nothing.
    pub async fn install(&self, client: &Client) -> Result<(), InstallError> {
        for (file, text) in MIGRATIONS {
            let text = text.replace("pgcapi.", &format!("{}.", self.s())).replace(
                "create schema if not exists pgcapi;",
                &format!("create schema if not exists {};", self.s()),
            );
            client
                .batch_execute(&text)
                .await
                .map_err(|source| InstallError { file, source })?;
        }
        Ok(())
    }
}
