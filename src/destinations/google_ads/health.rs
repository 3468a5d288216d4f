//! `pgcapi check` for Google Ads: the token exchange, then one synthetic conversion sent with
//! `validateOnly` (Google validates it and records nothing).

use super::*;

impl GoogleAds {
    /// The health check: the OAuth exchange, then an `uploadClickConversions` of one synthetic
    /// conversion with `validateOnly: true` (Google validates it and records nothing), to the
    /// conversion `action` of a rule that sends to the destination.
    pub(super) async fn check(&self, action: Option<&str>) -> (bool, String) {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(answer) => return (false, self.auth.refusal(answer)),
        };
        let Some(action) = action else {
            return (
                true,
                "OAuth refresh token accepted; no rule gives this destination a conversion action, \
                 so no validateOnly upload was tried"
                    .into(),
            );
        };
        let plan = self.plan(&[synthetic(&self.name, Some(action))], Utc::now());
        if let Some((_, outcome)) = plan.not_sent.first() {
            return (
                false,
                format!("cannot build the test conversion: {outcome:?}"),
            );
        }
        let request = plan.requests[0].clone().with("validateOnly", true);
        let response = self
            .authorized(&request.url, &token)
            .json(&request.body(&plan.items, &request.rows))
            .send()
            .await;
        match response {
            Ok(r) => self.judge_check(action, Answer::read(r).await),
            Err(e) => (false, unreachable(&self.base, e)),
        }
    }

    /// What the answer to the health check's upload says.
    fn judge_check(&self, action: &str, answer: Answer) -> (bool, String) {
        let (status, body) = (answer.status, answer.json());
        if status.is_success() {
            let failure = body.get("partialFailureError").unwrap_or(&Value::Null);
            let row_errors = error_words(failure);
            if let Some(e) = row_errors.iter().find(|e| e.starts_with(NOT_ALLOWLISTED)) {
                return (false, format!("{NOT_ALLOWLISTED_ADVICE} ({e})"));
            }
            if let Some(e) = row_errors.iter().find(|e| e.contains("CONVERSION_ACTION")) {
                return (
                    false,
                    format!("conversion action {action} refused in a validateOnly upload: {e}"),
                );
            }
            let credentials = match self.auth.describe() {
                kind if kind.starts_with("user OAuth") => "OAuth",
                kind => kind,
            };
            let developer = if self.developer_token.is_some() {
                ", developer token"
            } else {
                ""
            };
            let mut text = format!(
                "{credentials}{developer} and customer {} accepted a validateOnly upload of one \
                 synthetic conversion (nothing recorded)",
                self.customer_id
            );
            if let Some(e) = row_errors.first() {
                text.push_str(&format!(
                    "; the synthetic row itself was refused ({e}), as made-up data may be"
                ));
            }
            return (true, text);
        }
        let error = body.get("error").unwrap_or(&Value::Null);
        let codes = error_words(error);
        if codes.iter().any(|c| c.starts_with(NOT_ALLOWLISTED)) {
            let codes = codes.join("; ");
            return (
                false,
                format!("{NOT_ALLOWLISTED_ADVICE} (HTTP {status}: {codes})"),
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
}

/// `CODE: message` of each error in a Google Ads failure (`details[].errors[]`).
fn error_words(status: &Value) -> Vec<String> {
    ads_errors(status)
        .into_iter()
        .map(|e| {
            let code = if e.code.is_empty() {
                "UNKNOWN"
            } else {
                &e.code
            };
            format!("{code}: {}", e.message)
        })
        .collect()
}
