//! Unit tests of evaluating changes, pure: the shop's orders rule with four platforms, Relation and
//! Tuple values built in memory. What each test pins: `when`, consent, templates, failed rows,
//! adjustments' event ids, per-platform payload fields.

use super::*;
use crate::decode::{RelationColumn, Value};
use crate::event::{Kind, State};
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::Utc;

const SHOP: &str = r#"
[source]
url = "postgres://pgcapi@localhost/shop"

[defaults]
region = "US"
currency = "USD"

[destinations.meta]
platform = "meta"
pixel_id = "1"
access_token = "token"

[destinations.google]
platform = "google_data_manager"
operating_account = "1234567890"
client_id = "id"
client_secret = "secret"
refresh_token = "refresh"

[destinations.tiktok]
platform = "tiktok"
pixel_code = "CTEST"
access_token = "token"

[destinations.microsoft]
platform = "microsoft_ads"
customer_id = "1"
account_id = "2"
developer_token = "dev"
client_id = "id"
refresh_token = "refresh"

[[rules]]
name = "order_paid"
table = "public.orders"
when = { status = ["paid", "complete"] }
event = "Purchase"
event_id = "order-{order_number}"
event_time = "{paid_at}"
value = "{total}"
currency = "{currency}"
consent = "ad_consent"
action_source = "website"
event_source_url = "https://shop.example.com/orders/{order_number}"
content_ids = "{order_number}"
destinations = ["meta", "google", "tiktok", "microsoft"]

[rules.match]
email = "email"

[rules.meta]
event = "Purchase"

[rules.google]
conversion_action = "customers/1/conversionActions/1001"

[rules.tiktok]
event = "CompletePayment"

[rules.microsoft]
conversion_name = "Offline purchase"

[[rules]]
name = "order_refunded"
table = "public.orders"
when = { status = "refunded" }
retracts = "order_paid"

[[rules]]
name = "order_partially_refunded"
table = "public.orders"
when = { status = "partially_refunded" }
restates = "order_paid"
value = "{net_total}"
"#;

/// The columns of `public.orders` the shop rules read, in table order.
const ORDERS: &[(&str, u32)] = &[
    ("id", 20),
    ("order_number", 25),
    ("email", 25),
    ("total", 1700),
    ("net_total", 1700),
    ("currency", 1042),
    ("status", 25),
    ("ad_consent", 25),
    ("paid_at", 1184),
];

const COMMIT: &str = "2026-12-05T10:00:00Z";

/// One order, column by column as `ORDERS`; `None` is NULL.
struct Order([Option<&'static str>; 9]);

impl Order {
    fn paid() -> Order {
        Order([
            Some("7"),
            Some("A17"),
            Some("Buyer@Example.com"),
            Some("25.50"),
            Some("20.00"),
            Some("eur"),
            Some("paid"),
            Some("yes"),
            Some("2026-12-05 09:30:00+00"),
        ])
    }

    fn with(mut self, column: &str, value: Option<&'static str>) -> Order {
        let at = ORDERS.iter().position(|(c, _)| *c == column).expect(column);
        self.0[at] = value;
        self
    }

    fn tuple(&self) -> Tuple {
        Tuple(
            self.0
                .iter()
                .map(|v| match v {
                    Some(v) => Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
                    None => Datum::Null,
                })
                .collect(),
        )
    }
}

struct Shop {
    rules: Rules,
    bound: Bound,
}

impl Shop {
    fn new() -> Shop {
        let config = Config::from_toml(SHOP, "test", &|_| None).expect("shop config");
        let rules = Rules::new(&config);
        let relation = Arc::new(Relation {
            oid: 2,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: b'd',
            columns: ORDERS
                .iter()
                .map(|(name, type_oid)| RelationColumn {
                    key: *name == "id",
                    name: name.to_string(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        });
        let bound = rules.bind(relation).expect("bound").expect("watched");
        Shop { rules, bound }
    }

    /// The rows of one change, the 3rd of its transaction at 0/10.
    fn rows(&self, order: &Order) -> Vec<NewDelivery> {
        let tx = TxContext {
            commit_lsn: Lsn(16),
            commit_time: COMMIT.parse().unwrap(),
        };
        let mut drops = DropCounts::default();
        self.rules
            .evaluate(&self.bound, &order.tuple(), tx, 3, &mut drops)
            .expect("never stops capture")
    }

    fn row<'a>(rows: &'a [NewDelivery], destination: &str) -> &'a NewDelivery {
        rows.iter()
            .find(|r| r.destination == destination)
            .unwrap_or_else(|| panic!("no row for {destination}: {rows:?}"))
    }
}

#[test]
fn when_accepts_any_listed_value_and_nothing_else() {
    let shop = Shop::new();
    for status in ["paid", "complete"] {
        let rows = shop.rows(&Order::paid().with("status", Some(status)));
        assert_eq!(rows.len(), 4, "{status}: {rows:?}");
        assert!(rows.iter().all(|r| r.rule == "order_paid"), "{rows:?}");
    }
    // Compared with the column's text exactly: no case folding, no trimming, NULL matches nothing.
    for status in [Some("pending"), Some("Paid"), Some("paid "), Some(""), None] {
        let rows = shop.rows(&Order::paid().with("status", status));
        assert!(rows.is_empty(), "{status:?}: {rows:?}");
    }
}

#[test]
fn consent_is_granted_only_by_a_true_boolean_one_or_a_yes_word() {
    for granted in [
        Value::Bool(true),
        Value::Int(1),
        Value::Text("granted".into()),
        Value::Text(" Yes ".into()),
        Value::Text("TRUE".into()),
        Value::Text("1".into()),
        Value::Text("y".into()),
    ] {
        assert!(consent_granted(&granted), "{granted:?}");
    }
    for refused in [
        Value::Bool(false),
        Value::Int(0),
        Value::Int(2),
        Value::Text("no".into()),
        Value::Text("denied".into()),
        Value::Text("".into()),
        Value::Null,
    ] {
        assert!(!consent_granted(&refused), "{refused:?}");
    }
}

#[test]
fn without_consent_the_conversion_is_skipped_and_no_identifier_is_read() {
    let shop = Shop::new();
    let given = shop.rows(&Order::paid());
    assert!(given.iter().all(|r| r.state == State::Pending), "{given:?}");
    assert!(given
        .iter()
        .all(|r| r.payload.consent && r.payload.consent_column));
    assert!(given
        .iter()
        .all(|r| r.payload.keys.contains_key(&MatchKey::Email)));
    for refused in [Some("no"), Some("false"), None] {
        let rows = shop.rows(&Order::paid().with("ad_consent", refused));
        assert_eq!(rows.len(), 4, "{rows:?}");
        for row in &rows {
            assert_eq!(row.state, State::Skipped, "{refused:?}: {row:?}");
            assert_eq!(row.last_error.as_deref(), Some("no consent"));
            assert!(
                !row.payload.consent && row.payload.keys.is_empty(),
                "{row:?}"
            );
            // The event itself is still recorded, so that status can count it.
            assert_eq!(row.event_id, "order-A17");
        }
    }
}

#[test]
fn templates_render_columns_trimmed_and_currencies_upper_case() {
    let shop = Shop::new();
    let rows = shop.rows(&Order::paid().with("order_number", Some("A17   ")));
    let meta = Shop::row(&rows, "meta");
    assert_eq!(meta.event_id, "order-A17");
    assert_eq!(
        meta.payload.event_source_url.as_deref(),
        Some("https://shop.example.com/orders/A17")
    );
    assert_eq!(meta.currency.as_deref(), Some("EUR"));
    assert_eq!(meta.value.as_deref(), Some("25.50"));
    assert_eq!(
        meta.event_time,
        "2026-12-05T09:30:00Z"
            .parse::<chrono::DateTime<Utc>>()
            .unwrap()
    );
    assert_eq!(meta.event_name.as_deref(), Some("Purchase"));
    assert_eq!(meta.action_source.as_deref(), Some("website"));
    // Every destination gets the same event.
    assert!(rows.iter().all(|r| r.event_id == "order-A17"), "{rows:?}");

    // An empty currency column takes the default; a NULL time, the commit's.
    let rows = shop.rows(
        &Order::paid()
            .with("currency", Some(""))
            .with("paid_at", None),
    );
    let meta = Shop::row(&rows, "meta");
    assert_eq!(meta.currency.as_deref(), Some("USD"));
    assert_eq!(
        meta.event_time,
        COMMIT.parse::<chrono::DateTime<Utc>>().unwrap()
    );
}

#[test]
fn a_row_with_an_unusable_value_becomes_failed_rows_that_name_the_column_not_the_value() {
    let shop = Shop::new();
    let cases: &[(&str, Option<&'static str>, &str)] = &[
        (
            "order_number",
            None,
            "event_id needs column(s) order_number",
        ),
        (
            "order_number",
            Some("  "),
            "event_id needs column(s) order_number",
        ),
        ("total", Some("NaN"), "\"total\""),
        (
            "total",
            Some("100000000000000.00"),
            "value column \"total\" is beyond",
        ),
        (
            "currency",
            Some("ZZZ"),
            "currency \"ZZZ\" is not an ISO 4217",
        ),
        (
            "currency",
            Some("euro"),
            "currency is not a three-letter ISO 4217 code",
        ),
        (
            "paid_at",
            Some("9999-12-31 00:00:00+00"),
            "event_time column \"paid_at\" is more",
        ),
        ("paid_at", Some("infinity"), "\"paid_at\""),
    ];
    for (column, value, reason) in cases {
        let rows = shop.rows(&Order::paid().with(column, *value));
        assert_eq!(rows.len(), 4, "{column}: {rows:?}");
        for row in &rows {
            assert_eq!(row.state, State::Failed, "{column}: {row:?}");
            assert_eq!(row.event_id, "invalid-0/10-3", "{row:?}");
            let error = row.last_error.as_deref().unwrap_or_default();
            assert!(error.starts_with("invalid row: "), "{error}");
            assert!(error.contains(reason), "{column}: {error}");
            if let Some(value) = value.filter(|v| v.trim().len() > 3) {
                assert!(
                    !error.contains(value),
                    "{column}: the value leaked: {error}"
                );
            }
            assert!(row.payload.keys.is_empty(), "{row:?}");
        }
    }
}

#[test]
fn adjustments_carry_the_adjusted_conversions_event_id_and_currency() {
    let shop = Shop::new();
    let refunded = shop.rows(&Order::paid().with("status", Some("refunded")));
    assert_eq!(refunded.len(), 4, "{refunded:?}");
    for row in &refunded {
        assert_eq!(row.rule, "order_refunded");
        assert_eq!(row.kind, Kind::Retraction);
        assert_eq!(row.event_id, "order-A17");
        assert_eq!(row.adjusts_rule.as_deref(), Some("order_paid"));
        assert_eq!(row.event_name.as_deref(), Some("Purchase"));
        assert!(
            row.payload.keys.is_empty(),
            "adjustments carry no identifiers"
        );
    }
    let restated = shop.rows(&Order::paid().with("status", Some("partially_refunded")));
    assert_eq!(restated.len(), 4, "{restated:?}");
    for row in &restated {
        assert_eq!(row.kind, Kind::Restatement);
        assert_eq!(row.event_id, "order-A17");
        // This rule's value, the conversion's currency (EUR, not the default USD).
        assert_eq!(
            (row.value.as_deref(), row.currency.as_deref()),
            (Some("20.00"), Some("EUR"))
        );
    }
    // Where the conversion action (Google) or goal (Microsoft) names what is adjusted.
    let action = |d: &str| Shop::row(&restated, d).payload.conversion_action.clone();
    assert_eq!(
        action("google").as_deref(),
        Some("customers/1/conversionActions/1001")
    );
    assert_eq!(action("microsoft").as_deref(), Some("Offline purchase"));
    assert_eq!((action("meta"), action("tiktok")), (None, None));

    // No id to adjust: failed rows under the adjusting rule, never an adjustment of "order-".
    let rows = shop.rows(
        &Order::paid()
            .with("status", Some("refunded"))
            .with("order_number", None),
    );
    assert!(
        rows.iter()
            .all(|r| r.state == State::Failed && r.rule == "order_refunded"),
        "{rows:?}"
    );
}

#[test]
fn each_platform_gets_its_own_payload_fields() {
    let shop = Shop::new();
    let rows = shop.rows(&Order::paid());
    let fields = |d: &str| {
        let p = &Shop::row(&rows, d).payload;
        (
            p.platform_event.as_deref(),
            p.conversion_action.as_deref(),
            p.content_ids.as_deref(),
        )
    };
    assert_eq!(fields("meta"), (Some("Purchase"), None, None));
    assert_eq!(
        fields("google"),
        (None, Some("customers/1/conversionActions/1001"), None)
    );
    assert_eq!(
        fields("tiktok"),
        (Some("CompletePayment"), None, Some("A17"))
    );
    assert_eq!(fields("microsoft"), (None, Some("Offline purchase"), None));
    let platforms: Vec<Platform> = rows.iter().map(|r| r.platform).collect();
    assert_eq!(
        platforms,
        [
            Platform::Meta,
            Platform::GoogleDataManager,
            Platform::Tiktok,
            Platform::MicrosoftAds
        ]
    );
    // The e-mail is normalized and hashed, never kept raw.
    let hashed = crate::identity::hash("buyer@example.com");
    let text = format!("{rows:?}");
    assert!(text.contains(&hashed), "{text}");
    assert!(!text.to_lowercase().contains("buyer@example.com"), "{text}");
}
