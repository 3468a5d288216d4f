//! Microsoft's identity platform token endpoint and the four headers every Campaign Management call
//! carries.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{TimeDelta, Utc};
use serde_json::json;

use super::{fault, TOKEN_LIFETIME_SECS};
use crate::testbed::sandbox::{credential_ok, json_response, parse_form, random_id, Shared};

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(super) async fn handle_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
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
pub(super) fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
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
