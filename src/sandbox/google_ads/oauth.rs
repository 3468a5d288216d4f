//! Google's OAuth 2.0 token endpoint, refresh-token grant only (what a server-side uploader uses).
//!
//! Errors follow RFC 6749 as Google returns them: `{"error", "error_description"}` with 400 for a
//! bad request or grant and 401 for an unknown client.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde_json::{json, Value};

use crate::sandbox::{credential_ok, json_response, parse_form, random_id, Shared};

/// Lifetime of issued access tokens, as Google's token endpoint reports it.
const TOKEN_LIFETIME_SECS: i64 = 3599;

/// `POST /token`: exchanges a refresh token for an access token.
pub(super) async fn handle_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let fields: HashMap<String, String> = if is_json {
        serde_json::from_slice::<HashMap<String, Value>>(&body)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect()
    } else {
        parse_form(&body).unwrap_or_default().into_iter().collect()
    };
    let field = |k: &str| fields.get(k).map(String::as_str);
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        json_response(
            status,
            json!({"error": error, "error_description": description}),
        )
    };
    let config = &shared.config;
    match field("grant_type") {
        Some("refresh_token") => {}
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: grant_type",
            )
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Invalid grant_type",
            )
        }
    }
    if field("client_id").is_none_or(str::is_empty) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Could not determine client ID from request.",
        );
    }
    if !credential_ok(&config.google_client_id, field("client_id")) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        );
    }
    if !credential_ok(&config.google_client_secret, field("client_secret")) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized");
    }
    if field("refresh_token").is_none_or(str::is_empty) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: refresh_token",
        );
    }
    if !credential_ok(&config.google_refresh_token, field("refresh_token")) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request");
    }
    let token = format!("ya29.sandbox-{}", random_id(40));
    {
        let mut state = shared.lock();
        let expires = Utc::now() + chrono::Duration::seconds(TOKEN_LIFETIME_SECS);
        state.google_tokens.insert(token.clone(), expires);
        state.records.google_ads.tokens_issued += 1;
    }
    json_response(
        StatusCode::OK,
        json!({
            "access_token": token,
            "expires_in": TOKEN_LIFETIME_SECS,
            "scope": "https://www.googleapis.com/auth/adwords",
            "token_type": "Bearer",
        }),
    )
}
