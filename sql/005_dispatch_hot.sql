-- pgcapi control schema, version 5: room for HOT updates of deliveries. Idempotent.
--
-- Dispatch's claim sets only the lease columns and `attempts`, none of them indexed, so PostgreSQL can
-- write the new row version on the same page without new index entries (a heap-only tuple) when the page
-- has free space. The fillfactor keeps that share of every page free on insert (new pages only; existing
-- pages fill up as before). Chosen with `pgcapi bench --only e2e`; see README "Performance".
alter table pgcapi.deliveries set (fillfactor = 80);
