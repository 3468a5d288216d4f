//! `pgcapi setup`: installs what pgcapi needs and prints what is left for the DBA.

use crate::error::Error;
use crate::ops::setup::{setup, SetupOptions};
use std::path::Path;
use std::process::ExitCode;

/// Runs setup with the config at `path`; exits 3 when something is left for the DBA.
pub(super) async fn run(path: &Path, set_replica_identity_full: bool) -> Result<ExitCode, Error> {
    let config = super::load(path)?;
    let report = setup(
        &config,
        SetupOptions {
            set_replica_identity_full,
        },
    )
    .await
    .map_err(|e| Error::failed(crate::pg::error_chain(&e)))?;
    print!("{}", report.render());
    Ok(ExitCode::from(report.exit_code()))
}
