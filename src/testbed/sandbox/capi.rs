//! The event shape Snapchat and Pinterest share (`event_name`, `event_id`, `event_time` in
//! seconds, `action_source`, `user_data`, `custom_data`), and how a request of such events is
//! judged per event and recorded.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::records::{AcceptedEvent, Counters, EventMemory, EventRecords};
use super::{as_number, user_fields, SandboxState, Shared};

/// The record of one counted event in the shape Snapchat and Pinterest share (`event_name`,
/// `event_id`, `event_time` in seconds, `action_source`, `user_data`, `custom_data` with `value`,
/// `currency` and `order_id`, which is kept among the plain fields).
pub(crate) fn capi_event(
    ev: &serde_json::Map<String, serde_json::Value>,
    now: DateTime<Utc>,
    hashed_keys: &[&str],
    plain_keys: &[&str],
) -> AcceptedEvent {
    use serde_json::Value;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let user = ev.get("user_data").and_then(Value::as_object);
    let (hashed, mut plain) = user_fields(user, hashed_keys, plain_keys);
    let custom = ev.get("custom_data");
    if let Some(order_id) = text(custom.and_then(|c| c.get("order_id"))) {
        plain.insert("order_id".into(), order_id);
    }
    AcceptedEvent {
        event_name: text(ev.get("event_name")).unwrap_or_default(),
        event_id: text(ev.get("event_id")),
        event_time: ev
            .get("event_time")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        source: text(ev.get("action_source")).unwrap_or_default(),
        hashed,
        plain,
        value: custom.and_then(|c| c.get("value")).and_then(as_number),
        currency: text(custom.and_then(|c| c.get("currency"))),
        test_event_code: None,
        received_at: now,
    }
}

/// Where one platform of this shape keeps its records and dedup memory, and its `user_data` keys.
pub(crate) struct Shape {
    /// The platform's records and dedup memory within the sandbox state.
    pub(crate) slot: fn(&mut SandboxState) -> (&mut EventRecords, &mut EventMemory),
    /// `user_data` keys holding SHA-256 digests.
    pub(crate) hashed_keys: &'static [&'static str],
    /// `user_data` keys kept in clear.
    pub(crate) plain_keys: &'static [&'static str],
}

/// Counts a request refused as a whole: outside test mode its `count` events were received and
/// rejected.
pub(crate) fn refuse_request(counters: &mut Counters, test: bool, count: usize) {
    counters.rejected_requests += 1;
    if !test {
        counters.received += count as u64;
        counters.rejected += count as u64;
    }
}

/// Judges every event of a request with `check` (given the current Unix seconds). In test mode the
/// valid events are only counted in `tested`; otherwise each valid event is recorded when `count`
/// (the platform's dedup, which keeps the counters) admits it, and each invalid one is rejected.
pub(crate) fn judge_and_record(
    shared: &Shared,
    shape: &Shape,
    events: &[Map<String, Value>],
    test: bool,
    check: impl Fn(&Map<String, Value>, i64) -> Result<(), String>,
    mut count: impl FnMut(&mut EventMemory, &mut Counters, &AcceptedEvent, DateTime<Utc>) -> bool,
) -> Vec<Result<(), String>> {
    let now = Utc::now();
    let verdicts: Vec<Result<(), String>> =
        events.iter().map(|ev| check(ev, now.timestamp())).collect();
    let mut guard = shared.lock();
    let (records, memory) = (shape.slot)(&mut guard);
    if test {
        records.tested += verdicts.iter().filter(|v| v.is_ok()).count() as u64;
        return verdicts;
    }
    records.counters.received += events.len() as u64;
    for (ev, verdict) in events.iter().zip(&verdicts) {
        if verdict.is_err() {
            records.counters.rejected += 1;
            continue;
        }
        let accepted = capi_event(ev, now, shape.hashed_keys, shape.plain_keys);
        if count(memory, &mut records.counters, &accepted, now) {
            records.events.push(accepted);
        }
    }
    verdicts
}
