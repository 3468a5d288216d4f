//! The demo's "what each platform received": the sandbox's records, one line per event, hashes shortened.

use crate::testbed::sandbox::{AcceptedEvent, Records};
use std::fmt::Write as _;

/// Every platform's records; a platform the config does not send to has none and prints nothing.
pub(super) fn render(records: &Records) -> String {
    let mut out = String::from("\nwhat each platform received (hashes shortened):\n");
    for (platform, events) in [
        ("meta", &records.meta.events),
        ("tiktok", &records.tiktok.events),
        ("snapchat", &records.snapchat.events),
        ("pinterest", &records.pinterest.events),
        ("linkedin", &records.linkedin.events),
        ("reddit", &records.reddit.events),
    ] {
        for e in events {
            event(&mut out, platform, e);
        }
    }
    google(&mut out, records);
    microsoft(&mut out, records);
    clicks(&mut out, records);
    out
}

/// One line: the platform, what it received, its id, the rest.
fn line(out: &mut String, platform: &str, what: &str, id: &str, rest: &str) {
    let _ = writeln!(out, "  {platform:<9} {what:<16} {id:<18} {rest}");
}

fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

/// An event of a platform that takes events with hashed and plain match keys.
fn event(out: &mut String, platform: &str, e: &AcceptedEvent) {
    let keys: Vec<String> = e
        .hashed
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}…",
                short(v.first().map(String::as_str).unwrap_or(""))
            )
        })
        .chain(e.plain.keys().map(|k| format!("{k}=(as stored)")))
        .collect();
    let value = e.value.map(|v| v.to_string()).unwrap_or_default();
    line(
        out,
        platform,
        &e.event_name,
        e.event_id.as_deref().unwrap_or("-"),
        &format!("value={value:<8} {}", keys.join(" ")),
    );
}

/// Google: the Ads API's conversions and adjustments, and the Data Manager's conversions.
fn google(out: &mut String, records: &Records) {
    for c in &records.google_ads.conversions {
        let gclid = c.gclid.as_deref().unwrap_or("-");
        let id = c.order_id.as_deref().unwrap_or("-");
        line(out, "google", "conversion", id, &format!("gclid={gclid}"));
    }
    // Google through the Data Manager API (the contract's path since June 2026): the conversions
    // as Google keeps them, with every value they had.
    for c in &records.google_data_manager.conversions {
        let values: Vec<String> = c
            .history
            .iter()
            .map(|v| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into()))
            .collect();
        let values = format!("value={}", values.join(" → "));
        line(out, "google", "dm conversion", &c.transaction_id, &values);
    }
    for a in &records.google_ads.adjustments {
        let id = a.order_id.as_deref().unwrap_or("-");
        line(out, "google", &a.adjustment_type, id, "");
    }
}

/// Microsoft Advertising: offline conversions and their adjustments, by goal name.
fn microsoft(out: &mut String, records: &Records) {
    let microsoft = &records.microsoft_ads;
    let conversions = microsoft.conversions.iter().map(|c| {
        let what = "conversion";
        (
            what,
            &c.conversion_name,
            &c.microsoft_click_id,
            &c.conversion_time,
        )
    });
    let adjustments = microsoft.adjustments.iter().map(|a| {
        let what = a.adjustment_type.as_str();
        (
            what,
            &a.conversion_name,
            &a.microsoft_click_id,
            &a.conversion_time,
        )
    });
    for (what, goal, click, time) in conversions.chain(adjustments) {
        let click = click.as_deref().unwrap_or("-");
        line(
            out,
            "msads",
            what,
            goal,
            &format!("msclkid={click} time={time}"),
        );
    }
}

/// Outbrain and Taboola: conversions carried by their click ids alone.
fn clicks(out: &mut String, records: &Records) {
    let outbrain = records.outbrain.conversions.iter().map(|c| {
        let id = c.order_id.as_deref();
        ("outbrain", &c.name, id, c.order_value, &c.ob_click_id)
    });
    let taboola = records.taboola.conversions.iter().map(|c| {
        let id = c.orderid.as_deref();
        ("taboola", &c.name, id, c.revenue, &c.click_id)
    });
    for (platform, name, id, value, click) in outbrain.chain(taboola) {
        let value = value.map(|v| v.to_string()).unwrap_or_default();
        let rest = format!("value={value:<8} click={}…", short(click));
        line(out, platform, name, id.unwrap_or("-"), &rest);
    }
}
