//! Data Manager processing reports: `requestStatus:retrieve` for each accepted request until it is
//! final, counting the events Google could not use per reason.

use super::*;

/// How long after an accepted request its processing result is first asked for, and between asks.
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How many times a request still `PROCESSING` is asked for before it is given up (about a day).
const STATUS_POLL_LIMIT: u32 = 2_880;

/// Polls `requestStatus:retrieve` for accepted requests until they are final, and counts the events
/// Google could not use per reason (`pgcapi_google_processing_errors_total`, and a warning in the log).
pub struct StatusPoller {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) auth: Arc<GoogleAuth>,
    pub(super) http: reqwest::Client,
    /// (request id, when to ask next, asks so far).
    pub(super) queue: std::sync::Mutex<Vec<(String, std::time::Instant, u32)>>,
    pub(super) interval: Duration,
    /// Final reports with unusable events, until dispatch takes them.
    pub(super) reports: std::sync::Mutex<Vec<crate::event::ProcessingReport>>,
}

impl StatusPoller {
    /// The poller of destination `name`, asking `url` with `auth` over `http` every `poll_ms`
    /// (default [`STATUS_POLL_INTERVAL`]); with `poll`, a task polls while the destination lives.
    pub(super) fn start(
        name: &str,
        url: String,
        (auth, http): (Arc<GoogleAuth>, reqwest::Client),
        poll_ms: Option<u64>,
        poll: bool,
    ) -> Arc<StatusPoller> {
        let statuses = Arc::new(StatusPoller {
            name: name.to_string(),
            url,
            auth,
            http,
            queue: std::sync::Mutex::new(Vec::new()),
            interval: poll_ms.map_or(STATUS_POLL_INTERVAL, |ms| {
                Duration::from_millis(ms.max(100))
            }),
            reports: std::sync::Mutex::new(Vec::new()),
        });
        if poll {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // Ends with the destination: it holds only a weak reference.
                let weak = Arc::downgrade(&statuses);
                let interval = statuses.interval;
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(interval).await;
                        let Some(poller) = weak.upgrade() else { break };
                        poller.poll_due().await;
                    }
                });
            }
        }
        statuses
    }

    /// Remembers an accepted request.
    pub(super) fn push(&self, request_id: String) {
        let at = std::time::Instant::now() + self.interval;
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((request_id, at, 0));
    }

    /// Asks for every due request once; returns how many are still waiting.
    pub async fn poll_due(&self) -> usize {
        let now = std::time::Instant::now();
        let due: Vec<(String, u32)> = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let (due, later): (Vec<_>, Vec<_>) = queue.drain(..).partition(|(_, at, _)| *at <= now);
            *queue = later;
            due.into_iter().map(|(id, _, n)| (id, n)).collect()
        };
        for (id, asks) in due {
            if !self.poll_one(&id).await && asks + 1 < STATUS_POLL_LIMIT {
                let at = std::time::Instant::now() + self.interval;
                self.queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id, at, asks + 1));
            }
        }
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Asks for one request; true when it is final (or unknown for good).
    async fn poll_one(&self, request_id: &str) -> bool {
        let Ok(token) = self.auth.access_token().await else {
            return false;
        };
        let response = self
            .http
            .get(&self.url)
            .query(&[("requestId", request_id)])
            .bearer_auth(token.expose())
            .send()
            .await;
        let Ok(response) = response else {
            return false;
        };
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.auth.invalidate().await;
            return false;
        }
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::BAD_REQUEST {
            return true;
        }
        let Ok(body) = response.json::<Value>().await else {
            return false;
        };
        let statuses = body
            .get("requestStatusPerDestination")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if statuses
            .iter()
            .any(|s| s.get("requestStatus").and_then(Value::as_str) == Some("PROCESSING"))
        {
            return false;
        }
        let mut unusable: Vec<(String, i64)> = Vec::new();
        for s in &statuses {
            let counts = s
                .pointer("/errorInfo/errorCounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for c in counts {
                let reason = c.get("reason").and_then(Value::as_str).unwrap_or("UNKNOWN");
                let n = match c.get("recordCount") {
                    Some(Value::String(s)) => s.parse().unwrap_or(0),
                    Some(v) => v.as_u64().unwrap_or(0),
                    None => 0,
                };
                if n > 0 {
                    match unusable.iter_mut().find(|(r, _)| r == reason) {
                        Some((_, sum)) => *sum += n as i64,
                        None => unusable.push((reason.to_string(), n as i64)),
                    }
                    crate::metrics::google_processing_errors(&self.name, reason, n);
                    tracing::warn!(
                        destination = %self.name,
                        request_id,
                        reason,
                        events = n,
                        "Data Manager accepted the request but could not use some events"
                    );
                }
            }
        }
        if !unusable.is_empty() {
            self.reports.lock().unwrap_or_else(|p| p.into_inner()).push(
                crate::event::ProcessingReport {
                    destination: self.name.clone(),
                    request_id: request_id.to_string(),
                    unusable,
                },
            );
        }
        true
    }
}
