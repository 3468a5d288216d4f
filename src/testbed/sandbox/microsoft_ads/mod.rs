//! Microsoft Advertising: offline conversions and adjustments (Campaign Management v13 REST) and the
//! Microsoft identity platform token endpoint (platforms-next.md §1).
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /{tenant}/oauth2/v2.0/token` | refresh-token grant; answers a new refresh token each time |
//! | `POST /CampaignManagement/v13/OfflineConversions/Apply` | `{"OfflineConversions":[…]}` |
//! | `POST /CampaignManagement/v13/OfflineConversionAdjustments/Apply` | `{"OfflineConversionAdjustments":[…]}` |
//! | `POST /CampaignManagement/v13/ConversionGoals/QueryByIds` | the offline goals (a read) |
//! | `POST /_sandbox/microsoft_ads/throttle` | `{"requests": n}`: the next n Apply calls answer 117 |
//! | `POST /_sandbox/microsoft_ads/clicks` | `{"clicks":[{"msclkid", "clicked_at"}]}`: known clicks |
//! | `POST /_sandbox/microsoft_ads/goals` | `{"names":[…]}`: the offline goals that exist |
//!
//! Rules enforced: the four headers (a bearer token this sandbox issued, `DeveloperToken`, numeric
//! `CustomerId` and `CustomerAccountId`); the one collection key, 1–1,000 items; per item only the
//! documented fields (`OfflineConversion` / `OfflineConversionAdjustment` of the REST SDK), a known goal
//! name, a UTC `ConversionTime` within the last 90 days and not in the future, a 32-hex click id or a
//! 64-hex hash, a value ≥ 0, a 3-letter currency. Adjustments: `Retract` without value and currency,
//! `Restate` with a value, `AdjustmentTime` not before the conversion and not in the future, and they
//! must name a recorded conversion exactly (goal name, conversion time, click id). Item errors come
//! back with HTTP 200 in `PartialErrors` by `Index`; request faults as `Errors`/`OperationErrors`.
//!
//! Stricter than Microsoft (which does not document it): an unknown field fails its item
//! (`SandboxUnknownField`), and an adjustment of a conversion never recorded fails
//! (`SandboxUnknownConversion`); Microsoft's real answer to either is not published. Numeric `Code`s
//! are given only where the stored docs give them (117, 5617); the others are `null`.
//!
//! Dedup as documented: the same goal + `ConversionTime` + click id counts once (later copies are
//! ignored without an error).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::testbed::sandbox::faults::{self, ConnControl, Gate};
use crate::testbed::sandbox::records::Counters;
use crate::testbed::sandbox::Platform;
use crate::testbed::sandbox::{credential_ok, json_response, parse_form, random_id, Shared};

/// Items per Apply call.
const MAX_ITEMS: usize = 1_000;
/// Conversions older than this are refused, in days.
const MAX_AGE_DAYS: i64 = 90;
/// Lifetime of issued access tokens, in seconds.
const TOKEN_LIFETIME_SECS: i64 = 3600;
/// The offline goals that exist until a test sets others (the contract's names).
pub const DEFAULT_GOALS: [&str; 2] = ["Offline purchase", "Won deal"];

/// Accepted fields of an `OfflineConversion`.
const CONVERSION_FIELDS: &[&str] = &[
    "MicrosoftClickId",
    "ConversionName",
    "ConversionTime",
    "ConversionValue",
    "ConversionCurrencyCode",
    "ExternalAttributionCredit",
    "ExternalAttributionModel",
    "HashedEmailAddress",
    "HashedPhoneNumber",
];

/// Accepted fields of an `OfflineConversionAdjustment`.
const ADJUSTMENT_FIELDS: &[&str] = &[
    "MicrosoftClickId",
    "ConversionName",
    "ConversionTime",
    "AdjustmentTime",
    "AdjustmentType",
    "AdjustmentValue",
    "AdjustmentCurrencyCode",
    "HashedEmailAddress",
    "HashedPhoneNumber",
];

/// What the sandbox recorded for Microsoft.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MicrosoftAdsRecords {
    /// Counters (conversions and adjustments together).
    pub counters: Counters,
    /// Conversions counted, in arrival order.
    pub conversions: Vec<MsConversion>,
    /// Adjustments applied, in arrival order.
    pub adjustments: Vec<MsAdjustment>,
    /// Access tokens issued by the token endpoint.
    pub tokens_issued: u64,
}

/// One offline conversion Microsoft counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsConversion {
    /// The goal name.
    pub conversion_name: String,
    /// `ConversionTime` exactly as sent.
    pub conversion_time: String,
    /// The click id, when sent.
    pub microsoft_click_id: Option<String>,
    /// The hashed email, when sent.
    pub hashed_email: Option<String>,
    /// The hashed phone, when sent.
    pub hashed_phone: Option<String>,
    /// The value, when sent.
    pub value: Option<f64>,
    /// The currency, when sent.
    pub currency: Option<String>,
    /// Retracted by a later `Retract`.
    pub retracted: bool,
    /// The value of the latest `Restate`.
    pub restated_value: Option<f64>,
}

/// One adjustment applied to a recorded conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsAdjustment {
    /// `Retract` or `Restate`.
    pub adjustment_type: String,
    /// The adjusted conversion's goal name.
    pub conversion_name: String,
    /// The adjusted conversion's time, as sent.
    pub conversion_time: String,
    /// The adjusted conversion's click id.
    pub microsoft_click_id: Option<String>,
    /// `AdjustmentTime` as sent.
    pub adjustment_time: String,
    /// `AdjustmentValue` (Restate).
    pub value: Option<f64>,
    /// `AdjustmentCurrencyCode` (Restate).
    pub currency: Option<String>,
}

/// Microsoft's memory: settings made by tests, issued tokens and the dedup keys.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Apply calls still to be answered with 117.
    throttle: u32,
    /// Known clicks and their times (a conversion before its click is refused).
    clicks: HashMap<String, DateTime<Utc>>,
    /// The goals that exist (`None`: [`DEFAULT_GOALS`]).
    goals: Option<Vec<String>>,
    /// Dedup key → index in `records.conversions`.
    seen: HashMap<(String, i64, String), usize>,
    /// Every dedup key ever received (for `duplicate_sends`).
    ever: std::collections::HashSet<(String, i64, String)>,
    /// Adjustment keys applied (key + type + adjustment time).
    adjusted: std::collections::HashSet<String>,
}

/// Access and refresh tokens issued, kept across resets.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    /// Access token → expiry.
    access: HashMap<String, DateTime<Utc>>,
    /// Refresh tokens issued by rotation.
    refresh: std::collections::HashSet<String>,
}

/// The routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(handle_token))
        .route(
            "/CampaignManagement/v13/OfflineConversions/Apply",
            post(|s, c, h, b| handle_apply(s, c, h, b, Kind::Conversions)),
        )
        .route(
            "/CampaignManagement/v13/OfflineConversionAdjustments/Apply",
            post(|s, c, h, b| handle_apply(s, c, h, b, Kind::Adjustments)),
        )
        .route(
            "/CampaignManagement/v13/ConversionGoals/QueryByIds",
            post(handle_goals),
        )
        .route("/_sandbox/microsoft_ads/{setting}", post(handle_admin))
}

/// Which Apply call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Conversions,
    Adjustments,
}

/// The body of a 117 `CallRateExceeded` fault.
pub(crate) fn call_rate_exceeded() -> Value {
    json!({
        "TrackingId": random_id(32),
        "Type": "AdApiFaultDetail",
        "Errors": [{"Code": 117, "ErrorCode": "CallRateExceeded",
            "Message": "You have exceeded the number of calls that you are allowed to make in a minute. Please reduce the number of calls that you make per minute.",
            "Detail": null}],
    })
}

/// A request-level fault.
fn fault(status: StatusCode, error_code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({
            "TrackingId": random_id(32),
            "Type": "AdApiFaultDetail",
            "Errors": [{"Code": null, "ErrorCode": error_code, "Message": message, "Detail": null}],
        }),
    )
}

/// One item error.
fn item_error(index: usize, error_code: &str, message: String) -> Value {
    let code = match error_code {
        "ClickIdDateTimeOutsideGoalConversionWindow" => json!(5617),
        _ => Value::Null,
    };
    json!({"Code": code, "ErrorCode": error_code, "Message": message, "Index": index,
           "FieldPath": null, "Details": null, "Type": "BatchError"})
}

/// `POST /{tenant}/oauth2/v2.0/token`.
async fn handle_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let fields: HashMap<String, String> =
        parse_form(&body).unwrap_or_default().into_iter().collect();
    let field = |k: &str| fields.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let oauth_error = |error: &str, description: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": error, "error_description": description}),
        )
    };
    if field("grant_type") != Some("refresh_token") {
        return oauth_error(
            "unsupported_grant_type",
            "AADSTS70003: grant_type must be refresh_token.",
        );
    }
    if field("client_id").is_none() {
        return oauth_error(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        );
    }
    let scope = field("scope").unwrap_or_default();
    if !scope
        .split(' ')
        .any(|s| s == "https://ads.microsoft.com/msads.manage")
    {
        return oauth_error(
            "invalid_scope",
            "The scope must include https://ads.microsoft.com/msads.manage.",
        );
    }
    let Some(refresh) = field("refresh_token") else {
        return oauth_error(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'refresh_token'.",
        );
    };
    let mut state = shared.lock();
    let rotated = state.microsoft_tokens.refresh.contains(refresh);
    if !rotated && !credential_ok(&shared.config.microsoft_refresh_token, Some(refresh)) {
        return oauth_error(
            "invalid_grant",
            "AADSTS70000: The provided refresh token is invalid.",
        );
    }
    let access = format!("EwB-sandbox-{}", random_id(40));
    let next_refresh = format!("M.R3_sandbox-{}", random_id(40));
    state.microsoft_tokens.access.insert(
        access.clone(),
        Utc::now() + TimeDelta::seconds(TOKEN_LIFETIME_SECS),
    );
    state.microsoft_tokens.refresh.insert(next_refresh.clone());
    state.records.microsoft_ads.tokens_issued += 1;
    drop(state);
    json_response(
        StatusCode::OK,
        json!({
            "token_type": "Bearer",
            "scope": "https://ads.microsoft.com/msads.manage",
            "expires_in": TOKEN_LIFETIME_SECS,
            "ext_expires_in": TOKEN_LIFETIME_SECS,
            "access_token": access,
            "refresh_token": next_refresh,
        }),
    )
}

/// Checks the four headers; the fault to answer otherwise.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let token = header("authorization").and_then(|a| a.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| {
        shared
            .lock()
            .microsoft_tokens
            .access
            .get(t)
            .is_some_and(|exp| *exp > Utc::now())
    });
    if !valid {
        return Err(Box::new(fault(
            StatusCode::UNAUTHORIZED,
            "AuthenticationTokenExpired",
            "Authentication token expired. Please renew it or obtain a new one.",
        )));
    }
    if !credential_ok(
        &shared.config.microsoft_developer_token,
        header("developertoken"),
    ) {
        return Err(Box::new(fault(
            StatusCode::UNAUTHORIZED,
            "InvalidCredentials",
            "Authentication failed. Either supplied credentials are invalid or the account is inactive.",
        )));
    }
    for name in ["customerid", "customeraccountid"] {
        let ok =
            header(name).is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(Box::new(fault(
                StatusCode::BAD_REQUEST,
                if name == "customerid" {
                    "InvalidCustomerId"
                } else {
                    "InvalidAccountId"
                },
                &format!("The {name} header is missing or not numeric."),
            )));
        }
    }
    Ok(())
}

/// `POST …/OfflineConversions/Apply` and `…/OfflineConversionAdjustments/Apply`.
async fn handle_apply(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::MicrosoftAds).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = apply(&shared, &headers, &body, kind);
    faults::finish(&shared, &conn, Platform::MicrosoftAds, drop_after, response)
}

/// Authenticates, validates, deduplicates and records one Apply call.
fn apply(shared: &Shared, headers: &HeaderMap, body: &[u8], kind: Kind) -> Response {
    let rejected = |response: Response| {
        shared
            .lock()
            .records
            .microsoft_ads
            .counters
            .rejected_requests += 1;
        response
    };
    {
        let mut state = shared.lock();
        if state.microsoft.throttle > 0 {
            state.microsoft.throttle -= 1;
            state.records.microsoft_ads.counters.faulted += 1;
            return json_response(StatusCode::BAD_REQUEST, call_rate_exceeded());
        }
    }
    if let Err(response) = authenticate(shared, headers) {
        return rejected(*response);
    }
    let collection = match kind {
        Kind::Conversions => "OfflineConversions",
        Kind::Adjustments => "OfflineConversionAdjustments",
    };
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    let Some(parsed) = parsed else {
        return rejected(fault(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "The request body is not a JSON object.",
        ));
    };
    if let Some(other) = parsed.keys().find(|k| *k != collection) {
        return rejected(fault(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("Unknown request field {other}; expected only {collection}."),
        ));
    }
    let items = parsed
        .get(collection)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        return rejected(fault(
            StatusCode::BAD_REQUEST,
            "OfflineConversionsNullOrEmpty",
            "The list of offline conversions cannot be null or empty.",
        ));
    }
    if items.len() > MAX_ITEMS {
        return rejected(fault(
            StatusCode::BAD_REQUEST,
            "OfflineConversionsLimitExceeded",
            "The list of offline conversions exceeds the limit of 1,000.",
        ));
    }
    let now = Utc::now();
    let mut state = shared.lock();
    let state = &mut *state;
    state.records.microsoft_ads.counters.received += items.len() as u64;
    let goals: Vec<String> = state
        .microsoft
        .goals
        .clone()
        .unwrap_or_else(|| DEFAULT_GOALS.iter().map(|g| g.to_string()).collect());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let result = match check_item(item, kind, &goals, &state.microsoft.clicks, now) {
            Err((code, message)) => Err(item_error(index, code, message)),
            Ok(item) => record(state, item, kind).map_err(|(c, m)| item_error(index, c, m)),
        };
        if let Err(e) = result {
            state.records.microsoft_ads.counters.rejected += 1;
            errors.push(e);
        }
    }
    json_response(StatusCode::OK, json!({"PartialErrors": errors}))
}

/// A valid item.
struct Item {
    name: String,
    time_text: String,
    time: i64,
    click: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    value: Option<f64>,
    currency: Option<String>,
    adjustment: Option<(String, String)>,
}

impl Item {
    /// The dedup key: goal, conversion time, click id (or the hashes when there is none).
    fn key(&self) -> (String, i64, String) {
        let who = self.click.clone().unwrap_or_else(|| {
            format!(
                "{}|{}",
                self.email.as_deref().unwrap_or_default(),
                self.phone.as_deref().unwrap_or_default()
            )
        });
        (self.name.clone(), self.time, who)
    }
}

/// Parses a UTC `dateTime` (`…Z` or `…+00:00`).
fn utc_time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let text = value?.as_str()?;
    let parsed = DateTime::parse_from_rfc3339(text).ok()?;
    (parsed.offset().local_minus_utc() == 0).then(|| parsed.with_timezone(&Utc))
}

/// Validates one item; `Err((ErrorCode, message))` names the field, never its value.
fn check_item(
    item: &Value,
    kind: Kind,
    goals: &[String],
    clicks: &HashMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Item, (&'static str, String)> {
    let Some(obj) = item.as_object() else {
        return Err(("InvalidRequest", "An item is not an object.".into()));
    };
    let allowed = if kind == Kind::Conversions {
        CONVERSION_FIELDS
    } else {
        ADJUSTMENT_FIELDS
    };
    if let Some(unknown) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err((
            "SandboxUnknownField",
            format!("{unknown} is not a field of this item."),
        ));
    }
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text("ConversionName").filter(|n| !n.trim().is_empty());
    let Some(name) = name.filter(|n| goals.contains(n)) else {
        return Err((
            "OfflineConversionNameInvalid",
            "The ConversionName is not the name of an offline conversion goal of this customer."
                .into(),
        ));
    };
    let Some(time) = utc_time(obj.get("ConversionTime")) else {
        return Err((
            "OfflineConversionTimeInvalid",
            "ConversionTime must be a UTC dateTime.".into(),
        ));
    };
    if time > now {
        return Err((
            "FutureConversionTimeCannotBeSet",
            "ConversionTime cannot be in the future.".into(),
        ));
    }
    if time < now - TimeDelta::days(MAX_AGE_DAYS) {
        return Err((
            "OfflineConversionTimeOutOfWindow",
            "ConversionTime must be within the last 90 days.".into(),
        ));
    }
    let click = text("MicrosoftClickId");
    if let Some(c) = &click {
        if c.len() != 32 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                "OfflineConversionMicrosoftClickIdInvalid",
                "MicrosoftClickId is not a valid Microsoft click id.".into(),
            ));
        }
        if let Some(clicked) = clicks.get(c) {
            if time < *clicked {
                return Err((
                    "ConversionTimeEarlierThanClickTime",
                    "The conversion time is earlier than the click time.".into(),
                ));
            }
        }
    }
    let email = text("HashedEmailAddress");
    let phone = text("HashedPhoneNumber");
    for (field, v) in [
        ("HashedEmailAddress", &email),
        ("HashedPhoneNumber", &phone),
    ] {
        if v.as_ref()
            .is_some_and(|h| !crate::testbed::sandbox::is_sha256_hex(h))
        {
            return Err((
                "InvalidRequest",
                format!("{field} must be a SHA-256 hex digest."),
            ));
        }
    }
    if click.is_none() && email.is_none() && phone.is_none() {
        return Err((
            "OfflineConversionMicrosoftClickIdInvalid",
            "A MicrosoftClickId, HashedEmailAddress or HashedPhoneNumber is required.".into(),
        ));
    }
    let (value_field, currency_field) = match kind {
        Kind::Conversions => ("ConversionValue", "ConversionCurrencyCode"),
        Kind::Adjustments => ("AdjustmentValue", "AdjustmentCurrencyCode"),
    };
    let value = match obj.get(value_field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|v| v >= 0.0) => n.as_f64(),
        Some(_) => {
            return Err((
                "OfflineConversionValueInvalid",
                format!("{value_field} must be a number not below zero."),
            ))
        }
    };
    let currency = text(currency_field);
    if let Some(c) = &currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err((
                "OfflineConversionCurrencyCodeInvalid",
                format!("{currency_field} is not a valid currency code."),
            ));
        }
    }
    let adjustment = match kind {
        Kind::Conversions => None,
        Kind::Adjustments => {
            let kind = text("AdjustmentType");
            let Some(kind) = kind.filter(|k| k == "Retract" || k == "Restate") else {
                return Err((
                    "OfflineConversionInvalidAdjustmentType",
                    "AdjustmentType must be Retract or Restate.".into(),
                ));
            };
            let Some(at) = utc_time(obj.get("AdjustmentTime")) else {
                return Err((
                    "OfflineConversionTimeInvalid",
                    "AdjustmentTime must be a UTC dateTime.".into(),
                ));
            };
            if at < time {
                return Err((
                    "OfflineConversionAdjustmentTimeEarlierThanConversionTime",
                    "AdjustmentTime cannot be earlier than ConversionTime.".into(),
                ));
            }
            if at > now {
                return Err((
                    "OfflineConversionFutureAdjustmentTimeCannotBeSet",
                    "AdjustmentTime cannot be in the future.".into(),
                ));
            }
            if kind == "Retract" && (obj.contains_key("AdjustmentValue") || currency.is_some()) {
                return Err((
                    "OfflineConversionAdjustmentValueNotExpected",
                    "A Retract takes no AdjustmentValue or AdjustmentCurrencyCode.".into(),
                ));
            }
            if kind == "Restate" && value.is_none() {
                return Err((
                    "OfflineConversionAdjustmentValueRequired",
                    "A Restate needs an AdjustmentValue.".into(),
                ));
            }
            Some((kind, text("AdjustmentTime").unwrap_or_default()))
        }
    };
    Ok(Item {
        name,
        time_text: text("ConversionTime").unwrap_or_default(),
        time: time.timestamp(),
        click,
        email,
        phone,
        value,
        currency,
        adjustment,
    })
}

/// Records a valid item: a new conversion, an ignored duplicate, or an adjustment of a recorded one.
fn record(
    state: &mut crate::testbed::sandbox::SandboxState,
    item: Item,
    kind: Kind,
) -> Result<(), (&'static str, String)> {
    let key = item.key();
    let records = &mut state.records.microsoft_ads;
    let ledger = &mut state.microsoft;
    match kind {
        Kind::Conversions => {
            if !ledger.ever.insert(key.clone()) {
                records.counters.duplicate_sends += 1;
            }
            if ledger.seen.contains_key(&key) {
                // "The first instance will be used and the others will be ignored."
                records.counters.deduplicated += 1;
                return Ok(());
            }
            ledger.seen.insert(key, records.conversions.len());
            records.counters.accepted += 1;
            records.counters.unique += 1;
            records.conversions.push(MsConversion {
                conversion_name: item.name,
                conversion_time: item.time_text,
                microsoft_click_id: item.click,
                hashed_email: item.email,
                hashed_phone: item.phone,
                value: item.value,
                currency: item.currency,
                retracted: false,
                restated_value: None,
            });
            Ok(())
        }
        Kind::Adjustments => {
            let Some(&at) = ledger.seen.get(&key) else {
                return Err(("SandboxUnknownConversion", "No recorded conversion has this ConversionName, ConversionTime and MicrosoftClickId.".into()));
            };
            let (adjustment_type, adjustment_time) = item.adjustment.unwrap_or_default();
            let id = format!("{key:?}|{adjustment_type}|{adjustment_time}");
            let conversion = &mut records.conversions[at];
            if !ledger.adjusted.insert(id) || conversion.retracted {
                records.counters.duplicate_sends += 1;
                records.counters.deduplicated += 1;
                return Ok(());
            }
            if adjustment_type == "Retract" {
                conversion.retracted = true;
            } else {
                conversion.restated_value = item.value;
            }
            records.counters.accepted += 1;
            records.counters.unique += 1;
            records.adjustments.push(MsAdjustment {
                adjustment_type,
                conversion_name: item.name,
                conversion_time: item.time_text,
                microsoft_click_id: item.click,
                adjustment_time,
                value: item.value,
                currency: item.currency,
            });
            Ok(())
        }
    }
}

/// `POST …/ConversionGoals/QueryByIds`: the offline goals (ids are their positions).
async fn handle_goals(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = authenticate(&shared, &headers) {
        return *response;
    }
    let request: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
    let known = [
        "ConversionGoalIds",
        "ConversionGoalTypes",
        "ReturnAdditionalFields",
    ];
    let Some(request) = request.filter(|r| r.keys().all(|k| known.contains(&k.as_str()))) else {
        return fault(StatusCode::BAD_REQUEST, "InvalidRequest", "The request must be a JSON object of ConversionGoalIds, ConversionGoalTypes and ReturnAdditionalFields.");
    };
    let offline = request
        .get("ConversionGoalTypes")
        .and_then(Value::as_str)
        .is_some_and(|t| t.split([',', ' ']).any(|t| t == "OfflineConversion"));
    let names = shared
        .lock()
        .microsoft
        .goals
        .clone()
        .unwrap_or_else(|| DEFAULT_GOALS.iter().map(|g| g.to_string()).collect());
    let goals: Vec<Value> = if offline {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"Id": (i + 1).to_string(), "Name": n, "Type": "OfflineConversion", "Status": "Active"}))
            .collect()
    } else {
        Vec::new()
    };
    json_response(
        StatusCode::OK,
        json!({"ConversionGoals": goals, "PartialErrors": []}),
    )
}

/// `POST /_sandbox/microsoft_ads/{throttle|clicks|goals}`.
async fn handle_admin(
    State(shared): State<Arc<Shared>>,
    Path(setting): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut state = shared.lock();
    match setting.as_str() {
        "throttle" => {
            let n = body.get("requests").and_then(Value::as_u64).unwrap_or(1);
            state.microsoft.throttle = u32::try_from(n).unwrap_or(u32::MAX);
        }
        "clicks" => {
            for click in body
                .get("clicks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = click.get("msclkid").and_then(Value::as_str);
                let at = utc_time(click.get("clicked_at"));
                match (id, at) {
                    (Some(id), Some(at)) => {
                        state.microsoft.clicks.insert(id.to_string(), at);
                    }
                    _ => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "each click needs msclkid and a UTC clicked_at"}),
                        )
                    }
                }
            }
        }
        "goals" => {
            let names = body.get("names").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
            state.microsoft.goals = names;
        }
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "unknown microsoft_ads setting (throttle, clicks, goals)"}),
            )
        }
    }
    json_response(StatusCode::OK, json!({"ok": true}))
}

impl super::SandboxHandle {
    /// The next `requests` Microsoft Apply calls answer 117 `CallRateExceeded`.
    pub fn microsoft_throttle(&self, requests: u32) {
        self.shared.lock().microsoft.throttle = requests;
    }

    /// Registers a Microsoft click and its time: a conversion timed before it is refused.
    pub fn microsoft_click(&self, msclkid: &str, clicked_at: DateTime<Utc>) {
        self.shared
            .lock()
            .microsoft
            .clicks
            .insert(msclkid.to_string(), clicked_at);
    }

    /// Sets the offline conversion goals that exist.
    pub fn microsoft_goals(&self, names: &[&str]) {
        self.shared.lock().microsoft.goals = Some(names.iter().map(|n| n.to_string()).collect());
    }
}
