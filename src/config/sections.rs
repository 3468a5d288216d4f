//! The plain sections of the config (`[source]`, `[defaults]`, `[capture]`, `[dispatch]`,
//! `[retention]`, `[metrics]`), each with its defaults as `DEFAULT_*` constants next to its fields.
//! A section marked `#[serde(default)]` takes each missing field from its `Default`, built from those
//! constants.

use super::Secret;
use serde::Deserialize;

/// `[metrics]`: where `pgcapi run` serves `/metrics`, `/healthz` and `/readyz` (see [`crate::metrics`]).
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsConfig {
    /// The address to listen on, e.g. `127.0.0.1:9187` (port 0 picks a free port, logged at start).
    pub listen: std::net::SocketAddr,
    /// How often the gauges read from the databases (pending deliveries, slot lag) are refreshed.
    #[serde(default = "MetricsConfig::default_refresh_ms")]
    pub refresh_ms: u64,
}

impl MetricsConfig {
    /// Default of `refresh_ms`.
    pub const DEFAULT_REFRESH_MS: u64 = 5_000;

    fn default_refresh_ms() -> u64 {
        Self::DEFAULT_REFRESH_MS
    }
}

/// `[source]`.
#[derive(Debug, Clone, Deserialize)]
pub struct SourceConfig {
    /// The database holding the watched tables (and, unless `control_url` is set, the control schema).
    pub url: Secret,
    /// Where the control schema lives; defaults to `url`.
    #[serde(default)]
    pub control_url: Option<Secret>,
    /// The publication pgcapi creates and reads.
    #[serde(default = "SourceConfig::default_name")]
    pub publication: String,
    /// The logical replication slot pgcapi creates and reads.
    #[serde(default = "SourceConfig::default_name")]
    pub slot: String,
    /// The control schema.
    #[serde(default = "SourceConfig::default_name")]
    pub schema: String,
}

impl SourceConfig {
    /// Default of `publication`, `slot` and `schema`.
    pub const DEFAULT_NAME: &'static str = "pgcapi";

    fn default_name() -> String {
        Self::DEFAULT_NAME.to_string()
    }

    /// The URL of the control database.
    pub fn control_url(&self) -> &Secret {
        self.control_url.as_ref().unwrap_or(&self.url)
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Defaults {
    /// ISO 3166-1 alpha-2 region for phone numbers without a country.
    pub region: String,
    /// ISO 4217 currency for rows without one.
    pub currency: String,
}

impl Defaults {
    /// Default of `region`.
    pub const DEFAULT_REGION: &'static str = "US";
    /// Default of `currency`.
    pub const DEFAULT_CURRENCY: &'static str = "USD";
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            region: Self::DEFAULT_REGION.to_string(),
            currency: Self::DEFAULT_CURRENCY.to_string(),
        }
    }
}

/// `[capture]`: group commit and flow control.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CaptureConfig {
    /// Most control-table rows written in one control transaction.
    pub group_max_rows: usize,
    /// Longest a finished source transaction waits for others to share its control transaction.
    pub group_max_ms: u64,
    /// How often a standby status update is sent when nothing else prompts one.
    pub status_interval_ms: u64,
}

impl CaptureConfig {
    /// Default of `group_max_rows`.
    pub const DEFAULT_GROUP_MAX_ROWS: usize = 5_000;
    /// Default of `group_max_ms`.
    pub const DEFAULT_GROUP_MAX_MS: u64 = 5;
    /// Default of `status_interval_ms`.
    pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 1_000;
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            group_max_rows: Self::DEFAULT_GROUP_MAX_ROWS,
            group_max_ms: Self::DEFAULT_GROUP_MAX_MS,
            status_interval_ms: Self::DEFAULT_STATUS_INTERVAL_MS,
        }
    }
}

/// `[dispatch]`: retries and leases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DispatchConfig {
    /// How long a claimed row is reserved for the process that claimed it.
    pub lease_secs: u64,
    /// After this age a row that still fails with retryable errors becomes `failed`.
    pub give_up_after_secs: u64,
    /// First retry delay.
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Per-request timeout.
    pub request_timeout_ms: u64,
    /// `status` and `/readyz` call a destination failing once rows have waited this long while every
    /// attempt in that time failed and nothing was sent.
    pub failing_after_secs: u64,
}

impl DispatchConfig {
    /// Default of `lease_secs`.
    pub const DEFAULT_LEASE_SECS: u64 = 60;
    /// Default of `give_up_after_secs`: a day.
    pub const DEFAULT_GIVE_UP_AFTER_SECS: u64 = 24 * 3600;
    /// Default of `retry_initial_ms`.
    pub const DEFAULT_RETRY_INITIAL_MS: u64 = 500;
    /// Default of `retry_max_ms`: five minutes.
    pub const DEFAULT_RETRY_MAX_MS: u64 = 300_000;
    /// Default of `request_timeout_ms`.
    pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
    /// Default of `failing_after_secs`: ten minutes.
    pub const DEFAULT_FAILING_AFTER_SECS: u64 = 600;
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            lease_secs: Self::DEFAULT_LEASE_SECS,
            give_up_after_secs: Self::DEFAULT_GIVE_UP_AFTER_SECS,
            retry_initial_ms: Self::DEFAULT_RETRY_INITIAL_MS,
            retry_max_ms: Self::DEFAULT_RETRY_MAX_MS,
            request_timeout_ms: Self::DEFAULT_REQUEST_TIMEOUT_MS,
            failing_after_secs: Self::DEFAULT_FAILING_AFTER_SECS,
        }
    }
}

/// `[retention]`: how long `sent`, `skipped` and `cancelled` rows stay in the control table (failed rows
/// stay until retried or purged explicitly). See [`crate::ops::retention`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Age after which finished rows are deleted (`30d`, `12h`, ...); `0` or `off` keeps them forever.
    pub keep: String,
    /// Most rows deleted by one statement.
    pub batch_rows: usize,
    /// Pause between two delete statements, so that retention never holds the table busy.
    pub batch_pause_ms: u64,
}

impl RetentionConfig {
    /// Default of `keep`.
    pub const DEFAULT_KEEP: &'static str = "30d";
    /// Default of `batch_rows`.
    pub const DEFAULT_BATCH_ROWS: usize = 1_000;
    /// Default of `batch_pause_ms`.
    pub const DEFAULT_BATCH_PAUSE_MS: u64 = 100;

    /// The retention age, or `None` when retention is off. Validation has checked `keep`.
    pub fn keep(&self) -> Result<Option<std::time::Duration>, String> {
        if self.keep.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        crate::units::parse_duration(&self.keep).map(|d| (!d.is_zero()).then_some(d))
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep: Self::DEFAULT_KEEP.to_string(),
            batch_rows: Self::DEFAULT_BATCH_ROWS,
            batch_pause_ms: Self::DEFAULT_BATCH_PAUSE_MS,
        }
    }
}
