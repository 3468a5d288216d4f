-- pgcapi control schema, version 9: what a platform reports later about events it accepted.
-- Idempotent.
--
-- Google's Data Manager accepts a request first and processes it afterwards; `requestStatus:retrieve`
-- then tells, per reason, how many events it could not use (EVENT_TOO_OLD, INVALID_GCLID, ...). The
-- dispatch process records each final answer here once, so that `pgcapi status` and `pgcapi.health`
-- (column platform_unusable_24h) show it to every process, not only to the one that polled:
--   destination  the config name
--   request_id   the platform's request id (the rows' platform_ref)
--   reason       the platform's reason, as it names it
--   events       how many events of the request it could not use for that reason
--   recorded_at  when the final answer was read
-- Retention deletes rows older than [retention] keep, with the finished deliveries.
create table if not exists pgcapi.platform_processing (
    destination  text not null,
    request_id   text not null,
    reason       text not null,
    events       bigint not null,
    recorded_at  timestamptz not null default now(),
    primary key (destination, request_id, reason)
);

create index if not exists platform_processing_recent
    on pgcapi.platform_processing (destination, recorded_at);
