//! `pgcapi check` for Data Manager: the token, then a `validateOnly` ingest of one synthetic event
//! per conversion action of the rules (Google validates it and records nothing).

use super::*;

impl GoogleDataManager {
    /// The health check: the token, then a `validateOnly` ingest of one synthetic event to the
    /// conversion `action` of a rule, reported as three lines: the token, the operating account,
    /// the conversion action.
    pub(super) async fn check(&self, action: Option<&str>) -> Vec<Health> {
        let account = &self.operating_account;
        let token = match self.auth.access_token().await {
            Ok(token) => token,
            Err(answer) => {
                return Health::only(false, format!("token: {}", self.auth.refusal(answer)))
            }
        };
        let mut out = vec![Health::pass(format!(
            "token: obtained with {} (scope datamanager)",
            self.auth.describe()
        ))];
        let Some(action) = action else {
            out.push(Health::pass(format!(
                "account {account}: not tried (no rule gives this destination a conversion \
                 action, so no validateOnly request was sent)"
            )));
            return out;
        };
        let Some(id) = product_destination_id(action) else {
            out.push(Health::fail(format!(
                "conversion action {action}: not a conversion action id"
            )));
            return out;
        };
        let event = match encode_event(
            &synthetic(&self.name, Some(action)),
            Some(0.into()),
            Utc::now(),
        ) {
            Ok(event) => event,
            Err(outcome) => {
                out.push(Health::fail(format!(
                    "cannot build the test event: {outcome:?}"
                )));
                return out;
            }
        };
        let request = self.request(id).with("validateOnly", true);
        let response = self
            .http
            .post(&request.url)
            .bearer_auth(token.expose())
            .json(&request.body(&[event], &[0]))
            .send()
            .await;
        match response {
            Ok(r) => self.judge_check(id, Answer::read(r).await, out),
            Err(e) => {
                out.push(Health::fail(unreachable(&self.base, e)));
                out
            }
        }
    }

    /// Adds to `out` (the token line) what the answer to the health check's ingest says.
    fn judge_check(&self, id: &str, answer: Answer, mut out: Vec<Health>) -> Vec<Health> {
        let account = &self.operating_account;
        let (status, body) = (answer.status, answer.json());
        if status.is_success() {
            out.push(Health::pass(format!(
                "account {account}: accepted a validateOnly request (nothing recorded)"
            )));
            out.push(Health::pass(format!(
                "conversion action {id}: accepted as product destination"
            )));
            return out;
        }
        let error = body.get("error").unwrap_or(&Value::Null);
        let mut words = vec![format!(
            "HTTP {status} {}: {}",
            field(error, "status"),
            field(error, "message")
        )];
        words.extend(
            violations(error)
                .map(|v| format!("{}: {}", field(v, "field"), field(v, "description"))),
        );
        let text = words.join("; ");
        let lower = text.to_ascii_lowercase();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            out[0] = Health::fail(format!("token: refused by Data Manager ({text})"));
        } else if lower.contains("product_destination") || lower.contains("productdestination") {
            out.push(Health::pass(format!("account {account}: reachable")));
            out.push(Health::fail(format!(
                "conversion action {id}: refused ({text})"
            )));
        } else if lower.contains("account") || status == reqwest::StatusCode::FORBIDDEN {
            out.push(Health::fail(format!("account {account}: refused ({text})")));
        } else {
            out.push(Health::fail(format!(
                "validateOnly request refused ({text})"
            )));
        }
        out
    }
}
