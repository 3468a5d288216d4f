//! Reading what status reports: the slot, capture's report, each destination's health and flow.

use super::{judge, sql, Observation, SlotStatus, StatusError, StatusOptions, StatusReport};
use crate::config::Config;
use crate::outbox::{DestinationHealth, Outbox, UnusableReason};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Reads the slot, the health of every destination and the latest failures, and judges them.
pub async fn status(config: &Config, options: &StatusOptions) -> Result<StatusReport, StatusError> {
    let connect = |url: &crate::config::Secret, what: &'static str| {
        let url = url.expose().to_string();
        async move {
            crate::ops::setup::connect(&url, what)
                .await
                .map_err(|e| StatusError::Connect(e.to_string()))
        }
    };
    let source = connect(&config.source.url, "source database").await?;
    let control_owned = match &config.source.control_url {
        Some(url) => Some(connect(url, "control database").await?),
        None => None,
    };
    let control = control_owned.as_ref().unwrap_or(&source);
    let schema = &config.source.schema;
    let outbox = Outbox::new(schema);
    if !outbox.is_installed(control).await? {
        return Err(StatusError::NotInstalled(format!(
            "the control schema {schema:?} (with its views) is not installed in the control database: \
             run `pgcapi setup --config FILE`"
        )));
    }

    let observation = observe(
        &source,
        control,
        schema,
        &config.source.slot,
        options.flow.failing_after,
    )
    .await?;
    let destinations = read_health(control, &outbox, config).await?;
    let recent_failures = outbox.failures(control, options.recent_failures).await?;
    let (problems, warnings) = judge(&observation, &destinations, options);
    Ok(StatusReport {
        healthy: problems.is_empty(),
        reasons: problems.iter().map(|p| p.message.clone()).collect(),
        problems,
        warnings,
        slot: observation.slot,
        capture: observation.capture,
        destinations,
        recent_failures,
    })
}

/// Reads what [`judge_flow`] judges: the slot (from `source`), the stored checkpoint, capture's report
/// and each destination's deliveries within `window` (from `control`, the control database).
pub async fn observe(
    source: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    schema: &str,
    slot: &str,
    window: Duration,
) -> Result<Observation, StatusError> {
    let outbox = Outbox::new(schema);
    let slot_status = read_slot(source, control, &outbox, slot).await?;
    let capture = crate::outbox::load_capture_report(control, schema, slot).await?;
    let now: DateTime<Utc> = control
        .query_one("select now()", &[])
        .await
        .map_err(sql("reading the control database's clock"))?
        .get(0);
    let destinations = outbox.flows(control, window).await?;
    Ok(Observation {
        now,
        slot: slot_status,
        capture,
        destinations,
        schema: schema.to_string(),
    })
}

/// The slot from the source and the stored position from the control database.
async fn read_slot(
    source: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    outbox: &Outbox,
    name: &str,
) -> Result<SlotStatus, StatusError> {
    let row = source
        .query_opt(
            "select active, active_pid, wal_status, safe_wal_size, \
               pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn() \
                 else pg_current_wal_lsn() end, restart_lsn)::bigint, confirmed_flush_lsn::text \
             from pg_replication_slots where slot_name = $1",
            &[&name],
        )
        .await
        .map_err(sql("reading the replication slot"))?;
    let checkpoint = outbox.stored_checkpoint(control, name).await?;
    Ok(SlotStatus {
        name: name.to_string(),
        exists: row.is_some(),
        active: row.as_ref().map(|r| r.get(0)),
        active_pid: row.as_ref().and_then(|r| r.get(1)),
        wal_status: row.as_ref().and_then(|r| r.get(2)),
        safe_wal_size: row.as_ref().and_then(|r| r.get(3)),
        wal_retained_bytes: row.as_ref().and_then(|r| r.get(4)),
        confirmed_flush_lsn: row.as_ref().and_then(|r| r.get(5)),
        checkpoint_lsn: checkpoint.as_ref().map(|c| c.lsn.clone()),
        checkpoint_at: checkpoint.as_ref().map(|c| c.updated_at),
        secs_since_checkpoint: checkpoint.as_ref().map(|c| c.secs_since),
    })
}

/// The `health` view, plus configured destinations that have no row yet.
async fn read_health(
    control: &tokio_postgres::Client,
    outbox: &Outbox,
    config: &Config,
) -> Result<Vec<DestinationHealth>, StatusError> {
    let mut out = outbox.health_view(control).await?;
    let mut reasons = crate::outbox::load_unusable_24h(control, &config.source.schema).await?;
    for d in &mut out {
        if let Some(list) = reasons.remove(&d.destination) {
            d.platform_unusable_reasons = list
                .into_iter()
                .map(|(reason, events)| UnusableReason { reason, events })
                .collect();
        }
    }
    for (name, dest) in &config.destinations {
        if !out.iter().any(|d| &d.destination == name) {
            out.push(DestinationHealth::empty(name, dest.platform().as_str()));
        }
    }
    out.sort_by(|a, b| a.destination.cmp(&b.destination));
    Ok(out)
}

impl DestinationHealth {
    /// A destination with no row in the control table yet.
    pub(super) fn empty(name: &str, platform: &str) -> DestinationHealth {
        DestinationHealth {
            destination: name.to_string(),
            platform: platform.to_string(),
            pending: 0,
            retrying: 0,
            oldest_pending_secs: None,
            failed: 0,
            sent_1h: 0,
            failed_1h: 0,
            skipped_1h: 0,
            cancelled_1h: 0,
            sent_24h: 0,
            failed_24h: 0,
            skipped_24h: 0,
            cancelled_24h: 0,
            last_sent_at: None,
            events_24h: 0,
            email_share: None,
            phone_share: None,
            name_share: None,
            address_share: None,
            click_id_share: None,
            ip_ua_share: None,
            external_id_share: None,
            browser_id_share: None,
            match_score: None,
            last_error: None,
            last_error_at: None,
            platform_unusable_24h: 0,
            platform_unusable_reasons: Vec::new(),
        }
    }
}
