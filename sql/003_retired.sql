-- pgcapi control schema, version 3: keys of purged deliveries. Idempotent.
--
-- Retention (and `pgcapi purge`) deletes old rows of pgcapi.deliveries, but their natural key is what stops
-- a later change of the same source row (an order still `paid` whose notes are edited a month later) from
-- producing the same event again, which Meta and TikTok would count twice once their 48-hour dedup window
-- has passed. So every deleted row leaves its key here, and capture inserts no delivery whose key is
-- retired. About 100 bytes per row; nothing deletes these rows automatically.
create table if not exists pgcapi.retired (
    rule         text not null,
    destination  text not null,
    event_id     text not null,
    kind         text not null,
    -- The state the row had when it was purged.
    state        text not null,
    retired_at   timestamptz not null default now(),
    primary key (rule, destination, event_id)
);
