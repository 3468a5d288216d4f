//! Capture's write path: delivery rows and the slot checkpoint, committed in one transaction (group
//! commit), so that the control table and the stored position always agree.

use super::{db, quote_ident, OutboxError};
use crate::event::{is_deletion_rule, Kind, NewDelivery};
use crate::lsn::Lsn;
use tokio_postgres::GenericClient;

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
    let columns = Columns::of(rows);
    let sql = insert_sql(schema, duplicates, matching);
    client
        .execute(&sql, &columns.params())
        .await
        .map_err(db("inserting deliveries"))
}

/// The rows of one insert as 19 parallel arrays, one per column: the statement unnests them, so that
/// a batch of any size is one statement with 19 parameters.
struct Columns<'a> {
    rule: Vec<&'a str>,
    destination: Vec<&'a str>,
    platform: Vec<&'a str>,
    event_id: Vec<&'a str>,
    kind: Vec<&'a str>,
    adjusts: Vec<Option<&'a str>>,
    event_name: Vec<Option<&'a str>>,
    event_time: Vec<chrono::DateTime<chrono::Utc>>,
    value: Vec<Option<&'a str>>,
    currency: Vec<Option<&'a str>>,
    action_source: Vec<Option<&'a str>>,
    payload: Vec<String>,
    match_keys: Vec<String>,
    state: Vec<&'a str>,
    last_error: Vec<Option<&'a str>>,
    source_table: Vec<&'a str>,
    source_key: Vec<Option<&'a str>>,
    source_lsn: Vec<String>,
    commit_time: Vec<chrono::DateTime<chrono::Utc>>,
}

impl<'a> Columns<'a> {
    /// The columns of `rows`, in row order.
    fn of<R: std::borrow::Borrow<NewDelivery>>(rows: &'a [R]) -> Columns<'a> {
        let n = rows.len();
        let mut c = Columns {
            rule: Vec::with_capacity(n),
            destination: Vec::with_capacity(n),
            platform: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            adjusts: Vec::with_capacity(n),
            event_name: Vec::with_capacity(n),
            event_time: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            currency: Vec::with_capacity(n),
            action_source: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            match_keys: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            last_error: Vec::with_capacity(n),
            source_table: Vec::with_capacity(n),
            source_key: Vec::with_capacity(n),
            source_lsn: Vec::with_capacity(n),
            commit_time: Vec::with_capacity(n),
        };
        for r in rows {
            c.push(r.borrow());
        }
        c
    }

    fn push(&mut self, r: &'a NewDelivery) {
        self.rule.push(r.rule.as_str());
        self.destination.push(r.destination.as_str());
        self.platform.push(r.platform.as_str());
        self.event_id.push(r.event_id.as_str());
        self.kind.push(r.kind.as_str());
        self.adjusts.push(r.adjusts_rule.as_deref());
        self.event_name.push(r.event_name.as_deref());
        self.event_time.push(r.event_time);
        self.value.push(r.value.as_deref());
        self.currency.push(r.currency.as_deref());
        self.action_source.push(r.action_source.as_deref());
        self.payload.push(r.payload.to_json());
        let mut names = String::with_capacity(r.payload.keys.len() * 10);
        for (i, key) in r.payload.keys.keys().enumerate() {
            if i > 0 {
                names.push(',');
            }
            names.push_str(key.as_str());
        }
        self.match_keys.push(names);
        self.state.push(r.state.as_str());
        self.last_error.push(r.last_error.as_deref());
        self.source_table.push(r.source_table.as_str());
        self.source_key.push(r.source_key.as_deref());
        self.source_lsn.push(r.source_lsn.to_string());
        self.commit_time.push(r.commit_time);
    }

    /// The statement's parameters, in the order of [`insert_sql`]'s `$1`…`$19`.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 19] {
        [
            &self.rule,
            &self.destination,
            &self.platform,
            &self.event_id,
            &self.kind,
            &self.adjusts,
            &self.event_name,
            &self.event_time,
            &self.value,
            &self.currency,
            &self.action_source,
            &self.payload,
            &self.match_keys,
            &self.state,
            &self.last_error,
            &self.source_table,
            &self.source_lsn,
            &self.commit_time,
            &self.source_key,
        ]
    }
}

/// The text of an insert statement of [`insert_statement`]: one row per element of its 19 parallel
/// arrays, without retired keys, and as `duplicates` and `matching` say.
fn insert_sql(schema: &str, duplicates: Duplicates, matching: Match) -> String {
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
    format!(
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
    .replace("{s}", &quote_ident(schema))
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
                .execute(
                    "select pg_notify($1, '')",
                    &[&super::notify_channel(schema)],
                )
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
