//! `pgcapi backfill`: conversions for rows that existed before the slot.

use crate::config::Config;
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
) -> Result<ExitCode, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let options = BackfillOptions {
        rule,
        since: since.resolve(chrono::Utc::now()),
        column,
        dry_run,
    };
    let report = backfill(&config, &options)
        .await
        .map_err(|e| crate::pg::error_chain(&e))?;
    print!("{}", report.render());
    Ok(ExitCode::SUCCESS)
}
