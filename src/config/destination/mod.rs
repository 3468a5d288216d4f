//! `[destinations.NAME]`: one platform account, typed per platform. `platform = "…"` picks the struct
//! (one file here per platform); the keys every destination has are in [`ApiConfig`].
//!
//! A destination is read apart from the rest of the config because its keys depend on its platform:
//! the platform is read first, then each part of the destination (the API keys, the platform's own keys,
//! Google's credentials) is deserialized from the same table by a [`Reader`], which reports every type
//! error and every missing required key with its key path.
//!
//! Adding a platform: a file here with its struct and its [`Settings`] impl, a variant of
//! [`PlatformConfig`], and its arms in the matches of [`PlatformConfig`].

mod google_ads;
mod google_auth;
mod google_data_manager;
mod linkedin;
mod meta;
mod microsoft_ads;
mod outbrain;
mod pinterest;
mod reddit;
mod snapchat;
mod taboola;
mod tiktok;

pub use google_ads::GoogleAdsConfig;
pub use google_auth::{GoogleAuthConfig, GoogleCredentials};
pub use google_data_manager::{GoogleDataManagerConfig, GoogleRefunds};
pub use linkedin::LinkedinConfig;
pub use meta::MetaConfig;
pub use microsoft_ads::MicrosoftAdsConfig;
pub use outbrain::OutbrainConfig;
pub use pinterest::PinterestConfig;
pub use reddit::RedditConfig;
pub use snapchat::SnapchatConfig;
pub use taboola::TaboolaConfig;
pub use tiktok::TiktokConfig;

use super::raw::LeftOut;
use super::{Problem, Secret};
use crate::platform::Platform;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// One destination: where its API is, and its platform's settings.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    /// The keys every platform has.
    pub api: ApiConfig,
    /// The platform and its own keys.
    pub settings: PlatformConfig,
}

/// The keys every destination has, whatever its platform.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiConfig {
    /// Base URL of the API (the sandbox in tests and the demo); each platform has a default.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// API version path segment (`v21.0`, `v21`, ...); each platform has a default.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Largest batch sent in one request (capped by the platform's limit).
    #[serde(default)]
    pub batch_max_events: Option<usize>,
}

/// A destination's platform with its settings; the variant is the `platform` key.
#[derive(Debug, Clone)]
pub enum PlatformConfig {
    /// `platform = "meta"`.
    Meta(MetaConfig),
    /// `platform = "google_ads"`.
    GoogleAds(GoogleAdsConfig),
    /// `platform = "tiktok"`.
    Tiktok(TiktokConfig),
    /// `platform = "google_data_manager"`.
    GoogleDataManager(GoogleDataManagerConfig),
    /// `platform = "microsoft_ads"`.
    MicrosoftAds(MicrosoftAdsConfig),
    /// `platform = "outbrain"`.
    Outbrain(OutbrainConfig),
    /// `platform = "taboola"`.
    Taboola(TaboolaConfig),
    /// `platform = "linkedin"`.
    Linkedin(LinkedinConfig),
    /// `platform = "reddit"`.
    Reddit(RedditConfig),
    /// `platform = "snapchat"`.
    Snapchat(SnapchatConfig),
    /// `platform = "pinterest"`.
    Pinterest(PinterestConfig),
}

/// What each platform's settings struct provides to the reader and to `pgcapi check`.
trait Settings: Sized + DeserializeOwned {
    /// Reads the settings from the destination's table; `None` when they cannot be built at all.
    /// By default the table as it is; a platform with checks of its own reads it and checks.
    fn read(reader: &mut Reader) -> Option<Self> {
        reader.part()
    }
    /// Every secret the settings hold, so that `pgcapi check` can scrub them from what it prints.
    fn secrets(&self) -> Vec<&Secret>;
}

impl PlatformConfig {
    /// The platform.
    pub fn platform(&self) -> Platform {
        match self {
            PlatformConfig::Meta(_) => Platform::Meta,
            PlatformConfig::GoogleAds(_) => Platform::GoogleAds,
            PlatformConfig::Tiktok(_) => Platform::Tiktok,
            PlatformConfig::GoogleDataManager(_) => Platform::GoogleDataManager,
            PlatformConfig::MicrosoftAds(_) => Platform::MicrosoftAds,
            PlatformConfig::Outbrain(_) => Platform::Outbrain,
            PlatformConfig::Taboola(_) => Platform::Taboola,
            PlatformConfig::Linkedin(_) => Platform::Linkedin,
            PlatformConfig::Reddit(_) => Platform::Reddit,
            PlatformConfig::Snapchat(_) => Platform::Snapchat,
            PlatformConfig::Pinterest(_) => Platform::Pinterest,
        }
    }

    fn read(platform: Platform, reader: &mut Reader) -> Option<PlatformConfig> {
        Some(match platform {
            Platform::Meta => PlatformConfig::Meta(Settings::read(reader)?),
            Platform::GoogleAds => PlatformConfig::GoogleAds(Settings::read(reader)?),
            Platform::Tiktok => PlatformConfig::Tiktok(Settings::read(reader)?),
            Platform::GoogleDataManager => {
                PlatformConfig::GoogleDataManager(Settings::read(reader)?)
            }
            Platform::MicrosoftAds => PlatformConfig::MicrosoftAds(Settings::read(reader)?),
            Platform::Outbrain => PlatformConfig::Outbrain(Settings::read(reader)?),
            Platform::Taboola => PlatformConfig::Taboola(Settings::read(reader)?),
            Platform::Linkedin => PlatformConfig::Linkedin(Settings::read(reader)?),
            Platform::Reddit => PlatformConfig::Reddit(Settings::read(reader)?),
            Platform::Snapchat => PlatformConfig::Snapchat(Settings::read(reader)?),
            Platform::Pinterest => PlatformConfig::Pinterest(Settings::read(reader)?),
        })
    }

    fn secrets(&self) -> Vec<&Secret> {
        match self {
            PlatformConfig::Meta(c) => c.secrets(),
            PlatformConfig::GoogleAds(c) => c.secrets(),
            PlatformConfig::Tiktok(c) => c.secrets(),
            PlatformConfig::GoogleDataManager(c) => c.secrets(),
            PlatformConfig::MicrosoftAds(c) => c.secrets(),
            PlatformConfig::Outbrain(c) => c.secrets(),
            PlatformConfig::Taboola(c) => c.secrets(),
            PlatformConfig::Linkedin(c) => c.secrets(),
            PlatformConfig::Reddit(c) => c.secrets(),
            PlatformConfig::Snapchat(c) => c.secrets(),
            PlatformConfig::Pinterest(c) => c.secrets(),
        }
    }
}

impl DestinationConfig {
    /// A destination of `settings`' platform at its production API with the default batch size.
    pub fn new(settings: PlatformConfig) -> DestinationConfig {
        DestinationConfig {
            api: ApiConfig::default(),
            settings,
        }
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.settings.platform()
    }

    /// Every secret of the destination (tokens, client secrets), for scrubbing.
    pub fn secrets(&self) -> Vec<&Secret> {
        self.settings.secrets()
    }

    /// Reads the destination at key path `at` from its table; `left_out` receives the key paths taken
    /// out for their type. `None` when it cannot be built at all (no platform, an unknown one).
    fn read(
        at: &str,
        table: toml::Table,
        expanded: &BTreeMap<String, String>,
        problems: &mut Vec<Problem>,
        left_out: &mut Vec<String>,
    ) -> Option<DestinationConfig> {
        let mut reader = Reader {
            at: at.to_string(),
            table,
            required: "is required".to_string(),
            expanded,
            problems,
            left_out,
            unread: None,
        };
        let platform = reader.platform()?;
        reader.required = format!("is required for platform {}", platform.as_str());
        let api: ApiConfig = reader.part()?;
        reader.check_url("endpoint", api.endpoint.as_deref());
        let settings = PlatformConfig::read(platform, &mut reader)?;
        reader.report_unread();
        Some(DestinationConfig { api, settings })
    }
}

/// A destination read from TOML on its own (tests and tools build destinations this way): every
/// problem the config loader would report, except unknown keys, fails it.
impl<'de> Deserialize<'de> for DestinationConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let mut problems = Vec::new();
        let read = DestinationConfig::read(
            "destination",
            table,
            &BTreeMap::new(),
            &mut problems,
            &mut Vec::new(),
        );
        match read {
            // Unknown keys are let through, as serde lets them through.
            Some(config) if problems.iter().all(|p| p.message == UNKNOWN_KEY) => Ok(config),
            _ => Err(serde::de::Error::custom(
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }
}

/// Reads the `[destinations]` table taken out of the config tree, reporting every problem. A
/// destination that cannot be built at all is left out, and `left_out` is told so that the rules'
/// references to it are not reported as dangling.
pub(super) fn read_all(
    tree: Option<toml::Value>,
    expanded: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
    left_out: &mut LeftOut,
) -> BTreeMap<String, DestinationConfig> {
    let mut destinations = BTreeMap::new();
    let tables = match tree.map(BTreeMap::<String, toml::Value>::deserialize) {
        None => return destinations,
        Some(Ok(tables)) => tables,
        Some(Err(e)) => {
            problems.push(Problem {
                path: "destinations".into(),
                message: e.to_string().trim().to_string(),
            });
            left_out.whole_item = true;
            return destinations;
        }
    };
    for (name, value) in tables {
        let at = format!("destinations.{name}");
        let read = match toml::Table::deserialize(value) {
            Ok(table) => {
                DestinationConfig::read(&at, table, expanded, problems, &mut left_out.paths)
            }
            Err(e) => {
                problems.push(Problem {
                    path: at,
                    message: e.to_string().trim().to_string(),
                });
                None
            }
        };
        match read {
            Some(destination) => {
                destinations.insert(name, destination);
            }
            None => left_out.whole_item = true,
        }
    }
    destinations
}

/// Reads the parts of one destination from its table, collecting every problem with its key path.
pub(crate) struct Reader<'a> {
    /// The destination's key path, `destinations.meta`.
    at: String,
    /// Its keys, expanded.
    table: toml::Table,
    /// What a missing required key is told: `is required for platform meta`.
    required: String,
    /// The expanded strings by key path: an error about one of them does not show its value.
    expanded: &'a BTreeMap<String, String>,
    problems: &'a mut Vec<Problem>,
    /// The key paths taken out for their type.
    left_out: &'a mut Vec<String>,
    /// The keys no part has read so far (`None` before the first part): unknown when no part reads
    /// them.
    unread: Option<BTreeSet<String>>,
}

/// The problem of a key no part of a destination reads.
const UNKNOWN_KEY: &str = "unknown key";

impl Reader<'_> {
    /// The `platform` key; `None` (reported) when it is missing or names no platform.
    fn platform(&mut self) -> Option<Platform> {
        let Some(value) = self.table.get("platform").cloned() else {
            let required = self.required.clone();
            self.problem(Some("platform"), required);
            return None;
        };
        match Platform::deserialize(value) {
            Ok(platform) => Some(platform),
            Err(e) => {
                self.type_error("platform", &e.to_string());
                None
            }
        }
    }

    /// Deserializes one part of the destination from its table. Serde stops at the first error, so a
    /// key of the wrong type is reported and taken out, and a missing required key is reported and
    /// stood in for by an empty string, until the part builds; the result then only serves to check
    /// the rest (the config is refused). `None` when the part cannot be built at all.
    pub(crate) fn part<T: DeserializeOwned>(&mut self) -> Option<T> {
        let mut table = self.table.clone();
        let mut stood_in: Vec<String> = Vec::new();
        let mut ignored = BTreeSet::new();
        // Each round takes a key out or stands one in, once each: the rounds are bounded.
        loop {
            let mut note = |path: serde_ignored::Path| {
                ignored.insert(path.to_string());
            };
            let tracked =
                serde_ignored::Deserializer::new(toml::Value::Table(table.clone()), &mut note);
            let error = match serde_path_to_error::deserialize::<_, T>(tracked) {
                Ok(part) => {
                    // Every round read the keys up to its error: together they read them all.
                    self.unread = Some(match self.unread.take() {
                        None => ignored,
                        Some(unread) => unread.intersection(&ignored).cloned().collect(),
                    });
                    return Some(part);
                }
                Err(error) => error,
            };
            let message = error.inner().message().trim().to_string();
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'))
                .filter(|_| error.path().iter().next().is_none());
            if let Some(field) = missing {
                if stood_in.iter().any(|k| k == field) {
                    return None;
                }
                if !self.left_out.contains(&format!("{}.{field}", self.at)) {
                    let required = self.required.clone();
                    self.problem(Some(field), required);
                }
                table.insert(field.to_string(), toml::Value::String(String::new()));
                stood_in.push(field.to_string());
                continue;
            }
            let Some(serde_path_to_error::Segment::Map { key }) = error.path().iter().next() else {
                return None;
            };
            let key = key.clone();
            self.type_error(&error.path().to_string(), &message);
            table.remove(&key)?;
            self.left_out.push(format!("{}.{key}", self.at));
        }
    }

    /// Reports the keys no part read (but `platform`, which is read first, by hand).
    fn report_unread(&mut self) {
        for key in self.unread.take().unwrap_or_default() {
            if key != "platform" {
                self.problem(Some(&key), UNKNOWN_KEY);
            }
        }
    }

    /// Reports a type error at `key`, once (a `${VAR}` that could not be expanded is no number either),
    /// without the value when it came from a variable.
    fn type_error(&mut self, key: &str, message: &str) {
        let path = format!("{}.{key}", self.at);
        if self.problems.iter().any(|p| p.path == path) {
            return;
        }
        let message = super::raw::hide_expanded(message, self.expanded.get(&path));
        self.problems.push(Problem { path, message });
    }

    /// Reports a problem at the destination (`None`) or one of its keys.
    pub(crate) fn problem(&mut self, key: Option<&str>, message: impl Into<String>) {
        let path = match key {
            Some(key) => format!("{}.{key}", self.at),
            None => self.at.clone(),
        };
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

    /// Reports a URL that is neither `http://` nor `https://`.
    pub(crate) fn check_url(&mut self, key: &str, url: Option<&str>) {
        if url.is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
            self.problem(Some(key), "must start with http:// or https://");
        }
    }
}
