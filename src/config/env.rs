//! `${VAR}` and `${VAR:-default}` in the config's strings, expanded before anything is typed.

use super::Problem;
use std::collections::BTreeMap;

/// Expands the variables of one string. An unset variable without default is an error naming it.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed \"${\" in value".to_string())?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in ${{...}}"));
        }
        // As in a shell, `:-` takes the default when the variable is unset or empty.
        match (env(name), default) {
            (Some(value), _) if !value.is_empty() => out.push_str(&value),
            (_, Some(default)) => out.push_str(default),
            (Some(_), None) => {
                return Err(format!(
                    "environment variable {name} is set but empty (use ${{{name}:-default}} for a default)"
                ))
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands `${VAR}` and `${VAR:-default}` in every string of `value`; `path` is its key path.
///
/// `expanded` receives the path and new text of every string that read a variable, so that an error
/// about such a value can leave the value out (it may come from a secret).
pub(super) fn expand_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    expanded: &mut BTreeMap<String, String>,
) {
    match value {
        toml::Value::String(s) => match expand(s, env) {
            Ok(text) => {
                if text != *s {
                    expanded.insert(path.to_string(), text.clone());
                }
                *s = text;
            }
            Err(message) => problems.push(Problem {
                path: path.to_string(),
                message,
            }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env, problems, expanded);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_value(item, &format!("{path}.{key}"), env, problems, expanded);
            }
        }
        _ => {}
    }
}
