-- pgcapi control schema, version 6: cheaper writes of pgcapi.deliveries. Idempotent.
--
-- Every captured conversion is one insert into pgcapi.deliveries, so the cost of that insert bounds how fast
-- capture keeps up with the source (README "Performance"). Measured on 100,000 rows, this file takes the
-- server's CPU per insert from about 38 µs to about 16 µs:
--
-- * `payload` becomes `text` holding JSON, instead of `jsonb`: building the binary form cost about 8 µs a
--   row (checking the text as `json` still 4–6 µs), and pgcapi writes the JSON itself and only ever reads
--   it back whole. To query it, cast it: `payload::json ->> 'consent'`, `payload::jsonb -> 'keys'`.
-- * The key columns compare bytewise (`collate "C"`), not by the database's language rules: they hold
--   names and ids, never sorted for people.
-- * The unique key starts with `event_id`, the column that tells rows apart, so it also serves every lookup
--   of the rows of one event (a conversion and its refunds), and the separate `event_id` index goes.
-- * `(state, updated_at)` becomes an index of finished rows only (retention and the health view), which a
--   new pending row does not enter.
-- * Dispatch's claim read and sorted every due row of a destination to pick a batch, and looked for
--   pending refunds across the whole table: 450 ms per batch of 1,000 with 50,000 rows waiting. The two
--   indexes below make it an ordered index scan that stops at the batch size (about 45 ms, mostly the
--   update itself).
--
-- On an existing installation the column changes rewrite the table once (an exclusive lock for the
-- duration: run `pgcapi setup` in a quiet moment), and the views are recreated by `views.sql`, which setup
-- runs after the numbered files.
do $$
declare
    c_collation oid := (select oid from pg_collation
                        where collname = 'C' and collnamespace = 'pg_catalog'::regnamespace);
begin
    if exists (select 1 from pg_attribute a
               where a.attrelid = 'pgcapi.deliveries'::regclass and not a.attisdropped
                 and ((a.attname = 'payload' and a.atttypid <> 'text'::regtype)
                      or (a.attname in ('rule', 'destination', 'event_id', 'adjusts_rule')
                          and a.attcollation <> c_collation))) then
        drop view if exists pgcapi.send_log;
        drop view if exists pgcapi.health;
        alter table pgcapi.deliveries
            alter column payload drop default,
            alter column payload type text using payload::text,
            alter column payload set default '{}',
            alter column rule type text collate "C",
            alter column destination type text collate "C",
            alter column event_id type text collate "C",
            alter column adjusts_rule type text collate "C";
    end if;
end $$;

alter table pgcapi.deliveries drop constraint if exists deliveries_rule_destination_event_id_key;
do $$
begin
    if not exists (select 1 from pg_constraint
                   where conrelid = 'pgcapi.deliveries'::regclass and conname = 'deliveries_event_key') then
        alter table pgcapi.deliveries
            add constraint deliveries_event_key unique (event_id, destination, rule);
    end if;
end $$;

-- Dispatch claims the due pending rows of a destination in this order, reading the index from its start
-- and stopping at the batch size (with `id` in the index, no sort of the whole backlog).
create index if not exists deliveries_due_order_idx
    on pgcapi.deliveries (destination, next_attempt_at, id) where state = 'pending';
-- The refunds waiting to be sent: a claim leaves out the conversions they adjust. Small, and no
-- conversion ever enters it.
create index if not exists deliveries_pending_adjustments_idx
    on pgcapi.deliveries (destination, event_id, adjusts_rule)
    where state = 'pending' and kind <> 'conversion';
-- Retention and the health view: rows by when they reached their final state.
create index if not exists deliveries_finished_idx
    on pgcapi.deliveries (updated_at) where state <> 'pending';
drop index if exists pgcapi.deliveries_due_idx;
drop index if exists pgcapi.deliveries_event_idx;
drop index if exists pgcapi.deliveries_state_updated_idx;
