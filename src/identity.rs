//! identity (stub until the identity branch lands: the real module replaces this file).

/// A match key pgcapi knows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum MatchKey {
    Email,
    Phone,
    FirstName,
    LastName,
    City,
    State,
    Zip,
    Country,
    ExternalId,
    DateOfBirth,
    Gender,
    ClientIp,
    UserAgent,
    Fbc,
    Fbp,
    Gclid,
    Gbraid,
    Wbraid,
    Ttclid,
    Ttp,
    Msclkid,
    LeadId,
}

impl MatchKey {
    /// Every key.
    pub const ALL: [MatchKey; 22] = [
        MatchKey::Email,
        MatchKey::Phone,
        MatchKey::FirstName,
        MatchKey::LastName,
        MatchKey::City,
        MatchKey::State,
        MatchKey::Zip,
        MatchKey::Country,
        MatchKey::ExternalId,
        MatchKey::DateOfBirth,
        MatchKey::Gender,
        MatchKey::ClientIp,
        MatchKey::UserAgent,
        MatchKey::Fbc,
        MatchKey::Fbp,
        MatchKey::Gclid,
        MatchKey::Gbraid,
        MatchKey::Wbraid,
        MatchKey::Ttclid,
        MatchKey::Ttp,
        MatchKey::Msclkid,
        MatchKey::LeadId,
    ];

    /// The config name.
    pub fn as_str(self) -> &'static str {
        [
            "email", "phone", "first_name", "last_name", "city", "state", "zip", "country",
            "external_id", "date_of_birth", "gender", "client_ip", "user_agent", "fbc", "fbp",
            "gclid", "gbraid", "wbraid", "ttclid", "ttp", "msclkid", "lead_id",
        ][self as usize]
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<MatchKey> {
        MatchKey::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Normalized match keys.
pub type MatchKeys = std::collections::BTreeMap<MatchKey, String>;
