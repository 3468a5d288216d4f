//! The oracle and the stage: what tests and `pgcapi demo` run pgcapi against, independent of the
//! product code they judge (`tests/cases/architecture.rs` checks that nothing here imports it).
//!
//! - [`sandbox`]: a local HTTP server that enforces the platforms' published rules.
//! - [`cluster`]: throwaway PostgreSQL clusters started from the machine's binaries.

pub mod cluster;
pub mod sandbox;
