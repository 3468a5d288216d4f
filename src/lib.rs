//! pgcapi: PostgreSQL logical replication → ad platforms' conversion APIs.
//!
//! # Layout
//!
//! ```text
//! Postgres ──pgoutput──▶ source ──▶ decode ──▶ rules ──▶ identity ──▶ outbox ──▶ dispatch ──▶ destinations
//!  (slot)                 protocol   pgoutput   match,     normalize,   control    claim,       meta,
//!                         framing,   messages,  consent,   hash         table +    batch,       google_ads,
//!                         feedback   values     events                  slot LSN   send, record google_data_manager,
//!                                                                                               microsoft_ads, tiktok
//! ```
//!
//! - [`source`]: our replication connection (startup, auth, TLS, CopyBoth, status updates).
//! - [`decode`]: pure pgoutput v1 decoder and text-value parsing by column type.
//! - [`rules`]: a row change → conversion or retraction events.
//! - [`identity`]: per-platform normalization and SHA-256 hashing of match keys.
//! - [`outbox`]: the control schema and the only SQL on it (write, lease, requeue, purge, health,
//!   migrations), behind an `Outbox` handle.
//! - [`capture`]: the worker that drives source → outbox and confirms LSNs; supervised in `run` so that a
//!   change it cannot apply leaves dispatch running (`capture_state` says why).
//! - [`dispatch`]: per-destination workers that claim, send and record control-table rows (worker,
//!   round, adjustments, retry).
//! - [`destinations`]: one module per platform: request building and response classification.
//! - [`setup`]: installs the control schema, publication and slot.
//! - [`testbed`]: the sandbox (the platforms' rules, as an HTTP server) and throwaway clusters, for
//!   `demo` and tests; independent of the product code.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//! - [`check`]: `pgcapi check`, prerequisites and credentials without recording conversions.
//! - [`dry_run`]: `pgcapi run --dry-run`, the would-be requests instead of sending.
//! - [`status`]: `pgcapi status`: slot, destination health and failures, with an exit code.
//! - [`repair`]: `pgcapi retry` and `pgcapi replay`: requeue control-table rows.
//! - [`retention`]: deletes old finished rows (`pgcapi run` hourly, `pgcapi purge`).
//! - [`units`]: human durations, sizes and timestamps.
//! - [`backfill`]: `pgcapi backfill`, conversions for rows that existed before the slot.
//! - [`bench`]: `pgcapi bench`, throughput, latency and memory against `pg_recvlogical`.

pub mod backfill;
pub mod bench;
pub mod capture;
pub mod check;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
pub mod destinations;
pub mod dispatch;
pub mod dry_run;
pub mod event;
pub mod identity;
pub mod lsn;
pub mod metrics;
pub mod outbox;
pub mod pg;
pub mod platform;
pub mod repair;
pub mod report;
pub mod retention;
pub mod rules;
pub mod setup;
pub mod source;
pub mod status;
pub mod testbed;
pub mod units;
