//! `pgcapi run --dry-run`: capture as usual, but instead of dispatching, show what would be sent.
//!
//! Capture writes the control table exactly as in a normal run. Dispatch is replaced by a reader that
//! never writes the control table: per destination it reads the `pending` rows (oldest first, each once
//! per process), builds the batch requests with the destination's own encoder
//! ([`Destination::preview`]), and writes one JSON line per batch:
//!
//! ```json
//! {"destination":"meta","platform":"meta","at":"…","requests":[{"url":"…","event_ids":["order-1"],
//!   "body":{…as it would be sent…}}],"not_sent":[{"event_id":"order-2","kind":"conversion",
//!   "outcome":"skipped","reason":"no usable match key for meta"}]}
//! ```
//!
//! to `DIR/{destination}.jsonl` (`--dry-run-output DIR`) or to standard output. Bodies hold what the
//! platforms would receive: hashed identifiers, never raw PII, and no credentials (tokens travel in
//! headers or the query string, which are left out). Rows stay `pending` with no lease, so a later run
//! without `--dry-run` sends them for real.
//!
//! Adjustments (retractions, restatements) are resolved against their conversion only when sent for
//! real (a refund before sending cancels both rows); a dry run lists them under `not_sent` with that
//! reason rather than guessing.

use crate::config::Config;
use crate::destinations::{Destination, Outcome, Preview};
use crate::error::Error;
use crate::event::{Delivery, Kind};
use crate::outbox::{Outbox, Unreadable};
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

/// How often pending rows are looked for.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where the would-be requests go.
#[derive(Debug, Clone)]
pub enum Output {
    /// One JSON line per batch on standard output.
    Stdout,
    /// `DIR/{destination}.jsonl`, appended to.
    Dir(PathBuf),
}

impl Output {
    /// `Dir` when a directory is given, else `Stdout`.
    pub fn from_option(dir: Option<PathBuf>) -> Output {
        dir.map_or(Output::Stdout, Output::Dir)
    }

    /// Appends `line` for `destination`.
    fn write(&self, destination: &str, line: &str) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()
            }
            Output::Dir(dir) => {
                std::fs::create_dir_all(dir)?;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{destination}.jsonl")))?;
                writeln!(file, "{line}")
            }
        }
    }
}

/// Shows what dispatch would send until `shutdown` turns true; reconnects after outages.
pub async fn run(config: Arc<Config>, output: Output, shutdown: watch::Receiver<bool>) {
    let destinations = match crate::destinations::build_all(&config.destinations, &config.dispatch)
    {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %crate::pg::error_chain(&e), "dry run: destinations cannot be built");
            return;
        }
    };
    let mut workers = tokio::task::JoinSet::new();
    for dest in destinations {
        let span = info_span!(
            "dry_run",
            destination = dest.name(),
            platform = dest.platform().as_str()
        );
        workers.spawn(
            worker(
                config.clone(),
                Arc::from(dest),
                output.clone(),
                shutdown.clone(),
            )
            .instrument(span),
        );
    }
    while workers.join_next().await.is_some() {}
}

/// One destination's loop: sessions supervised until shutdown, each reconnecting after an outage.
async fn worker(
    config: Arc<Config>,
    dest: Arc<dyn Destination>,
    output: Output,
    shutdown: watch::Receiver<bool>,
) {
    info!("dry run: nothing will be sent; would-be requests are written instead");
    // Rows are shown once each: the cursor is the highest id shown, kept across sessions.
    let after = AtomicI64::new(0);
    let session = || session(&config, dest.as_ref(), &output, &after, shutdown.clone());
    let _ = crate::shutdown::supervise(
        "dry run",
        crate::shutdown::Policy::OUTAGE,
        shutdown.clone(),
        crate::shutdown::never_halt("dry run"),
        session,
    )
    .await;
}

/// Connects to the control database and shows new pending rows until shutdown or a failure.
async fn session(
    config: &Config,
    dest: &dyn Destination,
    output: &Output,
    after: &AtomicI64,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let client = crate::pg::client::connect(&crate::pg::client::control_info(config)?).await?;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let shown = show_batch(
            &client,
            &config.source.schema,
            dest,
            output,
            after.load(Ordering::SeqCst),
        )
        .await?;
        let pause = match shown {
            Some((last, full)) => {
                after.store(last, Ordering::SeqCst);
                if full {
                    Duration::ZERO
                } else {
                    POLL_INTERVAL
                }
            }
            None => POLL_INTERVAL,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Reads the next batch of pending rows after id `after`, writes what would be sent, and returns the
/// last id shown and whether the batch was full; `None` when there was nothing new.
async fn show_batch(
    client: &tokio_postgres::Client,
    schema: &str,
    dest: &dyn Destination,
    output: &Output,
    after: i64,
) -> Result<Option<(i64, bool)>, Error> {
    let limit = dest.max_batch();
    let rows = Outbox::new(schema)
        .pending_after(client, dest.name(), after, limit)
        .await?;
    let Some(last) = rows.last().map(|r| match r {
        Ok(d) => d.id,
        Err(u) => u.id,
    }) else {
        return Ok(None);
    };
    let mut conversions = Vec::new();
    let mut not_sent = Vec::new();
    let count = rows.len();
    for row in rows {
        match row {
            Ok(d) if d.kind == Kind::Conversion => conversions.push(d),
            Ok(d) => not_sent.push(json!({
                "event_id": d.event_id,
                "kind": d.kind.as_str(),
                "outcome": "resolved when sent",
                "reason": "an adjustment is resolved against its conversion when sent for real \
                           (a dry run does not guess)",
            })),
            Err(Unreadable { id, error }) => not_sent.push(json!({
                "id": id,
                "outcome": "failed",
                "reason": error,
            })),
        }
    }
    let preview = if conversions.is_empty() {
        Preview::default()
    } else {
        dest.preview(&conversions)
    };
    let line = render(dest, &conversions, &preview, not_sent);
    output
        .write(dest.name(), &line.to_string())
        .map_err(|source| Error::Io {
            context: "writing the dry-run output".into(),
            source,
        })?;
    info!(
        rows = count,
        requests = preview.requests.len(),
        not_sent = line["not_sent"].as_array().map_or(0, Vec::len),
        "dry run: batch written instead of sent"
    );
    Ok(Some((last, count >= limit)))
}

/// The JSON line of one batch.
fn render(
    dest: &dyn Destination,
    batch: &[Delivery],
    preview: &Preview,
    mut not_sent: Vec<Value>,
) -> Value {
    let requests: Vec<Value> = preview
        .requests
        .iter()
        .map(|r| {
            json!({
                "url": r.url,
                "event_ids": r.rows.iter().map(|&i| batch[i].event_id.as_str()).collect::<Vec<_>>(),
                "body": r.body,
            })
        })
        .collect();
    for (i, outcome) in &preview.not_sent {
        let (state, reason) = match outcome {
            Outcome::Skipped { reason } => ("skipped", reason.as_str()),
            Outcome::Failed { error } => ("failed", error.as_str()),
            Outcome::Retry { error, .. } => ("retry", error.as_str()),
            Outcome::NeedsOperator { error, .. } => ("needs an operator", error.as_str()),
            Outcome::Sent { .. } => ("sent", ""),
        };
        not_sent.push(json!({
            "event_id": batch[*i].event_id,
            "kind": batch[*i].kind.as_str(),
            "outcome": state,
            "reason": reason,
        }));
    }
    json!({
        "destination": dest.name(),
        "platform": dest.platform().as_str(),
        "at": chrono::Utc::now().to_rfc3339(),
        "requests": requests,
        "not_sent": not_sent,
    })
}
