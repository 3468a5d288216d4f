//! The control table: `pgcapi.deliveries` rows and the stored slot position (`pgcapi.checkpoints`).
//!
//! Capture writes a group of [`NewDelivery`] rows and the new checkpoint in one transaction
//! ([`write_group`]); the unique key `(event_id, destination, rule)` turns replays after a crash into
//! no-ops. Dispatch reads [`Delivery`] rows back.

use crate::config::Platform;
use crate::identity::MatchKeys;
use crate::lsn::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

/// The control schema's SQL files, in the order they are applied.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_control_schema.sql",
        include_str!("../sql/001_control_schema.sql"),
    ),
    ("003_retired.sql", include_str!("../sql/003_retired.sql")),
    (
        "004_queued_at.sql",
        include_str!("../sql/004_queued_at.sql"),
    ),
    (
        "005_dispatch_hot.sql",
        include_str!("../sql/005_dispatch_hot.sql"),
    ),
    (
        "006_cheaper_writes.sql",
        include_str!("../sql/006_cheaper_writes.sql"),
    ),
    (
        "007_capture_state.sql",
        include_str!("../sql/007_capture_state.sql"),
    ),
    (
        "008_source_key.sql",
        include_str!("../sql/008_source_key.sql"),
    ),
    (
        "009_platform_processing.sql",
        include_str!("../sql/009_platform_processing.sql"),
    ),
    // Last, so that a numbered file may drop a view to change a column it reads.
    ("views.sql", include_str!("../sql/views.sql")),
];

/// The suffix of the rule name of a retraction that a source row's DELETE produced: `order_paid:deleted`
/// retracts the `order_paid` conversion of the deleted row. Configured rule names hold only letters,
/// digits and `_`, so it never names a configured rule.
pub const DELETION_SUFFIX: &str = ":deleted";

/// The rule name of the retraction a DELETE produces for a conversion of `rule`.
pub fn deletion_rule(rule: &str) -> String {
    format!("{rule}{DELETION_SUFFIX}")
}

/// Whether `rule` names a retraction produced by a DELETE (see [`DELETION_SUFFIX`]).
pub fn is_deletion_rule(rule: &str) -> bool {
    rule.ends_with(DELETION_SUFFIX)
}

/// What a delivery row asks the platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Record a conversion.
    Conversion,
    /// Withdraw a conversion sent earlier (refund).
    Retraction,
    /// Replace the value of a conversion sent earlier (partial refund).
    Restatement,
}

impl Kind {
    /// The name stored in `deliveries.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Conversion => "conversion",
            Kind::Retraction => "retraction",
            Kind::Restatement => "restatement",
        }
    }

    /// Parses the stored name.
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Conversion, Kind::Retraction, Kind::Restatement]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

/// Where a delivery row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting to be sent (or retried at `next_attempt_at`).
    Pending,
    /// Accepted by the platform.
    Sent,
    /// Rejected for good; `last_error` holds the platform's message.
    Failed,
    /// Deliberately not sent; `last_error` says why (`no consent`, `no match keys`, ...).
    Skipped,
    /// Withdrawn before it was sent (a refund arrived first).
    Cancelled,
}

impl State {
    /// The name stored in `deliveries.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sent => "sent",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn from_name(name: &str) -> Option<State> {
        [
            State::Pending,
            State::Sent,
            State::Failed,
            State::Skipped,
            State::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// The `payload` column: everything the platform request needs besides the typed columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Normalized match keys, hashed where the platform wants hashes; never raw identifiers.
    #[serde(default)]
    pub keys: MatchKeys,
    /// The page of a website event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source_url: Option<String>,
    /// The platform's own event name where it differs from `event_name` (TikTok `CompletePayment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_event: Option<String>,
    /// Meta CRM events: the CRM's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_event_source: Option<String>,
    /// Google Ads conversion action resource name; for Microsoft Advertising, the offline conversion
    /// goal's name (`ConversionName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_action: Option<String>,
    /// The purchased items' ids, comma-separated, if the rule maps them (TikTok `contents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_ids: Option<String>,
    /// The items' type (`product`, `product_group`), if the rule maps it (TikTok `content_type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// When the ad was clicked, if the rule maps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_time: Option<DateTime<Utc>>,
    /// Whether the person consented to ad use of their data (always true for rows that are sent).
    #[serde(default)]
    pub consent: bool,
    /// Whether `consent` came from the rule's consent column; without one it is assumed, and Google
    /// destinations send no consent field at all (the account default applies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consent_column: bool,
}

impl Payload {
    /// The `payload` column's JSON: byte for byte what `serde_json::to_string` gives, written without
    /// serde's per-character escaping pass for the (usual) strings that need no escape.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + self.keys.len() * 80);
        out.push_str("{\"keys\":{");
        for (i, (key, value)) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(key.as_str());
            out.push_str("\":");
            push_json_string(&mut out, value);
        }
        out.push('}');
        let optional = [
            ("event_source_url", &self.event_source_url),
            ("platform_event", &self.platform_event),
            ("lead_event_source", &self.lead_event_source),
            ("conversion_action", &self.conversion_action),
            ("content_ids", &self.content_ids),
            ("content_type", &self.content_type),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                push_json_string(&mut out, value);
            }
        }
        if let Some(click_time) = &self.click_time {
            out.push_str(",\"click_time\":");
            out.push_str(&serde_json::to_string(click_time).expect("a time serializes"));
        }
        out.push_str(",\"consent\":");
        out.push_str(if self.consent { "true" } else { "false" });
        if self.consent_column {
            out.push_str(",\"consent_column\":true");
        }
        out.push('}');
        out
    }
}

/// Appends `value` as a JSON string; serde_json escapes only control characters, `"` and `\`.
fn push_json_string(out: &mut String, value: &str) {
    if !needs_json_escape(value.as_bytes()) {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(value).expect("a string serializes"));
    }
}

/// True when some byte is a control character, `"` or `\\`: the bytes JSON escapes inside a string.
/// Eight bytes at a time: `x - 0x01…` borrows into a byte's high bit exactly when some byte of `x` is
/// below the subtrahend (a borrow only starts at a byte that is itself a hit), so "any hit" is exact.
fn needs_json_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        if below(x, 0x20)
            || below(x ^ (ONES * u64::from(b'"')), 1)
            || below(x ^ (ONES * u64::from(b'\\')), 1)
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A delivery row as capture writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The rule that produced it.
    pub rule: String,
    /// The destination name from the config.
    pub destination: String,
    /// The destination's platform.
    pub platform: Platform,
    /// The stable event id (for adjustments: the id of the adjusted conversion).
    pub event_id: String,
    /// Conversion, retraction or restatement.
    pub kind: Kind,
    /// For adjustments: the rule whose conversion is adjusted.
    pub adjusts_rule: Option<String>,
    /// The event name.
    pub event_name: Option<String>,
    /// When the conversion happened.
    pub event_time: DateTime<Utc>,
    /// The value as decimal text.
    pub value: Option<String>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// Meta `action_source` and the like.
    pub action_source: Option<String>,
    /// Hashed keys and platform fields.
    pub payload: Payload,
    /// `pending`, or `skipped` with a reason in `last_error`.
    pub state: State,
    /// Why the row was skipped.
    pub last_error: Option<String>,
    /// `schema.table` of the source row.
    pub source_table: String,
    /// The replica-identity key of the source row ([`source_key`]), where a DELETE needs it to find
    /// the row's conversions. A retraction of a deleted row with an empty `event_id` and a
    /// `source_key` retracts the conversions recorded with that key (the event id is theirs).
    pub source_key: Option<String>,
    /// The commit end LSN of the source transaction.
    pub source_lsn: Lsn,
    /// The commit time of the source transaction.
    pub commit_time: DateTime<Utc>,
}

/// The `source_key` of a source row from the text values of its replica-identity key columns, in
/// column order (`None` for a null value): each `\` and `,` escaped with `\`, joined with `,`, a null
/// as `\N`. One encoding for the conversion (new tuple) and the DELETE (old key tuple), and
/// unambiguous: distinct keys never encode alike.
pub fn source_key<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut key = String::new();
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        match value {
            None => key.push_str("\\N"),
            Some(v) => {
                for c in v.chars() {
                    if c == '\\' || c == ',' {
                        key.push('\\');
                    }
                    key.push(c);
                }
            }
        }
    }
    key
}

/// A delivery row as dispatch reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Primary key.
    pub id: i64,
    /// The rule that produced it.
    pub rule: String,
    /// The destination name.
    pub destination: String,
    /// The stable event id.
    pub event_id: String,
    /// Conversion, retraction or restatement.
    pub kind: Kind,
    /// For adjustments: the adjusted rule.
    pub adjusts_rule: Option<String>,
    /// The event name.
    pub event_name: Option<String>,
    /// When the conversion happened.
    pub event_time: DateTime<Utc>,
    /// The value as decimal text.
    pub value: Option<String>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// Meta `action_source` and the like.
    pub action_source: Option<String>,
    /// Hashed keys and platform fields.
    pub payload: Payload,
    /// How many sends were attempted.
    pub attempts: i32,
    /// When capture recorded the row.
    pub created_at: DateTime<Utc>,
}

/// A control-table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database refused or the connection broke.
    #[error("control table ({what}): {}", crate::db::describe(source))]
    Db {
        /// What was being done.
        what: &'static str,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A stored value could not be read back.
    #[error("control table row {id}: {message}")]
    Corrupt {
        /// The row.
        id: i64,
        /// What is wrong.
        message: String,
    },
}

impl OutboxError {
    /// True when the error is a lost or refused connection (retry later), not a statement error.
    pub fn is_connection_error(&self) -> bool {
        match self {
            OutboxError::Db { source, .. } => {
                source.is_closed()
                    || source
                        .as_db_error()
                        .is_none_or(|e| ends_the_connection(e.code().code()))
            }
            OutboxError::Corrupt { .. } => false,
        }
    }
}

/// True for SQLSTATEs the server sends when it ends the session: connection exceptions (class 08) and
/// shutdowns (`57P01` admin shutdown, e.g. `pg_ctl restart -m fast` or `pg_terminate_backend`; `57P02`
/// crash shutdown; `57P03` cannot connect now). A statement that gets one was not refused: the
/// connection is gone and a new one will do.
pub fn ends_the_connection(sqlstate: &str) -> bool {
    sqlstate.starts_with("08") || matches!(sqlstate, "57P01" | "57P02" | "57P03")
}

fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> OutboxError {
    move |source| OutboxError::Db { what, source }
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Inserts `rows` (ignoring ones already recorded, and ones whose key was retired by retention) and returns
/// how many were new. One statement per call: the rows travel as parallel arrays and are expanded with
/// `unnest`. Safe against concurrent writers of the same keys (`on conflict do nothing`).
pub async fn insert_deliveries(
    client: &impl GenericClient,
    schema: &str,
    rows: &[NewDelivery],
) -> Result<u64, OutboxError> {
    insert_rows(client, schema, rows, Duplicates::OnConflict).await
}

/// How an insert leaves out rows whose key is already recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Duplicates {
    /// `on conflict do nothing`: correct whatever else writes the table at the same time.
    OnConflict,
    /// An anti-join on the unique key. The server does about a third less work per row than with
    /// `on conflict` (no speculative insertion), but a row committed by another transaction between the
    /// check and the insert makes the statement fail with a unique violation, and `rows` must not repeat
    /// a key. [`write_group`] uses it and falls back to [`Duplicates::OnConflict`] on that failure.
    AntiJoin,
    /// Restatements only: a row whose key is recorded with another value replaces it and is due
    /// again (a second partial refund of one order restates again, the last value wins); the same
    /// value changes nothing, so a replay after a crash adds nothing. `rows` must not repeat a key.
    Restate,
}

/// Inserts `rows`; the retractions of deleted source rows ([`DELETION_SUFFIX`]) go in a second
/// statement, after the others (so that they see a conversion of the same group), and only where
/// the conversion they retract is recorded and pending or sent: a DELETE of a row that never became
/// a conversion records nothing.
async fn insert_rows<R: std::borrow::Borrow<NewDelivery>>(
    client: &impl GenericClient,
    schema: &str,
    rows: &[R],
    duplicates: Duplicates,
) -> Result<u64, OutboxError> {
    let is_deletion = |r: &NewDelivery| is_deletion_rule(&r.rule);
    let is_restatement = |r: &NewDelivery| r.kind == Kind::Restatement;
    if !rows
        .iter()
        .any(|r| is_deletion(r.borrow()) || is_restatement(r.borrow()))
    {
        return insert_statement(client, schema, rows, duplicates, Match::None).await;
    }
    let (deletions, rest): (Vec<&NewDelivery>, Vec<&NewDelivery>) = rows
        .iter()
        .map(|r| r.borrow())
        .partition(|r| is_deletion(r));
    // Restatements (rare) go in their own statement, each key once with its last value.
    let (restatements, others): (Vec<&NewDelivery>, Vec<&NewDelivery>) =
        rest.into_iter().partition(|r| is_restatement(r));
    let mut last: Vec<&NewDelivery> = Vec::with_capacity(restatements.len());
    for r in restatements {
        let key = |d: &NewDelivery| (d.event_id.clone(), d.destination.clone(), d.rule.clone());
        match last.iter_mut().find(|l| key(l) == key(r)) {
            Some(slot) => *slot = r,
            None => last.push(r),
        }
    }
    // Retractions of deleted rows whose event id the DELETE did not carry: by the row's key.
    let (by_key, by_id): (Vec<&NewDelivery>, Vec<&NewDelivery>) = deletions
        .into_iter()
        .partition(|r| r.event_id.is_empty() && r.source_key.is_some());
    let mut inserted = insert_statement(client, schema, &others, duplicates, Match::None).await?;
    inserted += insert_statement(client, schema, &last, Duplicates::Restate, Match::None).await?;
    inserted += insert_statement(client, schema, &by_id, duplicates, Match::EventId).await?;
    Ok(inserted + insert_statement(client, schema, &by_key, duplicates, Match::SourceKey).await?)
}

/// Which recorded conversion the rows of an insert statement need (retractions of deleted rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// None: every row is inserted.
    None,
    /// A pending or sent conversion of the row's event id, destination and adjusted rule.
    EventId,
    /// Each pending or sent conversion of the row's destination and adjusted rule recorded with the
    /// row's `source_table` and `source_key`; the row takes its event id.
    SourceKey,
}

/// One insert statement of `rows`; with a [`Match`], only rows whose adjusted conversion exists.
async fn insert_statement<R: std::borrow::Borrow<NewDelivery>>(
    client: &impl GenericClient,
    schema: &str,
    rows: &[R],
    duplicates: Duplicates,
    matching: Match,
) -> Result<u64, OutboxError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let mut rule = Vec::with_capacity(n);
    let mut destination = Vec::with_capacity(n);
    let mut platform = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut adjusts = Vec::with_capacity(n);
    let mut event_name = Vec::with_capacity(n);
    let mut event_time = Vec::with_capacity(n);
    let mut value = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut action_source = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut match_keys = Vec::with_capacity(n);
    let mut state = Vec::with_capacity(n);
    let mut last_error = Vec::with_capacity(n);
    let mut source_table = Vec::with_capacity(n);
    let mut source_key = Vec::with_capacity(n);
    let mut source_lsn = Vec::with_capacity(n);
    let mut commit_time = Vec::with_capacity(n);
    for r in rows {
        let r: &NewDelivery = r.borrow();
        rule.push(r.rule.as_str());
        destination.push(r.destination.as_str());
        platform.push(r.platform.as_str());
        event_id.push(r.event_id.as_str());
        kind.push(r.kind.as_str());
        adjusts.push(r.adjusts_rule.as_deref());
        event_name.push(r.event_name.as_deref());
        event_time.push(r.event_time);
        value.push(r.value.as_deref());
        currency.push(r.currency.as_deref());
        action_source.push(r.action_source.as_deref());
        payload.push(r.payload.to_json());
        let mut names = String::with_capacity(r.payload.keys.len() * 10);
        for (i, key) in r.payload.keys.keys().enumerate() {
            if i > 0 {
                names.push(',');
            }
            names.push_str(key.as_str());
        }
        match_keys.push(names);
        state.push(r.state.as_str());
        last_error.push(r.last_error.as_deref());
        source_table.push(r.source_table.as_str());
        source_key.push(r.source_key.as_deref());
        source_lsn.push(r.source_lsn.to_string());
        commit_time.push(r.commit_time);
    }
    let (recorded, on_conflict) = match duplicates {
        Duplicates::OnConflict => ("", "on conflict (event_id, destination, rule) do nothing"),
        Duplicates::AntiJoin => (
            "and not exists (select 1 from {s}.deliveries d where d.event_id = t.event_id \
               and d.destination = t.destination and d.rule = t.rule)",
            "",
        ),
        Duplicates::Restate => (
            "",
            "on conflict (event_id, destination, rule) do update set \
               value = excluded.value, currency = excluded.currency, state = excluded.state, \
               last_error = excluded.last_error, platform_ref = null, sent_at = null, \
               lease_owner = null, lease_until = null, \
               next_attempt_at = greatest(now(), coalesce({s}.deliveries.lease_until, now())), \
               queued_at = now(), source_lsn = excluded.source_lsn, \
               commit_time = excluded.commit_time, updated_at = now() \
             where {s}.deliveries.kind = 'restatement' and excluded.kind = 'restatement' \
               and {s}.deliveries.value is distinct from excluded.value",
        ),
    };
    let columns =
        "rule, destination, platform, event_id, kind, adjusts_rule, event_name, event_time, \
           value, currency, action_source, payload, match_keys, state, last_error, source_table, \
           source_lsn, commit_time, source_key";
    let unnest = format!(
        "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
           $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::text[], \
           $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::timestamptz[], \
           $19::text[]) as {{t}}({columns})"
    );
    let (from, converted) = match matching {
        Match::None => (unnest.replace("{t}", "t"), ""),
        Match::EventId => (
            unnest.replace("{t}", "t"),
            "and exists (select 1 from {s}.deliveries c where c.event_id = t.event_id \
               and c.destination = t.destination and c.rule = t.adjusts_rule \
               and c.kind = 'conversion' and c.state in ('pending', 'sent'))",
        ),
        // Each conversion of the deleted row once (the row may repeat in `rows`: deleted, inserted
        // again and deleted in one group), with its event id; served by deliveries_source_key_idx.
        Match::SourceKey => (
            format!(
                "(select distinct on (c.event_id, u.destination, u.rule) u.rule, u.destination, \
                   u.platform, c.event_id, u.kind, u.adjusts_rule, u.event_name, u.event_time, \
                   u.value, u.currency, u.action_source, u.payload, u.match_keys, u.state, \
                   u.last_error, u.source_table, u.source_lsn, u.commit_time, u.source_key \
                 from {} join {{s}}.deliveries c on c.source_table = u.source_table \
                   and c.source_key = u.source_key and c.rule = u.adjusts_rule \
                   and c.destination = u.destination and c.kind = 'conversion' \
                   and c.state in ('pending', 'sent') \
                   and c.source_key is not null) as t",
                unnest.replace("{t}", "u")
            ),
            "",
        ),
    };
    let sql = format!(
        "insert into {{s}}.deliveries ({columns}) \
         select rule, destination, platform, event_id, kind, adjusts_rule, event_name, event_time, \
           value::numeric, currency, action_source, payload, \
           coalesce(string_to_array(nullif(match_keys, ''), ','), '{{}}'), state, last_error, \
           source_table, source_lsn::pg_lsn, commit_time, source_key \
         from {from} \
         where not exists (select 1 from {{s}}.retired r where r.rule = t.rule \
           and r.destination = t.destination and r.event_id = t.event_id) \
         {converted} {recorded} {on_conflict}"
    )
    .replace("{s}", &quote_ident(schema));
    client
        .execute(
            &sql,
            &[
                &rule,
                &destination,
                &platform,
                &event_id,
                &kind,
                &adjusts,
                &event_name,
                &event_time,
                &value,
                &currency,
                &action_source,
                &payload,
                &match_keys,
                &state,
                &last_error,
                &source_table,
                &source_lsn,
                &commit_time,
                &source_key,
            ],
        )
        .await
        .map_err(db("inserting deliveries"))
}

/// Stores the slot position up to which every change is recorded.
pub async fn save_checkpoint(
    client: &impl GenericClient,
    schema: &str,
    slot: &str,
    lsn: Lsn,
) -> Result<(), OutboxError> {
    let sql = format!(
        "insert into {s}.checkpoints (slot, lsn, updated_at) values ($1, $2::text::pg_lsn, now()) \
         on conflict (slot) do update set lsn = greatest({s}.checkpoints.lsn, excluded.lsn), \
           updated_at = now()",
        s = quote_ident(schema)
    );
    client
        .execute(&sql, &[&slot, &lsn.to_string()])
        .await
        .map(drop)
        .map_err(db("saving the checkpoint"))
}

/// The stored slot position, if capture has recorded one.
pub async fn load_checkpoint(
    client: &impl GenericClient,
    schema: &str,
    slot: &str,
) -> Result<Option<Lsn>, OutboxError> {
    let sql = format!(
        "select lsn::text from {}.checkpoints where slot = $1",
        quote_ident(schema)
    );
    let row = client
        .query_opt(&sql, &[&slot])
        .await
        .map_err(db("loading the checkpoint"))?;
    Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
}

/// Most rows [`write_group`] puts in one insert statement.
pub const WRITE_CHUNK_ROWS: usize = 1_000;

/// Writes `rows` and the checkpoint `lsn` in one transaction, so that the control table and the stored
/// position always agree. Returns how many rows were new.
///
/// The rows go in with the cheaper anti-join insert (a group repeating a key keeps its first row, as
/// `on conflict do nothing` would). Only capture's slot holder writes a group, but a backfill may record
/// the same key between the check and the insert: then the transaction fails with a unique violation and
/// is written again with `on conflict do nothing`.
pub async fn write_group(
    client: &tokio_postgres::Client,
    schema: &str,
    slot: &str,
    rows: &[NewDelivery],
    lsn: Lsn,
) -> Result<u64, OutboxError> {
    let firsts = first_of_each_key(rows);
    match write_whole(client, schema, slot, &firsts, lsn, Duplicates::AntiJoin).await {
        Err(OutboxError::Db { source, .. })
            if source.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            write_whole(client, schema, slot, &firsts, lsn, Duplicates::OnConflict).await
        }
        other => other,
    }
}

/// `rows` without the ones that repeat the key `(event_id, destination, rule)` of an earlier one.
fn first_of_each_key(rows: &[NewDelivery]) -> Vec<&NewDelivery> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.iter()
        .filter(|r| {
            // Retractions matched by the deleted row's key have no event id yet: one per key.
            let key = r
                .event_id
                .is_empty()
                .then_some(r.source_key.as_deref())
                .flatten();
            seen.insert((
                r.event_id.as_str(),
                r.destination.as_str(),
                r.rule.as_str(),
                key,
            ))
        })
        .collect()
}

/// One control transaction holding all of `rows`; rolled back if any step fails.
async fn write_whole(
    client: &tokio_postgres::Client,
    schema: &str,
    slot: &str,
    rows: &[&NewDelivery],
    lsn: Lsn,
    duplicates: Duplicates,
) -> Result<u64, OutboxError> {
    let mut group = OpenGroup::begin_with(client, duplicates).await?;
    let written = match group.add(client, schema, rows).await {
        Ok(()) => group.commit(client, schema, slot, lsn).await,
        Err(e) => Err(e),
    };
    if written.is_err() {
        // Harmless when the commit itself failed and ended the transaction.
        let _ = client.batch_execute("rollback").await;
    }
    written
}

/// A control transaction of capture's, begun on the plain client (nothing else may use the client until
/// [`OpenGroup::commit`]; dropping the connection rolls it back).
///
/// [`write_group`] uses one for a whole group. The writer also keeps one open across several parts: the
/// rows of a source transaction larger than `capture.group_max_rows` (and of the complete transactions
/// grouped before it) arrive in parts so that memory stays bounded, and are committed together with the
/// checkpoint of its commit. Until then no other session sees any of them, so a payment and its refund in
/// one large source transaction still reach dispatch together. Parts are inserted with `on conflict do
/// nothing`, since a failed part could not be written again: its rows are gone.
#[derive(Debug)]
pub struct OpenGroup {
    inserted: u64,
    duplicates: Duplicates,
}

impl OpenGroup {
    /// Begins a control transaction for parts.
    pub async fn begin(client: &tokio_postgres::Client) -> Result<OpenGroup, OutboxError> {
        OpenGroup::begin_with(client, Duplicates::OnConflict).await
    }

    async fn begin_with(
        client: &tokio_postgres::Client,
        duplicates: Duplicates,
    ) -> Result<OpenGroup, OutboxError> {
        client
            .batch_execute("begin")
            .await
            .map_err(db("beginning a transaction"))?;
        Ok(OpenGroup {
            inserted: 0,
            duplicates,
        })
    }

    /// Inserts one part, in statements of at most [`WRITE_CHUNK_ROWS`] rows: the encoded parameters of
    /// one statement are a copy of its rows, so smaller statements keep the peak memory down.
    pub async fn add<R: std::borrow::Borrow<NewDelivery>>(
        &mut self,
        client: &tokio_postgres::Client,
        schema: &str,
        rows: &[R],
    ) -> Result<(), OutboxError> {
        for chunk in rows.chunks(WRITE_CHUNK_ROWS) {
            self.inserted += insert_rows(client, schema, chunk, self.duplicates).await?;
        }
        Ok(())
    }

    /// Stores the checkpoint `lsn`, notifies dispatchers if rows are new (delivered at commit, so they
    /// wake up as soon as the rows are visible), and commits. Returns how many rows of all parts were new.
    pub async fn commit(
        self,
        client: &tokio_postgres::Client,
        schema: &str,
        slot: &str,
        lsn: Lsn,
    ) -> Result<u64, OutboxError> {
        save_checkpoint(client, schema, slot, lsn).await?;
        if self.inserted > 0 {
            client
                .execute("select pg_notify($1, '')", &[&notify_channel(schema)])
                .await
                .map_err(db("notifying dispatchers"))?;
        }
        client
            .batch_execute("commit")
            .await
            .map_err(db("committing"))?;
        Ok(self.inserted)
    }
}

/// Notifies dispatchers listening on `{schema}_deliveries` that new rows are due.
pub fn notify_channel(schema: &str) -> String {
    format!("{schema}_deliveries")
}

#[cfg(test)]
mod tests {
    use super::{ends_the_connection, Payload};
    use crate::identity::MatchKey;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn optional_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            "[a-zA-Z0-9:/._ -]{0,30}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀a]{0,8}",
        ])
    }

    proptest! {
        /// The eight-bytes-at-a-time check answers as a byte-by-byte one.
        #[test]
        fn the_escape_check_answers_as_a_byte_loop(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), 0x1fu8..0x22, 0x5bu8..0x5e],
                0..40,
            ),
        ) {
            let naive = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(super::needs_json_escape(&bytes), naive);
        }

        /// The hand-written payload JSON is byte for byte serde_json's, escapes included.
        #[test]
        fn payload_json_is_serde_jsons(
            keys in proptest::collection::btree_map(
                proptest::sample::select(MatchKey::ALL.to_vec()),
                prop_oneof!["[0-9a-f]{64}", any::<String>(), "[\"\\\\\u{0}-\u{1f}a]{0,6}"],
                0..12,
            ),
            event_source_url in optional_text(),
            platform_event in optional_text(),
            lead_event_source in optional_text(),
            conversion_action in optional_text(),
            content_ids in optional_text(),
            content_type in optional_text(),
            click_micros in proptest::option::of(0i64..4_000_000_000_000_000),
            consent in any::<bool>(),
            consent_column in any::<bool>(),
        ) {
            let payload = Payload {
                keys,
                event_source_url,
                platform_event,
                lead_event_source,
                conversion_action,
                content_ids,
                content_type,
                click_time: click_micros.map(|m| Utc.timestamp_micros(m).unwrap()),
                consent,
                consent_column,
            };
            prop_assert_eq!(payload.to_json(), serde_json::to_string(&payload).unwrap());
        }
    }

    #[test]
    fn shutdowns_and_connection_exceptions_end_the_connection_statement_errors_do_not() {
        for code in ["57P01", "57P02", "57P03", "08006", "08003"] {
            assert!(ends_the_connection(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "57014", "40001"] {
            assert!(!ends_the_connection(code), "{code}");
        }
    }
}

/// What capture is doing, as stored in `capture_state` (see `sql/007_capture_state.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturePhase {
    /// Holding the slot and recording changes.
    Streaming,
    /// Waiting out an outage (connection lost or refused); it resumes by itself.
    Retrying,
    /// A change it cannot apply until an operator acts; `error` says what and `error_lsn` where.
    Stuck,
}

impl CapturePhase {
    /// The name stored in `capture_state.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapturePhase::Streaming => "streaming",
            CapturePhase::Retrying => "retrying",
            CapturePhase::Stuck => "stuck",
        }
    }

    /// Parses the stored name.
    pub fn from_name(name: &str) -> Option<CapturePhase> {
        [
            CapturePhase::Streaming,
            CapturePhase::Retrying,
            CapturePhase::Stuck,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

/// One slot's row of `capture_state`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureReport {
    /// What capture is doing.
    pub phase: CapturePhase,
    /// Why it is not streaming.
    pub error: Option<String>,
    /// The WAL position of the change it is stuck on.
    #[serde(serialize_with = "crate::lsn::serialize_opt")]
    pub error_lsn: Option<Lsn>,
    /// When the current problem started.
    pub error_since: Option<chrono::DateTime<chrono::Utc>>,
    /// When a capture process last wrote the row.
    pub seen_at: chrono::DateTime<chrono::Utc>,
}

/// Records what capture of `slot` is doing. `error_since` is kept while the phase stays the same, so it
/// tells how long the problem has lasted; streaming clears the error. Called at each change of phase and
/// at least every 30 s while capture runs (that refreshes `seen_at`).
pub async fn report_capture(
    client: &impl GenericClient,
    schema: &str,
    slot: &str,
    phase: CapturePhase,
    error: Option<&str>,
    error_lsn: Option<Lsn>,
) -> Result<(), OutboxError> {
    let sql = format!(
        "insert into {s}.capture_state as c (slot, state, error, error_lsn, error_since, seen_at) \
         values ($1, $2, $3, $4::text::pg_lsn, case when $2 = 'streaming' then null else now() end, now()) \
         on conflict (slot) do update set state = excluded.state, error = excluded.error, \
           error_lsn = excluded.error_lsn, seen_at = now(), \
           error_since = case when excluded.state = 'streaming' then null \
                              when c.state = excluded.state then coalesce(c.error_since, now()) \
                              else now() end",
        s = quote_ident(schema)
    );
    let error_lsn = error_lsn.map(|l| l.to_string());
    client
        .execute(&sql, &[&slot, &phase.as_str(), &error, &error_lsn])
        .await
        .map(drop)
        .map_err(db("recording the capture state"))
}

/// The stored state of `slot`'s capture, if a capture process ever recorded one.
pub async fn load_capture_report(
    client: &impl GenericClient,
    schema: &str,
    slot: &str,
) -> Result<Option<CaptureReport>, OutboxError> {
    let sql = format!(
        "select state, error, error_lsn::text, error_since, seen_at from {}.capture_state \
         where slot = $1",
        quote_ident(schema)
    );
    let row = client
        .query_opt(&sql, &[&slot])
        .await
        .map_err(db("reading the capture state"))?;
    Ok(row.map(|r| CaptureReport {
        phase: CapturePhase::from_name(r.get::<_, &str>(0)).unwrap_or(CapturePhase::Retrying),
        error: r.get(1),
        error_lsn: r.get::<_, Option<String>>(2).and_then(|l| l.parse().ok()),
        error_since: r.get(3),
        seen_at: r.get(4),
    }))
}

/// What a platform reported, after accepting a request, about events it could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessingReport {
    /// The config name of the destination.
    pub destination: String,
    /// The platform's request id.
    pub request_id: String,
    /// Events the platform could not use, per reason (its own names).
    pub unusable: Vec<(String, i64)>,
}

/// Records a final processing report once (a repeat of the same request changes nothing).
pub async fn record_processing(
    client: &impl GenericClient,
    schema: &str,
    report: &ProcessingReport,
) -> Result<(), OutboxError> {
    let sql = format!(
        "insert into {}.platform_processing (destination, request_id, reason, events) \
         values ($1, $2, $3, $4) on conflict do nothing",
        quote_ident(schema)
    );
    for (reason, events) in &report.unusable {
        client
            .execute(
                &sql,
                &[&report.destination, &report.request_id, reason, events],
            )
            .await
            .map_err(db("recording the platform's processing report"))?;
    }
    Ok(())
}

/// Per destination, the events the platform reported it could not use in the last 24 hours, per reason
/// (most first).
pub async fn load_unusable_24h(
    client: &impl GenericClient,
    schema: &str,
) -> Result<std::collections::BTreeMap<String, Vec<(String, i64)>>, OutboxError> {
    let sql = format!(
        "select destination, reason, sum(events)::bigint from {}.platform_processing \
         where recorded_at >= now() - interval '1 day' \
         group by destination, reason order by destination, 3 desc, reason",
        quote_ident(schema)
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(db("reading the platforms' processing reports"))?;
    let mut out = std::collections::BTreeMap::<String, Vec<(String, i64)>>::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    Ok(out)
}

/// Deletes processing reports recorded more than `keep` ago.
pub async fn purge_processing(
    client: &impl GenericClient,
    schema: &str,
    keep: std::time::Duration,
) -> Result<u64, OutboxError> {
    let sql = format!(
        "delete from {}.platform_processing \
         where recorded_at < now() - make_interval(secs => $1)",
        quote_ident(schema)
    );
    client
        .execute(&sql, &[&keep.as_secs_f64()])
        .await
        .map_err(db("deleting old processing reports"))
}
