-- pgcapi control schema, version 8: the key of the source row of a conversion. Idempotent.
--
-- A DELETE under the table's default replica identity carries only the deleted row's key columns (usually
-- the primary key). A rule whose event_id reads other columns (`event_id = "order-{order_number}"` on a
-- table keyed by `id`) cannot render its event id from that, so capture records, with each conversion of
-- such a rule, the replica-identity key values of its source row in `source_key`, and a DELETE finds the
-- conversions to retract (or cancel) by `(source_table, source_key)`.
--
-- `source_key` holds the text values of the source row's key columns, in column order, each `\` and `,`
-- escaped with a `\`, joined with `,` (`42`; `7,2026-01-01`; a null key value is `\N`). It is filled only
-- where a delete needs it (the event_id reads a column outside the key, the identity is not FULL), and
-- never under REPLICA IDENTITY FULL (there every column is "key", and the old tuple has the event id).
-- Keys are ids, not personal data; a table whose replica identity index holds personal data (an email)
-- would copy it here.
--
-- The index is partial: a conversion without a source key (most rules) does not enter it, so the insert
-- cost of capture (README "Performance") is unchanged for them.
alter table pgcapi.deliveries add column if not exists source_key text collate "C";

create index if not exists deliveries_source_key_idx
    on pgcapi.deliveries (source_table, source_key)
    where kind = 'conversion' and source_key is not null;
