//! What pgcapi tells its operators while it runs: the metrics server with its health endpoints and
//! database probe ([`server`]), and the log lines ([`logging`]). The counters themselves are the leaf [`crate::metrics`], which the
//! workers record into without depending on this module.

pub mod logging;
pub mod server;
