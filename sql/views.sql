-- pgcapi operator views. Idempotent (`create or replace view`). `pgcapi setup` installs this file after the
-- numbered ones (which may drop a view to change a column it reads), with the configured schema name in place
-- of `pgcapi`, like the others.
--
--   pgcapi.send_log  one line per delivery, match keys masked
--   pgcapi.health    per destination: outcomes, backlog, last success and error, match-key coverage
--   pgcapi.lag       per logical pgoutput slot: WAL retained, slot state, last stored position
--
-- The views read pgcapi.deliveries in full (health) or row by row (send_log): the table is kept small by
-- retention ([retention] keep in the config), so this stays cheap.
--
-- For maintainers: `create or replace view` may only add columns at the end; to change or remove a column,
-- a numbered file drops the view first and this file recreates it.

-- The send log. No identifier is ever shown: `match_keys` lists the keys each row carries as
-- `name:xxxx..`, where xxxx are the first 4 hex digits of the SHA-256 of the stored value (for keys stored
-- hashed, that is the hash pgcapi sent; for keys sent as is, such as client_ip, user_agent or click ids, the
-- value is hashed here first). Four hex digits tell two rows apart at a glance but cannot be reversed. The
-- payload itself is not exposed.
create or replace view pgcapi.send_log as
select
    d.id,
    d.rule,
    d.destination,
    d.platform,
    d.kind,
    d.event_id,
    d.event_name,
    d.event_time,
    d.value,
    d.currency,
    d.state,
    d.attempts,
    d.created_at,
    d.sent_at,
    d.next_attempt_at,
    d.updated_at,
    -- The platform's message for failed rows and retries, or why a row was skipped or cancelled.
    d.last_error,
    d.platform_ref,
    coalesce((
        select array_agg(k.key || ':' || left(
                   case when k.value ~ '^[0-9a-f]{64}$' then k.value
                        else encode(sha256(convert_to(k.value, 'UTF8')), 'hex') end, 4) || '..'
                   order by k.key)
        from jsonb_each_text(
            case when jsonb_typeof(d.payload::jsonb -> 'keys') = 'object' then d.payload::jsonb -> 'keys'
                 else '{}'::jsonb end) as k
    ), '{}'::text[]) as match_keys,
    d.source_table
from pgcapi.deliveries d;

-- Health per destination.
--
-- Outcome counts (`sent_1h`, `failed_24h`, ...) count rows by their current state and the time they
-- reached it (`updated_at`) within the last hour / 24 hours. `pending`, `retrying` (pending after at least
-- one attempt) and `failed` count every such row now. `last_error` is the newest platform message of a
-- failed row or of a pending row waiting for a retry.
--
-- Match-key coverage and the match score look at the conversions recorded in the last 24 hours with
-- consent (the ones pgcapi sends). `*_share` is the share of them carrying the key (0..1):
--   email, phone; name = first_name and last_name; address = city, state or zip;
--   click_id = fbc, gclid, gbraid, wbraid, ttclid, msclkid, li_fat_id or rdt_cid; ip_ua = client_ip and user_agent;
--   external_id = external_id or lead_id; browser_id = fbp or ttp.
--
-- match_score is an ESTIMATE on a 0..10 scale, loosely modeled on Meta's Event Match Quality (which weighs
-- email and phone highest, then click and browser ids, then IP and user agent, then names and address);
-- the platforms' own scores are computed from their matching and are not available here. Per event:
--   email 3 + phone 2 + click id 2 + (client_ip and user_agent) 1 + (name and address) 1
--   + (external_id, lead_id, fbp or ttp) 1                          = at most 10 points,
-- counting only what the destination's platform accepts; the score is the average over the events,
-- scaled by the most that platform can receive (Meta 10, TikTok 9: no name or address, Google Ads 7:
-- email, phone and click ids only; Google Data Manager 9: no external or browser id; LinkedIn 5: email
-- and li_fat_id; Reddit 9: no name or address), so 10 means "every event carries everything this platform takes".
create or replace view pgcapi.health as
with flagged as (
    select
        d.destination,
        d.platform,
        d.state,
        d.attempts,
        d.created_at,
        d.sent_at,
        d.updated_at >= now() - interval '1 hour' as in_1h,
        d.updated_at >= now() - interval '1 day' as in_24h,
        (d.kind = 'conversion' and d.created_at >= now() - interval '1 day'
            and d.payload::json ->> 'consent' = 'true') as scored,
        d.match_keys && array['email'] as has_email,
        d.match_keys && array['phone'] as has_phone,
        d.match_keys @> array['first_name', 'last_name'] as has_name,
        d.match_keys && array['city', 'state', 'zip'] as has_address,
        d.match_keys && array['fbc', 'gclid', 'gbraid', 'wbraid', 'ttclid', 'msclkid', 'li_fat_id', 'rdt_cid',
            'sc_click_id', 'epik', 'ob_click_id', 'taboola_click_id'] as has_click_id,
        d.match_keys @> array['client_ip', 'user_agent'] as has_ip_ua,
        d.match_keys && array['external_id', 'lead_id'] as has_external_id,
        d.match_keys && array['fbp', 'ttp'] as has_browser_id
    from pgcapi.deliveries d
),
scored as (
    select
        f.*,
        (case when f.has_email then 3 else 0 end
         + case when f.has_phone then 2 else 0 end
         + case when f.has_click_id then 2 else 0 end
         + case when f.has_ip_ua then 1 else 0 end
         + case when f.has_name and f.has_address then 1 else 0 end
         + case when f.has_external_id or f.has_browser_id then 1 else 0 end) as points,
        case f.platform when 'google_ads' then 7 when 'tiktok' then 9
            when 'google_data_manager' then 9 when 'linkedin' then 5 when 'reddit' then 9
            else 10 end as max_points
    from flagged f
),
grouped as (
    select
        s.destination,
        min(s.platform) as platform,
        count(*) filter (where s.state = 'pending') as pending,
        count(*) filter (where s.state = 'pending' and s.attempts > 0) as retrying,
        extract(epoch from now() - min(s.created_at) filter (where s.state = 'pending'))::bigint
            as oldest_pending_secs,
        count(*) filter (where s.state = 'failed') as failed,
        count(*) filter (where s.in_1h and s.state = 'sent') as sent_1h,
        count(*) filter (where s.in_1h and s.state = 'failed') as failed_1h,
        count(*) filter (where s.in_1h and s.state = 'skipped') as skipped_1h,
        count(*) filter (where s.in_1h and s.state = 'cancelled') as cancelled_1h,
        count(*) filter (where s.in_24h and s.state = 'sent') as sent_24h,
        count(*) filter (where s.in_24h and s.state = 'failed') as failed_24h,
        count(*) filter (where s.in_24h and s.state = 'skipped') as skipped_24h,
        count(*) filter (where s.in_24h and s.state = 'cancelled') as cancelled_24h,
        max(s.sent_at) filter (where s.state = 'sent') as last_sent_at,
        count(*) filter (where s.scored) as events_24h,
        round(avg(s.has_email::int) filter (where s.scored), 3) as email_share,
        round(avg(s.has_phone::int) filter (where s.scored), 3) as phone_share,
        round(avg(s.has_name::int) filter (where s.scored), 3) as name_share,
        round(avg(s.has_address::int) filter (where s.scored), 3) as address_share,
        round(avg(s.has_click_id::int) filter (where s.scored), 3) as click_id_share,
        round(avg(s.has_ip_ua::int) filter (where s.scored), 3) as ip_ua_share,
        round(avg(s.has_external_id::int) filter (where s.scored), 3) as external_id_share,
        round(avg(s.has_browser_id::int) filter (where s.scored), 3) as browser_id_share,
        round(least(10, 10 * avg(s.points) filter (where s.scored) / max(s.max_points)), 1)
            as match_score
    from scored s
    group by s.destination
)
select g.*, e.last_error, e.last_error_at,
    -- Events the platform accepted in the last 24 hours but reported later it could not use (Google
    -- Data Manager's processing errors: EVENT_TOO_OLD, INVALID_GCLID, ...); per reason in
    -- pgcapi.platform_processing.
    coalesce((
        select sum(p.events) from pgcapi.platform_processing p
        where p.destination = g.destination and p.recorded_at >= now() - interval '1 day'
    ), 0)::bigint as platform_unusable_24h
from grouped g
left join lateral (
    select d.last_error, d.updated_at as last_error_at
    from pgcapi.deliveries d
    where d.destination = g.destination
      and d.last_error is not null
      and (d.state = 'failed' or (d.state = 'pending' and d.attempts > 0))
    order by d.updated_at desc, d.id desc
    limit 1
) e on true;

-- Replication lag: every logical slot of the pgoutput plugin in this cluster, joined with the positions
-- pgcapi stored (pgcapi.checkpoints, one row per slot name). A slot pgcapi recorded a position for but that
-- no longer exists shows `slot_exists = false`; another tool's pgoutput slot shows `pgcapi_slot = false`.
--
--   wal_retained_bytes   WAL the server keeps for the slot: pg_current_wal_lsn() - restart_lsn
--   wal_status           reserved | extended | unreserved (about to be lost) | lost (the slot is unusable)
--   safe_wal_size        bytes that may still be written before the slot is lost (null: unlimited)
--   secs_since_checkpoint  seconds since pgcapi last moved its stored position; on an idle database this
--                        grows while there is nothing to confirm (wal_retained_bytes stays small then)
--
-- The view describes the cluster it is queried in: when the control schema lives in another cluster
-- (source.control_url), use `pgcapi status`, which reads the slot from the source database.
create or replace view pgcapi.lag as
select
    coalesce(s.slot_name::text, c.slot) as slot,
    s.database::text as database,
    s.slot_name is not null as slot_exists,
    c.slot is not null as pgcapi_slot,
    s.active,
    s.active_pid,
    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint as wal_retained_bytes,
    s.wal_status,
    s.safe_wal_size,
    s.restart_lsn,
    s.confirmed_flush_lsn,
    c.lsn as checkpoint_lsn,
    c.updated_at as checkpoint_at,
    extract(epoch from now() - c.updated_at)::bigint as secs_since_checkpoint
from (
    select * from pg_replication_slots where slot_type = 'logical' and plugin = 'pgoutput'
) s
full join pgcapi.checkpoints c on c.slot = s.slot_name::text;
