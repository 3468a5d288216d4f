//! Rows no platform can take (an over-long or empty event id, a NaN total, an infinite time) fail alone.

use super::*;
use crate::support::{count, CONTRACT_TOML, SHOP_SQL};

/// Found by the corpus: an event id too long for the control table's unique index stopped capture for
/// good (every restart failed on the same insert). Now that row fails, visibly, and capture goes on.
#[tokio::test]
async fn an_event_id_too_long_to_index_fails_its_row_and_capture_goes_on() {
    // GIVEN capture running on a rule over the text table.
    let capturing = Capturing::start(SALES_SQL, &corpus_config(), "http://127.0.0.1:9").await;
    let client = &capturing.client;

    // WHEN a sale with a 4,000-character (incompressible) reference is done, then a normal one.
    let huge = noise(0x2545_F491_4F6C_DD1D, 4_000);
    let done = "insert into sales (ref, email, ua, amount, consent, status)
                values ($1, 'a@example.com', 'ua', '10', 'granted', 'done')";
    client.execute(done, &[&huge]).await.unwrap();
    client.execute(done, &[&"after-huge"]).await.unwrap();

    // THEN the normal sale is recorded, the long one is failed with a reason, and capture still runs.
    capturing
        .wait_count(
            "the sale after the long one",
            "select count(*) from pgcapi.deliveries where event_id = 'sale-after-huge'",
            3,
        )
        .await;
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries where state = 'failed' \
             and last_error like '%event_id from column(s) ref is 4005 bytes long%'"
        )
        .await,
        3
    );
    assert!(!capturing.task.is_finished(), "capture stopped");
    capturing.stop().await;
}

/// Found by the corpus: with a template like `sale-{ref}`, an empty or blank `ref` rendered the id
/// `sale-`, so every such sale shared one event id and all but the first vanished as duplicates. Now each
/// of them fails with the reason.
#[tokio::test]
async fn an_empty_id_column_fails_the_row_instead_of_sharing_an_event_id() {
    let capturing = Capturing::start(SALES_SQL, &corpus_config(), "http://127.0.0.1:9").await;
    let client = &capturing.client;

    // WHEN two sales with an empty and a blank reference are done, then a normal one.
    for reference in ["", "  ", "after-blank"] {
        client
            .execute(
                "insert into sales (ref, email, ua, amount, consent, status)
                 values ($1, 'a@example.com', 'ua', '10', 'granted', 'done')",
                &[&reference],
            )
            .await
            .unwrap();
    }

    // THEN each blank one has its own three failed rows, and none became the event `sale-`.
    capturing
        .wait_count(
            "the sale after the blank ones",
            "select count(*) from pgcapi.deliveries where event_id = 'sale-after-blank'",
            3,
        )
        .await;
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries where state = 'failed' \
             and last_error like '%event_id needs column(s) ref and one is NULL or empty%'"
        )
        .await,
        6
    );
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries where event_id = 'sale-'"
        )
        .await,
        0
    );
    capturing.stop().await;
}

/// Found by the suite: a `NaN` total (or an infinite `paid_at`), which PostgreSQL stores happily, stopped
/// capture for good ("the slot stays before this change") and so every later order with it. Now that row
/// fails with the reason, and the next order goes through.
#[tokio::test]
async fn a_nan_total_or_infinite_time_fails_its_row_and_capture_goes_on() {
    let capturing = Capturing::start(SHOP_SQL, CONTRACT_TOML, "http://127.0.0.1:9").await;
    let client = &capturing.client;

    // WHEN an order with total NaN, one paid at 'infinity', and a normal one are paid.
    client
        .batch_execute(
            "insert into orders (order_number, email, user_agent, total, status, ad_consent, paid_at)
             values ('nan', 'a@example.com', 'ua', 'NaN', 'paid', true, now()),
                    ('inf', 'a@example.com', 'ua', 10, 'paid', true, 'infinity'),
                    ('fine', 'a@example.com', 'ua', 10, 'paid', true, now())",
        )
        .await
        .unwrap();

    // THEN the normal order is recorded, the two others are failed with reasons naming the column.
    capturing
        .wait_count(
            "the normal order",
            "select count(*) from pgcapi.deliveries where event_id = 'order-fine'",
            3,
        )
        .await;
    for column in ["total", "paid_at"] {
        assert_eq!(
            count(
                client,
                &format!(
                    "select count(*) from pgcapi.deliveries where state = 'failed' \
                     and event_id like 'invalid-%' and last_error like '%column \"{column}\"%'"
                )
            )
            .await,
            3,
            "{column}"
        );
    }
    assert!(!capturing.task.is_finished(), "capture stopped");
    capturing.stop().await;
}
