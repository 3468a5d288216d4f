//! Google Ads API: OAuth `POST /token` and `POST /{version}/customers/{cid}:{method}` (platforms.md §2.1–2.3).
//!
//! Requests carry `Authorization: Bearer` (a token this sandbox's `/token` issued), a
//! `developer-token` header and optionally `login-customer-id`. Bodies are proto3 JSON (see
//! [`schema`]); shape errors fail the whole request with Google's error envelope, rule violations fail
//! single rows inside `partialFailureError`, located by index. The sandbox cannot know click times or
//! conversion-action settings, so `TOO_RECENT_EVENT`, `CONVERSION_PRECEDES_EVENT` and the per-action
//! click window are not simulated; the 90-day maximum is.

mod adjustments;
mod conversions;
mod oauth;
mod schema;
mod upload;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::SendLog;
use super::{credential_ok, json_response, random_id, Shared};
use crate::testbed::sandbox::Platform;
use crate::testbed::sandbox::FUTURE_TOLERANCE_SECS;

// ---------------------------------------------------------------------------------------------
// Request types
// ---------------------------------------------------------------------------------------------

/// One accepted conversion as the adjustment service sees it.
#[derive(Debug, Clone)]
struct StoredConversion {
    /// The order id, when the upload had one.
    order_id: Option<String>,
    /// The conversion time.
    conversion_time: DateTime<FixedOffset>,
    /// Set by a retraction or a restatement to 0; later adjustments are ignored.
    retracted: bool,
    /// Time of the newest restatement.
    last_restatement: Option<DateTime<FixedOffset>>,
}

/// Google's memory of accepted conversions, per conversion action id.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ledger {
    /// Every accepted conversion.
    conversions: Vec<StoredConversion>,
    /// (action id, order id) → index into `conversions`; order ids are unique forever.
    by_order: HashMap<(String, String), usize>,
    /// (action id, click id, conversion time as UTC) → index, for uploads and pairs without order id.
    by_click: HashMap<(String, String, String), usize>,
    /// Every conversion and adjustment key received, for `duplicate_sends`.
    sends: SendLog,
}

impl Ledger {
    /// Makes a conversion imported through the Data Manager API known here, so that a Google Ads
    /// API adjustment by order id finds it: Google keeps one set of conversions per action.
    pub(crate) fn import(
        &mut self,
        action_id: &str,
        order_id: &str,
        conversion_time: DateTime<FixedOffset>,
    ) {
        let key = (action_id.to_string(), order_id.to_string());
        if self.by_order.contains_key(&key) {
            return;
        }
        self.by_order.insert(key, self.conversions.len());
        self.conversions.push(StoredConversion {
            order_id: Some(order_id.to_string()),
            conversion_time,
            retracted: false,
            last_restatement: None,
        });
    }
}

/// The key of a click at a conversion time, comparable whatever offset was used.
fn click_key(
    action_id: &str,
    click: &str,
    time: &DateTime<FixedOffset>,
) -> (String, String, String) {
    let utc = time
        .with_timezone(&Utc)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    (action_id.to_string(), click.to_string(), utc)
}

/// A rule violation of one row, reported inside `partialFailureError`.
struct RowError {
    /// The error-code family, e.g. `conversionUploadError`.
    family: &'static str,
    /// The enum value, e.g. `ORDER_ID_ALREADY_IN_USE`.
    code: &'static str,
    /// The message; names fields, never values.
    message: String,
    /// The proto field name inside the row, when one field is to blame.
    field: Option<&'static str>,
}

impl RowError {
    /// A row error.
    fn new(
        family: &'static str,
        code: &'static str,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        RowError {
            family,
            code,
            message: message.into(),
            field,
        }
    }

    /// Whether this is a duplicate the platform's dedup recognised (counted as deduplicated).
    fn is_duplicate(&self) -> bool {
        matches!(
            self.code,
            "ORDER_ID_ALREADY_IN_USE"
                | "DUPLICATE_ORDER_ID"
                | "CLICK_CONVERSION_ALREADY_EXISTS"
                | "DUPLICATE_CLICK_CONVERSION_IN_REQUEST"
                | "RESTATEMENT_ALREADY_EXISTS"
                | "DUPLICATE_ADJUSTMENT_IN_REQUEST"
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers shared by conversions and adjustments
// ---------------------------------------------------------------------------------------------

/// Parses `yyyy-mm-dd hh:mm:ss+hh:mm` (offset required, no fractions).
fn parse_date_time(s: &str) -> Option<DateTime<FixedOffset>> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 25
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 | 22 => *c == b':',
            19 => *c == b'+' || *c == b'-',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%:z").ok()
}

/// The action id of `customers/{cid}/conversionActions/{id}`, if well formed.
fn action_id(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix("customers/")?;
    let (cid, rest) = rest.split_once('/')?;
    let id = rest.strip_prefix("conversionActions/")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(cid) && digits(id)).then_some(id)
}

/// A string field of a row.
fn text<'a>(row: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    row.get(key).and_then(Value::as_str)
}

/// `REQUIRED`: a required `field` of a row is missing.
fn required(field: &'static str) -> RowError {
    RowError::new(
        "fieldError",
        "REQUIRED",
        Some(field),
        "The required field was not present.",
    )
}

/// A date-time `field` not in Google's `yyyy-mm-dd hh:mm:ss+hh:mm` form.
fn bad_time(field: &'static str) -> RowError {
    RowError::new(
        "dateError",
        "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET",
        Some(field),
        "The string date time must be in the format yyyy-mm-dd hh:mm:ss+|-hh:mm.",
    )
}

/// The row's `conversionAction` and its numeric id.
fn check_action(row: &Map<String, Value>) -> Result<(&str, &str), RowError> {
    let action = text(row, "conversionAction").ok_or_else(|| required("conversion_action"))?;
    let id = action_id(action).ok_or_else(|| {
        RowError::new(
            "requestError",
            "RESOURCE_NAME_MALFORMED",
            Some("conversion_action"),
            "The resource name must be customers/{customer_id}/conversionActions/{action_id}.",
        )
    })?;
    Ok((action, id))
}

/// The row's date-time `key` (proto name `field`): present, well formed, not in the future; as
/// sent and parsed.
fn check_date_time<'a>(
    row: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
    now: DateTime<Utc>,
) -> Result<(&'a str, DateTime<FixedOffset>), RowError> {
    let time_text = text(row, key).ok_or_else(|| required(field))?;
    let time = parse_date_time(time_text).ok_or_else(|| bad_time(field))?;
    if !not_in_future(&time, now) {
        return Err(RowError::new(
            "dateError",
            "LATER_THAN_MAXIMUM_DATE",
            Some(field),
            "The date time is in the future.",
        ));
    }
    Ok((time_text, time))
}

/// Checks a date-time is not later than now plus the tolerance.
fn not_in_future(t: &DateTime<FixedOffset>, now: DateTime<Utc>) -> bool {
    t.with_timezone(&Utc) <= now + chrono::Duration::seconds(FUTURE_TOLERANCE_SECS)
}

/// Checks user identifiers: ≤ 5, each exactly one hashed email or phone as SHA-256 lowercase hex.
fn check_user_identifiers(ids: Option<&Value>) -> Result<(Vec<String>, Vec<String>), RowError> {
    let mut emails = Vec::new();
    let mut phones = Vec::new();
    let Some(list) = ids.and_then(Value::as_array) else {
        return Ok((emails, phones));
    };
    if list.len() > 5 {
        return Err(RowError::new(
            "collectionSizeError",
            "TOO_MANY",
            Some("user_identifiers"),
            "At most 5 user identifiers are allowed.",
        ));
    }
    for id in list {
        let unsupported = ["mobileId", "thirdPartyUserId", "addressInfo"]
            .iter()
            .any(|k| id.get(*k).is_some_and(|v| !v.is_null()));
        let email = id.get("hashedEmail").and_then(Value::as_str);
        let phone = id.get("hashedPhoneNumber").and_then(Value::as_str);
        if unsupported || (email.is_none() && phone.is_none()) {
            return Err(RowError::new(
                "conversionUploadError",
                "UNSUPPORTED_USER_IDENTIFIER",
                Some("user_identifiers"),
                "Only hashed_email and hashed_phone_number user identifiers are supported.",
            ));
        }
        if email.is_some() && phone.is_some() {
            return Err(RowError::new(
                "conversionUploadError",
                "INVALID_USER_IDENTIFIER",
                Some("user_identifiers"),
                "A user identifier must set exactly one identifier.",
            ));
        }
        for (value, out) in [(email, &mut emails), (phone, &mut phones)] {
            if let Some(v) = value {
                if !super::is_sha256_hex(v) {
                    return Err(RowError::new(
                        "conversionUploadError",
                        "INVALID_USER_IDENTIFIER",
                        Some("user_identifiers"),
                        "User identifiers must be SHA-256 hashes (64 lowercase hex characters).",
                    ));
                }
                out.push(v.to_string());
            }
        }
    }
    Ok((emails, phones))
}

/// Checks an ISO 4217 currency code as Google documents it: three uppercase letters.
fn currency_ok(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

// ---------------------------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------------------------

/// The Google routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/token", post(oauth::handle_token))
        .route("/{version}/customers/{call}", post(handle_call))
}

/// `POST /{version}/customers/{cid}:uploadClickConversions|uploadConversionAdjustments`.
async fn handle_call(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    Path((version, call)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((customer_id, method)) = call.split_once(':') else {
        return not_found();
    };
    if !matches!(
        method,
        "uploadClickConversions" | "uploadConversionAdjustments"
    ) || !version_is_valid(&version)
    {
        return not_found();
    }
    let drop_after = match faults::gate(&shared, &conn, Platform::GoogleAds).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let ctx = Call {
        version: &version,
        customer_id,
    };
    let response = match authenticate(&shared, &ctx, &headers) {
        Err(response) => {
            shared.lock().records.google_ads.counters.rejected_requests += 1;
            *response
        }
        Ok(())
            if method == "uploadClickConversions"
                && !shared.config.google_ads_click_uploads_allowlisted =>
        {
            shared.lock().records.google_ads.counters.rejected_requests += 1;
            let detail = json!({"errorCode": {"notAllowlistedError": "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"},
                "message": "Customer is not allowlisted for accessing this feature."});
            error(
                &ctx,
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "The caller does not have permission",
                &[detail],
            )
        }
        Ok(()) if method == "uploadClickConversions" => conversions::process(&shared, &ctx, &body),
        Ok(()) => adjustments::process(&shared, &ctx, &body),
    };
    faults::finish(&shared, &conn, Platform::GoogleAds, drop_after, response)
}

/// What every upload handler needs to know about its call.
struct Call<'a> {
    /// API version from the path, e.g. `v21`.
    version: &'a str,
    /// Customer id from the path.
    customer_id: &'a str,
}

/// `v` followed by digits, e.g. `v21`.
fn version_is_valid(version: &str) -> bool {
    version
        .strip_prefix('v')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A 10-digit customer id without dashes.
fn customer_id_ok(cid: &str) -> bool {
    cid.len() == 10 && cid.bytes().all(|b| b.is_ascii_digit())
}

/// A whole-request failure (boxed: responses are large and errors are the rare path).
fn fail<T>(response: Response) -> Result<T, Box<Response>> {
    Err(Box::new(response))
}

/// Checks the bearer token, developer token and customer ids.
fn authenticate(shared: &Shared, ctx: &Call<'_>, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(bearer) = header_str("authorization").and_then(|v| v.strip_prefix("Bearer ")) else {
        return fail(error(ctx, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            &[]));
    };
    let expiry = shared.lock().google_tokens.get(bearer).copied();
    match expiry {
        None => {
            return fail(auth_failure(
                ctx,
                "OAUTH_TOKEN_INVALID",
                "Oauth token is invalid.",
            ))
        }
        Some(at) if at < Utc::now() => {
            return fail(auth_failure(
                ctx,
                "OAUTH_TOKEN_EXPIRED",
                "Oauth token is expired.",
            ))
        }
        Some(_) => {}
    }
    // Optional since September 2026: checked only when the sandbox is given one and one is sent.
    match header_str("developer-token") {
        None => {}
        token
            if shared.config.google_developer_token.is_some()
                && !credential_ok(&shared.config.google_developer_token, token) =>
        {
            return fail(auth_failure(
                ctx,
                "DEVELOPER_TOKEN_INVALID",
                "The developer token is not valid.",
            ));
        }
        _ => {}
    }
    let login_ok = header_str("login-customer-id").is_none_or(customer_id_ok);
    if !customer_id_ok(ctx.customer_id) || !login_ok {
        let detail = json!({"errorCode": {"requestError": "INVALID_CUSTOMER_ID"},
            "message": "Customer ids must be 10 digits without dashes (path and login-customer-id)."});
        return fail(invalid_argument(ctx, detail));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// The `@type` of Google Ads failure details for this API version.
fn failure_type(ctx: &Call<'_>) -> String {
    format!(
        "type.googleapis.com/google.ads.googleads.{}.errors.GoogleAdsFailure",
        ctx.version
    )
}

/// A whole-request error: `{"error": {code, message, status, details: [GoogleAdsFailure]}}`.
fn error(
    ctx: &Call<'_>,
    status: StatusCode,
    status_name: &str,
    message: &str,
    errors: &[Value],
) -> Response {
    let mut body =
        json!({"error": {"code": status.as_u16(), "message": message, "status": status_name}});
    if !errors.is_empty() {
        body["error"]["details"] = json!([{
            "@type": failure_type(ctx), "errors": errors, "requestId": random_id(22),
        }]);
    }
    json_response(status, body)
}

/// A 400 `INVALID_ARGUMENT` with one GoogleAdsFailure error.
fn invalid_argument(ctx: &Call<'_>, detail: Value) -> Response {
    error(
        ctx,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
        &[detail],
    )
}

/// A 401 with an `authenticationError`.
fn auth_failure(ctx: &Call<'_>, code: &str, message: &str) -> Response {
    let detail = json!({"errorCode": {"authenticationError": code}, "message": message});
    error(ctx, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        &[detail])
}

/// Google's 404 for an unknown method or version.
fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": {
            "code": 404, "message": "The requested URL was not found on this server.", "status": "NOT_FOUND",
        }}),
    )
}
