//! Dispatch: per destination, claim due rows of the control table under a lease, send them, and record each row's outcome.
//!
//! A worker per destination repeats one *round*: claim up to one platform batch of due `pending` rows
//! (`for update skip locked`, then a lease owned by this process), resolve retractions and restatements
//! against the conversion they adjust, send the rest through the [`Destination`], and write every row's
//! outcome in one statement. Rows are only ever updated by the lease owner, so several pgcapi processes
//! can dispatch from one control table without sending a row twice while its lease holds. A crash
//! leaves leased rows that are claimed again once the lease expires: at-least-once on the wire, made
//! effectively-once by the platforms' deduplication on `event_id` / `orderId`.
//!
//! Refunds (and deletes of the source row): a pending conversion is *cancellable* — its retraction
//! cancels it, its restatement replaces its value, and it is never sent — only when it was never
//! attempted (it cannot have reached the platform; a claim left behind by a process that died
//! mid-round counts as an attempt). A conversion that may have reached the platform (an attempt whose
//! answer was lost: a timeout, a dropped connection, a 5xx) is never cancelled, on any platform: the
//! control table would then say "not sent" about an event the platform may count. It is finished
//! first — sent again, its stored payload unchanged, which the platform deduplicates — and then the
//! adjustment goes to Google Ads, or is skipped as "platform cannot retract" for Meta and TikTok, so the
//! rows say what the platform holds. An adjustment whose conversion is pending waits (pending, short
//! delay) for its outcome; one whose conversion never existed, or was skipped or failed, is skipped
//! with that reason. `adjustments::resolve` is the decision, as a pure function.
//!
//! The folder: `worker.rs` (one destination's loop, outage probing), `round.rs` (claim → resolve →
//! send → record), `adjustments.rs` (the refund decision, table-tested), `retry.rs` (a destination's
//! outcome → the row's record: backoff, Retry-After and the operator floor, give-up). Every statement
//! goes through [`Outbox`](crate::outbox::Outbox) (`outbox/lease.rs`).
//!
//! Workers wake up on `NOTIFY {schema}_deliveries` (capture notifies after each commit), at the earliest
//! `next_attempt_at`, and otherwise poll every [`DEFAULT_POLL_INTERVAL`].

mod adjustments;
mod retry;
mod round;
mod worker;

pub use retry::backoff;
pub use worker::{PROBE_MAX_INTERVAL, PROBE_ROWS};

use crate::config::DispatchConfig;
use crate::destinations::Destination;
use crate::error::{Action, Error, Fault};
use crate::outbox::{Outbox, OutboxError};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, Connection};
use tracing::warn;

/// How often a worker looks for due rows when no notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long an adjustment waits when the conversion it adjusts is being sent by someone else.
const WAIT_FOR_IN_FLIGHT: Duration = Duration::from_secs(1);
/// Pause after a failed round that did not lose the connection (a statement error).
const ROUND_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How many claimed batches of one destination a worker has in progress at once (being resolved,
/// sent or recorded); see [`Dispatcher::run`].
pub const BATCHES_IN_FLIGHT: usize = 3;

/// Dispatch stopped.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The control table could not be read or written.
    #[error(transparent)]
    Control(#[from] OutboxError),
    /// The control database could not be reached.
    #[error("connecting to the control database: {}", crate::pg::client::describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A worker task panicked or was cancelled.
    #[error("dispatch worker for destination {destination} stopped: {message}")]
    Worker {
        /// The destination the worker served.
        destination: String,
        /// What happened to it.
        message: String,
    },
}

impl DispatchError {
    /// What the failure was, for the retry policy ([`crate::error`]). A connection that could not be
    /// opened counts as lost: dispatch connects again.
    pub fn fault(&self) -> Fault {
        match self {
            DispatchError::Control(e) => e.fault(),
            DispatchError::Connect(_) => Fault::Lost,
            DispatchError::Worker { .. } => Fault::Refused,
        }
    }

    /// True when the control connection is gone: dispatch must be restarted with a new one.
    pub fn is_connection_error(&self) -> bool {
        matches!(self.fault().action(), Action::Retry { .. })
    }
}

impl From<DispatchError> for Error {
    fn from(e: DispatchError) -> Self {
        let message = crate::pg::error_chain(&e);
        match e.fault() {
            Fault::Refused => Error::Failed(message),
            fault => Error::Database { message, fault },
        }
    }
}

/// Sends the control table's pending rows to their destinations.
pub struct Dispatcher {
    /// The control connection, shared by the workers (tokio-postgres pipelines their statements).
    client: Arc<Client>,
    /// The control schema.
    outbox: Outbox,
    /// This dispatcher's lease owner id, unique per dispatcher.
    owner: String,
    /// Leases, retries and timeouts.
    config: DispatchConfig,
    /// One worker each.
    destinations: Vec<Arc<dyn Destination>>,
    /// Changes on every `NOTIFY` when this dispatcher drives its own connection.
    wakeups: Option<watch::Receiver<u64>>,
    /// The fallback poll interval.
    poll_interval: Duration,
    /// More control connections: destination worker `i` uses `[client, worker_clients…][i % n]`,
    /// so that the workers' statements run in parallel server processes.
    worker_clients: Vec<Arc<Client>>,
}

impl Dispatcher {
    /// A dispatcher over `client` (whose connection the caller drives; no notifications, polling only).
    pub fn new(
        client: Client,
        schema: &str,
        config: DispatchConfig,
        destinations: Vec<Box<dyn Destination>>,
    ) -> Dispatcher {
        Dispatcher {
            client: Arc::new(client),
            outbox: Outbox::new(schema),
            owner: format!(
                "pgcapi-{}-{:08x}",
                std::process::id(),
                rand::rng().random::<u32>()
            ),
            config,
            destinations: destinations.into_iter().map(Arc::from).collect(),
            wakeups: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            worker_clients: Vec::new(),
        }
    }

    /// Adds control connections (driven by the caller) for the destination workers beyond the first,
    /// which otherwise all queue their statements on one connection, served by one server process.
    /// Notifications still arrive on the first connection only.
    pub fn with_worker_clients(mut self, clients: Vec<Client>) -> Dispatcher {
        self.worker_clients = clients.into_iter().map(Arc::new).collect();
        self
    }

    /// This dispatcher on each of its control connections: the same owner, destinations and
    /// wake-ups.
    fn on_each_connection(self: &Arc<Self>) -> Vec<Arc<Dispatcher>> {
        (0..=self.worker_clients.len())
            .map(|i| self.on_connection(i))
            .collect()
    }

    /// This dispatcher on control connection `i` (0: the first).
    fn on_connection(self: &Arc<Self>, i: usize) -> Arc<Dispatcher> {
        match i {
            0 => self.clone(),
            i => Arc::new(Dispatcher {
                client: self.worker_clients[i - 1].clone(),
                outbox: self.outbox.clone(),
                owner: self.owner.clone(),
                config: self.config.clone(),
                destinations: self.destinations.clone(),
                wakeups: self.wakeups.clone(),
                poll_interval: self.poll_interval,
                worker_clients: Vec::new(),
            }),
        }
    }

    /// A dispatcher that drives `connection` itself and wakes up on its notifications (any TLS mode).
    pub fn with_connection<S, T>(
        client: Client,
        connection: Connection<S, T>,
        schema: &str,
        config: DispatchConfig,
        destinations: Vec<Box<dyn Destination>>,
    ) -> Dispatcher
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut dispatcher = Dispatcher::new(client, schema, config, destinations);
        dispatcher.wakeups = Some(drive(connection));
        dispatcher
    }

    /// Connects to the control database at `url` without TLS (local sockets, tests, the demo).
    pub async fn connect(
        url: &str,
        schema: &str,
        config: DispatchConfig,
        destinations: Vec<Box<dyn Destination>>,
    ) -> Result<Dispatcher, DispatchError> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(DispatchError::Connect)?;
        Ok(Dispatcher::with_connection(
            client,
            connection,
            schema,
            config,
            destinations,
        ))
    }

    /// Changes the fallback poll interval.
    pub fn with_poll_interval(mut self, interval: Duration) -> Dispatcher {
        self.poll_interval = interval;
        self
    }

    /// The lease owner id of this process, as stored in `deliveries.lease_owner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs one worker per destination until `shutdown` turns true or its sender is dropped (a round in
    /// progress is finished first), or until the control connection is lost (an error: restart dispatch
    /// with a new connection). The first worker error stops the others.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), DispatchError> {
        if self.wakeups.is_some() {
            self.outbox.listen(&self.client).await?;
        }
        let this = Arc::new(self);
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let forward = {
            let stop_tx = stop_tx.clone();
            let mut shutdown = shutdown;
            tokio::spawn(async move {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
                let _ = stop_tx.send(true);
            })
        };
        let mut workers = tokio::task::JoinSet::new();
        let connections: Arc<[Arc<Dispatcher>]> = this.on_each_connection().into();
        for (index, dest) in this.destinations.iter().enumerate() {
            let name = dest.name().to_string();
            let task = connections[index % connections.len()].clone().worker(
                index,
                stop_rx.clone(),
                connections.clone(),
            );
            workers.spawn(async move { (name, task.await) });
        }
        if workers.is_empty() {
            // Nothing to dispatch to: still end on shutdown, like a worker would.
            let mut stop = stop_rx;
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        }
        let mut first_error = None;
        while let Some(joined) = workers.join_next().await {
            let error = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((_, Err(e))) => e,
                Err(e) => DispatchError::Worker {
                    destination: "?".into(),
                    message: e.to_string(),
                },
            };
            let _ = stop_tx.send(true);
            first_error.get_or_insert(error);
        }
        forward.abort();
        first_error.map_or(Ok(()), Err)
    }

    /// Claims and processes one round (at most one batch) for every destination; returns how many rows
    /// were claimed in total.
    pub async fn run_once(&self) -> Result<usize, DispatchError> {
        let mut total = 0;
        for dest in &self.destinations {
            total += self.round(dest.as_ref()).await?;
        }
        Ok(total)
    }
}

/// Drives a control connection in the background and counts its notifications; the receiver changes
/// on every `NOTIFY`, and its sender is dropped when the connection ends.
fn drive<S, T>(mut connection: Connection<S, T>) -> watch::Receiver<u64>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => tx.send_modify(|n| *n += 1),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    warn!(error = %crate::pg::client::describe(&e), "control connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    rx
}

/// Waits for the next notification; false when there will be none (no listener or connection gone).
async fn changed(wakeups: &mut Option<watch::Receiver<u64>>) -> bool {
    match wakeups {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
