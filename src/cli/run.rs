//! `pgcapi run` (and `--dry-run`): turns SIGTERM and SIGINT into the pipeline's shutdown.

use crate::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tracing::info;

/// Runs the pipeline with the config at `path` until a signal.
pub(super) async fn run(
    path: &Path,
    dry_run: bool,
    dry_run_output: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    let config = super::load(path)?;
    let dry_run = dry_run.then(|| crate::ops::dry_run::Output::from_option(dry_run_output));
    let (shutdown_tx, shutdown) = crate::shutdown::channel();
    // Held until the pipeline returns, so that its tasks never see the channel closed before they stop.
    let shutdown_tx = Arc::new(shutdown_tx);
    let on_signal = shutdown_tx.clone();
    tokio::spawn(async move {
        super::wait_for_signal().await;
        info!("shutdown requested");
        let _ = on_signal.send(true);
    });
    crate::pipeline::run(Arc::new(config), dry_run, shutdown).await?;
    drop(shutdown_tx);
    Ok(ExitCode::SUCCESS)
}
