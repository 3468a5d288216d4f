//! pgcapi: PostgreSQL logical replication → ad platforms' conversion APIs.
//!
//! # Layout
//!
//! ```text
//! Postgres ──pgoutput──▶ source ──▶ decode ──▶ rules ──▶ identity ──▶ outbox ──▶ dispatch ──▶ destinations
//!  (slot)                 protocol   pgoutput   match,     normalize,   control    claim,       meta,
//!                         framing,   messages,  consent,   hash         table +    batch,       google_ads,
//!                         feedback   values     events                  slot LSN   send, record google_data_manager,
//!                                                                                               microsoft_ads, tiktok,
//!                                                                                               snapchat, pinterest,
//!                                                                                               linkedin, reddit,
//!                                                                                               outbrain, taboola
//! ```
//!
//! Imports go one way, leaf → vocabulary → plumbing → stages → workers → ops → surface
//! (`tests/cases/architecture.rs` enforces it; README "Development" has the table).
//!
//! - [`platform`], [`event`], [`report`], [`lsn`]: the shared vocabulary (platforms, the events capture
//!   writes and dispatch sends, text tables, WAL positions).
//! - [`config`]: the TOML, validated: one typed config per platform under `config/destination/`.
//! - [`pg`]: every SQL connection, conninfo and TLS, catalog and slot reads, how server errors read.
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
//! - [`destinations`]: one module per platform behind the `Destination` trait (`send`, `plan`,
//!   `healthcheck`); shared HTTP (`http`), batch (`batch`) and OAuth token exchange (`oauth`) helpers.
//! - [`pipeline`]: `pgcapi run` assembled: metrics server, capture, dispatch or dry run, retention.
//! - [`cli`]: parses the command line, one file per command; prints and chooses the exit code.
//! - [`ops`]: operating a deployment: `setup`, `check`, `status`, `repair` (retry, replay),
//!   `retention` (purge), `backfill`, `dry_run`.
//! - [`testbed`]: the sandbox (the platforms' rules, as an HTTP server) and throwaway clusters (both
//!   together: `stage`), for `demo`, `bench` and tests; independent of the product code.
//! - [`metrics`]: the Prometheus registry and the functions capture, dispatch and destinations record with
//!   (a leaf: imports nothing of pgcapi).
//! - [`telemetry`]: the `/metrics`, `/healthz`, `/readyz` server and the database probe behind readiness
//!   ([`telemetry::server`]), and the log subscriber ([`telemetry::logging`]).
//! - [`error`]: the top-level [`error::Error`] and the one retry-or-halt policy ([`error::Error::action`]).
//! - [`shutdown`]: the shutdown signal and [`shutdown::supervise`], the one restart-with-backoff loop of
//!   every long-running task (and [`shutdown::every`] for periodic ones).
//! - [`units`]: human durations, sizes and timestamps.
//! - [`bench`]: `pgcapi bench`, throughput, latency and memory against `pg_recvlogical`.
//! - [`demo`]: `pgcapi demo`, the contract (or all 11 platforms) end to end on a throwaway cluster and
//!   the sandbox.

pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
pub mod destinations;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod identity;
pub mod lsn;
pub mod metrics;
pub mod ops;
pub mod outbox;
pub mod pg;
pub mod pipeline;
pub mod platform;
pub mod report;
pub mod rules;
pub mod shutdown;
pub mod source;
pub mod telemetry;
pub mod testbed;
pub mod units;
