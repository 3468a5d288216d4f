-- pgcapi control schema, version 7: capture reports what it is doing where `pgcapi status` can read it.
-- Idempotent.
--
-- Capture runs in one process; `status`, `/readyz` and operators' own queries run elsewhere. The slot's
-- `active` flag says only that a process holds the slot, not that it makes progress: a capture stuck on a
-- change (a dropped column, an unreadable value) reconnects, holds the slot for a moment and fails again.
-- One row per slot, written by the capture process (never in the transaction that stores the checkpoint,
-- so a failed write here never holds back the slot):
--   state        streaming | retrying (an outage: connection lost or refused) | stuck (a change capture
--                cannot apply until an operator acts; see error)
--   error        the reason, as logged, when not streaming (never a secret or an identifier)
--   error_lsn    the WAL position of the change capture is stuck on, when known
--   error_since  when the current problem started (kept while the same state goes on)
--   seen_at      the last time a capture process of this slot wrote here (at least every 30 s while it
--                runs), so that a dead process is told apart from a quiet one
create table if not exists pgcapi.capture_state (
    slot         text primary key,
    state        text not null check (state in ('streaming', 'retrying', 'stuck')),
    error        text,
    error_lsn    pg_lsn,
    error_since  timestamptz,
    seen_at      timestamptz not null default now()
);
