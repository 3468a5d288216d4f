//! Outbrain's and Taboola's click ids: the only key either platform takes, never hashed.

use chrono::{DateTime, TimeZone, Utc};

use super::*;

/// Taboola's sample click id (71 URL-safe base64 characters).
const TABOOLA_CLICK: &str =
    "GiDxLZcEVjwEqkGfKQMQndUYMIeZXFHmZ0DrHIJhGS6kKiDzkGUos9GzkpqG-YHQATCwxlQ";

/// A fixed event time.
fn event_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

#[test]
fn outbrain_and_taboola_get_only_their_click_id_and_nothing_hashed() {
    let row = RawIdentity {
        ob_click_id: Some(" 00ab12cd34ef56ab78cd90ef12ab34cd56 ".into()),
        taboola_click_id: Some(format!("  {TABOOLA_CLICK}\n")),
        ..RawIdentity::default()
    };
    for (platform, key, value) in [
        (
            Platform::Outbrain,
            MatchKey::ObClickId,
            "00ab12cd34ef56ab78cd90ef12ab34cd56",
        ),
        (Platform::Taboola, MatchKey::TaboolaClickId, TABOOLA_CLICK),
    ] {
        let (keys, dropped) = match_keys(platform, &row, "US", event_time());
        assert!(dropped.is_empty(), "{dropped:?}");
        let expected: MatchKeys = [(key, value.to_owned())].into_iter().collect();
        assert_eq!(
            keys, expected,
            "{platform:?}: the click id alone, as stored"
        );
        assert!(!key.is_personal() && !key.is_hashed(platform));
        assert_eq!(accepted_keys(platform), &[key]);
    }
    assert!(!MatchKey::ObClickId.is_accepted_by(Platform::Taboola));
    assert!(!MatchKey::TaboolaClickId.is_accepted_by(Platform::Meta));
    assert_eq!(
        MatchKey::from_name("ob_click_id"),
        Some(MatchKey::ObClickId)
    );
    assert_eq!(
        MatchKey::from_name("taboola_click_id"),
        Some(MatchKey::TaboolaClickId)
    );
}

#[test]
fn malformed_outbrain_and_taboola_click_ids_are_left_out_with_the_reason() {
    let mut row = RawIdentity {
        ob_click_id: Some("not an id".into()),
        ..RawIdentity::default()
    };
    let (keys, dropped) = match_keys(Platform::Outbrain, &row, "US", event_time());
    assert!(keys.is_empty());
    assert_eq!(
        dropped,
        vec![Dropped {
            key: MatchKey::ObClickId,
            reason: "invalid outbrain click id"
        }]
    );
    // Too short (Taboola's ids are 66 characters or more), a character outside URL-safe base64,
    // and junk longer than any id.
    for bad in [
        "GiC3sJdfEHXrroWoRIMZNc".to_string(),
        format!("{TABOOLA_CLICK}+"),
        "G".repeat(1025),
    ] {
        row.taboola_click_id = Some(bad);
        let (keys, dropped) = match_keys(Platform::Taboola, &row, "US", event_time());
        assert!(keys.is_empty());
        assert_eq!(
            dropped,
            vec![Dropped {
                key: MatchKey::TaboolaClickId,
                reason: "invalid taboola click id"
            }]
        );
    }
}

#[test]
fn a_row_without_their_click_id_is_skipped_for_no_click_id() {
    assert_eq!(no_keys_reason(Platform::Outbrain), "no click id");
    assert_eq!(no_keys_reason(Platform::Taboola), "no click id");
    assert_eq!(no_keys_reason(Platform::Meta), "no match keys");
    assert_eq!(no_keys_reason(Platform::MicrosoftAds), "no match keys");
}
