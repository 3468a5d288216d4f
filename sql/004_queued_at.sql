-- pgcapi control schema, version 4: the give-up clock restarts when a row is requeued. Idempotent.
--
-- Dispatch turns a row that keeps meeting retryable errors into `failed` once it has been waiting longer
-- than `[dispatch] give_up_after_secs`. That age counts from `queued_at`: when capture recorded the row,
-- or when `pgcapi retry` / `pgcapi replay` set it back to pending, so a requeued old row gets the full
-- retry budget again.
alter table pgcapi.deliveries add column if not exists queued_at timestamptz;
update pgcapi.deliveries set queued_at = created_at where queued_at is null;
alter table pgcapi.deliveries alter column queued_at set default now();
alter table pgcapi.deliveries alter column queued_at set not null;
