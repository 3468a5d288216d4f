//! Unit tests of binding a rule to a Relation message (renamed and dropped columns, the row key kept
//! for deletes) and of the value checks; pure, built from in-memory Relation and Tuple values.

use super::*;
use crate::decode::{OldTuple, RelationColumn};
use chrono::Utc;

const CONFIG: &str = r#"
[source]
url = "postgres://pgcapi@localhost/shop"

[destinations.meta]
platform = "meta"
pixel_id = "1"
access_token = "token"

[[rules]]
name = "paid"
table = "public.t"
when = { status = "paid" }
event = "Purchase"
event_id = "o-{n}"
value = "{total}"
action_source = "system_generated"
destinations = ["meta"]

[rules.match]
email = "email"
"#;

fn rules() -> Rules {
    let config = Config::from_toml(CONFIG, "test", &|_| None).expect("config");
    Rules::new(&config)
}

/// A Relation message for `public.t` with these (name, type) columns.
fn relation(columns: &[(&str, u32)]) -> Arc<Relation> {
    Arc::new(Relation {
        oid: 1,
        namespace: "public".into(),
        name: "t".into(),
        replica_identity: b'd',
        columns: columns
            .iter()
            .map(|(name, type_oid)| RelationColumn {
                key: false,
                name: name.to_string(),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    })
}

fn text(values: &[&str]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    )
}

fn evaluate(rules: &Rules, bound: &Bound, tuple: &Tuple) -> Vec<NewDelivery> {
    let tx = TxContext {
        commit_lsn: Lsn::ZERO,
        commit_time: Utc::now(),
    };
    rules
        .evaluate(bound, tuple, tx, 1, &mut DropCounts::default())
        .expect("evaluated")
}

/// `public.t` with `id` as its key column (flagged as under REPLICA IDENTITY `identity`).
fn keyed_relation(identity: u8) -> Arc<Relation> {
    let mut relation = (*relation(&[
        ("id", 20),
        ("n", 25),
        ("status", 25),
        ("total", 1700),
        ("email", 25),
    ]))
    .clone();
    relation.replica_identity = identity;
    for column in &mut relation.columns {
        column.key = identity == b'f' || column.name == "id";
    }
    Arc::new(relation)
}

#[test]
fn a_delete_without_the_event_id_is_matched_by_the_row_key_recorded_with_the_conversion() {
    let rules = rules();
    let tx = TxContext {
        commit_lsn: Lsn::ZERO,
        commit_time: Utc::now(),
    };
    // Default identity: `o-{n}` reads a column outside the key `id`.
    let bound = rules.bind(keyed_relation(b'd')).unwrap().unwrap();
    let new = text(&["42", "7", "paid", "10", "a@example.com"]);
    let rows = evaluate(&rules, &bound, &new);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_id, "o-7");
    assert_eq!(rows[0].source_key.as_deref(), Some("42"));
    let mut key_only = text(&["42"]);
    key_only
        .0
        .extend([Datum::Null, Datum::Null, Datum::Null, Datum::Null]);
    let mut out = Vec::new();
    let unmatched = rules.evaluate_delete(&bound, &OldTuple::Key(key_only), tx, &mut out);
    assert!(unmatched.is_empty(), "{unmatched:?}");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, "paid:deleted");
    assert_eq!(out[0].event_id, "");
    assert_eq!(out[0].source_key.as_deref(), Some("42"));

    // FULL: every column is flagged key; no key is stored (it would be the whole row), and the
    // delete renders the event id from the old row.
    let bound = rules.bind(keyed_relation(b'f')).unwrap().unwrap();
    let rows = evaluate(&rules, &bound, &new);
    assert_eq!(rows[0].source_key, None);
    let mut out = Vec::new();
    rules.evaluate_delete(&bound, &OldTuple::Full(new), tx, &mut out);
    assert_eq!(
        (out[0].event_id.as_str(), out[0].source_key.as_deref()),
        ("o-7", None)
    );
}

#[test]
fn the_source_key_encoding_is_unambiguous() {
    use crate::event::source_key;
    assert_eq!(source_key([Some("42")]), "42");
    assert_eq!(
        source_key([Some("7"), Some("a,b\\c"), None]),
        "7,a\\,b\\\\c,\\N"
    );
    let keys = [
        source_key([Some("a,b")]),
        source_key([Some("a"), Some("b")]),
        source_key([None]),
        source_key([Some("\\N")]),
        source_key([Some("")]),
        source_key([Some(""), Some("")]),
    ];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn a_column_missing_from_the_relation_is_named_and_can_be_bound_by_position_or_as_absent() {
    let rules = rules();
    // The WAL's relation calls the email column "mail" (renamed when the change was written).
    let renamed = relation(&[("n", 25), ("status", 25), ("total", 1700), ("mail", 25)]);
    let err = rules.bind(renamed.clone()).expect_err("email is missing");
    assert!(err.to_string().contains("\"email\""), "{err}");
    assert_eq!(rules.missing_columns(&renamed), vec!["email".to_string()]);

    // Bound by position (renamed back since): the value is read from the column the WAL calls mail.
    let recovered = HashMap::from([("email".to_string(), Recovered::At(3))]);
    let bound = rules
        .bind_recovered(renamed.clone(), &recovered)
        .unwrap()
        .expect("bound");
    let rows = evaluate(
        &rules,
        &bound,
        &text(&["1", "paid", "9.50", "a@example.com"]),
    );
    assert_eq!(rows.len(), 1);
    let hashed = crate::identity::hash("a@example.com");
    assert!(format!("{rows:?}").contains(&hashed), "{rows:?}");

    // Absent (re-added since): the change is recorded without that key.
    let dropped = relation(&[("n", 25), ("status", 25), ("total", 1700)]);
    let recovered = HashMap::from([("email".to_string(), Recovered::Absent)]);
    let bound = rules
        .bind_recovered(dropped, &recovered)
        .unwrap()
        .expect("bound");
    let rows = evaluate(&rules, &bound, &text(&["2", "paid", "9.50"]));
    assert_eq!(rows.len(), 1);
    assert!(!format!("{rows:?}").contains(&hashed), "{rows:?}");
}

#[test]
fn absurd_values_are_refused_plausible_ones_kept() {
    for ok in ["0", "25.00", "-3.5", "999999999999", "1e12"] {
        assert_eq!(check_value(ok), Ok(()), "{ok}");
    }
    for bad in [
        "1e308",
        "1000000000000.01",
        "-2e12",
        "Infinity",
        "-Infinity",
        "NaN",
    ] {
        assert!(check_value(bad).is_err(), "{bad}");
    }
    assert_eq!(
        check_value("1e308").unwrap_err(),
        "is beyond 1e12 in magnitude, not a plausible conversion value"
    );
}

#[test]
fn currencies_are_checked_against_iso_4217() {
    for ok in ["USD", "EUR", "JPY", "XCG", "ZWG", "CHF"] {
        assert!(is_known_currency(ok), "{ok}");
    }
    for bad in ["XXX", "XTS", "XAU", "ABC", "QQQ"] {
        assert!(!is_known_currency(bad), "{bad}");
    }
}
