//! Fault injection: latency, 500s, 429s and connections dropped before or after processing.
//!
//! Faults are decided per request, before the platform handler looks at the body, so a 500, 429 or
//! dropped connection never records anything. The one exception is `accept_then_drop_ratio`: the
//! request is processed (and recorded) normally, then the connection is cut before the response is
//! written, which simulates a response lost on the way back — the case that makes a client send the
//! same events again.
//!
//! The dice come from one random generator per sandbox. With [`Faults::seed`] set it is seeded from
//! that number each time the faults are set, so the same sequence of requests meets the same sequence
//! of faults (requests sent one at a time get reproducible faults; concurrent requests share the
//! sequence in arrival order).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{random_id, Shared};
use crate::testbed::sandbox::Platform;

/// The faults the sandbox injects into the platforms' conversion endpoints.
///
/// Ratios are probabilities in `[0, 1]`; `1.0` makes a fault certain. Each request meets at most one
/// fault, rolled in the order drop, 500, 429, accept-then-drop, so a ratio is the share of the
/// requests the earlier faults left over. The admin and OAuth endpoints are never faulted, so a test
/// can always read records and fetch tokens.
///
/// Over HTTP (`POST /_sandbox/faults`) the same fields are JSON keys; omitted keys take their
/// defaults, and `latency_ms` may be a number (fixed) or `[min, max]` (uniform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of requests answered with the platform's HTTP 500 error, without processing.
    pub error_500_ratio: f64,
    /// Share of requests answered with HTTP 429 and a `Retry-After` header, without processing.
    pub throttle_429_ratio: f64,
    /// The `Retry-After` value, in seconds, sent with injected 429s.
    pub retry_after_secs: u64,
    /// Share of requests whose connection is closed before any response, without processing.
    pub drop_connection_ratio: f64,
    /// Share of requests that are processed and recorded, then lose their response.
    pub accept_then_drop_ratio: f64,
    /// Extra latency per request, drawn uniformly from `[min, max]` milliseconds (`min == max`: fixed).
    #[serde(deserialize_with = "latency_range")]
    pub latency_ms: (u64, u64),
    /// Seeds the fault dice, for reproducible runs; `None` draws a fresh seed from the OS.
    pub seed: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_500_ratio: 0.0,
            throttle_429_ratio: 0.0,
            retry_after_secs: 1,
            drop_connection_ratio: 0.0,
            accept_then_drop_ratio: 0.0,
            latency_ms: (0, 0),
            seed: None,
        }
    }
}

impl Faults {
    /// No faults at all (the default).
    pub fn none() -> Self {
        Faults::default()
    }

    /// Checks that every ratio is a probability; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, ratio) in [
            ("error_500_ratio", self.error_500_ratio),
            ("throttle_429_ratio", self.throttle_429_ratio),
            ("drop_connection_ratio", self.drop_connection_ratio),
            ("accept_then_drop_ratio", self.accept_then_drop_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        Ok(())
    }

    /// The generator the dice are rolled with: seeded from [`Faults::seed`], else from the OS.
    pub(crate) fn rng(&self) -> StdRng {
        match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        }
    }
}

/// The fault dice: one generator per sandbox, reseeded whenever the faults are set.
pub(crate) struct Dice(pub(crate) StdRng);

impl Default for Dice {
    fn default() -> Self {
        Dice(StdRng::from_os_rng())
    }
}

/// Reads `latency_ms` as a number (fixed latency) or a `[min, max]` pair.
fn latency_range<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(u64, u64), D::Error> {
    /// The two accepted JSON shapes.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Latency {
        /// One number: always this latency.
        Fixed(u64),
        /// `[min, max]`.
        Range(u64, u64),
    }
    Ok(match Latency::deserialize(deserializer)? {
        Latency::Fixed(ms) => (ms, ms),
        Latency::Range(a, b) => (a.min(b), a.max(b)),
    })
}

/// What the fault gate decided for one request.
pub(crate) enum Gate {
    /// Process the request; when `drop_after` is set, cut the connection instead of answering.
    Proceed {
        /// Whether to drop the connection after processing.
        drop_after: bool,
    },
    /// Answer with this response without processing (injected 500/429, or a dropped connection).
    Respond(Response),
}

/// Applies latency and rolls the faults for one request to `platform`'s conversion endpoint.
///
/// Counts every request and every injected fault in the platform's counters.
pub(crate) async fn gate(shared: &Shared, conn: &ConnControl, platform: Platform) -> Gate {
    let (retry_after_secs, latency, decision) = {
        let mut guard = shared.lock();
        let state = &mut *guard;
        state.records.counters_mut(platform).requests += 1;
        let (latency, decision) = roll(&state.faults, &mut state.fault_dice.0);
        if !matches!(decision, Roll::None | Roll::AcceptThenDrop) {
            state.records.counters_mut(platform).faulted += 1;
        }
        (state.faults.retry_after_secs, latency, decision)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match decision {
        Roll::Drop => {
            conn.kill();
            Gate::Respond(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Roll::ServerError => Gate::Respond(server_error(platform)),
        Roll::Throttle => Gate::Respond(throttled(platform, retry_after_secs)),
        Roll::AcceptThenDrop => Gate::Proceed { drop_after: true },
        Roll::None => Gate::Proceed { drop_after: false },
    }
}

/// Finishes a processed request: counts and performs an `accept_then_drop` fault, or answers.
pub(crate) fn finish(
    shared: &Shared,
    conn: &ConnControl,
    platform: Platform,
    drop_after: bool,
    response: Response,
) -> Response {
    if drop_after {
        let mut state = shared.lock();
        let counters = state.records.counters_mut(platform);
        counters.faulted += 1;
        counters.responses_lost += 1;
        drop(state);
        conn.kill();
    }
    response
}

/// The outcome of rolling the dice once per fault kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Roll {
    /// No fault.
    None,
    /// Close the connection before processing.
    Drop,
    /// Answer 500.
    ServerError,
    /// Answer 429.
    Throttle,
    /// Process, then close the connection.
    AcceptThenDrop,
}

/// Rolls one request's latency, then its fault in a fixed order: drop, 500, 429, accept-then-drop.
/// Every die is rolled whatever the earlier ones showed, so one request always uses the same number
/// of draws and a seeded sequence does not shift when a ratio changes from zero.
pub(crate) fn roll(faults: &Faults, rng: &mut StdRng) -> (Duration, Roll) {
    let (a, b) = faults.latency_ms;
    let ms = rng.random_range(a.min(b)..=a.max(b));
    let dice: [f64; 4] = std::array::from_fn(|_| rng.random::<f64>());
    let hit = |die: f64, ratio: f64| ratio > 0.0 && die < ratio;
    let roll = if hit(dice[0], faults.drop_connection_ratio) {
        Roll::Drop
    } else if hit(dice[1], faults.error_500_ratio) {
        Roll::ServerError
    } else if hit(dice[2], faults.throttle_429_ratio) {
        Roll::Throttle
    } else if hit(dice[3], faults.accept_then_drop_ratio) {
        Roll::AcceptThenDrop
    } else {
        Roll::None
    };
    (Duration::from_millis(ms), roll)
}

/// The platform's shape for an internal server error.
fn server_error(platform: Platform) -> Response {
    let body = match platform {
        Platform::Meta => json!({"error": {
            "message": "An unexpected error has occurred. Please retry your request later.",
            "type": "OAuthException", "code": 2, "is_transient": true, "fbtrace_id": random_id(27),
        }}),
        Platform::GoogleAds | Platform::GoogleDataManager => json!({"error": {
            "code": 500, "message": "Internal error encountered.", "status": "INTERNAL",
        }}),
        Platform::Tiktok => json!({
            "code": 50000, "message": "System error", "request_id": random_id(32), "data": {},
        }),
        // Neither publishes an error body; the sandbox's own shape.
        Platform::Outbrain | Platform::Taboola => {
            json!({"error": "internal server error (sandbox)"})
        }
        Platform::MicrosoftAds => json!({
            "TrackingId": random_id(32),
            "Type": "ApiFaultDetail",
            "OperationErrors": [{"Code": 0, "ErrorCode": "InternalError",
                "Message": "An internal error has occurred."}],
        }),
        Platform::Linkedin => crate::testbed::sandbox::linkedin::server_error_body(),
        Platform::Reddit => crate::testbed::sandbox::reddit::server_error_body(),
        Platform::Snapchat => json!({"status": "INVALID", "reason": "Internal server error"}),
        Platform::Pinterest => json!({"code": 0, "message": "Internal server error."}),
    };
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

/// The platform's shape for throttling, with a `Retry-After` header.
///
/// TikTok really answers throttling with HTTP 200 and code 40100; the sandbox uses HTTP 429 for every
/// platform so one retry rule covers all three, and keeps TikTok's code in the body.
fn throttled(platform: Platform, retry_after_secs: u64) -> Response {
    let body = match platform {
        Platform::Meta => json!({"error": {
            "message": "(#4) Application request limit reached",
            "type": "OAuthException", "code": 4, "is_transient": true, "fbtrace_id": random_id(27),
        }}),
        Platform::GoogleAds | Platform::GoogleDataManager => json!({"error": {
            "code": 429, "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }}),
        Platform::Tiktok => json!({
            "code": 40100, "message": "Too many requests. Please retry in some time.",
            "request_id": random_id(32), "data": {},
        }),
        Platform::MicrosoftAds => crate::testbed::sandbox::microsoft_ads::call_rate_exceeded(),
        Platform::Outbrain | Platform::Taboola => json!({"error": "too many requests (sandbox)"}),
        Platform::Linkedin => crate::testbed::sandbox::linkedin::throttled_body(),
        Platform::Reddit => crate::testbed::sandbox::reddit::throttled_body(),
        Platform::Snapchat => json!({"status": "INVALID", "reason": "Too many requests"}),
        Platform::Pinterest => {
            json!({"code": 8, "message": "Too many requests: rate limit exceeded."})
        }
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// A TCP listener whose connections can be cut from inside a request handler.
pub(crate) struct KillableListener {
    /// The bound socket.
    inner: TcpListener,
}

impl KillableListener {
    /// Wraps a bound listener.
    pub(crate) fn new(inner: TcpListener) -> Self {
        KillableListener { inner }
    }
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let killed = Arc::new(AtomicBool::new(false));
                    return (
                        KillableStream {
                            inner: stream,
                            killed,
                        },
                        addr,
                    );
                }
                // Accept errors (e.g. too many open files) are transient; back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that fails every read and write once killed.
pub(crate) struct KillableStream {
    /// The socket.
    inner: TcpStream,
    /// Set by [`ConnControl::kill`]; checked on every IO call.
    killed: Arc<AtomicBool>,
}

impl KillableStream {
    /// Whether the connection was cut.
    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// The error a killed connection reports to hyper, which then closes the socket.
fn killed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by sandbox fault",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Per-connection handle given to handlers (as `ConnectInfo`) to cut their own connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnControl {
    /// Shared with the connection's [`KillableStream`].
    killed: Arc<AtomicBool>,
}

impl ConnControl {
    /// Makes every further read and write on the connection fail, so no response gets out.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnControl {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnControl {
            killed: stream.io().killed.clone(),
        }
    }
}
