//! `pgcapi sandbox`: serves the platform sandbox until a signal.

use std::net::SocketAddr;

/// Serves the sandbox on `listen` until SIGTERM or SIGINT.
pub(super) async fn run(listen: SocketAddr) -> Result<(), String> {
    let handle = crate::testbed::sandbox::Sandbox::start(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("sandbox listening on {}", handle.base_url());
    handle
        .run_until(super::wait_for_signal())
        .await
        .map_err(|e| e.to_string())
}
