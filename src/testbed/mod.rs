//! The oracle and the stage: what tests and `pgcapi demo` run pgcapi against, independent of the
//! product code they judge (`tests/cases/architecture.rs` checks that nothing here imports it).
//!
//! - [`sandbox`]: a local HTTP server that enforces the platforms' published rules.
//! - [`cluster`]: throwaway PostgreSQL clusters started from the machine's binaries.
//! - [`stage`]: a cluster and the sandbox together, for `pgcapi demo` and `pgcapi bench`.

pub mod cluster;
pub mod sandbox;
pub mod stage;
