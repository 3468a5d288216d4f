//! `[[rules]]`: which row changes become which events, and the `{column}` templates their keys hold.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A `when` condition value: one value or a list of accepted values.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WhenValue {
    /// Any of these.
    List(Vec<Scalar>),
    /// Exactly this.
    One(Scalar),
}

impl WhenValue {
    /// The accepted values as text, as they are compared with the column's text form.
    pub fn accepted(&self) -> Vec<String> {
        match self {
            WhenValue::One(s) => vec![s.as_text()],
            WhenValue::List(list) => list.iter().map(Scalar::as_text).collect(),
        }
    }
}

/// A TOML scalar in a `when` condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}

impl Scalar {
    /// The text form compared with the column value's text form.
    pub fn as_text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(t) => t.clone(),
        }
    }
}

/// `[[rules]]`: which row changes become which events.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleConfig {
    /// Unique rule name; part of the control table's natural key.
    pub name: String,
    /// `schema.table` (or `table`, meaning `public.table`).
    pub table: String,
    /// Column conditions on the new row; all must hold.
    #[serde(default)]
    pub when: BTreeMap<String, WhenValue>,
    /// The event name sent to the platforms (`Purchase`, `Lead`, ...).
    #[serde(default)]
    pub event: Option<String>,
    /// Template of the stable event id (`order-{order_number}`).
    #[serde(default)]
    pub event_id: Option<String>,
    /// `{column}` holding the event time; the commit time when absent.
    #[serde(default)]
    pub event_time: Option<String>,
    /// `{column}` holding the value.
    #[serde(default)]
    pub value: Option<String>,
    /// Template (usually `{column}`) of the ISO 4217 currency; `[defaults] currency` when absent or empty.
    #[serde(default)]
    pub currency: Option<String>,
    /// Column holding the consent; no consent column means consent is not checked.
    #[serde(default)]
    pub consent: Option<String>,
    /// `website`, `system_generated`, `physical_store`, ...
    #[serde(default)]
    pub action_source: Option<String>,
    /// Template of the page URL (website events).
    #[serde(default)]
    pub event_source_url: Option<String>,
    /// Template of the purchased items' ids, comma-separated (TikTok `contents[].content_id`).
    #[serde(default)]
    pub content_ids: Option<String>,
    /// Template of the items' type, `product` or `product_group` (TikTok `content_type`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Destination names.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Match keys: key name → column.
    #[serde(default, rename = "match")]
    pub match_keys: BTreeMap<String, String>,
    /// Meta-specific settings.
    #[serde(default)]
    pub meta: MetaRuleConfig,
    /// Google-specific settings.
    #[serde(default)]
    pub google: GoogleRuleConfig,
    /// TikTok-specific settings.
    #[serde(default)]
    pub tiktok: TiktokRuleConfig,
    /// Microsoft Advertising-specific settings.
    #[serde(default)]
    pub microsoft: MicrosoftRuleConfig,
    /// Outbrain-specific settings.
    #[serde(default)]
    pub outbrain: EventNameRuleConfig,
    /// Taboola-specific settings.
    #[serde(default)]
    pub taboola: EventNameRuleConfig,
    /// LinkedIn-specific settings.
    #[serde(default)]
    pub linkedin: LinkedinRuleConfig,
    /// Reddit-specific settings.
    #[serde(default)]
    pub reddit: RedditRuleConfig,
    /// Snapchat-specific settings.
    #[serde(default)]
    pub snapchat: EventNameRuleConfig,
    /// Pinterest-specific settings.
    #[serde(default)]
    pub pinterest: EventNameRuleConfig,
    /// The rule whose conversions this rule retracts (refunds).
    #[serde(default)]
    pub retracts: Option<String>,
    /// The rule whose conversions this rule restates with a new value (partial refunds).
    #[serde(default)]
    pub restates: Option<String>,
    /// What a DELETE of a source row does to this rule's conversion of it (conversion rules only).
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// `on_delete` of a conversion rule: what a DELETE of the source row does to its conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Like a refund: a pending conversion is cancelled (or, if it may have reached the platform,
    /// finished first); a sent one is retracted where the platform can, skipped where it cannot.
    #[default]
    Retract,
    /// Deletes change nothing (rows deleted for archiving or retention).
    Ignore,
}

impl RuleConfig {
    /// The rule whose conversion this rule adjusts (retracts or restates), if any.
    pub fn adjusts(&self) -> Option<&str> {
        self.retracts.as_deref().or(self.restates.as_deref())
    }
}

/// `[rules.meta]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetaRuleConfig {
    /// `lead_event_source` of CRM events (the CRM's name).
    #[serde(default)]
    pub lead_event_source: Option<String>,
    /// Overrides the event name for Meta.
    #[serde(default)]
    pub event: Option<String>,
}

/// `[rules.google]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GoogleRuleConfig {
    /// `customers/{cid}/conversionActions/{id}`.
    #[serde(default)]
    pub conversion_action: Option<String>,
}

/// `[rules.tiktok]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TiktokRuleConfig {
    /// The TikTok event name (`CompletePayment`, ...).
    #[serde(default)]
    pub event: Option<String>,
}

/// `[rules.microsoft]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MicrosoftRuleConfig {
    /// The name of the offline conversion goal (`ConversionName`), exactly as in Microsoft Advertising.
    #[serde(default)]
    pub conversion_name: Option<String>,
}

/// `[rules.outbrain]`, `[rules.taboola]`, `[rules.snapchat]`, `[rules.pinterest]`: the event name the
/// platform knows the conversion by.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventNameRuleConfig {
    /// The event name exactly as the platform knows it (case-sensitive: Outbrain's event-based
    /// conversion name, Taboola's conversion rule Event Name, Snap's `PURCHASE`, Pinterest's
    /// `checkout`); by default the rule's `event`, mapped where the platform has standard names.
    #[serde(default)]
    pub event: Option<String>,
}

/// `[rules.linkedin]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LinkedinRuleConfig {
    /// The conversion rule the rule's events count for: its id (`104012`) or URN
    /// (`urn:lla:llaPartnerConversion:104012`). LinkedIn needs one per event.
    #[serde(default)]
    pub conversion_rule: Option<String>,
}

/// `[rules.reddit]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RedditRuleConfig {
    /// The Reddit event type (`PURCHASE`, `LEAD`, `SIGN_UP`, …) or a custom event name; by default
    /// the rule's event is mapped (`Purchase` → `PURCHASE`, anything unknown → a custom event).
    #[serde(default)]
    pub event: Option<String>,
}

/// Match-key names accepted in `[rules.match]` besides [`crate::identity::MatchKey`] names: `fbclid` (builds `fbc`) and
/// `click_time` (the click's time, for `fbc` and Google's click window).
pub const EXTRA_MATCH_NAMES: [&str; 2] = ["fbclid", "click_time"];

/// A string with `{column}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Literal text and column references, in order.
    pub parts: Vec<TemplatePart>,
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text copied as is.
    Literal(String),
    /// The value of a column.
    Column(String),
}

impl Template {
    /// Parses `text`; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed '{{' in {text:?}")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty {{}} in {text:?}"));
                    }
                    if !literal.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(TemplatePart::Column(name));
                }
                '}' => return Err(format!("unmatched '}}' in {text:?}")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// The column when the template is exactly one `{column}`.
    pub fn single_column(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [TemplatePart::Column(c)] => Some(c),
            _ => None,
        }
    }

    /// The columns the template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Column(c) => Some(c.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }
}
