//! What a session does with each decoded message: transactions, relations bound to the rules (with
//! columns recovered from the catalog), row changes and deletes, and unchanged TOAST values read back.

use super::session::{OpenTx, Session};
use super::*;

impl Session<'_> {
    pub(super) async fn handle(&mut self, message: PgOutput, at: Lsn) -> Result<(), CaptureError> {
        match message {
            PgOutput::Begin(begin) => {
                self.tx = Some(OpenTx {
                    context: TxContext {
                        commit_lsn: begin.final_lsn,
                        commit_time: begin.commit_time,
                    },
                });
                self.ordinal = 0;
            }
            PgOutput::Commit(commit) => {
                if self.tx.take().is_none() {
                    return Err(CaptureError::Protocol(format!(
                        "Commit without Begin at {at}"
                    )));
                }
                crate::metrics::transaction_committed();
                self.group_end = Some(commit.end_lsn);
                self.group_complete = self.group.len();
                self.publish_changes();
                if self.group.len() >= self.capture.config.capture.group_max_rows {
                    self.flush_group().await?;
                } else if self.group_deadline.is_none() {
                    self.group_deadline = Some(
                        tokio::time::Instant::now()
                            + Duration::from_millis(self.capture.config.capture.group_max_ms),
                    );
                }
            }
            PgOutput::Relation(relation) => {
                let oid = relation.oid;
                let relation = self.relations.insert(relation);
                self.broken.remove(&oid);
                match self.bind(relation).await? {
                    Ok(bound) => {
                        self.bound.insert(oid, bound);
                    }
                    Err(error) => {
                        self.bound.insert(oid, None);
                        self.broken.insert(oid, error);
                    }
                }
            }
            PgOutput::Insert(insert) => {
                self.change(insert.relation, insert.new, at).await?;
            }
            PgOutput::Update(mut update) => {
                fill_unchanged_toast(&mut update.new, update.old.as_ref());
                self.change(update.relation, update.new, at).await?;
            }
            PgOutput::Delete(delete) => {
                self.bump_changes();
                self.deleted(delete, at).await?;
            }
            PgOutput::Truncate(_) => {
                self.bump_changes();
            }
            PgOutput::Origin(_) | PgOutput::Type(_) | PgOutput::Message(_) => {}
        }
        Ok(())
    }

    /// The error that keeps the rules from being bound to `relation`, if any, with the LSN of this
    /// change (`at`). Every change of a watched table goes through here before it is evaluated.
    pub(super) fn check_bound(&self, relation: u32, at: Lsn) -> Result<(), CaptureError> {
        match self.broken.get(&relation) {
            Some(error) => Err(CaptureError::Rule {
                error: error.clone(),
                lsn: at,
            }),
            None => Ok(()),
        }
    }

    /// Binds the rules to a Relation message. A column a rule reads that the message lacks is looked
    /// up in the table as it is now: a change written while the column had another name binds to it by
    /// position once it has its name back (same position, same type, the other name gone), and a change
    /// written while it did not exist reads it as NULL once it is re-added. Otherwise the rule error
    /// stands. The outer error is an outage reading the catalog.
    pub(super) async fn bind(
        &mut self,
        relation: Arc<decode::Relation>,
    ) -> Result<Result<Option<Bound>, RuleError>, CaptureError> {
        let rules = &self.capture.rules;
        let error = match rules.bind(relation.clone()) {
            Ok(bound) => return Ok(Ok(bound)),
            Err(error) => error,
        };
        let missing = rules.missing_columns(&relation);
        let now = self.catalog_columns(relation.oid).await?;
        let mut recovered = HashMap::new();
        for column in missing {
            let Some(position) = now.iter().position(|(name, _)| *name == column) else {
                continue;
            };
            match relation.columns.get(position) {
                Some(then)
                    if now.len() == relation.columns.len()
                        && then.type_oid == now[position].1
                        && !now.iter().any(|(name, _)| *name == then.name) =>
                {
                    warn!(
                        table = %relation.qualified_name(),
                        column = %column,
                        wal_name = %then.name,
                        "the WAL names this column {:?} (it was renamed, and has its name back): \
                         reading it by position", then.name
                    );
                    recovered.insert(column, Recovered::At(position));
                }
                _ if position >= relation.columns.len() => {
                    warn!(
                        table = %relation.qualified_name(),
                        column = %column,
                        "the column did not exist when these changes were written (re-added since): \
                         reading it as NULL for them"
                    );
                    recovered.insert(column, Recovered::Absent);
                }
                _ => {}
            }
        }
        if recovered.is_empty() {
            return Ok(Err(error));
        }
        Ok(rules.bind_recovered(relation, &recovered))
    }

    /// The live columns of table `oid` now (name and type), in the order pgoutput lists them.
    pub(super) async fn catalog_columns(
        &mut self,
        oid: u32,
    ) -> Result<Vec<(String, u32)>, CaptureError> {
        let client = self.read_back_client().await?;
        let rows = client
            .query(
                "select attname::text, atttypid from pg_attribute where attrelid = $1 \
                 and attnum > 0 and not attisdropped and attgenerated = '' order by attnum",
                &[&oid],
            )
            .await
            .map_err(|e| {
                CaptureError::Db(format!(
                    "reading the columns of table {oid}: {}",
                    crate::pg::error_chain(&e)
                ))
            })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// A DELETE: retractions of the deleted row's conversions (rules with `on_delete = "retract"`),
    /// recorded where such a conversion exists; see [`Rules::evaluate_delete`].
    pub(super) async fn deleted(
        &mut self,
        delete: decode::Delete,
        at: Lsn,
    ) -> Result<(), CaptureError> {
        let Some(tx) = self.tx.as_ref().map(|t| t.context) else {
            return Err(CaptureError::Protocol(format!(
                "row change outside a transaction at {at}"
            )));
        };
        self.check_bound(delete.relation, at)?;
        let Some(Some(bound)) = self.bound.get(&delete.relation) else {
            return Ok(());
        };
        let unmatched = self
            .capture
            .rules
            .evaluate_delete(bound, &delete.old, tx, &mut self.group);
        for rule in unmatched {
            warn!(
                rule = %rule,
                table = %bound.relation().qualified_name(),
                "a DELETE cannot be matched to this rule's conversion: the table has no replica \
                 identity key and its event_id is not in the DELETE. Add a primary key or set \
                 REPLICA IDENTITY FULL on the table for deletes to retract conversions (or \
                 on_delete = \"ignore\" to silence this)"
            );
        }
        if self.group.len() >= self.capture.config.capture.group_max_rows {
            self.flush_group().await?;
            if self.group.len() >= self.capture.config.capture.group_max_rows {
                self.group_deadline = None;
                self.write(None).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn change(
        &mut self,
        relation: u32,
        mut new: decode::Tuple,
        at: Lsn,
    ) -> Result<(), CaptureError> {
        self.bump_changes();
        let Some(tx) = self.tx.as_ref().map(|t| t.context) else {
            return Err(CaptureError::Protocol(format!(
                "row change outside a transaction at {at}"
            )));
        };
        self.check_bound(relation, at)?;
        let Some(bound) = self.bound.get(&relation) else {
            return Err(CaptureError::Protocol(format!(
                "change for relation {relation} before its Relation message at {at}"
            )));
        };
        let Some(bound) = bound else {
            return Ok(());
        };
        // Values a matching rule needs that the WAL does not carry (unchanged TOAST without an old
        // row image) are read back from the source by key; only such changes pay for a query.
        let needed = self.capture.rules.unresolved_columns(bound, &new);
        let unresolved = if needed.is_empty() {
            None
        } else {
            let relation = Arc::clone(bound.relation());
            self.resolve_toast(&relation, &mut new, &needed, at).await?
        };
        let Some(Some(bound)) = self.bound.get(&relation) else {
            unreachable!("bound above");
        };
        self.ordinal += 1;
        let before = self.drops.total;
        self.capture
            .rules
            .evaluate_unresolved_into(
                bound,
                &new,
                unresolved.as_deref(),
                tx,
                self.ordinal,
                &mut self.drops,
                &mut self.group,
            )
            .map_err(|error| CaptureError::Rule { error, lsn: at })?;
        let dropped = self.drops.total - before;
        if dropped > 0 {
            self.capture
                .stats
                .send_modify(|s| s.dropped_keys += dropped);
        }
        let max = self.capture.config.capture.group_max_rows;
        if self.group.len() >= max {
            // A full group: the complete transactions in it go now, committed with their checkpoint;
            // the rows of the open one stay for its commit.
            self.flush_group().await?;
            if self.group.len() >= max {
                // The open transaction alone fills a group: bound memory by handing it over as a part
                // of a control transaction that the writer commits with the checkpoint at its commit.
                self.group_deadline = None;
                self.write(None).await?;
            }
        }
        Ok(())
    }

    /// Replaces the unchanged TOAST values at `columns` of `new` by the row's current values, read from
    /// the source by its replica-identity key. Returns why that was impossible (no usable key, the row
    /// is gone, the query was refused), leaving those values unknown: the rules then record the event
    /// without them. A lost connection is an error (capture reconnects and reads again).
    pub(super) async fn resolve_toast(
        &mut self,
        relation: &decode::Relation,
        new: &mut decode::Tuple,
        columns: &[usize],
        at: Lsn,
    ) -> Result<Option<String>, CaptureError> {
        let outcome = match toast::key_of(relation, new) {
            Err(reason) => Err(reason),
            Ok(key) => {
                let client = self.read_back_client().await?;
                toast::read_back(client, relation, &key, columns).await
            }
        };
        let unresolved = match outcome {
            Ok(values) => {
                for (&i, value) in columns.iter().zip(values) {
                    new.0[i] = match value {
                        Some(text) => decode::Datum::Text(text.into_bytes().into()),
                        None => decode::Datum::Null,
                    };
                }
                None
            }
            Err(toast::Failure::Retry(message)) => {
                // Reopened at the next need, in the next session.
                self.read_back = None;
                return Err(CaptureError::ReadBack(message));
            }
            Err(toast::Failure::Unresolved(reason)) => Some(reason),
        };
        let names: Vec<&str> = columns
            .iter()
            .map(|&i| relation.columns[i].name.as_str())
            .collect();
        match &unresolved {
            None => debug!(
                table = %relation.qualified_name(),
                columns = ?names,
                lsn = %at,
                "unchanged TOAST values read back from the source"
            ),
            Some(reason) => warn!(
                table = %relation.qualified_name(),
                columns = ?names,
                lsn = %at,
                %reason,
                "unchanged TOAST values could not be read back: the change is recorded without them"
            ),
        }
        crate::metrics::toast_read_back(unresolved.is_none());
        let failed = u64::from(unresolved.is_some());
        self.capture.stats.send_modify(|s| {
            s.toast_read_backs += 1;
            s.toast_unresolved += failed;
        });
        Ok(unresolved)
    }

    /// The SQL connection for read-backs, opened at the first need with the replication connection's
    /// formats (ISO dates, UTC, exact floats) so values read back are written as the WAL writes them.
    pub(super) async fn read_back_client(
        &mut self,
    ) -> Result<&tokio_postgres::Client, CaptureError> {
        if self.read_back.as_ref().is_some_and(|c| c.is_closed()) {
            self.read_back = None;
        }
        if self.read_back.is_none() {
            let client = crate::pg::client::connect(&self.capture.source)
                .await
                .map_err(|e| CaptureError::ReadBack(crate::pg::error_chain(&e)))?;
            client
                .batch_execute(toast::SESSION_SETTINGS)
                .await
                .map_err(|e| CaptureError::ReadBack(crate::pg::error_chain(&e)))?;
            self.read_back = Some(client);
        }
        Ok(self.read_back.as_ref().expect("opened above"))
    }
}
