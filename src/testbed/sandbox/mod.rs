//! A local HTTP server that speaks the platforms' conversion endpoints and enforces their rules.
//!
//! Tests and `pgcapi demo` point pgcapi's destinations at it, so nothing ever needs a real platform.
//! One server serves all three platforms, on the same paths as the real hosts (see
//! `reference/platforms.md` §1–§3):
//!
//! | platform | endpoint |
//! |---|---|
//! | Meta | `POST /{version}/{pixel_id}/events`, `GET /{version}/{pixel_id}?fields=id` (a read of the pixel) |
//! | Google Ads | `POST /token` (OAuth), `POST /{version}/customers/{cid}:uploadClickConversions`, `…:uploadConversionAdjustments` |
//! | TikTok | `POST /open_api/v1.3/event/track/` |
//! | Google Data Manager | `POST /v1/events:ingest`, `GET /v1/requestStatus:retrieve` (same `/token`, which also takes the JWT bearer grant of service accounts) |
//! | Microsoft Advertising | `POST /{tenant}/oauth2/v2.0/token`, `POST /CampaignManagement/v13/OfflineConversions/Apply`, `…/OfflineConversionAdjustments/Apply`, `…/ConversionGoals/QueryByIds` (see `microsoft_ads.rs`) |
//! | Outbrain | `GET /unifiedPixel?ob_click_id=…&name=…` (see `outbrain.rs`) |
//! | Taboola | `GET /actions-handler/log/3/s2s-action?click-id=…&name=…`, `POST /{account_id}/log/3/bulk-s2s-action` (see `taboola.rs`) |
//! | LinkedIn | `POST /rest/conversionEvents`, `GET /rest/adAccounts/{id}`, `GET /rest/conversions/{id}` (see `linkedin.rs`) |
//! | Reddit | `POST /api/v3/pixels/{pixel_id}/conversion_events` (see `reddit.rs`) |
//! | Snapchat | `POST /v3/{asset_id}/events`, `POST /v3/{asset_id}/events/validate`, `GET /v3/{asset_id}/events/validate/stats` (see `snapchat.rs`) |
//! | Pinterest | `POST /v5/ad_accounts/{ad_account_id}/events[?test=true]` (see `pinterest.rs`) |
//!
//! Admin endpoints: `GET /_sandbox/records`, `GET /_sandbox/stats` (counters only),
//! `POST /_sandbox/reset`, `GET|POST /_sandbox/faults`, `GET /_sandbox/health`.
//!
//! The sandbox is as strict as the published rules, and stricter only where noted in each platform
//! file (it cannot know, for example, when a click happened). Error messages name the field and the
//! reason, never the value, so they are safe to log.
//!
//! To point pgcapi at a running sandbox, set every destination `endpoint` to
//! [`SandboxHandle::base_url`] and the Google `token_endpoint` to `{base_url}/token`.
//!
//! Faults (see [`Faults`]) apply to the three conversion endpoints only: 500, 429 and dropped
//! connections are decided before the body is read and record nothing; `accept_then_drop_ratio`
//! processes and records the request, then cuts the connection so the response is lost. Set them at
//! start ([`SandboxConfig::faults`]), from Rust ([`SandboxHandle::set_faults`]) or over HTTP
//! (`POST /_sandbox/faults`); a `seed` makes the dice reproducible.
//!
//! Shared by the platform modules: [`SandboxConfig`] (`config.rs`), the wire-format readers and
//! answers (`wire.rs`), the records, counters and dedup memory (`records.rs`), the faults
//! (`faults.rs`), and the event shape Snapchat and Pinterest share (`capi.rs`).
//!
//! Every platform's [`Counters`] separate raw traffic (`requests`, `received`) from what the platform
//! counted once after its dedup (`unique`); [`SandboxHandle::stats`] and `GET /_sandbox/stats` serve
//! them without the records.

mod capi;
mod config;
mod faults;
mod google_ads;
mod google_data_manager;
mod linkedin;
mod meta;
mod microsoft_ads;
mod outbrain;
mod pinterest;
mod platform;
mod records;
mod reddit;
mod snapchat;
mod taboola;
mod tiktok;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::SandboxConfig;
pub use faults::Faults;
pub use linkedin::version_active as linkedin_version_active;
pub use microsoft_ads::{MicrosoftAdsRecords, MsAdjustment, MsConversion};
pub use outbrain::{OutbrainConversion, OutbrainRecords};
pub use platform::Platform;
pub use records::{
    AcceptedAdjustment, AcceptedConversion, AcceptedEvent, Counters, DataManagerConversion,
    DataManagerEvent, DataManagerRecords, EventRecords, GoogleAdsRecords, Records, Stats,
};
pub use taboola::{TaboolaConversion, TaboolaRecords, TaboolaRejection};

use faults::{ConnControl, KillableListener};
use records::EventMemory;
pub(crate) use wire::{
    as_number, as_unix_seconds, bearer, credential_ok, epoch_millis, hashed_as_sent,
    is_decimal_text, is_ip_address, is_sha256_hex, json_response, parse_form, random_id,
    sha256_values, user_fields, FUTURE_TOLERANCE_SECS,
};

/// Largest request body accepted; well above a full batch of any platform.
const BODY_LIMIT_BYTES: usize = 32 * 1024 * 1024;

/// How long [`SandboxHandle::shutdown`] waits for open connections before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The platform sandbox server.
pub struct Sandbox;

impl Sandbox {
    /// Starts the sandbox with the default config on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr) -> io::Result<SandboxHandle> {
        Sandbox::start_with_config(addr, SandboxConfig::default()).await
    }

    /// Starts the sandbox with `config` on `addr` (port 0 picks a free port).
    pub async fn start_with_config(
        addr: SocketAddr,
        config: SandboxConfig,
    ) -> io::Result<SandboxHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let app = router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let serve = axum::serve(
            KillableListener::new(listener),
            app.into_make_service_with_connect_info::<ConnControl>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(async move { serve.await });
        Ok(SandboxHandle {
            addr,
            shared,
            shutdown: tx,
            task,
        })
    }
}

/// A running sandbox. Dropping the handle shuts the server down gracefully in the background.
pub struct SandboxHandle {
    /// The bound address.
    addr: SocketAddr,
    /// State shared with the handlers.
    shared: Arc<Shared>,
    /// Fires the graceful shutdown.
    shutdown: oneshot::Sender<()>,
    /// The server task.
    task: JoinHandle<io::Result<()>>,
}

impl SandboxHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, with a wildcard bind address replaced by loopback.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            let loopback: std::net::IpAddr = if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            addr.set_ip(loopback);
        }
        format!("http://{addr}")
    }

    /// A snapshot of the records.
    pub fn records(&self) -> Records {
        self.shared.lock().records.clone()
    }

    /// Replaces the active faults (and reseeds their dice from [`Faults::seed`]).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// The active faults.
    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    /// A snapshot of the counters of every platform, without the records themselves.
    pub fn stats(&self) -> Stats {
        Stats::of(&self.shared.lock().records)
    }

    /// Forgets records, dedup memory, known Google orders and faults (issued tokens stay valid).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, lets in-flight requests finish (up to a few seconds), then stops.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// Serves until `signal` completes (e.g. Ctrl-C in `pgcapi sandbox`), then shuts down.
    ///
    /// Returns early with the server's error if it stops on its own.
    pub async fn run_until<F>(self, signal: F) -> io::Result<()>
    where
        F: Future<Output = ()>,
    {
        let SandboxHandle {
            addr,
            shared,
            shutdown,
            mut task,
        } = self;
        tokio::select! {
            () = signal => {
                SandboxHandle { addr, shared, shutdown, task }.shutdown().await;
                Ok(())
            }
            joined = &mut task => match joined {
                Ok(result) => result,
                Err(err) => Err(io::Error::other(err)),
            },
        }
    }
}

/// State shared by all handlers.
pub(crate) struct Shared {
    /// Accepted credentials and dedup window.
    pub(crate) config: SandboxConfig,
    /// Everything mutable, behind one lock that is never held across an await.
    state: Mutex<SandboxState>,
}

/// The mutable part of the sandbox.
#[derive(Default)]
pub(crate) struct SandboxState {
    /// What was accepted, and the counters.
    pub(crate) records: Records,
    /// Active faults.
    pub(crate) faults: Faults,
    /// The dice the faults are rolled with.
    pub(crate) fault_dice: faults::Dice,
    /// Meta dedup memory.
    pub(crate) meta: EventMemory,
    /// TikTok dedup memory.
    pub(crate) tiktok: EventMemory,
    /// Google Ads orders, clicks and adjustments already accepted.
    pub(crate) google: google_ads::Ledger,
    /// Google access tokens issued by `/token`, with their expiry.
    pub(crate) google_tokens: HashMap<String, DateTime<Utc>>,
    /// The scopes of tokens issued for the JWT bearer grant (refresh-token grants carry the scopes
    /// of their consent, which the sandbox does not know).
    pub(crate) google_token_scopes: HashMap<String, String>,
    /// Data Manager conversions and request statuses.
    pub(crate) data_manager: google_data_manager::DataManager,
    /// Microsoft settings, dedup keys and adjustments.
    pub(crate) microsoft: microsoft_ads::Ledger,
    /// Microsoft tokens issued by its token endpoint.
    pub(crate) microsoft_tokens: microsoft_ads::Tokens,
    /// Outbrain keys received.
    pub(crate) outbrain: outbrain::Ledger,
    /// Taboola dedup memory.
    pub(crate) taboola: taboola::Ledger,
    /// LinkedIn dedup memory (conversion rule + `eventId`).
    pub(crate) linkedin: EventMemory,
    /// Reddit dedup memory (event type + action source + `conversion_id`).
    pub(crate) reddit: EventMemory,
    /// Snapchat dedup memory.
    pub(crate) snapchat: EventMemory,
    /// Pinterest dedup memory.
    pub(crate) pinterest: EventMemory,
}

impl Shared {
    /// Fresh state for `config`.
    fn new(config: SandboxConfig) -> Self {
        let state = SandboxState {
            faults: config.faults.clone(),
            fault_dice: faults::Dice(config.faults.rng()),
            ..SandboxState::default()
        };
        Shared {
            config,
            state: Mutex::new(state),
        }
    }

    /// Locks the state; a panic in another handler never makes the sandbox unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SandboxState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the active faults and reseeds their dice.
    fn set_faults(&self, faults: Faults) {
        let dice = faults::Dice(faults.rng());
        let mut state = self.lock();
        state.faults = faults;
        state.fault_dice = dice;
    }

    /// Clears everything except issued Google tokens.
    fn reset(&self) {
        let mut state = self.lock();
        let tokens = std::mem::take(&mut state.google_tokens);
        let scopes = std::mem::take(&mut state.google_token_scopes);
        let microsoft_tokens = std::mem::take(&mut state.microsoft_tokens);
        *state = SandboxState {
            google_tokens: tokens,
            google_token_scopes: scopes,
            microsoft_tokens,
            ..SandboxState::default()
        };
    }
}

/// All routes of the sandbox.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(meta::routes())
        .merge(google_ads::routes())
        .merge(google_data_manager::routes())
        .merge(tiktok::routes())
        .merge(microsoft_ads::routes())
        .merge(outbrain::routes())
        .merge(taboola::routes())
        .merge(linkedin::routes())
        .merge(reddit::routes())
        .merge(snapchat::routes())
        .merge(pinterest::routes())
        .route("/_sandbox/health", get(|| async { "ok" }))
        .route("/_sandbox/records", get(get_records))
        .route("/_sandbox/stats", get(get_stats))
        .route("/_sandbox/reset", post(post_reset))
        .route("/_sandbox/faults", get(get_faults).post(post_faults))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(shared)
}

/// `GET /_sandbox/records`.
async fn get_records(AxState(shared): AxState<Arc<Shared>>) -> Json<Records> {
    Json(shared.lock().records.clone())
}

/// `GET /_sandbox/stats`: the counters of every platform.
async fn get_stats(AxState(shared): AxState<Arc<Shared>>) -> Json<Stats> {
    Json(Stats::of(&shared.lock().records))
}

/// `POST /_sandbox/reset`.
async fn post_reset(AxState(shared): AxState<Arc<Shared>>) -> Json<serde_json::Value> {
    shared.reset();
    Json(json!({"reset": true}))
}

/// `GET /_sandbox/faults`.
async fn get_faults(AxState(shared): AxState<Arc<Shared>>) -> Json<Faults> {
    Json(shared.lock().faults.clone())
}

/// `POST /_sandbox/faults`: replaces the faults; omitted fields take their defaults.
async fn post_faults(AxState(shared): AxState<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body)
        .map_err(|e| e.to_string())
        .and_then(|f| f.validate().map(|()| f))
    {
        Ok(faults) => {
            shared.set_faults(faults.clone());
            Json(faults).into_response()
        }
        Err(err) => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("invalid faults: {err}")}),
        ),
    }
}

/// Any other path: a plain 404 that says it came from the sandbox.
async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "no such endpoint in the pgcapi platform sandbox"}),
    )
}
