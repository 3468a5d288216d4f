//! Turning the expanded TOML tree into typed structs while collecting every type error with its key
//! path (serde stops at the first one), and the key paths those problems are reported at.

use super::{Config, Problem};
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
///
/// The keys serde ignores on the way are the unknown keys: `unknown` receives their paths (every
/// round reads the keys up to its error, so together the rounds read them all).
pub(super) fn deserialize_all(
    mut tree: toml::Table,
    expanded: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
    unknown: &mut Vec<String>,
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
        let mut note = |path: serde_ignored::Path| {
            let path = ignored_text(&path, &rule_index);
            if !unknown.contains(&path) {
                unknown.push(path);
            }
        };
        let tracked = serde_ignored::Deserializer::new(toml::Value::Table(tree.clone()), &mut note);
        let error = match serde_path_to_error::deserialize::<_, Config>(tracked) {
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
        let message = error.inner().message().trim().to_string();
        report(
            &segments,
            &message,
            &rule_names,
            expanded,
            &left_out,
            problems,
        );
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

/// Reports the error `message` at `segments` (one round of [`deserialize_all`]): a missing key as
/// required, unless it was just taken out for its type; a type error once, without a variable's value.
fn report(
    segments: &[serde_path_to_error::Segment],
    message: &str,
    rule_names: &[Option<String>],
    expanded: &BTreeMap<String, String>,
    left_out: &LeftOut,
    problems: &mut Vec<Problem>,
) {
    let path = path_text(segments, None);
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
            let mut at = path_text(segments, Some(rule_names));
            at.push_str(&format!("{}{field}", if at.is_empty() { "" } else { "." }));
            problems.push(Problem {
                path: at,
                message: "is required".to_string(),
            });
        }
    } else if problems.iter().any(|p| p.path == path) {
        // Already reported: a `${VAR}` that could not be expanded is no string of digits either.
    } else {
        let message = hide_expanded(message, expanded.get(&path));
        let at = path_text(segments, Some(rule_names));
        problems.push(Problem {
            path: if at.is_empty() {
                "(top level)".to_string()
            } else {
                at
            },
            message,
        });
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

/// The path of a key serde ignored, as `check`'s problems write it: `source.slots`, `rules[0].meta.x`
/// (the rule's index in the file, whatever rules were taken out before).
fn ignored_text(path: &serde_ignored::Path, rule_index: &[usize]) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => {
            let in_rules =
                matches!(parent, Path::Map { parent: Path::Root, key } if key == "rules");
            let index = match rule_index.get(*index) {
                Some(at) if in_rules => *at,
                _ => *index,
            };
            format!("{}[{index}]", ignored_text(parent, rule_index))
        }
        Path::Map { parent, key } => match ignored_text(parent, rule_index) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_text(parent, rule_index),
    }
}
