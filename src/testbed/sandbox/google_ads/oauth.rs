//! Google's OAuth 2.0 token endpoint: the refresh-token grant (user OAuth) and the JWT bearer grant
//! (RFC 7523, service accounts).
//!
//! A JWT assertion must be RS256 with `iss`, `scope`, an `aud` naming a token endpoint, and `iat` /
//! `exp` around now at most an hour apart; with a configured public key its signature is verified.
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

use crate::testbed::sandbox::{credential_ok, json_response, parse_form, random_id, Shared};

/// The JWT bearer grant type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The claims a service account's assertion carries.
#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// The JWT bearer grant: checks the assertion, issues a token with its scopes.
fn jwt_grant(shared: &Shared, assertion: Option<&str>) -> Response {
    let refuse = |description: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": description}),
        )
    };
    let Some(assertion) = assertion.filter(|a| !a.is_empty()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": "Missing required parameter: assertion"}),
        );
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let key = match &shared.config.google_service_account_public_key {
        Some(pem) => match jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()) {
            Ok(key) => key,
            Err(_) => return refuse("sandbox: the configured public key is not an RSA PEM key"),
        },
        None => {
            validation.insecure_disable_signature_validation();
            jsonwebtoken::DecodingKey::from_secret(&[])
        }
    };
    let claims = match jsonwebtoken::decode::<Claims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind;
            return refuse(match e.kind() {
                ErrorKind::InvalidSignature => "Invalid JWT Signature.",
                ErrorKind::ExpiredSignature => "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
                ErrorKind::InvalidAlgorithm => "Invalid JWT: the algorithm must be RS256.",
                _ => "Invalid JWT.",
            });
        }
    };
    if claims.iss.is_empty() || !claims.aud.ends_with("/token") {
        return refuse("Invalid JWT: iss and an aud naming the token endpoint are required.");
    }
    if claims.exp - claims.iat > 3600 || claims.exp <= claims.iat {
        return refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    if claims.scope.trim().is_empty() {
        return refuse("Invalid OAuth scope or ID token audience provided.");
    }
    let token = format!("ya29.sandbox-sa-{}", random_id(36));
    {
        let mut state = shared.lock();
        let expires = Utc::now() + chrono::Duration::seconds(TOKEN_LIFETIME_SECS);
        state.google_tokens.insert(token.clone(), expires);
        state
            .google_token_scopes
            .insert(token.clone(), claims.scope.clone());
        state.records.google_data_manager.jwt_tokens_issued += 1;
    }
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": TOKEN_LIFETIME_SECS, "token_type": "Bearer"}),
    )
}

/// Lifetime of issued access tokens, as Google's token endpoint reports it.
const TOKEN_LIFETIME_SECS: i64 = 3599;

/// The string fields of a token request: a JSON object or a form, as the content type says.
fn token_fields(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        serde_json::from_slice::<HashMap<String, Value>>(body)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect()
    } else {
        parse_form(body).unwrap_or_default().into_iter().collect()
    }
}

/// `POST /token`: exchanges a refresh token for an access token.
pub(super) async fn handle_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = token_fields(&headers, &body);
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
        Some(JWT_BEARER) => return jwt_grant(&shared, field("assertion")),
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
