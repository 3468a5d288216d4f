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

mod apply;
mod auth;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::testbed::sandbox::records::Counters;
use crate::testbed::sandbox::{json_response, random_id, Shared};
use apply::{handle_apply, utc_time};
use auth::{authenticate, handle_token};

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

impl Ledger {
    /// The names of the offline goals that exist.
    fn goal_names(&self) -> Vec<String> {
        self.goals
            .clone()
            .unwrap_or_else(|| DEFAULT_GOALS.iter().map(|g| g.to_string()).collect())
    }
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
    let names = shared.lock().microsoft.goal_names();
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
