//! End-to-end tests of the sandbox over HTTP on 127.0.0.1, one file per platform plus admin/faults.

mod admin;
mod google_ads;
mod google_data_manager;
mod linkedin;
mod meta;
mod outbrain;
mod pinterest;
mod reddit;
mod snapchat;
mod taboola;
mod tiktok;

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use super::{Sandbox, SandboxConfig, SandboxHandle};

/// A loopback address with a free port.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Starts a sandbox with the default config.
async fn start() -> SandboxHandle {
    Sandbox::start(any_port()).await.expect("sandbox starts")
}

/// Starts a sandbox with `config`.
async fn start_with(config: SandboxConfig) -> SandboxHandle {
    Sandbox::start_with_config(any_port(), config)
        .await
        .expect("sandbox starts")
}

/// An HTTP client that ignores proxy settings from the environment.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client builds")
}

/// SHA-256 of `s` as lowercase hex, the form every platform expects.
fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The current Unix time in seconds.
fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
