//! Rules and unchanged TOAST values: which columns need reading back, and what a change whose values
//! could not be read back becomes (never an error that stops capture).

use super::*;
use crate::decode::{type_oid, RelationColumn};
use crate::event::State;
use crate::identity::MatchKey;
use bytes::Bytes;

const CONFIG: &str = include_str!("../../examples/pgcapi-google-ads-api.toml");

/// The columns of `public.orders` in examples/shop.sql, in table order.
const ORDERS: &[(&str, u32)] = &[
    ("id", type_oid::INT8),
    ("order_number", type_oid::TEXT),
    ("email", type_oid::TEXT),
    ("phone", type_oid::TEXT),
    ("first_name", type_oid::TEXT),
    ("last_name", type_oid::TEXT),
    ("city", type_oid::TEXT),
    ("region", type_oid::TEXT),
    ("postal_code", type_oid::TEXT),
    ("country", type_oid::TEXT),
    ("client_ip", type_oid::INET),
    ("user_agent", type_oid::TEXT),
    ("fbc", type_oid::TEXT),
    ("fbp", type_oid::TEXT),
    ("gclid", type_oid::TEXT),
    ("ttclid", type_oid::TEXT),
    ("total", type_oid::NUMERIC),
    ("currency", type_oid::BPCHAR),
    ("status", type_oid::TEXT),
    ("ad_consent", type_oid::BOOL),
    ("notes", type_oid::TEXT),
    ("created_at", type_oid::TIMESTAMPTZ),
    ("paid_at", type_oid::TIMESTAMPTZ),
];

fn rules() -> Rules {
    let env = |name: &str| match name {
        "PGCAPI_DATABASE_URL" => Some("postgres://u@localhost/shop".to_string()),
        n if n.ends_with("_ENDPOINT") => None,
        _ => Some("secret-for-tests".to_string()),
    };
    Rules::new(&Config::from_toml(CONFIG, "test", &env).expect("contract config"))
}

fn bound(rules: &Rules) -> Bound {
    let relation = Relation {
        oid: 16_400,
        namespace: "public".to_string(),
        name: "orders".to_string(),
        replica_identity: b'd',
        columns: ORDERS
            .iter()
            .map(|&(name, type_oid)| RelationColumn {
                key: name == "id",
                name: name.to_string(),
                type_oid,
                type_modifier: -1,
            })
            .collect(),
    };
    rules
        .bind(Arc::new(relation))
        .unwrap()
        .expect("orders is watched")
}

fn at(column: &str) -> usize {
    ORDERS.iter().position(|(c, _)| *c == column).unwrap()
}

/// A paid order with every mapped identifier, `status` set, and `toast` columns unchanged TOAST.
fn order(status: &str, toast: &[&str]) -> Tuple {
    let mut row: Vec<Datum> = ORDERS
        .iter()
        .map(|&(name, _)| {
            let text = match name {
                "id" => "7",
                "order_number" => "A-7",
                "email" => "jane@example.com",
                "phone" => "+16505551212",
                "country" => "US",
                "client_ip" => "203.0.113.7",
                "user_agent" => "Mozilla/5.0",
                "total" => "12.50",
                "currency" => "USD",
                "status" => status,
                "ad_consent" => "t",
                "created_at" | "paid_at" => "2026-12-05 10:00:00+00",
                _ => return Datum::Null,
            };
            Datum::Text(Bytes::copy_from_slice(text.as_bytes()))
        })
        .collect();
    for column in toast {
        row[at(column)] = Datum::UnchangedToast;
    }
    Tuple(row)
}

fn tx() -> TxContext {
    TxContext {
        commit_lsn: Lsn(0x1_0000),
        commit_time: Utc::now(),
    }
}

#[test]
fn only_needed_columns_of_matching_rules_are_read_back() {
    let rules = rules();
    let bound = bound(&rules);
    // A paid order: the conversion reads user_agent and email; notes is not mapped.
    assert_eq!(
        rules.unresolved_columns(&bound, &order("paid", &["user_agent", "notes", "email"])),
        vec![at("email"), at("user_agent")]
    );
    // A refund reads the conversion's id and time columns, not its identifiers.
    assert!(rules
        .unresolved_columns(&bound, &order("refunded", &["user_agent"]))
        .is_empty());
    assert_eq!(
        rules.unresolved_columns(&bound, &order("refunded", &["order_number"])),
        vec![at("order_number")]
    );
    // No rule matches a pending order: nothing to read, whatever is TOASTed.
    assert!(rules
        .unresolved_columns(&bound, &order("pending", &["user_agent", "email"]))
        .is_empty());
    // Nothing unchanged: nothing to read.
    assert!(rules
        .unresolved_columns(&bound, &order("paid", &[]))
        .is_empty());
    // A condition column itself unchanged TOAST: the rule cannot be decided without reading it.
    let undecided = rules.unresolved_columns(&bound, &order("paid", &["status", "user_agent"]));
    assert_eq!(undecided, vec![at("user_agent"), at("status")]);
}

#[test]
fn an_identifier_that_could_not_be_read_back_is_dropped_and_counted() {
    let rules = rules();
    let bound = bound(&rules);
    let mut drops = DropCounts::default();
    let mut out = Vec::new();
    rules
        .evaluate_unresolved_into(
            &bound,
            &order("paid", &["user_agent"]),
            Some("the row no longer exists"),
            tx(),
            1,
            &mut drops,
            &mut out,
        )
        .expect("never an error");
    assert_eq!(out.len(), 3, "{out:?}");
    for row in &out {
        assert_eq!(row.state, State::Pending, "{row:?}");
        assert_eq!(row.event_id, "order-A-7");
        assert!(row.payload.keys.contains_key(&MatchKey::Email), "{row:?}");
        assert!(
            !row.payload.keys.contains_key(&MatchKey::UserAgent),
            "{row:?}"
        );
    }
    // Meta and TikTok take a user agent; Google Ads does not.
    assert_eq!(drops.total, 2);
}

#[test]
fn no_identifier_left_skips_with_the_reason() {
    let rules = rules();
    let bound = bound(&rules);
    let mut tuple = order("paid", &["email"]);
    for column in ["phone", "country", "client_ip", "user_agent"] {
        tuple.0[at(column)] = Datum::Null;
    }
    let mut drops = DropCounts::default();
    let out = {
        let mut out = Vec::new();
        rules
            .evaluate_unresolved_into(
                &bound,
                &tuple,
                Some("the row no longer exists"),
                tx(),
                1,
                &mut drops,
                &mut out,
            )
            .unwrap();
        out
    };
    assert_eq!(out.len(), 3);
    for row in &out {
        assert_eq!(row.state, State::Skipped);
        let reason = row.last_error.as_deref().unwrap();
        assert!(reason.starts_with("no match keys (email"), "{reason}");
        assert!(reason.contains("the row no longer exists"), "{reason}");
    }
    assert_eq!(drops.total, 3);
}

#[test]
fn another_unknown_column_fails_the_row_visibly_and_never_stops_capture() {
    let rules = rules();
    let bound = bound(&rules);
    let mut drops = DropCounts::default();
    // Not read back (evaluate without a read-back) or not readable: either way a failed row.
    for reason in [None, Some("no replica identity key")] {
        let mut out = Vec::new();
        rules
            .evaluate_unresolved_into(
                &bound,
                &order("paid", &["order_number"]),
                reason,
                tx(),
                1,
                &mut drops,
                &mut out,
            )
            .expect("never an error");
        assert_eq!(out.len(), 3);
        for row in &out {
            assert_eq!(row.state, State::Failed);
            let error = row.last_error.as_deref().unwrap();
            assert!(
                error.contains("order_number") && error.contains("TOAST"),
                "{error}"
            );
            if let Some(reason) = reason {
                assert!(error.contains(reason), "{error}");
            }
        }
    }
}
