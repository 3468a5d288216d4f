//! `pgcapi sandbox`: serves the platform sandbox until a signal.

use crate::error::Error;
use std::net::SocketAddr;

/// Serves the sandbox on `listen` until SIGTERM or SIGINT.
pub(super) async fn run(listen: SocketAddr) -> Result<(), Error> {
    let handle = crate::testbed::sandbox::Sandbox::start(listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot listen on {listen}"),
            source,
        })?;
    println!("sandbox listening on {}", handle.base_url());
    handle
        .run_until(super::wait_for_signal())
        .await
        .map_err(|source| Error::Io {
            context: format!("serving the sandbox on {listen}"),
            source,
        })
}
