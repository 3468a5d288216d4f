//! What `pgcapi check` asks of a destination ([`super::Destination::healthcheck`]): the [`Probe`] it
//! gets, the [`Health`] lines it answers, and the helpers the platforms' checks share.
//!
//! A health check proves the credentials and the account without recording a conversion: a read
//! where the platform has one, else a request the platform validates and discards (`validateOnly`,
//! a test event code). It uses the destination's own token and request code, so a check that passes
//! means `send` authenticates the same way.

use crate::config::{Config, RuleConfig};
use crate::event::{Delivery, Kind, Payload};
use crate::identity::{MatchKey, MatchKeys};
use chrono::{TimeDelta, Utc};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// A boxed future, as [`super::SendFuture`], for [`super::Destination::healthcheck`].
pub type HealthFuture<'a> = Pin<Box<dyn Future<Output = Vec<Health>> + Send + 'a>>;

/// What a health check may use besides the destination's own config.
#[derive(Debug, Clone, Default)]
pub struct Probe<'a> {
    /// The rules that send to the destination, in config order (Google's check uploads to the
    /// conversion action of the first, Microsoft's looks for the goals they name).
    pub rules: Vec<&'a RuleConfig>,
}

impl<'a> Probe<'a> {
    /// The probe of destination `name` of `config`.
    pub fn new(config: &'a Config, name: &str) -> Probe<'a> {
        Probe {
            rules: config
                .rules
                .iter()
                .filter(|r| r.destinations.iter().any(|d| d == name))
                .collect(),
        }
    }

    /// The Google conversion action of the first rule that names one.
    pub fn conversion_action(&self) -> Option<&'a str> {
        self.rules
            .iter()
            .find_map(|r| r.google.conversion_action.as_deref())
    }
}

/// One line of a destination's health check, as `pgcapi check` prints it after the destination's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether this part of the check passed.
    pub ok: bool,
    /// What was checked, and why it failed. Never a secret (`check` also scrubs them).
    pub text: String,
}

impl Health {
    /// A passed line.
    pub fn pass(text: impl Into<String>) -> Health {
        Health {
            ok: true,
            text: text.into(),
        }
    }

    /// A failed line.
    pub fn fail(text: impl Into<String>) -> Health {
        Health {
            ok: false,
            text: text.into(),
        }
    }

    /// One line, as a one-line answer.
    pub fn only(ok: bool, text: impl Into<String>) -> Vec<Health> {
        vec![Health {
            ok,
            text: text.into(),
        }]
    }
}

/// Why a request got no answer; never with its URL (Meta's carries the token).
pub(crate) fn unreachable(base: &str, e: reqwest::Error) -> String {
    let why = if e.is_timeout() {
        "timed out".to_string()
    } else {
        crate::pg::error_chain(&e.without_url())
    };
    format!("cannot reach {base}: {why}")
}

/// A string field of a JSON object (empty when absent).
pub(crate) fn field<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// A synthetic conversion that identifies nobody, for the platform calls that need one.
pub(crate) fn synthetic(destination: &str, conversion_action: Option<&str>) -> Delivery {
    let now = Utc::now();
    let mut keys = MatchKeys::new();
    keys.insert(
        MatchKey::Email,
        crate::identity::hash("pgcapi-check@example.invalid"),
    );
    Delivery {
        id: 0,
        rule: "pgcapi_check".into(),
        destination: destination.to_string(),
        event_id: format!(
            "pgcapi-check-{:016x}",
            rand::Rng::random::<u64>(&mut rand::rng())
        ),
        kind: Kind::Conversion,
        adjusts_rule: None,
        event_name: Some("CompletePayment".into()),
        event_time: now - TimeDelta::minutes(5),
        value: Some("0".into()),
        currency: Some("USD".into()),
        action_source: Some("website".into()),
        payload: Payload {
            keys,
            event_source_url: Some("https://example.invalid/pgcapi-check".into()),
            conversion_action: conversion_action.map(str::to_string),
            consent: true,
            ..Payload::default()
        },
        attempts: 0,
        created_at: now,
    }
}
