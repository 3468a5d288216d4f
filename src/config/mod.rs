//! The TOML configuration (see `examples/pgcapi.toml`): loading, `${VAR}` expansion and validation.
//!
//! Loading happens in steps so that every problem is reported at once, each with its key path:
//! the TOML is parsed into a tree, `${VAR}` / `${VAR:-default}` are expanded in its strings ([`env`]),
//! unknown keys are collected, and only then is the tree turned into typed structs (every type error is
//! collected: [`raw`] for the sections and rules, [`destination`] for each destination, whose keys
//! depend on its platform) and checked for meaning ([`Config::validate`], in `validate.rs`). Checks that
//! need the database (columns named by templates) live in [`crate::ops::setup`].

mod destination;
mod env;
mod raw;
mod rule;
mod sections;
mod validate;

pub use destination::{
    ApiConfig, DestinationConfig, GoogleAdsConfig, GoogleAuthConfig, GoogleCredentials,
    GoogleDataManagerConfig, GoogleRefunds, LinkedinConfig, MetaConfig, MicrosoftAdsConfig,
    OutbrainConfig, PinterestConfig, PlatformConfig, RedditConfig, SnapchatConfig, TaboolaConfig,
    TiktokConfig,
};
pub use env::expand;
pub use rule::{
    EventNameRuleConfig, GoogleRuleConfig, LinkedinRuleConfig, MetaRuleConfig, MicrosoftRuleConfig,
    OnDelete, RedditRuleConfig, RuleConfig, Scalar, Template, TemplatePart, TiktokRuleConfig,
    WhenValue, EXTRA_MATCH_NAMES,
};
pub use sections::{
    CaptureConfig, Defaults, DispatchConfig, MetricsConfig, RetentionConfig, SourceConfig,
};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A value that must never be printed: tokens, secrets, URLs with passwords.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Anything but a string is refused without the value in the message: a secret written
        /// without quotes (`client_id = 1234`) must not be printed by the type error.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        match Text::deserialize(d)? {
            Text::Text(text) => Ok(Secret(text)),
            Text::Other(_) => Err(serde::de::Error::custom(
                "invalid type: expected a string (the value is a secret and not shown)",
            )),
        }
    }
}

/// One problem found in the configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `rules[0].event_time` or `destinations.meta.access_token`.
    pub path: String,
    /// What is wrong, never including a secret value.
    pub message: String,
}

impl Problem {
    /// A key no config struct reads (a typo, or a key of another platform).
    fn unknown_key(path: String) -> Problem {
        Problem {
            path,
            message: "unknown key".to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (line and column included).
        message: String,
    },
    /// The file is valid TOML but its content has problems; all of them are listed.
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// The source database, publication and slot.
    pub source: SourceConfig,
    /// Defaults for rows that carry no region or currency.
    #[serde(default)]
    pub defaults: Defaults,
    /// Capture tuning.
    #[serde(default)]
    pub capture: CaptureConfig,
    /// Dispatch tuning.
    #[serde(default)]
    pub dispatch: DispatchConfig,
    /// Destinations by name. Read apart from the rest (see [`destination::read_all`]): which keys a
    /// destination has depends on its `platform`.
    #[serde(skip)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// Rules, in order.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The metrics and health endpoints of `pgcapi run`; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// How long finished control-table rows are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses `text` with variables looked up by `env`; `origin` names the source in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut expanded = BTreeMap::new();
        for (key, value) in tree.iter_mut() {
            env::expand_value(value, key, env, &mut problems, &mut expanded);
        }
        let destinations = tree.remove("destinations");
        let before = problems.len();
        let mut unknown = Vec::new();
        let (config, mut left_out) =
            raw::deserialize_all(tree, &expanded, &mut problems, &mut unknown);
        // Unknown keys first: a misspelt key often explains the problems after it.
        problems.splice(
            before..before,
            unknown.into_iter().map(Problem::unknown_key),
        );
        let destinations =
            destination::read_all(destinations, &expanded, &mut problems, &mut left_out);
        let config = config.map(|config| Config {
            destinations,
            ..config
        });
        if let Some(config) = &config {
            let validated = config.validate();
            problems.extend(validated.into_iter().filter(|p| !left_out.explains(p)));
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems,
            }),
        }
    }

    /// The rule named `name`.
    pub fn rule(&self, name: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// Splits `schema.table` (default schema `public`).
pub fn split_table(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("public", table))
}

#[cfg(test)]
mod tests;
