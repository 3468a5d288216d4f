//! Rules compiled once from the config: which columns each rule reads, for binding to a Relation
//! message and for the checks against the database's catalog.

use crate::config::{Config, OnDelete, RuleConfig, Template};
use crate::decode::Relation;
use crate::event::Kind;
use crate::identity::MatchKey;
use crate::platform::Platform;
use fnv::FnvHashMap;
use std::sync::Arc;

/// Where a match-key column goes in [`RawIdentity`].
#[derive(Debug, Clone, Copy)]
pub(super) enum RawField {
    Key(MatchKey),
    Fbclid,
    ClickTime,
}

impl RawField {
    /// The config name of the field (`match.<name>`).
    pub(super) fn name(self) -> &'static str {
        match self {
            RawField::Key(k) => k.as_str(),
            RawField::Fbclid => "fbclid",
            RawField::ClickTime => "click_time",
        }
    }

    /// True when `platform` receives this field (as itself, or `fbclid` as Meta's `fbc`).
    pub(super) fn accepted_by(self, platform: Platform) -> bool {
        match self {
            RawField::Key(k) => crate::identity::accepted_keys(platform).contains(&k),
            RawField::Fbclid => crate::identity::accepted_keys(platform).contains(&MatchKey::Fbc),
            RawField::ClickTime => false,
        }
    }
}

/// A rule compiled from the config.
#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) name: String,
    pub(super) table: String,
    pub(super) when: Vec<(String, Vec<String>)>,
    pub(super) kind: Kind,
    /// For adjustments, the rule whose conversion is adjusted (its fields build the event id).
    pub(super) adjusts: Option<Arc<Compiled>>,
    pub(super) event: Option<String>,
    pub(super) event_id: Option<Template>,
    pub(super) event_time: Option<String>,
    pub(super) value: Option<String>,
    pub(super) currency: Option<Template>,
    pub(super) consent: Option<String>,
    pub(super) action_source: Option<String>,
    pub(super) event_source_url: Option<Template>,
    pub(super) content_ids: Option<Template>,
    pub(super) content_type: Option<Template>,
    pub(super) destinations: Vec<(String, Platform)>,
    pub(super) raw_fields: Vec<(RawField, String)>,
    pub(super) lead_event_source: Option<String>,
    pub(super) meta_event: Option<String>,
    pub(super) conversion_action: Option<String>,
    pub(super) tiktok_event: Option<String>,
    pub(super) snapchat_event: Option<String>,
    pub(super) pinterest_event: Option<String>,
    /// `[rules.outbrain] event`.
    pub(super) outbrain_event: Option<String>,
    /// `[rules.taboola] event`.
    pub(super) taboola_event: Option<String>,
    pub(super) on_delete: OnDelete,
    /// Set once a DELETE could not be matched to this rule's conversion (reported once per process).
    pub(super) delete_unmatched: std::sync::atomic::AtomicBool,
    /// Microsoft Advertising offline conversion goal name.
    pub(super) conversion_name: Option<String>,
    /// LinkedIn conversion rule (id or URN).
    pub(super) linkedin_rule: Option<String>,
    /// Reddit event type or custom event name.
    pub(super) reddit_event: Option<String>,
}

impl Compiled {
    pub(super) fn from_config(
        rule: &RuleConfig,
        config: &Config,
        adjusts: Option<Arc<Compiled>>,
    ) -> Compiled {
        let template = |t: &Option<String>| t.as_deref().and_then(|t| Template::parse(t).ok());
        let single =
            |t: &Option<String>| template(t).and_then(|t| t.single_column().map(str::to_string));
        let kind = if rule.retracts.is_some() {
            Kind::Retraction
        } else if rule.restates.is_some() {
            Kind::Restatement
        } else {
            Kind::Conversion
        };
        let raw_fields = rule
            .match_keys
            .iter()
            .filter_map(|(name, column)| {
                let field = match name.as_str() {
                    "fbclid" => RawField::Fbclid,
                    "click_time" => RawField::ClickTime,
                    other => RawField::Key(MatchKey::from_name(other)?),
                };
                Some((field, column.clone()))
            })
            .collect();
        Compiled {
            name: rule.name.clone(),
            table: qualified(&rule.table),
            when: rule
                .when
                .iter()
                .map(|(column, accepted)| (column.clone(), accepted.accepted()))
                .collect(),
            kind,
            adjusts,
            event: rule.event.clone(),
            event_id: template(&rule.event_id),
            event_time: single(&rule.event_time),
            value: single(&rule.value),
            currency: template(&rule.currency),
            consent: rule.consent.clone(),
            action_source: rule.action_source.clone(),
            event_source_url: template(&rule.event_source_url),
            content_ids: template(&rule.content_ids),
            content_type: template(&rule.content_type),
            destinations: rule
                .destinations
                .iter()
                .filter_map(|d| Some((d.clone(), config.destinations.get(d)?.platform())))
                .collect(),
            raw_fields,
            lead_event_source: rule.meta.lead_event_source.clone(),
            meta_event: rule.meta.event.clone(),
            conversion_action: rule.google.conversion_action.clone(),
            tiktok_event: rule.tiktok.event.clone(),
            snapchat_event: rule.snapchat.event.clone(),
            pinterest_event: rule.pinterest.event.clone(),
            outbrain_event: rule.outbrain.event.clone(),
            taboola_event: rule.taboola.event.clone(),
            on_delete: rule.on_delete,
            delete_unmatched: std::sync::atomic::AtomicBool::new(false),
            conversion_name: rule.microsoft.conversion_name.clone(),
            linkedin_rule: rule.linkedin.conversion_rule.clone(),
            reddit_event: rule.reddit.event.clone(),
        }
    }

    /// The columns evaluating a change reads: a conversion's every column; an adjustment's condition,
    /// value and currency, and the id, time and page of the conversion it adjusts (not its identifiers).
    pub(super) fn evaluated_columns(&self) -> Vec<&str> {
        // The id, time and page come from the adjusted conversion; consent and identifiers are read
        // for a conversion only.
        static NO_CONSENT: Option<String> = None;
        let (event, consent) = match &self.adjusts {
            None => (self, &self.consent),
            Some(target) => (target.as_ref(), &NO_CONSENT),
        };
        let mut out: Vec<&str> = self.when.iter().map(|(c, _)| c.as_str()).collect();
        for t in [&event.event_id, &self.currency, &event.event_source_url]
            .into_iter()
            .flatten()
        {
            out.extend(t.columns());
        }
        out.extend(
            [&event.event_time, &self.value, consent]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
        if self.adjusts.is_none() {
            out.extend(self.raw_fields.iter().map(|(_, c)| c.as_str()));
        }
        out
    }

    /// Every (config field, column) the rule reads, for binding and for checks against the database.
    pub(super) fn columns(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (column, _) in &self.when {
            out.push((format!("when.{column}"), column.clone()));
        }
        let mut templated = |field: &str, t: &Option<Template>| {
            if let Some(t) = t {
                for c in t.columns() {
                    out.push((field.to_string(), c.to_string()));
                }
            }
        };
        templated("event_id", &self.event_id);
        templated("currency", &self.currency);
        templated("event_source_url", &self.event_source_url);
        templated("content_ids", &self.content_ids);
        templated("content_type", &self.content_type);
        for (field, column) in [
            ("event_time", &self.event_time),
            ("value", &self.value),
            ("consent", &self.consent),
        ] {
            if let Some(c) = column {
                out.push((field.to_string(), c.clone()));
            }
        }
        for (field, column) in &self.raw_fields {
            out.push((format!("match.{}", field.name()), column.clone()));
        }
        if let Some(target) = &self.adjusts {
            for (field, column) in target.columns() {
                if !field.starts_with("when.") {
                    out.push((
                        format!("{} (via {}).{field}", target.name, self.name),
                        column,
                    ));
                }
            }
        }
        out
    }
}

pub(super) fn qualified(table: &str) -> String {
    let (schema, name) = crate::config::split_table(table);
    format!("{schema}.{name}")
}

/// Whether template `t` reads only replica-identity key columns of `relation`.
pub(super) fn reads_only_key(
    relation: &Relation,
    index: &FnvHashMap<String, usize>,
    t: &Template,
) -> bool {
    t.columns().all(|c| {
        index
            .get(c)
            .and_then(|&i| relation.columns.get(i))
            .is_some_and(|c| c.key)
    })
}
