//! identity (stub until the identity branch lands).

/// A match key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MatchKey {
    /// Email.
    Email,
}

impl MatchKey {
    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<MatchKey> {
        [
            "email",
            "phone",
            "first_name",
            "last_name",
            "city",
            "state",
            "zip",
            "country",
            "external_id",
            "date_of_birth",
            "gender",
            "client_ip",
            "user_agent",
            "fbc",
            "fbp",
            "gclid",
            "gbraid",
            "wbraid",
            "ttclid",
            "ttp",
            "msclkid",
            "lead_id",
        ]
        .contains(&name)
        .then_some(MatchKey::Email)
    }
}

impl MatchKey {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        "email"
    }
}

/// Normalized match keys.
pub type MatchKeys = std::collections::BTreeMap<MatchKey, String>;
