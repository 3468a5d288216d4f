//! Turning the expanded TOML tree into typed structs while collecting every type error with its key
//! path (serde stops at the first one), and the key paths those problems are reported at.

use super::{Config, Problem};
use crate::platform::Platform;
use std::collections::BTreeMap;

/// The parts of the tree [`deserialize_all`] left out because they did not deserialize.
#[derive(Debug, Default)]
pub(super) struct LeftOut {
    /// Their key paths, without rule names (`rules[0].value`, `destinations.meta.pixel_code`).
    pub(super) paths: Vec<String>,
    /// A whole rule or destination was left out: other rules' references to it would be reported
    /// as dangling, so no rule problem is reported until the types are fixed.
    pub(super) whole_item: bool,
}

impl LeftOut {
    /// Whether a validation problem may only be a consequence of a part left out (a required key
    /// reported missing because its value had the wrong type, ...).
    pub(super) fn explains(&self, problem: &Problem) -> bool {
        // `rules[0] (order_paid).value` is `rules[0].value` here.
        let path = match problem.path.split_once(" (") {
            Some((rule, rest)) => match rest.split_once(')') {
                Some((_, tail)) => format!("{rule}{tail}"),
                None => problem.path.clone(),
            },
            None => problem.path.clone(),
        };
        let related = |a: &str, b: &str| {
            a == b || (a.starts_with(b) && matches!(a.as_bytes().get(b.len()), Some(b'.' | b'[')))
        };
        // A rule's keys depend on each other (without `retracts` it needs an `event`): a key left
        // out of a rule stands for the whole rule.
        let scope = |left: &'_ str| -> String {
            match left
                .strip_prefix("rules[")
                .and_then(|rest| rest.split_once(']'))
            {
                Some((index, _)) => format!("rules[{index}]"),
                None => left.to_string(),
            }
        };
        (self.whole_item && path.starts_with("rules"))
            || self
                .paths
                .iter()
                .map(|left| scope(left))
                .any(|left| related(&path, &left) || related(&left, &path))
    }
}

/// Turns the expanded tree into a [`Config`], reporting every type error with its key path.
///
/// Serde stops at the first error, so the failing key is taken out of the tree and the rest is
/// deserialized again, until it succeeds; each error is reported once, with its value left out when it
/// came from a variable. A key that is required cannot be taken out alone: then its table goes (a
/// rule), or, at the top, nothing is built (`None`). The config built without the failing
/// parts is returned so that the rest can still be validated.
pub(super) fn deserialize_all(
    mut tree: toml::Table,
    expanded: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> (Option<Config>, LeftOut) {
    use serde_path_to_error::Segment;
    let rule_names: Vec<Option<String>> = match tree.get("rules") {
        Some(toml::Value::Array(rules)) => rules
            .iter()
            .map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    // Where each rule still in the tree was in the file, as rules are taken out of the array.
    let mut rule_index: Vec<usize> = (0..rule_names.len()).collect();
    let mut left_out = LeftOut::default();
    // Each round takes one key out, so the rounds are bounded by the keys in the file.
    loop {
        let error =
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(tree.clone())) {
                Ok(config) => return (Some(config), left_out),
                Err(error) => error,
            };
        let mut segments: Vec<Segment> = error.path().iter().cloned().collect();
        // Seq indexes of the top-level rules array are positions in the file again.
        if let [Segment::Map { key }, Segment::Seq { index }, ..] = segments.as_mut_slice() {
            if key == "rules" {
                *index = rule_index.get(*index).copied().unwrap_or(*index);
            }
        }
        let path = path_text(&segments, None);
        let message = error.inner().message().trim().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        if let Some(field) = missing {
            // Reported as "source.url: is required", unless `source.url` was just taken out for its
            // type: then it is no news.
            let child = if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            if !left_out.paths.contains(&child) {
                let mut at = path_text(&segments, Some(&rule_names));
                at.push_str(&format!("{}{field}", if at.is_empty() { "" } else { "." }));
                problems.push(Problem {
                    path: at,
                    message: "is required".to_string(),
                });
            }
        } else if problems.iter().any(|p| p.path == path) {
            // Already reported: a `${VAR}` that could not be expanded is no string of digits either.
        } else {
            let message = hide_expanded(&message, expanded.get(&path));
            let at = path_text(&segments, Some(&rule_names));
            problems.push(Problem {
                path: if at.is_empty() {
                    "(top level)".to_string()
                } else {
                    at
                },
                message,
            });
        }
        // What to take out: the key, except that a list element takes its whole list with it (its
        // siblings' indexes would shift), and a missing field takes out the table that lacks it.
        let mut target = segments;
        if let Some(last) = target
            .iter()
            .rposition(|s| matches!(s, Segment::Seq { .. }))
        {
            let is_rule = last == 1 && matches!(&target[0], Segment::Map { key } if key == "rules");
            if !is_rule {
                target.truncate(last);
            } else if target.len() == 2 {
                left_out.whole_item = true;
            }
        }
        if target.is_empty() || !take_out(&mut tree, &target, &mut rule_index) {
            return (None, left_out);
        }
        left_out.paths.push(path_text(&target, None));
    }
}

/// A type error's message without the value when it came from a variable (`expanded`): the value
/// may be a secret.
pub(super) fn hide_expanded(message: &str, expanded: Option<&String>) -> String {
    match expanded {
        Some(value) if !value.is_empty() => {
            let message =
                message.replace(&format!("{value:?}"), "(value of a variable, not shown)");
            // Any other quoting of it too, unless it is too short to be a secret.
            if value.len() >= 4 {
                message.replace(value.as_str(), "***")
            } else {
                message
            }
        }
        _ => message.to_string(),
    }
}

/// Removes the value at `path` from the tree; `false` when there is no such value.
fn take_out(
    tree: &mut toml::Table,
    path: &[serde_path_to_error::Segment],
    rule_index: &mut Vec<usize>,
) -> bool {
    use serde_path_to_error::Segment;
    let Some((Segment::Map { key: first }, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return tree.remove(first).is_some();
    }
    let mut node = match tree.get_mut(first) {
        Some(node) => node,
        None => return false,
    };
    for (i, segment) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        match (segment, node) {
            (Segment::Map { key }, toml::Value::Table(table)) if last => {
                return table.remove(key).is_some();
            }
            (Segment::Seq { index }, toml::Value::Array(items)) if last => {
                // Only rules are taken out one by one (see `deserialize_all`).
                let file_index = rule_index.iter().position(|at| at == index);
                return match file_index {
                    Some(position) if position < items.len() => {
                        items.remove(position);
                        rule_index.remove(position);
                        true
                    }
                    _ => false,
                };
            }
            (Segment::Map { key }, toml::Value::Table(table)) => match table.get_mut(key) {
                Some(child) => node = child,
                None => return false,
            },
            (Segment::Seq { index }, toml::Value::Array(items)) => {
                let position = if i == 0 && first == "rules" {
                    rule_index.iter().position(|at| at == index)
                } else {
                    Some(*index)
                };
                match position.and_then(|p| items.get_mut(p)) {
                    Some(child) => node = child,
                    None => return false,
                }
            }
            _ => return false,
        }
    }
    false
}

/// A key path as text: `destinations.meta.batch_max_events`, `rules[0].match`; with `rule_names`,
/// rules are written as [`Config::validate`] writes them: `rules[0] (order_paid).match`.
fn path_text(
    path: &[serde_path_to_error::Segment],
    rule_names: Option<&[Option<String>]>,
) -> String {
    use serde_path_to_error::Segment;
    let mut text = String::new();
    for (i, segment) in path.iter().enumerate() {
        match segment {
            Segment::Seq { index } => {
                text.push_str(&format!("[{index}]"));
                let in_rules = i == 1 && text.starts_with("rules[");
                if let Some(Some(name)) = rule_names
                    .filter(|_| in_rules)
                    .and_then(|names| names.get(*index))
                {
                    text.push_str(&format!(" ({name})"));
                }
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Unknown => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push('?');
            }
        }
    }
    text
}

/// The keys each table may hold; anything else is reported as unknown.
pub(super) fn check_keys(tree: &toml::Table, problems: &mut Vec<Problem>) {
    const TOP: &[&str] = &[
        "source",
        "defaults",
        "capture",
        "dispatch",
        "destinations",
        "rules",
        "metrics",
        "retention",
    ];
    const SOURCE: &[&str] = &["url", "control_url", "publication", "slot", "schema"];
    const DEFAULTS: &[&str] = &["region", "currency"];
    const CAPTURE: &[&str] = &["group_max_rows", "group_max_ms", "status_interval_ms"];
    const DISPATCH: &[&str] = &[
        "lease_secs",
        "give_up_after_secs",
        "retry_initial_ms",
        "retry_max_ms",
        "request_timeout_ms",
        "failing_after_secs",
    ];
    const RETENTION: &[&str] = &["keep", "batch_rows", "batch_pause_ms"];
    const DESTINATION_COMMON: &[&str] =
        &["platform", "endpoint", "api_version", "batch_max_events"];
    const META: &[&str] = &["pixel_id", "access_token", "test_event_code"];
    const GOOGLE: &[&str] = &[
        "customer_id",
        "login_customer_id",
        "developer_token",
        "client_id",
        "client_secret",
        "refresh_token",
        "service_account_key",
        "token_endpoint",
        "validate_only",
    ];
    const TIKTOK: &[&str] = &[
        "pixel_code",
        "access_token",
        "test_event_code",
        "crm_event_set_id",
    ];
    const GOOGLE_DATA_MANAGER: &[&str] = &[
        "status_poll_ms",
        "operating_account",
        "login_account",
        "client_id",
        "client_secret",
        "refresh_token",
        "service_account_key",
        "token_endpoint",
        "validate_only",
        "refunds",
        "ads_endpoint",
        "developer_token",
    ];
    const MICROSOFT: &[&str] = &[
        "customer_id",
        "account_id",
        "developer_token",
        "client_id",
        "client_secret",
        "refresh_token",
        "token_endpoint",
    ];
    const LINKEDIN: &[&str] = &["access_token", "ad_account_id"];
    const REDDIT: &[&str] = &["pixel_id", "access_token", "test_event_code"];
    const RULE: &[&str] = &[
        "name",
        "table",
        "when",
        "event",
        "event_id",
        "event_time",
        "value",
        "currency",
        "consent",
        "action_source",
        "event_source_url",
        "content_ids",
        "content_type",
        "destinations",
        "match",
        "meta",
        "google",
        "tiktok",
        "microsoft",
        "linkedin",
        "reddit",
        "retracts",
        "restates",
    ];
    fn check(table: Option<&toml::Value>, path: &str, allowed: &[&str], out: &mut Vec<String>) {
        if let Some(toml::Value::Table(t)) = table {
            for key in t.keys() {
                if !allowed.contains(&key.as_str()) {
                    out.push(format!("{path}.{key}"));
                }
            }
        }
    }
    let mut unknown: Vec<String> = Vec::new();
    for key in tree.keys() {
        if !TOP.contains(&key.as_str()) {
            unknown.push(key.clone());
        }
    }
    check(tree.get("source"), "source", SOURCE, &mut unknown);
    check(tree.get("defaults"), "defaults", DEFAULTS, &mut unknown);
    check(tree.get("capture"), "capture", CAPTURE, &mut unknown);
    check(tree.get("dispatch"), "dispatch", DISPATCH, &mut unknown);
    check(
        tree.get("metrics"),
        "metrics",
        &["listen", "refresh_ms"],
        &mut unknown,
    );
    check(tree.get("retention"), "retention", RETENTION, &mut unknown);
    if let Some(toml::Value::Table(dests)) = tree.get("destinations") {
        for (name, dest) in dests {
            let platform = dest
                .get("platform")
                .and_then(|p| p.as_str())
                .and_then(Platform::from_name);
            let specific: &[&str] = match platform {
                Some(Platform::Meta) => META,
                Some(Platform::GoogleAds) => GOOGLE,
                Some(Platform::Tiktok) => TIKTOK,
                Some(Platform::GoogleDataManager) => GOOGLE_DATA_MANAGER,
                Some(Platform::MicrosoftAds) => MICROSOFT,
                Some(Platform::Linkedin) => LINKEDIN,
                Some(Platform::Reddit) => REDDIT,
                None => continue, // reported when the platform is parsed
            };
            let allowed: Vec<&str> = DESTINATION_COMMON.iter().chain(specific).copied().collect();
            check(
                Some(dest),
                &format!("destinations.{name}"),
                &allowed,
                &mut unknown,
            );
        }
    }
    if let Some(toml::Value::Array(rules)) = tree.get("rules") {
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            check(Some(rule), &path, RULE, &mut unknown);
            check(
                rule.get("meta"),
                &format!("{path}.meta"),
                &["lead_event_source", "event"],
                &mut unknown,
            );
            check(
                rule.get("google"),
                &format!("{path}.google"),
                &["conversion_action"],
                &mut unknown,
            );
            check(
                rule.get("tiktok"),
                &format!("{path}.tiktok"),
                &["event"],
                &mut unknown,
            );
            check(
                rule.get("microsoft"),
                &format!("{path}.microsoft"),
                &["conversion_name"],
                &mut unknown,
            );
            check(
                rule.get("linkedin"),
                &format!("{path}.linkedin"),
                &["conversion_rule"],
                &mut unknown,
            );
            check(
                rule.get("reddit"),
                &format!("{path}.reddit"),
                &["event"],
                &mut unknown,
            );
        }
    }
    problems.extend(unknown.into_iter().map(|path| Problem {
        path,
        message: "unknown key".to_string(),
    }));
}
