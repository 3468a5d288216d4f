//! The checks of meaning on a typed config ([`Config::validate`]): names that must be SQL identifiers,
//! codes that must be ISO codes, rules that must name existing rules and destinations and give each
//! destination what its platform needs. A destination's own keys are checked when it is read
//! (`destination/`), as they depend on its platform alone.

use super::{Config, PlatformConfig, Problem, RuleConfig, Template};
use crate::identity::MatchKey;
use crate::platform::Platform;
use std::collections::BTreeSet;

/// The problems found so far.
#[derive(Default)]
struct Found(Vec<Problem>);

impl Found {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Checks the meaning of a parsed config; returns every problem found.
    pub fn validate(&self) -> Vec<Problem> {
        let mut found = Found::default();
        self.check_sections(&mut found);
        let mut seen = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = RulePath { index: i, rule };
            if !seen.insert(rule.name.as_str()) {
                found.push(at.key("name"), "is used by another rule");
            }
            check_rule_shape(&at, &mut found);
            self.check_adjustment(&at, &mut found);
            self.check_rule_destinations(&at, &mut found);
            self.check_conversion_action(&at, &mut found);
        }
        found.0
    }

    /// `[source]`, `[defaults]`, `[capture]`, `[metrics]` and `[retention]`.
    fn check_sections(&self, found: &mut Found) {
        if self.source.url.expose().trim().is_empty() {
            found.push("source.url", "must not be empty");
        }
        for (key, value) in [
            ("source.publication", &self.source.publication),
            ("source.slot", &self.source.slot),
            ("source.schema", &self.source.schema),
        ] {
            if !is_identifier(value) {
                found.push(
                    key,
                    format!("{value:?} must be a lowercase SQL identifier (a-z, 0-9, _)"),
                );
            }
        }
        let region = &self.defaults.region;
        if region
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .is_err()
        {
            found.push(
                "defaults.region",
                format!("{region:?} is not an ISO 3166-1 alpha-2 region code"),
            );
        }
        let currency = &self.defaults.currency;
        if !is_currency(currency) {
            found.push(
                "defaults.currency",
                format!("{currency:?} is not a three-letter ISO 4217 code"),
            );
        }
        if self.capture.group_max_rows == 0 {
            found.push("capture.group_max_rows", "must be at least 1");
        }
        if self.metrics.as_ref().is_some_and(|m| m.refresh_ms < 100) {
            found.push("metrics.refresh_ms", "must be at least 100");
        }
        if let Err(e) = self.retention.keep() {
            found.push("retention.keep", format!("{e} (or \"off\")"));
        }
        if self.retention.batch_rows == 0 {
            found.push("retention.batch_rows", "must be at least 1");
        }
    }

    /// `retracts` / `restates` name a conversion rule; what an adjustment rule and a conversion rule
    /// each require.
    fn check_adjustment(&self, at: &RulePath, found: &mut Found) {
        let rule = at.rule;
        if rule.retracts.is_some() && rule.restates.is_some() {
            found.push(at.key("restates"), "a rule retracts or restates, not both");
        }
        let Some(target) = rule.adjusts() else {
            if rule.event.is_none() {
                found.push(at.key("event"), "is required");
            }
            if rule.event_id.is_none() {
                found.push(
                    at.key("event_id"),
                    "is required (the stable id platforms deduplicate on)",
                );
            }
            if rule.destinations.is_empty() {
                found.push(at.key("destinations"), "must name at least one destination");
            }
            return;
        };
        let key = if rule.retracts.is_some() {
            "retracts"
        } else {
            "restates"
        };
        match self.rule(target) {
            None => found.push(at.key(key), format!("names no rule ({target:?})")),
            Some(t) if t.adjusts().is_some() => found.push(
                at.key(key),
                format!("{target:?} is itself a retraction or restatement rule"),
            ),
            Some(_) => {}
        }
        if rule.restates.is_some() && rule.value.is_none() {
            found.push(at.key("value"), "is required for a restatement rule");
        }
        if !rule.destinations.is_empty() {
            found.push(
                at.key("destinations"),
                "must be left out: an adjustment goes to the adjusted rule's destinations",
            );
        }
    }

    /// Each destination a rule names exists and gets what its platform needs from the rule.
    fn check_rule_destinations(&self, at: &RulePath, found: &mut Found) {
        let rule = at.rule;
        for (j, name) in rule.destinations.iter().enumerate() {
            let Some(dest) = self.destinations.get(name) else {
                found.push(
                    format!("{}[{j}]", at.key("destinations")),
                    format!("names no destination ({name:?})"),
                );
                continue;
            };
            match &dest.settings {
                _ if dest.platform().is_google() && rule.google.conversion_action.is_none() => {
                    found.push(
                        at.key("google.conversion_action"),
                        format!("is required to send to Google destination {name:?}"),
                    )
                }
                PlatformConfig::Tiktok(tiktok)
                    if rule.action_source.as_deref() == Some("system_generated")
                        && tiktok.crm_event_set_id.is_none() =>
                {
                    found.push(
                        format!("destinations.{name}.crm_event_set_id"),
                        format!(
                            "is required: rule {:?} sends CRM events (action_source = \
                             \"system_generated\") to TikTok, which takes them in a CRM event set",
                            rule.name
                        ),
                    )
                }
                PlatformConfig::MicrosoftAds(_)
                    if rule
                        .microsoft
                        .conversion_name
                        .as_deref()
                        .is_none_or(|n| n.trim().is_empty()) =>
                {
                    found.push(
                        at.key("microsoft.conversion_name"),
                        format!(
                            "is required to send to Microsoft Advertising destination {name:?} \
                             (the offline conversion goal's name)"
                        ),
                    )
                }
                _ => {}
            }
        }
    }

    /// `google.conversion_action` is a resource name, or a bare id where only Data Manager reads it.
    fn check_conversion_action(&self, at: &RulePath, found: &mut Found) {
        let Some(action) = &at.rule.google.conversion_action else {
            return;
        };
        if !is_conversion_action(action) {
            found.push(
                at.key("google.conversion_action"),
                "must look like customers/{customer_id}/conversionActions/{id}",
            );
        }
        let bare = !action.is_empty() && action.bytes().all(|b| b.is_ascii_digit());
        let google_ads = at.rule.destinations.iter().any(|d| {
            self.destinations
                .get(d)
                .is_some_and(|c| c.platform() == Platform::GoogleAds)
        });
        if bare && google_ads {
            found.push(
                at.key("google.conversion_action"),
                "a bare id works for google_data_manager only; google_ads needs \
                 customers/{customer_id}/conversionActions/{id}",
            );
        }
    }
}

/// Where a rule's problems are reported: `rules[0] (order_paid).event_time`.
struct RulePath<'a> {
    index: usize,
    rule: &'a RuleConfig,
}

impl RulePath<'_> {
    fn key(&self, key: &str) -> String {
        format!("rules[{}] ({}).{key}", self.index, self.rule.name)
    }
}

/// What a rule is on its own: its name, its condition, its templates and its match keys.
fn check_rule_shape(at: &RulePath, found: &mut Found) {
    let rule = at.rule;
    if rule.name.trim().is_empty() {
        found.push(at.key("name"), "must not be empty");
    }
    if rule.name.contains(':') {
        found.push(
            at.key("name"),
            "must not contain ':' (reserved for the retractions of deleted rows)",
        );
    }
    if rule.when.is_empty() {
        found.push(
            at.key("when"),
            "is required: a rule without a condition would fire on every change",
        );
    }
    for (key, field) in [("event_time", &rule.event_time), ("value", &rule.value)] {
        if let Some(t) = field {
            if Template::parse(t)
                .ok()
                .is_none_or(|t| t.single_column().is_none())
            {
                found.push(
                    at.key(key),
                    format!("must be a single {{column}}, got {t:?}"),
                );
            }
        }
    }
    for (key, field) in [
        ("event_id", &rule.event_id),
        ("currency", &rule.currency),
        ("event_source_url", &rule.event_source_url),
        ("content_ids", &rule.content_ids),
        ("content_type", &rule.content_type),
    ] {
        if let Some(Err(e)) = field.as_deref().map(Template::parse) {
            found.push(at.key(key), e);
        }
    }
    for (key, column) in &rule.match_keys {
        let path = format!("{}.{key}", at.key("match"));
        if MatchKey::from_name(key).is_none() && !super::EXTRA_MATCH_NAMES.contains(&key.as_str()) {
            found.push(path.clone(), "is not a known match key");
        }
        if column.trim().is_empty() {
            found.push(path, "names no column");
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.chars().all(|c| c.is_ascii_alphabetic())
}

/// A conversion action resource name, or a bare conversion action id (Data Manager's product
/// destination id; `google_ads` destinations are checked for the resource name separately).
fn is_conversion_action(s: &str) -> bool {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let parts: Vec<&str> = s.split('/').collect();
    matches!(parts.as_slice(), ["customers", cid, "conversionActions", id]
        if !cid.is_empty() && cid.chars().all(|c| c.is_ascii_digit())
        && !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
}
