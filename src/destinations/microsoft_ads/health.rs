//! `pgcapi check` for Microsoft Advertising: the token exchange, then a read of the account's
//! offline conversion goals (nothing is recorded).

use super::*;

impl MicrosoftAds {
    /// The health check: obtains an access token, then reads the customer's offline conversion
    /// goals (`ConversionGoals/QueryByIds` with no ids and type `OfflineConversion`), which sends
    /// nothing, proves the developer token, customer and account ids, and shows whether every goal
    /// the rules name (`wanted`) exists.
    pub(super) async fn check(&self, wanted: std::collections::BTreeSet<&str>) -> (bool, String) {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(answer) => return (false, answer.error()),
        };
        let request =
            json!({"ConversionGoalIds": null, "ConversionGoalTypes": "OfflineConversion"});
        let url = format!("{}{GOALS_PATH}", self.base);
        let response = match self.authorized(&url, &token).json(&request).send().await {
            Ok(r) => r,
            Err(e) => {
                return (
                    false,
                    format!("microsoft ads: request failed: {}", e.without_url()),
                )
            }
        };
        let answer = crate::destinations::http::Answer::read(response).await;
        let body = answer.json();
        let faults: Vec<MsError> = ["Errors", "OperationErrors", "BatchErrors"]
            .iter()
            .flat_map(|f| errors(&body, f))
            .collect();
        let Some(goals) = body.get("ConversionGoals").and_then(Value::as_array) else {
            let why = faults
                .first()
                .map(MsError::describe)
                .unwrap_or_else(|| excerpt(&answer.text));
            return (
                false,
                format!(
                    "cannot read the offline conversion goals: HTTP {}: {why}",
                    answer.status.as_u16()
                ),
            );
        };
        let names: Vec<&str> = goals
            .iter()
            .filter_map(|g| g.get("Name").and_then(Value::as_str))
            .collect();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !names.contains(w))
            .collect();
        if missing.is_empty() {
            (
            true,
            format!(
                "token, developer token, customer {} and account {} accepted; offline goals found: {}",
                self.customer_id,
                self.account_id,
                wanted.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
        } else {
            (
                false,
                format!(
                    "no offline conversion goal named {} (the account has: {})",
                    missing.join(", "),
                    names.join(", ")
                ),
            )
        }
    }
}
