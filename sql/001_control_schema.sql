-- pgcapi control schema, version 1. Idempotent: running it again changes nothing.
-- `pgcapi setup` runs every file of this folder in order (with the schema name from the config in place of
-- `pgcapi`); a DBA may also run them with psql.

create schema if not exists pgcapi;

-- One row per replication slot: every change of the watched tables up to `lsn` (a commit end position) is
-- recorded in pgcapi.deliveries. Written in the same transaction as the deliveries it covers, so after a
-- crash capture resumes exactly where the recorded work ends.
create table if not exists pgcapi.checkpoints (
    slot        text primary key,
    lsn         pg_lsn not null,
    updated_at  timestamptz not null default now()
);

-- One row per (event, destination): what the platform request needs, already normalized and hashed (no raw
-- identifier is ever stored), and where delivery stands. The unique key (rule, destination, event_id) makes
-- replays after a crash insert nothing, so every event is recorded exactly once.
create table if not exists pgcapi.deliveries (
    id               bigserial primary key,
    rule             text not null,
    destination      text not null,
    platform         text not null,
    event_id         text not null,
    kind             text not null check (kind in ('conversion', 'retraction', 'restatement')),
    -- For retractions and restatements: the rule whose conversion (same destination and event_id) is adjusted.
    adjusts_rule     text,
    event_name       text,
    event_time       timestamptz not null,
    value            numeric,
    currency         text,
    action_source    text,
    -- Hashed match keys, click ids and the platform-specific fields of the request (see src/outbox.rs).
    payload          jsonb not null default '{}',
    -- Names of the match keys present in payload, e.g. {email,phone,gclid}.
    match_keys       text[] not null default '{}',
    state            text not null default 'pending'
                     check (state in ('pending', 'sent', 'failed', 'skipped', 'cancelled')),
    attempts         integer not null default 0,
    next_attempt_at  timestamptz not null default now(),
    lease_owner      text,
    lease_until      timestamptz,
    last_error       text,
    platform_ref     text,
    source_table     text not null,
    source_lsn       pg_lsn not null,
    commit_time      timestamptz,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    sent_at          timestamptz,
    unique (rule, destination, event_id)
);

-- The indexes besides the keys are made by 006_cheaper_writes.sql (version 1 had others).
