//! `pgcapi check -c CONFIG`: is everything in place to run, checked without recording a conversion?
//!
//! Prints a checklist (✓ / ✗ with the reason) and fails when any item fails:
//!
//! - **Config**: the file parses and is valid.
//! - **Database**: the source database answers; `wal_level = logical`; the role may replicate; every
//!   table and column the rules read exists; each table's replica identity lets its UPDATEs be
//!   published (with a warning, `!`, when mapped columns can hold TOASTed values under replica identity
//!   DEFAULT or USING INDEX: see [`crate::setup::toast_advice`]); the publication covers exactly the rules' tables; the slot exists (pgoutput, this
//!   database, not lost); the control schema is installed. The checks are the ones `pgcapi setup`
//!   runs (see [`crate::setup`]); `check` changes nothing.
//! - **Destinations**, each with its credentials and endpoint:
//!   - Meta: `GET /{version}/{pixel_id}?fields=id` with the token: a read, so nothing is sent even
//!     when `test_event_code` is set (Meta does not promise that test events stay out of reporting).
//!   - Google Ads: the OAuth refresh-token exchange, then an `uploadClickConversions` of one synthetic
//!     conversion with `validateOnly: true` (Google validates it and records nothing), using the
//!     conversion action of a rule that sends to the destination.
//!   - TikTok: documents no read-only call. With `test_event_code` set, one synthetic event is sent
//!     with that code (it shows in the Test Events tool only); without it only the endpoint is reached
//!     and the token's presence is checked, and the item says the token was not verified.
//!
//! Secrets never appear: every line is scrubbed of the config's secret values, and a refused token is
//! reported as "rejected", not echoed.

use crate::config::{Config, DestinationConfig, Secret};
use crate::destinations::google_auth::{GoogleAuth, ADS_SCOPE, DATA_MANAGER_SCOPE};
use crate::destinations::{google_ads, google_data_manager, meta, tiktok, BatchAnswer};
use crate::event::{Delivery, Kind, Payload};
use crate::identity::{MatchKey, MatchKeys};
use crate::outbox::quote_ident;
use crate::platform::Platform;
use crate::rules::Rules;
use crate::setup;
use chrono::{TimeDelta, Utc};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Longest wait for one platform request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Whether the check passed.
    pub ok: bool,
    /// A passed check with a trade-off the operator should know about (printed with `!`).
    pub warning: bool,
    /// What was checked, and why it failed.
    pub text: String,
}

/// The checklist, by section.
#[derive(Debug, Default)]
pub struct Checklist {
    /// Sections in order: title and items.
    pub sections: Vec<(String, Vec<Item>)>,
    /// Values scrubbed from every line.
    secrets: Vec<String>,
}

impl Checklist {
    fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    fn push(&mut self, ok: bool, text: String) {
        self.push_item(ok, false, text);
    }

    fn push_item(&mut self, ok: bool, warning: bool, text: String) {
        if self.sections.is_empty() {
            self.section("Checks");
        }
        let text = self.scrub(&text);
        if let Some((_, items)) = self.sections.last_mut() {
            items.push(Item { ok, warning, text });
        }
    }

    /// A warning: passes, but printed with `!`.
    fn warn(&mut self, text: impl Into<String>) {
        self.push_item(true, true, text.into());
    }

    fn pass(&mut self, text: impl Into<String>) {
        self.push(true, text.into());
    }

    fn fail(&mut self, text: impl Into<String>) {
        self.push(false, text.into());
    }

    /// Replaces every secret value in `text` with `***`.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }

    /// Every item, in order.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.sections.iter().flat_map(|(_, items)| items)
    }

    /// How many items failed.
    pub fn failures(&self) -> usize {
        self.items().filter(|i| !i.ok).count()
    }

    /// The checklist as printed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (title, items) in &self.sections {
            let _ = writeln!(out, "{title}");
            for item in items {
                let mark = match (item.ok, item.warning) {
                    (true, false) => '✓',
                    (true, true) => '!',
                    (false, _) => '✗',
                };
                let _ = writeln!(out, "  {mark} {}", item.text);
            }
        }
        match self.failures() {
            0 => out.push_str("All checks passed.\n"),
            1 => out.push_str("1 check failed.\n"),
            n => {
                let _ = writeln!(out, "{n} checks failed.");
            }
        }
        out
    }

    /// Remembers the secrets of `config` (and the database passwords) for scrubbing.
    fn learn_secrets(&mut self, config: &Config) {
        let mut secrets: Vec<&Secret> = vec![&config.source.url];
        secrets.extend(config.source.control_url.as_ref());
        for dest in config.destinations.values() {
            secrets.extend(
                [
                    &dest.access_token,
                    &dest.developer_token,
                    &dest.client_id,
                    &dest.client_secret,
                    &dest.refresh_token,
                ]
                .into_iter()
                .flatten(),
            );
        }
        for secret in secrets {
            let value = secret.expose();
            if let Ok(info) = value.parse::<crate::pg::ConnInfo>() {
                self.secrets.extend(info.password);
            }
            self.secrets.push(value.to_string());
        }
        // Short values would scrub ordinary words; the longest go first so none is left half-scrubbed.
        self.secrets.retain(|s| s.len() >= 4);
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
    }
}

/// `pgcapi check`: prints the checklist of the config at `path`; `Err` when any check failed.
pub async fn run(path: &Path) -> Result<(), String> {
    let list = check_file(path).await;
    print!("{}", list.render());
    match list.failures() {
        0 => Ok(()),
        1 => Err("1 check failed".into()),
        n => Err(format!("{n} checks failed")),
    }
}

/// Checks the config file at `path`, then everything it names.
pub async fn check_file(path: &Path) -> Checklist {
    let mut list = Checklist::default();
    list.section("Config");
    match Config::load(path) {
        Ok(config) => {
            list.learn_secrets(&config);
            list.pass(format!(
                "{} is valid ({} destination(s), {} rule(s))",
                path.display(),
                config.destinations.len(),
                config.rules.len()
            ));
            check_config(&config, &mut list).await;
        }
        Err(e) => list.fail(e.to_string()),
    }
    list
}

/// Checks the database and destinations of a loaded `config` into `list`.
pub async fn check_config(config: &Config, list: &mut Checklist) {
    list.learn_secrets(config);
    list.section("Database");
    check_database(config, list).await;
    list.section("Destinations");
    let http = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("pgcapi/", env!("CARGO_PKG_VERSION"), " (check)"))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            list.fail(format!("cannot build an HTTP client: {e}"));
            return;
        }
    };
    if config.destinations.is_empty() {
        list.fail("no destination is configured");
    }
    for (name, dest) in &config.destinations {
        let (ok, text) = match dest.platform {
            Platform::Meta => check_meta(&http, dest).await,
            Platform::GoogleAds => check_google(&http, config, name, dest).await,
            Platform::Tiktok => check_tiktok(&http, name, dest).await,
            Platform::GoogleDataManager => {
                for (ok, text) in check_data_manager(&http, config, name, dest).await {
                    list.push(ok, format!("{name} ({}): {text}", dest.platform.as_str()));
                }
                continue;
            }
            Platform::MicrosoftAds => {
                crate::destinations::microsoft_ads::check(config, name, dest).await
            }
            Platform::Snapchat | Platform::Pinterest => {
                check_by_healthcheck(config, name, dest).await
            }
        };
        list.push(ok, format!("{name} ({}): {text}", dest.platform.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------------------------

async fn check_database(config: &Config, list: &mut Checklist) {
    let source = match setup::connect(config.source.url.expose(), "source database").await {
        Ok(client) => client,
        Err(e) => {
            list.fail(format!("cannot connect to the {e}"));
            return;
        }
    };
    list.pass("connected to the source database");
    match setup::wal_level(&source).await {
        Ok(level) if level == "logical" => list.pass("wal_level = logical"),
        Ok(level) => list.fail(format!(
            "wal_level is {level}; logical replication needs ALTER SYSTEM SET wal_level = logical; \
             and a restart"
        )),
        Err(e) => list.fail(e.to_string()),
    }
    match setup::replication_role(&source).await {
        Ok((true, user)) => list.pass(format!("role {user} may open replication connections")),
        Ok((false, user)) => list.fail(format!(
            "role {user} lacks the REPLICATION attribute: ALTER ROLE {} WITH REPLICATION;",
            quote_ident(&user)
        )),
        Err(e) => list.fail(e.to_string()),
    }
    let rules = Rules::new(config);
    let tables = rules.tables();
    let mut missing = Vec::new();
    match setup::check_columns(&source, &rules).await {
        Ok(problems) if problems.is_empty() => list.pass(format!(
            "tables {} have every column the rules read",
            tables.join(", ")
        )),
        Ok(problems) => {
            for p in problems {
                if p.path.starts_with("rules (table ") {
                    missing.push(p.path.clone());
                }
                list.fail(p.to_string());
            }
        }
        Err(e) => list.fail(e.to_string()),
    }
    let publication = &config.source.publication;
    let privileges = match setup::privileges(&source, &tables, publication).await {
        Ok(p) => Some(p),
        Err(e) => {
            list.fail(crate::pg::error_chain(&e));
            None
        }
    };
    for table in &tables {
        if missing.contains(&format!("rules (table {table})")) {
            continue;
        }
        let owner = privileges
            .as_ref()
            .and_then(|p| p.not_owned.iter().find(|(t, _)| t == table))
            .map(|(_, o)| o.clone());
        match setup::replica_identity(&source, table).await {
            Ok((identity, true)) => {
                list.pass(format!(
                    "{table}: replica identity {identity} lets its UPDATEs be published"
                ));
                let columns = setup::rule_columns(&rules, table);
                match setup::toast_advice(&source, table, &columns).await {
                    Ok(Some(advice)) => list.warn(advice),
                    Ok(None) => {}
                    Err(e) => list.fail(e.to_string()),
                }
            }
            Ok((identity, false)) => list.fail(match owner {
                Some(owner) => format!(
                    "{table}: replica identity {identity} cannot publish UPDATEs: its owner (role \
                     {owner}) or a superuser adds a primary key or runs ALTER TABLE {} REPLICA \
                     IDENTITY FULL;",
                    setup::qualified(table)
                ),
                None => format!(
                    "{table}: replica identity {identity} cannot publish UPDATEs: add a primary key \
                     or run pgcapi setup --set-replica-identity-full"
                ),
            }),
            Err(e) => list.fail(e.to_string()),
        }
    }
    // Who can fix the publication: pgcapi setup when its role may, else the DBA with the SQL.
    let fix = |statement: String| match &privileges {
        Some(p) if !p.may_manage_publication() => format!(
            "{}; so {} runs: {statement}",
            setup::publication_refusal(p),
            p.who()
        ),
        _ => "run pgcapi setup".to_string(),
    };
    let mut publication_exists = false;
    match setup::publication_tables(&source, publication).await {
        Ok(Some(covered)) if covered == tables => {
            publication_exists = true;
            list.pass(format!(
                "publication {publication} covers {}",
                tables.join(", ")
            ))
        }
        Ok(Some(covered)) => {
            publication_exists = true;
            list.fail(format!(
                "publication {publication} covers [{}] but the rules read [{}]: {}",
                covered.join(", "),
                tables.join(", "),
                fix(setup::alter_publication_sql(publication, &tables))
            ))
        }
        Ok(None) => list.fail(format!(
            "publication {publication} does not exist: {}",
            fix(setup::create_publication_sql(publication, &tables))
        )),
        Err(e) => list.fail(e.to_string()),
    }
    let slot = &config.source.slot;
    match setup::slot_info(&source, slot).await {
        Ok(Some(s)) if s.plugin != "pgoutput" || s.database != s.current_database => {
            list.fail(format!(
                "slot {slot} uses plugin {} on database {}; pgcapi needs a pgoutput slot on {}",
                s.plugin, s.database, s.current_database
            ))
        }
        Ok(Some(s)) if s.wal_status == "lost" => list.fail(format!(
            "slot {slot} is lost (its WAL was removed): drop it, rerun pgcapi setup, and backfill"
        )),
        Ok(Some(_)) => list.pass(format!("replication slot {slot} exists (pgoutput)")),
        Ok(None) if !publication_exists => list.fail(format!(
            "replication slot {slot} does not exist: run pgcapi setup once publication \
             {publication} exists (it creates the slot then)"
        )),
        Ok(None) => list.fail(format!(
            "replication slot {slot} does not exist: run pgcapi setup"
        )),
        Err(e) => list.fail(e.to_string()),
    }
    let separate;
    let control = if config.source.control_url.is_some() {
        match setup::connect(config.source.control_url().expose(), "control database").await {
            Ok(client) => {
                list.pass("connected to the control database");
                separate = client;
                &separate
            }
            Err(e) => {
                list.fail(format!("cannot connect to the {e}"));
                return;
            }
        }
    } else {
        &source
    };
    let schema = &config.source.schema;
    let found = control
        .query_one(
            "select to_regclass($1) is not null and to_regclass($2) is not null",
            &[
                &format!("{}.deliveries", quote_ident(schema)),
                &format!("{}.checkpoints", quote_ident(schema)),
            ],
        )
        .await;
    match found.map(|r| r.get::<_, bool>(0)) {
        Ok(true) => list.pass(format!(
            "control schema {schema} is installed ({schema}.deliveries, {schema}.checkpoints)"
        )),
        Ok(false) => list.fail(format!(
            "control schema {schema} is not installed: run pgcapi setup"
        )),
        Err(e) => list.fail(format!(
            "reading the control schema: {}",
            crate::pg::client::describe(&e)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------------------------

/// The base URL of a destination, without a trailing slash.
fn base(dest: &DestinationConfig, default: &str) -> String {
    dest.endpoint
        .as_deref()
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_string()
}

/// Why a request got no answer; never with its URL (Meta's carries the token).
fn unreachable(base: &str, e: reqwest::Error) -> String {
    let why = if e.is_timeout() {
        "timed out".to_string()
    } else {
        crate::pg::error_chain(&e.without_url())
    };
    format!("cannot reach {base}: {why}")
}

/// A synthetic conversion that identifies nobody, for the platform calls that need one.
fn synthetic(destination: &str, conversion_action: Option<String>) -> Delivery {
    let now = Utc::now();
    let mut keys = MatchKeys::new();
    keys.insert(
        MatchKey::Email,
        crate::identity::hash("pgcapi-check@example.invalid"),
    );
    Delivery {
        id: 0,
        rule: "pgcapi_check".into(),
        destination: destination.to_string(),
        event_id: format!(
            "pgcapi-check-{:016x}",
            rand::Rng::random::<u64>(&mut rand::rng())
        ),
        kind: Kind::Conversion,
        adjusts_rule: None,
        event_name: Some("CompletePayment".into()),
        event_time: now - TimeDelta::minutes(5),
        value: Some("0".into()),
        currency: Some("USD".into()),
        action_source: Some("website".into()),
        payload: Payload {
            keys,
            event_source_url: Some("https://example.invalid/pgcapi-check".into()),
            conversion_action,
            consent: true,
            ..Payload::default()
        },
        attempts: 0,
        created_at: now,
    }
}

/// A string field of a JSON object.
fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Meta: a read of the pixel with the token.
async fn check_meta(http: &reqwest::Client, dest: &DestinationConfig) -> (bool, String) {
    let (Some(pixel), Some(token)) = (&dest.pixel_id, &dest.access_token) else {
        return (false, "pixel_id and access_token are required".into());
    };
    let base = base(dest, meta::DEFAULT_ENDPOINT);
    let version = dest
        .api_version
        .as_deref()
        .unwrap_or(meta::DEFAULT_API_VERSION);
    let response = http
        .get(format!("{base}/{version}/{pixel}"))
        .query(&[("fields", "id"), ("access_token", token.expose())])
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => return (false, unreachable(&base, e)),
    };
    let status = response.status();
    let body: Value =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    if status.is_success() {
        if field(&body, "id") != pixel {
            return (
                false,
                format!("GET /{version}/{pixel} answered without the pixel's id"),
            );
        }
        let mut text = format!(
            "access token accepted, pixel {pixel} readable (GET /{version}/{pixel}?fields=id; \
             nothing sent)"
        );
        if let Some(code) = &dest.test_event_code {
            let _ = write!(
                text,
                "; test_event_code {code} is set: events go to the Test Events tool"
            );
        }
        return (true, text);
    }
    let error = body.get("error").unwrap_or(&Value::Null);
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let graph = format!("Graph error {code}: {}", field(error, "message"));
    let text = match code {
        102 | 104 | 190 => format!("access token rejected ({graph})"),
        100 | 803 => format!("pixel {pixel} not found or not readable with this token ({graph})"),
        10 | 200..=299 => format!("the token lacks permission on pixel {pixel} ({graph})"),
        0 => format!("HTTP {status} from {base}: not a Graph API answer"),
        _ => format!("HTTP {status}: {graph}"),
    };
    (false, text)
}

/// Google Ads: the OAuth exchange, then a `validateOnly` upload of one synthetic conversion.
async fn check_google(
    http: &reqwest::Client,
    config: &Config,
    name: &str,
    dest: &DestinationConfig,
) -> (bool, String) {
    let Some(customer) = &dest.customer_id else {
        return (false, "customer_id is required".into());
    };
    let auth = match GoogleAuth::from_config(name, dest, &[ADS_SCOPE], http.clone()) {
        Ok(auth) => auth,
        Err(e) => return (false, e.to_string()),
    };
    let access = match auth.access_token().await {
        Ok(token) => token,
        Err(answer) => return (false, token_refused(auth.describe(), answer)),
    };
    let action = config
        .rules
        .iter()
        .filter(|r| r.destinations.iter().any(|d| d == name))
        .find_map(|r| r.google.conversion_action.clone());
    let Some(action) = action else {
        return (
            true,
            "OAuth refresh token accepted; no rule gives this destination a conversion action, \
             so no validateOnly upload was tried"
                .into(),
        );
    };
    let row =
        match google_ads::encode_conversion(&synthetic(name, Some(action.clone())), Utc::now()) {
            Ok(row) => row,
            Err(outcome) => {
                return (
                    false,
                    format!("cannot build the test conversion: {outcome:?}"),
                )
            }
        };
    let base = base(dest, google_ads::DEFAULT_ENDPOINT);
    let version = dest
        .api_version
        .as_deref()
        .unwrap_or(google_ads::DEFAULT_API_VERSION);
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let customer = digits(customer);
    let mut request = http
        .post(format!(
            "{base}/{version}/customers/{customer}:uploadClickConversions"
        ))
        .bearer_auth(access.expose())
        .json(&google_ads::request_body(
            google_ads::Upload::Conversions,
            vec![row],
            true,
        ));
    if let Some(login) = dest.login_customer_id.as_deref().map(digits) {
        request = request.header("login-customer-id", login);
    }
    if let Some(developer) = dest
        .developer_token
        .as_ref()
        .filter(|t| !t.expose().is_empty())
    {
        request = request.header("developer-token", developer.expose());
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (false, unreachable(&base, e)),
    };
    let status = response.status();
    let body: Value =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    if status.is_success() {
        let row_errors = google_errors(body.get("partialFailureError").unwrap_or(&Value::Null));
        if let Some(e) = row_errors
            .iter()
            .find(|e| e.starts_with(google_ads::NOT_ALLOWLISTED))
        {
            return (
                false,
                format!("{} ({e})", google_ads::NOT_ALLOWLISTED_ADVICE),
            );
        }
        if let Some(e) = row_errors.iter().find(|e| e.contains("CONVERSION_ACTION")) {
            return (
                false,
                format!("conversion action {action} refused in a validateOnly upload: {e}"),
            );
        }
        let credentials = match auth.describe() {
            kind if kind.starts_with("user OAuth") => "OAuth",
            kind => kind,
        };
        let developer = if dest.developer_token.is_some() {
            ", developer token"
        } else {
            ""
        };
        let mut text = format!(
            "{credentials}{developer} and customer {customer} accepted a validateOnly upload of \
             one synthetic conversion (nothing recorded)"
        );
        if let Some(e) = row_errors.first() {
            let _ = write!(
                text,
                "; the synthetic row itself was refused ({e}), as made-up data may be"
            );
        }
        return (true, text);
    }
    let error = body.get("error").unwrap_or(&Value::Null);
    let codes = google_errors(error);
    if codes
        .iter()
        .any(|c| c.starts_with(google_ads::NOT_ALLOWLISTED))
    {
        return (
            false,
            format!(
                "{} (HTTP {status}: {})",
                google_ads::NOT_ALLOWLISTED_ADVICE,
                codes.join("; ")
            ),
        );
    }
    let detail = if codes.is_empty() {
        field(error, "message").to_string()
    } else {
        codes.join("; ")
    };
    let what = if codes.iter().any(|c| c.starts_with("DEVELOPER_TOKEN")) {
        "developer token rejected"
    } else if status == reqwest::StatusCode::UNAUTHORIZED {
        "access token rejected"
    } else if status == reqwest::StatusCode::FORBIDDEN {
        "no access to this customer"
    } else {
        "validateOnly upload refused"
    };
    (false, format!("{what} (HTTP {status}: {detail})"))
}

/// What a refused token request means, then Google's words.
fn token_refused(kind: &str, answer: BatchAnswer) -> String {
    let words = token_error(answer);
    let user = kind.starts_with("user OAuth");
    let what = if words.contains("invalid_client") {
        "OAuth client id or client secret rejected"
    } else if words.contains("invalid_grant") && user {
        "OAuth refresh token rejected (expired or revoked)"
    } else if words.contains("invalid_grant") {
        "service account key rejected (deleted, disabled, or the JWT was refused)"
    } else {
        "no access token"
    };
    format!("{what} ({words})")
}

/// The words of a refused token request.
fn token_error(answer: BatchAnswer) -> String {
    match answer {
        BatchAnswer::Retry { error, .. } | BatchAnswer::Rejected(error) => error,
        BatchAnswer::Sent(_) => "no token".into(),
    }
}

/// Data Manager: the token, then a `validateOnly` ingest of one synthetic event, reported as three
/// lines: the token, the operating account, the conversion action.
async fn check_data_manager(
    http: &reqwest::Client,
    config: &Config,
    name: &str,
    dest: &DestinationConfig,
) -> Vec<(bool, String)> {
    let Some(account) = dest.operating_account.as_deref() else {
        return vec![(false, "operating_account is required".into())];
    };
    let account = google_ads::digits_only(account);
    let auth = match GoogleAuth::from_config(name, dest, &[DATA_MANAGER_SCOPE], http.clone()) {
        Ok(auth) => auth,
        Err(e) => return vec![(false, e.to_string())],
    };
    let access = match auth.access_token().await {
        Ok(token) => token,
        Err(answer) => {
            return vec![(
                false,
                format!("token: {}", token_refused(auth.describe(), answer)),
            )]
        }
    };
    let mut out = vec![(
        true,
        format!(
            "token: obtained with {} (scope datamanager)",
            auth.describe()
        ),
    )];
    let action = config
        .rules
        .iter()
        .filter(|r| r.destinations.iter().any(|d| d == name))
        .find_map(|r| r.google.conversion_action.clone());
    let Some(action) = action else {
        out.push((
            true,
            format!(
                "account {account}: not tried (no rule gives this destination a conversion \
                 action, so no validateOnly request was sent)"
            ),
        ));
        return out;
    };
    let Some(id) = google_data_manager::product_destination_id(&action).map(str::to_string) else {
        out.push((
            false,
            format!("conversion action {action}: not a conversion action id"),
        ));
        return out;
    };
    let event = match google_data_manager::encode_event(
        &synthetic(name, Some(action.clone())),
        Some(0.into()),
        Utc::now(),
    ) {
        Ok(event) => event,
        Err(outcome) => {
            out.push((false, format!("cannot build the test event: {outcome:?}")));
            return out;
        }
    };
    let login = dest.login_account.as_deref().map(google_ads::digits_only);
    let body =
        google_data_manager::request_body(&account, login.as_deref(), &id, vec![event], true);
    let base = base(dest, google_data_manager::DEFAULT_ENDPOINT);
    let response = http
        .post(format!("{base}/v1/events:ingest"))
        .bearer_auth(access.expose())
        .json(&body)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            out.push((false, unreachable(&base, e)));
            return out;
        }
    };
    let status = response.status();
    let body: Value =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    if status.is_success() {
        out.push((
            true,
            format!("account {account}: accepted a validateOnly request (nothing recorded)"),
        ));
        out.push((
            true,
            format!("conversion action {id}: accepted as product destination"),
        ));
        return out;
    }
    let error = body.get("error").unwrap_or(&Value::Null);
    let mut words = vec![format!(
        "HTTP {status} {}: {}",
        field(error, "status"),
        field(error, "message")
    )];
    for v in error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("fieldViolations").and_then(Value::as_array))
        .flatten()
    {
        words.push(format!(
            "{}: {}",
            field(v, "field"),
            field(v, "description")
        ));
    }
    let text = words.join("; ");
    let lower = text.to_ascii_lowercase();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        out[0] = (false, format!("token: refused by Data Manager ({text})"));
    } else if lower.contains("product_destination") || lower.contains("productdestination") {
        out.push((true, format!("account {account}: reachable")));
        out.push((false, format!("conversion action {id}: refused ({text})")));
    } else if lower.contains("account") || status == reqwest::StatusCode::FORBIDDEN {
        out.push((false, format!("account {account}: refused ({text})")));
    } else {
        out.push((false, format!("validateOnly request refused ({text})")));
    }
    out
}

/// `CODE: message` of each error in a Google Ads failure (`details[].errors[]`).
fn google_errors(status: &Value) -> Vec<String> {
    status
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("errors").and_then(Value::as_array))
        .flatten()
        .map(|e| {
            let code = e
                .get("errorCode")
                .and_then(Value::as_object)
                .and_then(|m| m.values().next())
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN");
            format!("{code}: {}", field(e, "message"))
        })
        .collect()
}

/// TikTok: a test event when `test_event_code` is set, else the endpoint and the token's presence.
/// Snapchat and Pinterest: the destination's own healthcheck (a call that records nothing).
async fn check_by_healthcheck(
    config: &Config,
    name: &str,
    dest: &DestinationConfig,
) -> (bool, String) {
    use crate::destinations::{pinterest::Pinterest, snapchat::Snapchat};
    let result = match dest.platform {
        Platform::Snapchat => match Snapchat::new(name, dest, &config.dispatch) {
            Ok(d) => d.healthcheck().await,
            Err(e) => Err(e.to_string()),
        },
        _ => match Pinterest::new(name, dest, &config.dispatch) {
            Ok(d) => d.healthcheck().await,
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(text) => (true, text),
        Err(text) => (false, text),
    }
}

async fn check_tiktok(
    http: &reqwest::Client,
    name: &str,
    dest: &DestinationConfig,
) -> (bool, String) {
    let (Some(pixel), Some(token)) = (&dest.pixel_code, &dest.access_token) else {
        return (false, "pixel_code and access_token are required".into());
    };
    let base = base(dest, tiktok::DEFAULT_ENDPOINT);
    let version = dest
        .api_version
        .as_deref()
        .unwrap_or(tiktok::DEFAULT_API_VERSION);
    let url = format!("{base}/open_api/{version}/event/track/");
    let token_text = token.expose();
    if token_text.trim().is_empty() || token_text.chars().any(char::is_whitespace) {
        return (false, "access token is empty or contains whitespace".into());
    }
    let Some(code) = &dest.test_event_code else {
        return match http.get(&url).send().await {
            Ok(r) => (
                true,
                format!(
                    "endpoint {base} reachable (HTTP {}); access token present but NOT verified: \
                     TikTok documents no read-only call; set test_event_code to verify it with a \
                     test event",
                    r.status().as_u16()
                ),
            ),
            Err(e) => (false, unreachable(&base, e)),
        };
    };
    let event = match tiktok::encode_event(&synthetic(name, None), Utc::now()) {
        Ok(event) => event,
        Err(outcome) => return (false, format!("cannot build the test event: {outcome:?}")),
    };
    let body = tiktok::request_body("web", pixel, Some(code), vec![event]);
    let response = http
        .post(&url)
        .header("Access-Token", token_text)
        .json(&body)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => return (false, unreachable(&base, e)),
    };
    let status = response.status();
    let answer: Value =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    match answer.get("code").and_then(Value::as_i64) {
        Some(0) => (
            true,
            format!(
                "access token and pixel {pixel} accepted one synthetic test event \
                 (test_event_code {code}: it shows in the Test Events tool only)"
            ),
        ),
        Some(c @ 40001) => (
            false,
            format!(
                "access token rejected (code {c}: {})",
                field(&answer, "message")
            ),
        ),
        Some(c) => (
            false,
            format!(
                "test event refused (code {c}: {})",
                field(&answer, "message")
            ),
        ),
        None => (
            false,
            format!("HTTP {status} from {base}: not an Events API answer"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_from_every_line() {
        let mut list = Checklist {
            secrets: vec!["s3cr3t-token".into()],
            ..Checklist::default()
        };
        list.fail("HTTP 401 for token s3cr3t-token");
        assert_eq!(list.items().next().unwrap().text, "HTTP 401 for token ***");
        assert!(list.render().contains("✗ HTTP 401 for token ***"));
        assert!(list.render().ends_with("1 check failed.\n"));
    }
}
