//! `pgcapi backfill`: conversions for rows that existed before the slot.

use crate::error::Error;
use crate::ops::backfill::{backfill, BackfillOptions};
use crate::units::TimeRef;
use std::path::Path;
use std::process::ExitCode;

/// Evaluates `rule` over the rows changed since `since` and prints what was recorded (or would be).
pub(super) async fn run(
    path: &Path,
    rule: String,
    since: TimeRef,
    column: Option<String>,
    dry_run: bool,
) -> Result<ExitCode, Error> {
    let config = super::load(path)?;
    let options = BackfillOptions {
        rule,
        since: since.resolve(chrono::Utc::now()),
        column,
        dry_run,
    };
    let report = backfill(&config, &options)
        .await
        .map_err(|e| Error::failed(crate::pg::error_chain(&e)))?;
    print!("{}", report.render());
    Ok(ExitCode::SUCCESS)
}
