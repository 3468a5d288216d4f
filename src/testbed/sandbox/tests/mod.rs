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

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Counters, Sandbox, SandboxConfig, SandboxHandle};

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

/// Sends `request` and reads its JSON answer.
async fn json_of<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    request.send().await.unwrap().json().await.unwrap()
}

/// `accepted`, `rejected` and `rejected_requests`: what a refused batch shows in the counters.
fn refusal_counts(counters: &Counters) -> (u64, u64, u64) {
    (
        counters.accepted,
        counters.rejected,
        counters.rejected_requests,
    )
}

/// A Google access token from the sandbox's OAuth endpoint (refresh-token grant), checking the
/// answer's lifetime and type.
async fn google_token(sandbox: &SandboxHandle) -> String {
    let response = client()
        .post(format!("{}/token", sandbox.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "id"),
            ("client_secret", "secret"),
            ("refresh_token", "refresh"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["expires_in"].as_u64(), body["token_type"].as_str()),
        (Some(3599), Some("Bearer"))
    );
    body["access_token"].as_str().unwrap().to_string()
}
