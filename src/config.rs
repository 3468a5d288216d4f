//! The TOML configuration (see `examples/pgcapi.toml`): loading, `${VAR}` expansion and validation.
//!
//! Loading happens in three steps so that every problem is reported at once, each with its key path:
//! the TOML is parsed into a tree, `${VAR}` / `${VAR:-default}` are expanded in its strings, unknown keys
//! are collected, and only then is the tree turned into typed structs (every type error is collected:
//! see `deserialize_all`) and checked for meaning ([`Config::validate`]). Checks that need the database
//! (columns named by templates) live in [`crate::setup`].

use crate::identity::MatchKey;
use crate::platform::Platform;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// A value that must never be printed: tokens, secrets, URLs with passwords.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Anything but a string is refused without the value in the message: a secret written
        /// without quotes (`client_id = 1234`) must not be printed by the type error.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        match Text::deserialize(d)? {
            Text::Text(text) => Ok(Secret(text)),
            Text::Other(_) => Err(serde::de::Error::custom(
                "invalid type: expected a string (the value is a secret and not shown)",
            )),
        }
    }
}

/// One problem found in the configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `rules[0].event_time` or `destinations.meta.access_token`.
    pub path: String,
    /// What is wrong, never including a secret value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (line and column included).
        message: String,
    },
    /// The file is valid TOML but its content has problems; all of them are listed.
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// The source database, publication and slot.
    pub source: SourceConfig,
    /// Defaults for rows that carry no region or currency.
    #[serde(default)]
    pub defaults: Defaults,
    /// Capture tuning.
    #[serde(default)]
    pub capture: CaptureConfig,
    /// Dispatch tuning.
    #[serde(default)]
    pub dispatch: DispatchConfig,
    /// Destinations by name.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// Rules, in order.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The metrics and health endpoints of `pgcapi run`; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// How long finished control-table rows are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
}

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
    fn default_refresh_ms() -> u64 {
        5_000
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
    #[serde(default = "SourceConfig::default_publication")]
    pub publication: String,
    /// The logical replication slot pgcapi creates and reads.
    #[serde(default = "SourceConfig::default_slot")]
    pub slot: String,
    /// The control schema.
    #[serde(default = "SourceConfig::default_schema")]
    pub schema: String,
}

impl SourceConfig {
    fn default_publication() -> String {
        "pgcapi".to_string()
    }
    fn default_slot() -> String {
        "pgcapi".to_string()
    }
    fn default_schema() -> String {
        "pgcapi".to_string()
    }

    /// The URL of the control database.
    pub fn control_url(&self) -> &Secret {
        self.control_url.as_ref().unwrap_or(&self.url)
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
pub struct Defaults {
    /// ISO 3166-1 alpha-2 region for phone numbers without a country.
    #[serde(default = "Defaults::default_region")]
    pub region: String,
    /// ISO 4217 currency for rows without one.
    #[serde(default = "Defaults::default_currency")]
    pub currency: String,
}

impl Defaults {
    fn default_region() -> String {
        "US".to_string()
    }
    fn default_currency() -> String {
        "USD".to_string()
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            region: Self::default_region(),
            currency: Self::default_currency(),
        }
    }
}

/// `[capture]`: group commit and flow control.
#[derive(Debug, Clone, Deserialize)]
pub struct CaptureConfig {
    /// Most control-table rows written in one control transaction.
    #[serde(default = "CaptureConfig::default_group_max_rows")]
    pub group_max_rows: usize,
    /// Longest a finished source transaction waits for others to share its control transaction.
    #[serde(default = "CaptureConfig::default_group_max_ms")]
    pub group_max_ms: u64,
    /// How often a standby status update is sent when nothing else prompts one.
    #[serde(default = "CaptureConfig::default_status_interval_ms")]
    pub status_interval_ms: u64,
}

impl CaptureConfig {
    fn default_group_max_rows() -> usize {
        5_000
    }
    fn default_group_max_ms() -> u64 {
        5
    }
    fn default_status_interval_ms() -> u64 {
        1_000
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            group_max_rows: Self::default_group_max_rows(),
            group_max_ms: Self::default_group_max_ms(),
            status_interval_ms: Self::default_status_interval_ms(),
        }
    }
}

/// `[dispatch]`: retries and leases.
#[derive(Debug, Clone, Deserialize)]
pub struct DispatchConfig {
    /// How long a claimed row is reserved for the process that claimed it.
    #[serde(default = "DispatchConfig::default_lease_secs")]
    pub lease_secs: u64,
    /// After this age a row that still fails with retryable errors becomes `failed`.
    #[serde(default = "DispatchConfig::default_give_up_after_secs")]
    pub give_up_after_secs: u64,
    /// First retry delay.
    #[serde(default = "DispatchConfig::default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[serde(default = "DispatchConfig::default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Per-request timeout.
    #[serde(default = "DispatchConfig::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// `status` and `/readyz` call a destination failing once rows have waited this long while every
    /// attempt in that time failed and nothing was sent.
    #[serde(default = "DispatchConfig::default_failing_after_secs")]
    pub failing_after_secs: u64,
}

impl DispatchConfig {
    fn default_lease_secs() -> u64 {
        60
    }
    fn default_give_up_after_secs() -> u64 {
        24 * 3600
    }
    fn default_retry_initial_ms() -> u64 {
        500
    }
    fn default_retry_max_ms() -> u64 {
        300_000
    }
    fn default_request_timeout_ms() -> u64 {
        30_000
    }
    fn default_failing_after_secs() -> u64 {
        600
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            lease_secs: Self::default_lease_secs(),
            give_up_after_secs: Self::default_give_up_after_secs(),
            retry_initial_ms: Self::default_retry_initial_ms(),
            retry_max_ms: Self::default_retry_max_ms(),
            request_timeout_ms: Self::default_request_timeout_ms(),
            failing_after_secs: Self::default_failing_after_secs(),
        }
    }
}

/// `[retention]`: how long `sent`, `skipped` and `cancelled` rows stay in the control table (failed rows
/// stay until retried or purged explicitly). See [`crate::retention`].
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionConfig {
    /// Age after which finished rows are deleted (`30d`, `12h`, ...); `0` or `off` keeps them forever.
    #[serde(default = "RetentionConfig::default_keep")]
    pub keep: String,
    /// Most rows deleted by one statement.
    #[serde(default = "RetentionConfig::default_batch_rows")]
    pub batch_rows: usize,
    /// Pause between two delete statements, so that retention never holds the table busy.
    #[serde(default = "RetentionConfig::default_batch_pause_ms")]
    pub batch_pause_ms: u64,
}

impl RetentionConfig {
    fn default_keep() -> String {
        "30d".to_string()
    }
    fn default_batch_rows() -> usize {
        1_000
    }
    fn default_batch_pause_ms() -> u64 {
        100
    }

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
            keep: Self::default_keep(),
            batch_rows: Self::default_batch_rows(),
            batch_pause_ms: Self::default_batch_pause_ms(),
        }
    }
}

/// `[destinations.NAME]`: one platform account. Which keys are required depends on `platform`.
#[derive(Debug, Clone, Deserialize)]
pub struct DestinationConfig {
    /// `meta`, `google_ads` or `tiktok`.
    pub platform: Platform,
    /// Base URL of the API (the sandbox in tests and the demo).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// API version path segment (`v21.0`, `v21`, ...); each platform has a default.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Meta pixel / dataset id.
    #[serde(default)]
    pub pixel_id: Option<String>,
    /// Meta and TikTok access token.
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// Meta and TikTok test event code: events show in the test tools only.
    #[serde(default)]
    pub test_event_code: Option<String>,
    /// TikTok pixel code (`event_source_id`).
    #[serde(default)]
    pub pixel_code: Option<String>,
    /// Pinterest ad account id.
    #[serde(default)]
    pub ad_account_id: Option<String>,
    /// Snapchat and Pinterest test mode: Snap's `/events/validate`, Pinterest's `?test=true`
    /// (checked and answered, nothing recorded).
    #[serde(default)]
    pub test_mode: bool,
    /// TikTok CRM event set id: the `event_source_id` of CRM events (`action_source = "system_generated"`).
    #[serde(default)]
    pub crm_event_set_id: Option<String>,
    /// Microsoft Advertising account id, sent as `CustomerAccountId`.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Google Ads customer id (digits, no dashes).
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Google Ads manager account id sent as `login-customer-id`.
    #[serde(default)]
    pub login_customer_id: Option<String>,
    /// Google Ads developer token.
    #[serde(default)]
    pub developer_token: Option<Secret>,
    /// Google OAuth client id.
    #[serde(default)]
    pub client_id: Option<Secret>,
    /// Google OAuth client secret.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Google OAuth refresh token.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// Google OAuth token endpoint.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Google `validateOnly`: the platform checks requests without recording conversions.
    #[serde(default)]
    pub validate_only: bool,
    /// Google service account key file (JSON), for the JWT bearer flow; with neither this nor the
    /// OAuth client, Application Default Credentials are used.
    #[serde(default)]
    pub service_account_key: Option<String>,
    /// Data Manager: the Google Ads account that owns the conversion actions.
    #[serde(default)]
    pub operating_account: Option<String>,
    /// Data Manager: the account the credentials log in as (a manager of `operating_account`).
    #[serde(default)]
    pub login_account: Option<String>,
    /// Data Manager: what a full refund becomes (Data Manager itself cannot retract).
    #[serde(default)]
    pub refunds: GoogleRefunds,
    /// Data Manager with `refunds = "retract"`: the Google Ads API host for the retraction.
    #[serde(default)]
    pub ads_endpoint: Option<String>,
    /// Largest batch sent in one request (capped by the platform's limit).
    #[serde(default)]
    pub batch_max_events: Option<usize>,
    /// Data Manager: how often an accepted request's processing result is asked for (default 30 s).
    #[serde(default)]
    pub status_poll_ms: Option<u64>,
}

/// `refunds` of a Data Manager destination: what a full refund (`retracts`) becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoogleRefunds {
    /// A Google Ads API `UploadConversionAdjustments` RETRACTION by order id (the transaction id).
    #[default]
    Retract,
    /// A Data Manager restatement to value 0: the conversion still counts once.
    RestateZero,
    /// Nothing is sent; the refund is recorded `skipped`.
    Skip,
}

impl DestinationConfig {
    /// The keys each platform requires.
    fn required_keys(&self) -> &'static [&'static str] {
        match self.platform {
            Platform::Meta => &["pixel_id", "access_token"],
            // Credentials: the OAuth client, a service account key, or Application Default
            // Credentials (see `google_credentials_problem`).
            Platform::GoogleAds => &["customer_id"],
            Platform::Tiktok => &["pixel_code", "access_token"],
            Platform::GoogleDataManager => &["operating_account"],
            Platform::MicrosoftAds => &[
                "customer_id",
                "account_id",
                "developer_token",
                "client_id",
                "refresh_token",
            ],
            Platform::Snapchat => &["pixel_id", "access_token"],
            Platform::Pinterest => &["ad_account_id", "access_token"],
        }
    }

    /// For Google destinations: a partial OAuth client (some of client id, secret and refresh token).
    fn google_credentials_problem(&self) -> Option<String> {
        if !self.platform.is_google() {
            return None;
        }
        let oauth = [
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("refresh_token", self.refresh_token.is_some()),
        ];
        let set = oauth.iter().filter(|(_, s)| *s).count();
        if set > 0 && set < oauth.len() {
            let missing: Vec<&str> = oauth.iter().filter(|(_, s)| !*s).map(|(k, _)| *k).collect();
            return Some(format!(
                "user OAuth needs client_id, client_secret and refresh_token together (missing {}); \
                 or use service_account_key, or neither for Application Default Credentials",
                missing.join(", ")
            ));
        }
        if set > 0 && self.service_account_key.is_some() {
            return Some(
                "set either the OAuth client (client_id, client_secret, refresh_token) or \
                 service_account_key, not both"
                    .into(),
            );
        }
        None
    }

    fn has_key(&self, key: &str) -> bool {
        match key {
            "pixel_id" => self.pixel_id.is_some(),
            "access_token" => self.access_token.is_some(),
            "pixel_code" => self.pixel_code.is_some(),
            "ad_account_id" => self.ad_account_id.is_some(),
            "customer_id" => self.customer_id.is_some(),
            "operating_account" => self.operating_account.is_some(),
            "account_id" => self.account_id.is_some(),
            "developer_token" => self.developer_token.is_some(),
            "client_id" => self.client_id.is_some(),
            "client_secret" => self.client_secret.is_some(),
            "refresh_token" => self.refresh_token.is_some(),
            _ => false,
        }
    }
}

/// A `when` condition value: one value or a list of accepted values.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WhenValue {
    /// Any of these.
    List(Vec<Scalar>),
    /// Exactly this.
    One(Scalar),
}

impl WhenValue {
    /// The accepted values as text, as they are compared with the column's text form.
    pub fn accepted(&self) -> Vec<String> {
        match self {
            WhenValue::One(s) => vec![s.as_text()],
            WhenValue::List(list) => list.iter().map(Scalar::as_text).collect(),
        }
    }
}

/// A TOML scalar in a `when` condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}

impl Scalar {
    /// The text form compared with the column value's text form.
    pub fn as_text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(t) => t.clone(),
        }
    }
}

/// `[[rules]]`: which row changes become which events.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleConfig {
    /// Unique rule name; part of the control table's natural key.
    pub name: String,
    /// `schema.table` (or `table`, meaning `public.table`).
    pub table: String,
    /// Column conditions on the new row; all must hold.
    #[serde(default)]
    pub when: BTreeMap<String, WhenValue>,
    /// The event name sent to the platforms (`Purchase`, `Lead`, ...).
    #[serde(default)]
    pub event: Option<String>,
    /// Template of the stable event id (`order-{order_number}`).
    #[serde(default)]
    pub event_id: Option<String>,
    /// `{column}` holding the event time; the commit time when absent.
    #[serde(default)]
    pub event_time: Option<String>,
    /// `{column}` holding the value.
    #[serde(default)]
    pub value: Option<String>,
    /// Template (usually `{column}`) of the ISO 4217 currency; `[defaults] currency` when absent or empty.
    #[serde(default)]
    pub currency: Option<String>,
    /// Column holding the consent; no consent column means consent is not checked.
    #[serde(default)]
    pub consent: Option<String>,
    /// `website`, `system_generated`, `physical_store`, ...
    #[serde(default)]
    pub action_source: Option<String>,
    /// Template of the page URL (website events).
    #[serde(default)]
    pub event_source_url: Option<String>,
    /// Template of the purchased items' ids, comma-separated (TikTok `contents[].content_id`).
    #[serde(default)]
    pub content_ids: Option<String>,
    /// Template of the items' type, `product` or `product_group` (TikTok `content_type`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Destination names.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Match keys: key name → column.
    #[serde(default, rename = "match")]
    pub match_keys: BTreeMap<String, String>,
    /// Meta-specific settings.
    #[serde(default)]
    pub meta: MetaRuleConfig,
    /// Google-specific settings.
    #[serde(default)]
    pub google: GoogleRuleConfig,
    /// TikTok-specific settings.
    #[serde(default)]
    pub tiktok: TiktokRuleConfig,
    /// Microsoft Advertising-specific settings.
    #[serde(default)]
    pub microsoft: MicrosoftRuleConfig,
    /// Snapchat-specific settings.
    #[serde(default)]
    pub snapchat: EventRuleConfig,
    /// Pinterest-specific settings.
    #[serde(default)]
    pub pinterest: EventRuleConfig,
    /// The rule whose conversions this rule retracts (refunds).
    #[serde(default)]
    pub retracts: Option<String>,
    /// The rule whose conversions this rule restates with a new value (partial refunds).
    #[serde(default)]
    pub restates: Option<String>,
    /// What a DELETE of a source row does to this rule's conversion of it (conversion rules only).
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// `on_delete` of a conversion rule: what a DELETE of the source row does to its conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Like a refund: a pending conversion is cancelled (or, if it may have reached the platform,
    /// finished first); a sent one is retracted where the platform can, skipped where it cannot.
    #[default]
    Retract,
    /// Deletes change nothing (rows deleted for archiving or retention).
    Ignore,
}

impl RuleConfig {
    /// The rule whose conversion this rule adjusts (retracts or restates), if any.
    pub fn adjusts(&self) -> Option<&str> {
        self.retracts.as_deref().or(self.restates.as_deref())
    }
}

/// `[rules.meta]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetaRuleConfig {
    /// `lead_event_source` of CRM events (the CRM's name).
    #[serde(default)]
    pub lead_event_source: Option<String>,
    /// Overrides the event name for Meta.
    #[serde(default)]
    pub event: Option<String>,
}

/// `[rules.google]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GoogleRuleConfig {
    /// `customers/{cid}/conversionActions/{id}`.
    #[serde(default)]
    pub conversion_action: Option<String>,
}

/// `[rules.tiktok]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TiktokRuleConfig {
    /// The TikTok event name (`CompletePayment`, ...).
    #[serde(default)]
    pub event: Option<String>,
}

/// `[rules.snapchat]` and `[rules.pinterest]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventRuleConfig {
    /// The platform's event name (`PURCHASE`, `checkout`, ...) when the rule's `event` maps to none.
    #[serde(default)]
    pub event: Option<String>,
}

/// `[rules.microsoft]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MicrosoftRuleConfig {
    /// The name of the offline conversion goal (`ConversionName`), exactly as in Microsoft Advertising.
    #[serde(default)]
    pub conversion_name: Option<String>,
}

/// Match-key names accepted in `[rules.match]` besides [`MatchKey`] names: `fbclid` (builds `fbc`) and
/// `click_time` (the click's time, for `fbc` and Google's click window).
pub const EXTRA_MATCH_NAMES: [&str; 2] = ["fbclid", "click_time"];

impl Config {
    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses `text` with variables looked up by `env`; `origin` names the source in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut expanded = BTreeMap::new();
        for (key, value) in tree.iter_mut() {
            expand_value(value, key, env, &mut problems, &mut expanded);
        }
        check_keys(&tree, &mut problems);
        let (config, left_out) = deserialize_all(tree, &expanded, &mut problems);
        if let Some(config) = &config {
            let validated = config.validate();
            problems.extend(validated.into_iter().filter(|p| !left_out.explains(p)));
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems,
            }),
        }
    }

    /// Checks the meaning of a parsed config; returns every problem found.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |path: String, message: String| problems.push(Problem { path, message });
        if self.source.url.expose().trim().is_empty() {
            push("source.url".into(), "must not be empty".into());
        }
        for (key, value) in [
            ("source.publication", &self.source.publication),
            ("source.slot", &self.source.slot),
            ("source.schema", &self.source.schema),
        ] {
            if !is_identifier(value) {
                push(
                    key.into(),
                    format!("{value:?} must be a lowercase SQL identifier (a-z, 0-9, _)"),
                );
            }
        }
        if self
            .defaults
            .region
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .is_err()
        {
            push(
                "defaults.region".into(),
                format!(
                    "{:?} is not an ISO 3166-1 alpha-2 region code",
                    self.defaults.region
                ),
            );
        }
        if !is_currency(&self.defaults.currency) {
            push(
                "defaults.currency".into(),
                format!(
                    "{:?} is not a three-letter ISO 4217 code",
                    self.defaults.currency
                ),
            );
        }
        if self.capture.group_max_rows == 0 {
            push("capture.group_max_rows".into(), "must be at least 1".into());
        }
        if self.metrics.as_ref().is_some_and(|m| m.refresh_ms < 100) {
            push("metrics.refresh_ms".into(), "must be at least 100".into());
        }
        if let Err(e) = self.retention.keep() {
            push("retention.keep".into(), format!("{e} (or \"off\")"));
        }
        if self.retention.batch_rows == 0 {
            push("retention.batch_rows".into(), "must be at least 1".into());
        }
        for (name, dest) in &self.destinations {
            for key in dest.required_keys() {
                if !dest.has_key(key) {
                    push(
                        format!("destinations.{name}.{key}"),
                        format!("is required for platform {}", dest.platform.as_str()),
                    );
                }
            }
            if let Some(problem) = dest.google_credentials_problem() {
                push(format!("destinations.{name}"), problem);
            }
            for (key, url) in [
                ("endpoint", &dest.endpoint),
                ("token_endpoint", &dest.token_endpoint),
                ("ads_endpoint", &dest.ads_endpoint),
            ] {
                if let Some(endpoint) = url {
                    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                        push(
                            format!("destinations.{name}.{key}"),
                            "must start with http:// or https://".into(),
                        );
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = |key: &str| format!("rules[{i}] ({}).{key}", rule.name);
            if !seen.insert(rule.name.as_str()) {
                push(at("name"), "is used by another rule".into());
            }
            if rule.name.trim().is_empty() {
                push(at("name"), "must not be empty".into());
            }
            if rule.name.contains(':') {
                push(
                    at("name"),
                    "must not contain ':' (reserved for the retractions of deleted rows)".into(),
                );
            }
            if rule.when.is_empty() {
                push(
                    at("when"),
                    "is required: a rule without a condition would fire on every change".into(),
                );
            }
            for key in ["event_time", "value"] {
                let field = if key == "event_time" {
                    &rule.event_time
                } else {
                    &rule.value
                };
                if let Some(t) = field {
                    if Template::parse(t)
                        .ok()
                        .is_none_or(|t| t.single_column().is_none())
                    {
                        push(at(key), format!("must be a single {{column}}, got {t:?}"));
                    }
                }
            }
            for (key, field) in [
                ("event_id", &rule.event_id),
                ("currency", &rule.currency),
                ("event_source_url", &rule.event_source_url),
                ("content_ids", &rule.content_ids),
                ("content_type", &rule.content_type),
            ] {
                if let Some(t) = field {
                    if let Err(e) = Template::parse(t) {
                        push(at(key), e);
                    }
                }
            }
            for (key, column) in &rule.match_keys {
                if MatchKey::from_name(key).is_none() && !EXTRA_MATCH_NAMES.contains(&key.as_str())
                {
                    push(
                        format!("{}.{key}", at("match")),
                        "is not a known match key".into(),
                    );
                }
                if column.trim().is_empty() {
                    push(format!("{}.{key}", at("match")), "names no column".into());
                }
            }
            if rule.retracts.is_some() && rule.restates.is_some() {
                push(
                    at("restates"),
                    "a rule retracts or restates, not both".into(),
                );
            }
            if let Some(target) = rule.adjusts() {
                let key = if rule.retracts.is_some() {
                    "retracts"
                } else {
                    "restates"
                };
                match self.rules.iter().find(|r| r.name == target) {
                    None => push(at(key), format!("names no rule ({target:?})")),
                    Some(t) if t.adjusts().is_some() => push(
                        at(key),
                        format!("{target:?} is itself a retraction or restatement rule"),
                    ),
                    Some(_) => {}
                }
                if rule.restates.is_some() && rule.value.is_none() {
                    push(at("value"), "is required for a restatement rule".into());
                }
                if !rule.destinations.is_empty() {
                    push(
                        at("destinations"),
                        "must be left out: an adjustment goes to the adjusted rule's destinations"
                            .into(),
                    );
                }
            } else {
                if rule.event.is_none() {
                    push(at("event"), "is required".into());
                }
                if rule.event_id.is_none() {
                    push(
                        at("event_id"),
                        "is required (the stable id platforms deduplicate on)".into(),
                    );
                }
                if rule.destinations.is_empty() {
                    push(
                        at("destinations"),
                        "must name at least one destination".into(),
                    );
                }
            }
            for (j, dest) in rule.destinations.iter().enumerate() {
                match self.destinations.get(dest) {
                    None => push(
                        format!("{}[{j}]", at("destinations")),
                        format!("names no destination ({dest:?})"),
                    ),
                    Some(d)
                        if d.platform.is_google() && rule.google.conversion_action.is_none() =>
                    {
                        push(
                            at("google.conversion_action"),
                            format!("is required to send to Google destination {dest:?}"),
                        )
                    }
                    Some(d)
                        if d.platform == Platform::Tiktok
                            && rule.action_source.as_deref() == Some("system_generated")
                            && d.crm_event_set_id.is_none() =>
                    {
                        push(
                            format!("destinations.{dest}.crm_event_set_id"),
                            format!(
                                "is required: rule {:?} sends CRM events (action_source = \
                                 \"system_generated\") to TikTok, which takes them in a CRM event set",
                                rule.name
                            ),
                        )
                    }
                    Some(d)
                        if d.platform == Platform::MicrosoftAds
                            && rule
                                .microsoft
                                .conversion_name
                                .as_deref()
                                .is_none_or(|n| n.trim().is_empty()) =>
                    {
                        push(
                            at("microsoft.conversion_name"),
                            format!(
                                "is required to send to Microsoft Advertising destination {dest:?} \
                                 (the offline conversion goal's name)"
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
            if let Some(action) = &rule.google.conversion_action {
                if !is_conversion_action(action) {
                    push(
                        at("google.conversion_action"),
                        "must look like customers/{customer_id}/conversionActions/{id}".into(),
                    );
                }
            }
            if let Some(action) = &rule.google.conversion_action {
                let bare = !action.is_empty() && action.bytes().all(|b| b.is_ascii_digit());
                let google_ads = rule.destinations.iter().any(|d| {
                    self.destinations
                        .get(d)
                        .is_some_and(|c| c.platform == Platform::GoogleAds)
                });
                if bare && google_ads {
                    push(
                        at("google.conversion_action"),
                        "a bare id works for google_data_manager only; google_ads needs \
                         customers/{customer_id}/conversionActions/{id}"
                            .into(),
                    );
                }
            }
        }
        problems
    }

    /// The rule named `name`.
    pub fn rule(&self, name: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// A string with `{column}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Literal text and column references, in order.
    pub parts: Vec<TemplatePart>,
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text copied as is.
    Literal(String),
    /// The value of a column.
    Column(String),
}

impl Template {
    /// Parses `text`; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed '{{' in {text:?}")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty {{}} in {text:?}"));
                    }
                    if !literal.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(TemplatePart::Column(name));
                }
                '}' => return Err(format!("unmatched '}}' in {text:?}")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// The column when the template is exactly one `{column}`.
    pub fn single_column(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [TemplatePart::Column(c)] => Some(c),
            _ => None,
        }
    }

    /// The columns the template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Column(c) => Some(c.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in every string of `value`; `path` is its key path.
///
/// `expanded` receives the path and new text of every string that read a variable, so that an error
/// about such a value can leave the value out (it may come from a secret).
fn expand_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    expanded: &mut BTreeMap<String, String>,
) {
    match value {
        toml::Value::String(s) => match expand(s, env) {
            Ok(text) => {
                if text != *s {
                    expanded.insert(path.to_string(), text.clone());
                }
                *s = text;
            }
            Err(message) => problems.push(Problem {
                path: path.to_string(),
                message,
            }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env, problems, expanded);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_value(item, &format!("{path}.{key}"), env, problems, expanded);
            }
        }
        _ => {}
    }
}

/// The parts of the tree [`deserialize_all`] left out because they did not deserialize.
#[derive(Debug, Default)]
struct LeftOut {
    /// Their key paths, without rule names (`rules[0].value`, `destinations.meta`).
    paths: Vec<String>,
    /// A whole rule or destination was left out: other rules' references to it would be reported
    /// as dangling, so no rule problem is reported until the types are fixed.
    whole_item: bool,
}

impl LeftOut {
    /// Whether a validation problem may only be a consequence of a part left out (a required key
    /// reported missing because its value had the wrong type, ...).
    fn explains(&self, problem: &Problem) -> bool {
        // `rules[0] (order_paid).value` is `rules[0].value` here.
        let path = match problem.path.split_once(" (") {
            Some((rule, rest)) => match rest.split_once(')') {
                Some((_, tail)) => format!("{rule}{tail}"),
                None => problem.path.clone(),
            },
            None => problem.path.clone(),
        };
        let related = |a: &str, b: &str| {
            a == b || (a.starts_with(b) && matches!(a.as_bytes().get(b.len()), Some(b'.' | b'[')))
        };
        // A rule's keys depend on each other (without `retracts` it needs an `event`): a key left
        // out of a rule stands for the whole rule.
        let scope = |left: &'_ str| -> String {
            match left
                .strip_prefix("rules[")
                .and_then(|rest| rest.split_once(']'))
            {
                Some((index, _)) => format!("rules[{index}]"),
                None => left.to_string(),
            }
        };
        (self.whole_item && path.starts_with("rules"))
            || self
                .paths
                .iter()
                .map(|left| scope(left))
                .any(|left| related(&path, &left) || related(&left, &path))
    }
}

/// Turns the expanded tree into a [`Config`], reporting every type error with its key path.
///
/// Serde stops at the first error, so the failing key is taken out of the tree and the rest is
/// deserialized again, until it succeeds; each error is reported once, with its value left out when it
/// came from a variable. A key that is required cannot be taken out alone: then its table goes (a
/// destination, a rule), or, at the top, nothing is built (`None`). The config built without the failing
/// parts is returned so that the rest can still be validated.
fn deserialize_all(
    mut tree: toml::Table,
    expanded: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> (Option<Config>, LeftOut) {
    use serde_path_to_error::Segment;
    let rule_names: Vec<Option<String>> = match tree.get("rules") {
        Some(toml::Value::Array(rules)) => rules
            .iter()
            .map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    // Where each rule still in the tree was in the file, as rules are taken out of the array.
    let mut rule_index: Vec<usize> = (0..rule_names.len()).collect();
    let mut left_out = LeftOut::default();
    // Each round takes one key out, so the rounds are bounded by the keys in the file.
    loop {
        let error =
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(tree.clone())) {
                Ok(config) => return (Some(config), left_out),
                Err(error) => error,
            };
        let mut segments: Vec<Segment> = error.path().iter().cloned().collect();
        // Seq indexes of the top-level rules array are positions in the file again.
        if let [Segment::Map { key }, Segment::Seq { index }, ..] = segments.as_mut_slice() {
            if key == "rules" {
                *index = rule_index.get(*index).copied().unwrap_or(*index);
            }
        }
        let path = path_text(&segments, None);
        let message = error.inner().message().trim().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        if let Some(field) = missing {
            // Reported as "source.url: is required", unless `source.url` was just taken out for its
            // type: then it is no news.
            let child = if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            if !left_out.paths.contains(&child) {
                let mut at = path_text(&segments, Some(&rule_names));
                at.push_str(&format!("{}{field}", if at.is_empty() { "" } else { "." }));
                problems.push(Problem {
                    path: at,
                    message: "is required".to_string(),
                });
            }
        } else if problems.iter().any(|p| p.path == path) {
            // Already reported: a `${VAR}` that could not be expanded is no string of digits either.
        } else {
            let message = match expanded.get(&path) {
                Some(value) if !value.is_empty() => {
                    let message =
                        message.replace(&format!("{value:?}"), "(value of a variable, not shown)");
                    // Any other quoting of it too, unless it is too short to be a secret.
                    if value.len() >= 4 {
                        message.replace(value.as_str(), "***")
                    } else {
                        message
                    }
                }
                _ => message,
            };
            let at = path_text(&segments, Some(&rule_names));
            problems.push(Problem {
                path: if at.is_empty() {
                    "(top level)".to_string()
                } else {
                    at
                },
                message,
            });
        }
        // What to take out: the key, except that a list element takes its whole list with it (its
        // siblings' indexes would shift), and a missing field takes out the table that lacks it.
        let mut target = segments;
        if let Some(last) = target
            .iter()
            .rposition(|s| matches!(s, Segment::Seq { .. }))
        {
            let is_rule = last == 1 && matches!(&target[0], Segment::Map { key } if key == "rules");
            if !is_rule {
                target.truncate(last);
            } else if target.len() == 2 {
                left_out.whole_item = true;
            }
        }
        if matches!(target.first(), Some(Segment::Map { key }) if key == "destinations")
            && target.len() <= 2
        {
            left_out.whole_item = true;
        }
        if target.is_empty() || !take_out(&mut tree, &target, &mut rule_index) {
            return (None, left_out);
        }
        left_out.paths.push(path_text(&target, None));
    }
}

/// Removes the value at `path` from the tree; `false` when there is no such value.
fn take_out(
    tree: &mut toml::Table,
    path: &[serde_path_to_error::Segment],
    rule_index: &mut Vec<usize>,
) -> bool {
    use serde_path_to_error::Segment;
    let Some((Segment::Map { key: first }, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return tree.remove(first).is_some();
    }
    let mut node = match tree.get_mut(first) {
        Some(node) => node,
        None => return false,
    };
    for (i, segment) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        match (segment, node) {
            (Segment::Map { key }, toml::Value::Table(table)) if last => {
                return table.remove(key).is_some();
            }
            (Segment::Seq { index }, toml::Value::Array(items)) if last => {
                // Only rules are taken out one by one (see `deserialize_all`).
                let file_index = rule_index.iter().position(|at| at == index);
                return match file_index {
                    Some(position) if position < items.len() => {
                        items.remove(position);
                        rule_index.remove(position);
                        true
                    }
                    _ => false,
                };
            }
            (Segment::Map { key }, toml::Value::Table(table)) => match table.get_mut(key) {
                Some(child) => node = child,
                None => return false,
            },
            (Segment::Seq { index }, toml::Value::Array(items)) => {
                let position = if i == 0 && first == "rules" {
                    rule_index.iter().position(|at| at == index)
                } else {
                    Some(*index)
                };
                match position.and_then(|p| items.get_mut(p)) {
                    Some(child) => node = child,
                    None => return false,
                }
            }
            _ => return false,
        }
    }
    false
}

/// A key path as text: `destinations.meta.batch_max_events`, `rules[0].match`; with `rule_names`,
/// rules are written as [`Config::validate`] writes them: `rules[0] (order_paid).match`.
fn path_text(
    path: &[serde_path_to_error::Segment],
    rule_names: Option<&[Option<String>]>,
) -> String {
    use serde_path_to_error::Segment;
    let mut text = String::new();
    for (i, segment) in path.iter().enumerate() {
        match segment {
            Segment::Seq { index } => {
                text.push_str(&format!("[{index}]"));
                let in_rules = i == 1 && text.starts_with("rules[");
                if let Some(Some(name)) = rule_names
                    .filter(|_| in_rules)
                    .and_then(|names| names.get(*index))
                {
                    text.push_str(&format!(" ({name})"));
                }
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Unknown => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push('?');
            }
        }
    }
    text
}

/// Expands the variables of one string. An unset variable without default is an error naming it.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed \"${\" in value".to_string())?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in ${{...}}"));
        }
        // As in a shell, `:-` takes the default when the variable is unset or empty.
        match (env(name), default) {
            (Some(value), _) if !value.is_empty() => out.push_str(&value),
            (_, Some(default)) => out.push_str(default),
            (Some(_), None) => {
                return Err(format!(
                    "environment variable {name} is set but empty (use ${{{name}:-default}} for a default)"
                ))
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The keys each table may hold; anything else is reported as unknown.
fn check_keys(tree: &toml::Table, problems: &mut Vec<Problem>) {
    const TOP: &[&str] = &[
        "source",
        "defaults",
        "capture",
        "dispatch",
        "destinations",
        "rules",
        "metrics",
        "retention",
    ];
    const SOURCE: &[&str] = &["url", "control_url", "publication", "slot", "schema"];
    const DEFAULTS: &[&str] = &["region", "currency"];
    const CAPTURE: &[&str] = &["group_max_rows", "group_max_ms", "status_interval_ms"];
    const DISPATCH: &[&str] = &[
        "lease_secs",
        "give_up_after_secs",
        "retry_initial_ms",
        "retry_max_ms",
        "request_timeout_ms",
        "failing_after_secs",
    ];
    const RETENTION: &[&str] = &["keep", "batch_rows", "batch_pause_ms"];
    const DESTINATION_COMMON: &[&str] =
        &["platform", "endpoint", "api_version", "batch_max_events"];
    const META: &[&str] = &["pixel_id", "access_token", "test_event_code"];
    const GOOGLE: &[&str] = &[
        "customer_id",
        "login_customer_id",
        "developer_token",
        "client_id",
        "client_secret",
        "refresh_token",
        "service_account_key",
        "token_endpoint",
        "validate_only",
    ];
    const TIKTOK: &[&str] = &[
        "pixel_code",
        "access_token",
        "test_event_code",
        "crm_event_set_id",
    ];
    const GOOGLE_DATA_MANAGER: &[&str] = &[
        "status_poll_ms",
        "operating_account",
        "login_account",
        "client_id",
        "client_secret",
        "refresh_token",
        "service_account_key",
        "token_endpoint",
        "validate_only",
        "refunds",
        "ads_endpoint",
        "developer_token",
    ];
    const MICROSOFT: &[&str] = &[
        "customer_id",
        "account_id",
        "developer_token",
        "client_id",
        "client_secret",
        "refresh_token",
        "token_endpoint",
    ];
    const RULE: &[&str] = &[
        "name",
        "table",
        "when",
        "event",
        "event_id",
        "event_time",
        "value",
        "currency",
        "consent",
        "action_source",
        "event_source_url",
        "content_ids",
        "content_type",
        "destinations",
        "match",
        "meta",
        "google",
        "tiktok",
        "microsoft",
        "snapchat",
        "pinterest",
        "retracts",
        "restates",
    ];
    fn check(table: Option<&toml::Value>, path: &str, allowed: &[&str], out: &mut Vec<String>) {
        if let Some(toml::Value::Table(t)) = table {
            for key in t.keys() {
                if !allowed.contains(&key.as_str()) {
                    out.push(format!("{path}.{key}"));
                }
            }
        }
    }
    let mut unknown: Vec<String> = Vec::new();
    for key in tree.keys() {
        if !TOP.contains(&key.as_str()) {
            unknown.push(key.clone());
        }
    }
    check(tree.get("source"), "source", SOURCE, &mut unknown);
    check(tree.get("defaults"), "defaults", DEFAULTS, &mut unknown);
    check(tree.get("capture"), "capture", CAPTURE, &mut unknown);
    check(tree.get("dispatch"), "dispatch", DISPATCH, &mut unknown);
    check(
        tree.get("metrics"),
        "metrics",
        &["listen", "refresh_ms"],
        &mut unknown,
    );
    check(tree.get("retention"), "retention", RETENTION, &mut unknown);
    if let Some(toml::Value::Table(dests)) = tree.get("destinations") {
        for (name, dest) in dests {
            let platform = dest
                .get("platform")
                .and_then(|p| p.as_str())
                .and_then(Platform::from_name);
            let specific: &[&str] = match platform {
                Some(Platform::Meta) => META,
                Some(Platform::GoogleAds) => GOOGLE,
                Some(Platform::Tiktok) => TIKTOK,
                Some(Platform::GoogleDataManager) => GOOGLE_DATA_MANAGER,
                Some(Platform::MicrosoftAds) => MICROSOFT,
                Some(Platform::Snapchat) => &["pixel_id", "access_token", "test_mode"],
                Some(Platform::Pinterest) => &["ad_account_id", "access_token", "test_mode"],
                None => continue, // reported when the platform is parsed
            };
            let allowed: Vec<&str> = DESTINATION_COMMON.iter().chain(specific).copied().collect();
            check(
                Some(dest),
                &format!("destinations.{name}"),
                &allowed,
                &mut unknown,
            );
        }
    }
    if let Some(toml::Value::Array(rules)) = tree.get("rules") {
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            check(Some(rule), &path, RULE, &mut unknown);
            check(
                rule.get("meta"),
                &format!("{path}.meta"),
                &["lead_event_source", "event"],
                &mut unknown,
            );
            check(
                rule.get("google"),
                &format!("{path}.google"),
                &["conversion_action"],
                &mut unknown,
            );
            check(
                rule.get("tiktok"),
                &format!("{path}.tiktok"),
                &["event"],
                &mut unknown,
            );
            check(
                rule.get("microsoft"),
                &format!("{path}.microsoft"),
                &["conversion_name"],
                &mut unknown,
            );
            for platform in ["snapchat", "pinterest"] {
                let path = format!("{path}.{platform}");
                check(rule.get(platform), &path, &["event"], &mut unknown);
            }
        }
    }
    problems.extend(unknown.into_iter().map(|path| Problem {
        path,
        message: "unknown key".to_string(),
    }));
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.chars().all(|c| c.is_ascii_alphabetic())
}

/// A conversion action resource name, or a bare conversion action id (Data Manager's product
/// destination id; `google_ads` destinations are checked for the resource name separately).
fn is_conversion_action(s: &str) -> bool {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let parts: Vec<&str> = s.split('/').collect();
    matches!(parts.as_slice(), ["customers", cid, "conversionActions", id]
        if !cid.is_empty() && cid.chars().all(|c| c.is_ascii_digit())
        && !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
}

/// Splits `schema.table` (default schema `public`).
pub fn split_table(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("public", table))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three-platform config (Google through the Google Ads API), which these tests were written
    /// against; [`THE_CONTRACT`] is the contract as it stands.
    const CONTRACT: &str = include_str!("../examples/pgcapi-google-ads-api.toml");
    const THE_CONTRACT: &str = include_str!("../examples/pgcapi.toml");

    fn env_all(name: &str) -> Option<String> {
        match name {
            "PGCAPI_DATABASE_URL" => Some("postgres://u:pw@127.0.0.1/shop".into()),
            "META_ENDPOINT"
            | "GOOGLE_ADS_ENDPOINT"
            | "GOOGLE_DM_ENDPOINT"
            | "TIKTOK_ENDPOINT"
            | "GOOGLE_OAUTH_ENDPOINT"
            | "MSADS_ENDPOINT"
            | "MSADS_OAUTH_ENDPOINT" => None,
            other => Some(format!("secret-{other}")),
        }
    }

    #[test]
    fn a_metrics_section_is_optional_and_checked() {
        let none = Config::from_toml(CONTRACT, "pgcapi.toml", &env_all).unwrap();
        assert!(none.metrics.is_none());
        let text = format!("{CONTRACT}\n[metrics]\nlisten = \"127.0.0.1:9187\"\n");
        let on = Config::from_toml(&text, "pgcapi.toml", &env_all).unwrap();
        let metrics = on.metrics.unwrap();
        assert_eq!(metrics.listen.to_string(), "127.0.0.1:9187");
        assert_eq!(metrics.refresh_ms, 5_000);
        let bad = format!(
            "{CONTRACT}\n[metrics]\nlisten = \"127.0.0.1:9187\"\nrefresh_ms = 5\nport = 1\n"
        );
        let err = Config::from_toml(&bad, "pgcapi.toml", &env_all)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metrics.refresh_ms: must be at least 100"),
            "{err}"
        );
        assert!(err.contains("metrics.port"), "{err}");
    }

    #[test]
    fn the_contract_config_is_accepted_as_is() {
        let config = Config::from_toml(CONTRACT, "pgcapi.toml", &env_all).unwrap();
        assert_eq!(config.rules.len(), 3);
        assert_eq!(config.source.slot, "pgcapi");
        let meta = &config.destinations["meta"];
        assert_eq!(meta.platform, Platform::Meta);
        assert_eq!(meta.endpoint.as_deref(), Some("https://graph.facebook.com"));
        assert_eq!(
            meta.access_token.as_ref().unwrap().expose(),
            "secret-META_ACCESS_TOKEN"
        );
        let deal = config.rule("deal_won").unwrap();
        assert_eq!(deal.match_keys["lead_id"], "meta_lead_id");
        assert_eq!(deal.meta.lead_event_source.as_deref(), Some("pgcapi"));
        assert_eq!(
            config.rule("order_refunded").unwrap().retracts.as_deref(),
            Some("order_paid")
        );
        assert_eq!(
            config.rule("order_paid").unwrap().tiktok.event.as_deref(),
            Some("CompletePayment")
        );
    }

    #[test]
    fn the_contract_with_data_manager_and_microsoft_is_accepted_as_is() {
        let config = Config::from_toml(THE_CONTRACT, "pgcapi.toml", &env_all).unwrap();
        assert_eq!(config.rules.len(), 4);
        let google = &config.destinations["google"];
        assert_eq!(google.platform, Platform::GoogleDataManager);
        assert_eq!(google.operating_account.as_deref(), Some("1234567890"));
        assert_eq!(
            google.endpoint.as_deref(),
            Some("https://datamanager.googleapis.com")
        );
        let microsoft = &config.destinations["microsoft"];
        assert_eq!(microsoft.platform, Platform::MicrosoftAds);
        assert_eq!(
            microsoft.token_endpoint.as_deref(),
            Some("https://login.microsoftonline.com/common/oauth2/v2.0/token")
        );
        let paid = config.rule("order_paid").unwrap();
        assert_eq!(paid.match_keys["msclkid"], "msclkid");
        assert_eq!(paid.destinations.len(), 4);
        assert_eq!(
            config
                .rule("order_partially_refunded")
                .unwrap()
                .restates
                .as_deref(),
            Some("order_paid")
        );
    }

    #[test]
    fn an_unset_variable_without_default_names_the_variable_and_the_key() {
        let env = |name: &str| {
            (name != "META_ACCESS_TOKEN")
                .then(|| env_all(name))
                .flatten()
        };
        let err = Config::from_toml(CONTRACT, "pgcapi.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("destinations.meta.access_token"), "{err}");
        assert!(err.contains("META_ACCESS_TOKEN is not set"), "{err}");
    }

    #[test]
    fn secrets_never_appear_in_debug_output_or_errors() {
        let config = Config::from_toml(CONTRACT, "pgcapi.toml", &env_all).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret-"), "{debug}");
        assert!(!debug.contains(":pw@"), "{debug}");
        let broken = CONTRACT.replace("pixel_id = \"1234567890\"", "pixel_idd = \"1\"");
        let err = Config::from_toml(&broken, "x", &env_all)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret-"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key_path() {
        let broken = CONTRACT
            .replace("retracts = \"order_paid\"", "retracts = \"order_payed\"")
            .replace(
                "event_time = \"{paid_at}\"",
                "event_time = \"at {paid_at}\"",
            )
            .replace(
                "value = \"{deal_value}\"",
                "value = \"{deal_value}{currency}\"",
            )
            .replace(
                "destinations = [\"meta\", \"google\"]",
                "destinations = [\"meta\", \"bing\"]",
            )
            .replace("slot = \"pgcapi\"", "slot = \"pgcapi\"\nslots = 2")
            .replace("email = \"email\"\nphone", "emial = \"email\"\nphone");
        let err = Config::from_toml(&broken, "x.toml", &env_all).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "source.slots",
            "rules[1] (order_refunded).retracts",
            "rules[0] (order_paid).event_time",
            "rules[2] (deal_won).value",
            "rules[2] (deal_won).destinations[1]",
            "rules[0] (order_paid).match.emial",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    /// The problems of a config text that must not load.
    fn problems_of(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        match Config::from_toml(text, "x.toml", env) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(other) => panic!("expected Invalid, got {other}"),
            Ok(_) => panic!("expected Invalid, got a config"),
        }
    }

    #[test]
    fn microsoft_and_tiktok_crm_keys_are_checked() {
        // A Microsoft destination with its keys, a rule sending to it without a goal name, and a CRM
        // rule sending to TikTok without a CRM event set.
        let text = CONTRACT.replace(
            "destinations = [\"meta\", \"google\"]",
            "destinations = [\"meta\", \"google\", \"tiktok\", \"microsoft\"]",
        ) + r#"
[destinations.microsoft]
platform = "microsoft_ads"
customer_id = "1234567"
account_id = "7654321"
developer_token = "d"
client_id = "c"
refresh_token = "r"
"#;
        let problems = problems_of(&text, &env_all);
        assert!(
            problems.iter().any(
                |p| p.starts_with("rules[2] (deal_won).microsoft.conversion_name: is required")
            ),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("destinations.tiktok.crm_event_set_id: is required")),
            "{problems:?}"
        );
        let fixed = text
            .replace(
                "[rules.meta]\nlead_event_source",
                "[rules.microsoft]\nconversion_name = \"Won deal\"\n\n[rules.meta]\nlead_event_source",
            )
            .replace(
                "pixel_code = \"CTEST12345\"",
                "pixel_code = \"CTEST12345\"\ncrm_event_set_id = \"7300000000000000001\"",
            );
        let config =
            Config::from_toml(&fixed, "x.toml", &env_all).unwrap_or_else(|e| panic!("{e}"));
        let ms = &config.destinations["microsoft"];
        assert_eq!(ms.platform, Platform::MicrosoftAds);
        assert_eq!(ms.account_id.as_deref(), Some("7654321"));
        assert_eq!(
            config
                .rule("deal_won")
                .unwrap()
                .microsoft
                .conversion_name
                .as_deref(),
            Some("Won deal")
        );
    }

    #[test]
    fn a_type_error_carries_its_key_path() {
        let text = CONTRACT.replace(
            "pixel_id = \"1234567890\"",
            "pixel_id = \"1234567890\"\nbatch_max_events = \"x\"",
        );
        assert_eq!(
            problems_of(&text, &env_all),
            ["destinations.meta.batch_max_events: invalid type: string \"x\", expected usize"]
        );
    }

    #[test]
    fn every_type_error_is_reported_at_once_with_the_validation_problems() {
        let text = CONTRACT
            .replace(
                "pixel_id = \"1234567890\"",
                "pixel_id = \"1234567890\"\nbatch_max_events = \"x\"",
            )
            .replace(
                "customer_id = \"1234567890\"",
                "customer_id = \"1234567890\"\nvalidate_only = 1",
            )
            .replace("pixel_code = \"CTEST12345\"", "pixel_code = 12345")
            .replace("slot = \"pgcapi\"", "slot = \"pgcapi\"\nslots = 2")
            .replace("currency = \"USD\"", "currency = \"EURO\"")
            .replace("retracts = \"order_paid\"", "retracts = [\"order_paid\"]")
            .replace(
                "destinations = [\"meta\", \"google\"]",
                "destinations = [\"meta\", 7]",
            )
            + "\n[dispatch]\nlease_secs = \"long\"\n";
        let problems = problems_of(&text, &env_all);
        for expected in [
            "destinations.meta.batch_max_events: invalid type: string \"x\", expected usize",
            "destinations.google.validate_only: invalid type: integer `1`, expected a boolean",
            "destinations.tiktok.pixel_code: invalid type: integer `12345`, expected a string",
            "dispatch.lease_secs: invalid type: string \"long\", expected u64",
            "rules[1] (order_refunded).retracts: invalid type: sequence, expected a string",
            "rules[2] (deal_won).destinations[1]: invalid type: integer `7`, expected a string",
            // Unknown keys and validation problems come in the same report.
            "source.slots: unknown key",
            "defaults.currency: \"EURO\" is not a three-letter ISO 4217 code",
        ] {
            assert!(
                problems.contains(&expected.to_string()),
                "missing {expected:?} in {problems:#?}"
            );
        }
        // Nothing reported twice, and nothing that only follows from a key left out for its type
        // (tiktok's pixel_code "is required", deal_won's destinations "must name at least one").
        assert_eq!(problems.len(), 8, "{problems:#?}");
    }

    #[test]
    fn a_rule_missing_a_required_key_is_reported_and_the_rules_after_it_keep_their_index() {
        let text = CONTRACT
            .replace(
                "table = \"public.orders\"\nwhen = { status = \"refunded\" }",
                "when = { status = \"refunded\" }",
            )
            .replace("event_id = \"deal-{id}\"", "event_id = 5");
        let problems = problems_of(&text, &env_all);
        assert_eq!(
            problems,
            [
                "rules[1] (order_refunded).table: is required",
                "rules[2] (deal_won).event_id: invalid type: integer `5`, expected a string",
            ]
        );
    }

    #[test]
    fn a_required_key_of_the_wrong_type_is_reported_once() {
        let text = CONTRACT.replace("url = \"${PGCAPI_DATABASE_URL}\"", "url = 5");
        assert_eq!(
            problems_of(&text, &env_all),
            ["source.url: invalid type: expected a string (the value is a secret and not shown)"]
        );
        let text = CONTRACT.replace("[source]", "[sourc]");
        assert_eq!(
            problems_of(&text, &env_all),
            ["sourc: unknown key", "source: is required"]
        );
        // Without its destinations, the rules' references are not reported as dangling.
        let cut = CONTRACT.find("[destinations.meta]").unwrap();
        let rules = CONTRACT.find("[[rules]]").unwrap();
        let text = format!(
            "destinations = 5\n{}{}",
            &CONTRACT[..cut],
            &CONTRACT[rules..]
        );
        assert_eq!(
            problems_of(&text, &env_all),
            ["destinations: invalid type: integer `5`, expected a map"]
        );
        let text = CONTRACT.replace("platform = \"tiktok\"", "platform = \"tiktak\"");
        let problems = problems_of(&text, &env_all);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with("destinations.tiktok.platform: unknown variant `tiktak`"),
            "{problems:#?}"
        );
    }

    #[test]
    fn an_unset_variable_in_a_typed_key_is_reported_once() {
        let text = CONTRACT.replace(
            "pixel_id = \"1234567890\"",
            "pixel_id = \"1234567890\"\nbatch_max_events = \"${META_BATCH}\"",
        );
        let env = |name: &str| (name != "META_BATCH").then(|| env_all(name)).flatten();
        assert_eq!(
            problems_of(&text, &env),
            ["destinations.meta.batch_max_events: environment variable META_BATCH is not set (use ${META_BATCH:-default} for a default)"]
        );
    }

    #[test]
    fn type_errors_never_show_a_secret() {
        // A secret written without quotes.
        let text = CONTRACT.replace(
            "client_id = \"${GOOGLE_ADS_CLIENT_ID}\"",
            "client_id = 987654321",
        );
        let problems = problems_of(&text, &env_all).join("\n");
        assert!(
            problems.contains("destinations.google.client_id: invalid type"),
            "{problems}"
        );
        assert!(!problems.contains("987654321"), "{problems}");
        // A variable (perhaps a secret) expanded into a key of another type.
        let text = CONTRACT.replace(
            "pixel_id = \"1234567890\"",
            "pixel_id = \"1234567890\"\nbatch_max_events = \"${META_ACCESS_TOKEN}\"",
        );
        let problems = problems_of(&text, &env_all).join("\n");
        assert!(
            problems.contains("destinations.meta.batch_max_events: invalid type: string (value of a variable, not shown), expected usize"),
            "{problems}"
        );
        assert!(!problems.contains("secret-"), "{problems}");
    }

    #[test]
    fn an_empty_variable_is_reported_as_empty_and_an_unset_one_as_unset() {
        let env = |name: &str| match name {
            "META_ACCESS_TOKEN" => Some(String::new()),
            "TIKTOK_ACCESS_TOKEN" => None,
            other => env_all(other),
        };
        let problems = problems_of(CONTRACT, &env);
        assert!(
            problems.contains(&"destinations.meta.access_token: environment variable META_ACCESS_TOKEN is set but empty (use ${META_ACCESS_TOKEN:-default} for a default)".to_string()),
            "{problems:#?}"
        );
        assert!(
            problems.contains(&"destinations.tiktok.access_token: environment variable TIKTOK_ACCESS_TOKEN is not set (use ${TIKTOK_ACCESS_TOKEN:-default} for a default)".to_string()),
            "{problems:#?}"
        );
        // `:-` takes the default when the variable is empty, as a shell does.
        let empty = |_: &str| Some(String::new());
        assert_eq!(expand("${A:-d}", &empty).unwrap(), "d");
        assert!(expand("${A}", &empty)
            .unwrap_err()
            .contains("A is set but empty"));
    }

    #[test]
    fn retention_defaults_to_30_days_and_rejects_bad_ages_and_unknown_keys() {
        let config = Config::from_toml(CONTRACT, "pgcapi.toml", &env_all).unwrap();
        assert_eq!(
            config.retention.keep().unwrap(),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        for (keep, expected) in [
            ("\"off\"", None),
            ("\"0\"", None),
            ("\"12h\"", Some(43_200)),
        ] {
            let text = format!("{CONTRACT}\n[retention]\nkeep = {keep}\n");
            let config = Config::from_toml(&text, "x", &env_all).unwrap();
            assert_eq!(
                config.retention.keep().unwrap(),
                expected.map(std::time::Duration::from_secs),
                "{keep}"
            );
        }
        let text = format!("{CONTRACT}\n[retention]\nkeep = \"a month\"\nbatch = 5\n");
        let err = Config::from_toml(&text, "x", &env_all)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retention.keep: \"a month\" is not a duration"),
            "{err}"
        );
        assert!(err.contains("retention.batch: unknown key"), "{err}");
    }

    #[test]
    fn variables_expand_with_defaults_and_literals_around_them() {
        let env = |name: &str| (name == "A").then(|| "x".to_string());
        assert_eq!(expand("a-${A}-b", &env).unwrap(), "a-x-b");
        assert_eq!(expand("${B:-http://d}", &env).unwrap(), "http://d");
        assert_eq!(expand("${A:-d}", &env).unwrap(), "x");
        assert!(expand("${B}", &env).unwrap_err().contains("B is not set"));
        assert!(expand("${A", &env).is_err());
    }

    #[test]
    fn templates_parse_columns_and_literals() {
        let t = Template::parse("order-{order_number}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                TemplatePart::Literal("order-".into()),
                TemplatePart::Column("order_number".into())
            ]
        );
        assert_eq!(
            Template::parse("{paid_at}").unwrap().single_column(),
            Some("paid_at")
        );
        assert_eq!(Template::parse("x{a}").unwrap().single_column(), None);
        assert!(Template::parse("{a").is_err());
        assert!(Template::parse("{}").is_err());
        assert_eq!(
            Template::parse("{{x}}").unwrap().parts,
            vec![TemplatePart::Literal("{x}".into())]
        );
    }

    /// The contract with Google through Data Manager (tests/data copy, without Microsoft).
    const DM_CONTRACT: &str = include_str!("../tests/data/google_contract.toml");

    fn dm_env(name: &str) -> Option<String> {
        match name {
            "GOOGLE_DM_ENDPOINT" => None,
            other => env_all(other),
        }
    }

    #[test]
    fn the_data_manager_contract_is_accepted_with_its_refunds_setting() {
        let config = Config::from_toml(DM_CONTRACT, "pgcapi.toml", &dm_env).unwrap();
        let google = &config.destinations["google"];
        assert_eq!(google.platform, Platform::GoogleDataManager);
        assert_eq!(google.operating_account.as_deref(), Some("1234567890"));
        assert_eq!(google.refunds, GoogleRefunds::Retract);
        assert!(google.ads_endpoint.is_some());
        // A bare conversion action id is a Data Manager product destination id
        let bare = DM_CONTRACT.replace(
            "conversion_action = \"customers/1234567890/conversionActions/1002\"",
            "conversion_action = \"1002\"",
        );
        assert!(Config::from_toml(&bare, "pgcapi.toml", &dm_env).is_ok());
        let unknown = DM_CONTRACT.replace("refunds = \"retract\"", "refunds = \"undo\"");
        assert!(Config::from_toml(&unknown, "pgcapi.toml", &dm_env).is_err());
    }

    #[test]
    fn google_credentials_are_one_kind_or_none_and_bare_ids_need_data_manager() {
        // A partial OAuth client is named
        let partial = DM_CONTRACT.replace("client_secret = \"${GOOGLE_ADS_CLIENT_SECRET}\"\n", "");
        let err = Config::from_toml(&partial, "pgcapi.toml", &dm_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("destinations.google") && err.contains("missing client_secret"),
            "{err}"
        );
        // No credentials at all: Application Default Credentials, accepted
        let adc = DM_CONTRACT
            .replace("client_id = \"${GOOGLE_ADS_CLIENT_ID}\"\n", "")
            .replace("client_secret = \"${GOOGLE_ADS_CLIENT_SECRET}\"\n", "")
            .replace("refresh_token = \"${GOOGLE_ADS_REFRESH_TOKEN}\"\n", "");
        assert!(Config::from_toml(&adc, "pgcapi.toml", &dm_env).is_ok());
        // Both kinds at once: refused
        let both = DM_CONTRACT.replace(
            "refunds = \"retract\"",
            "refunds = \"retract\"\nservice_account_key = \"/k.json\"",
        );
        assert!(Config::from_toml(&both, "pgcapi.toml", &dm_env).is_err());
        // google_ads needs the resource name, and its developer token is optional
        let ads = CONTRACT
            .replace("developer_token = \"${GOOGLE_ADS_DEVELOPER_TOKEN}\"\n", "")
            .replace(
                "conversion_action = \"customers/1234567890/conversionActions/1001\"",
                "conversion_action = \"1001\"",
            );
        let err = Config::from_toml(&ads, "pgcapi.toml", &env_all)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a bare id works for google_data_manager only"),
            "{err}"
        );
        assert!(!err.contains("developer_token"), "{err}");
    }
}
