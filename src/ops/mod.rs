//! Operating a deployment: what the commands besides `run` do (and the dry run), one module each.
//! `setup`, `check` and `backfill` return reports that `cli/` prints; `status`, `repair` and `retention`
//! still own their command's arguments and printing (`run_status`, `run_retry`, `run_purge`), which
//! belong in `cli/` once the SQL in them has moved to `outbox/`.
//!
//! - [`setup`]: installs the control schema, publication and slot.
//! - [`check`]: `pgcapi check`, prerequisites and credentials without recording conversions.
//! - [`status`]: `pgcapi status`: slot, destination health and failures, with an exit code.
//! - [`repair`]: `pgcapi retry` and `pgcapi replay`: requeue control-table rows.
//! - [`retention`]: deletes old finished rows (`pgcapi run` hourly, `pgcapi purge`).
//! - [`backfill`]: `pgcapi backfill`, conversions for rows that existed before the slot.
//! - [`dry_run`]: `pgcapi run --dry-run`, the would-be requests instead of sending.

pub mod backfill;
pub mod check;
pub mod dry_run;
pub mod repair;
pub mod retention;
pub mod setup;
pub mod status;

/// Prints `report` as indented JSON on standard output (`--json` of `status`, `retry`, `replay`,
/// `purge`).
pub(crate) fn print_json(report: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}
