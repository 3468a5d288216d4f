//! The fault suite's workload plan: the seeded waves of source transactions that make the model happen.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One source transaction: its statements and how many rows each must change.
pub(super) struct Tx {
    pub(super) statements: Vec<(String, u64)>,
}

/// The whole workload: the entities (the model) and the transactions that make it happen.
pub(super) struct Workload {
    pub(super) orders: Vec<Order>,
    pub(super) leads: Vec<Lead>,
    /// Transactions per wave (the last entry holds the final late refunds).
    pub(super) waves: Vec<Vec<Tx>>,
}

impl Workload {
    pub(super) fn changes(&self) -> u64 {
        self.waves
            .iter()
            .flatten()
            .flat_map(|tx| &tx.statements)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Splits `items` into chunks of random sizes in `1..=max`.
pub(super) fn chunks<T: Clone>(rng: &mut StdRng, items: &[T], max: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let n = rng.random_range(1..=max).min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

pub(super) fn in_list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One transaction of one statement that must change `n` rows.
fn single(sql: String, n: usize) -> Tx {
    Tx {
        statements: vec![(sql, n as u64)],
    }
}

/// The order numbers of `list`, as an SQL list.
fn numbers(list: &[&Order]) -> String {
    in_list(&list.iter().map(|o| o.order_number()).collect::<Vec<_>>())
}

/// The orders of wave `w`.
fn wave_of(orders: &[Order], w: usize) -> &[Order] {
    &orders[w * ORDERS_PER_WAVE..(w + 1) * ORDERS_PER_WAVE]
}

pub(super) fn plan(seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    let orders: Vec<Order> = (1..=ORDERS_PER_WAVE * WAVES)
        .map(|n| make_order(&mut rng, n))
        .collect();
    let leads: Vec<Lead> = (1..=LEADS_PER_WAVE * WAVES)
        .map(|id| make_lead(&mut rng, id))
        .collect();
    let mut waves = Vec::new();
    for w in 0..WAVES {
        let mut txs = new_orders(&mut rng, wave_of(&orders, w));
        txs.extend(order_updates(&mut rng, &orders, w));
        // Late refunds of an earlier wave.
        if w >= LATE_REFUND_WAVES {
            txs.extend(refund_later(seed, &orders, w - LATE_REFUND_WAVES));
        }
        txs.extend(lead_changes(
            &mut rng,
            &leads[w * LEADS_PER_WAVE..(w + 1) * LEADS_PER_WAVE],
        ));
        waves.push(txs);
    }
    // The late refunds still due.
    let mut last = Vec::new();
    for w in WAVES.saturating_sub(LATE_REFUND_WAVES)..WAVES {
        last.extend(refund_later(seed, &orders, w));
    }
    waves.push(last);
    Workload {
        orders,
        leads,
        waves,
    }
}

/// The late refunds of wave `w`, in groups drawn from a generator of their own.
fn refund_later(seed: u64, orders: &[Order], w: usize) -> Vec<Tx> {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64) << 20);
    let due: Vec<&Order> = wave_of(orders, w)
        .iter()
        .filter(|o| o.kind == OrderKind::RefundedLater)
        .collect();
    chunks(&mut rng, &due, 8)
        .into_iter()
        .map(|c| {
            single(
                format!(
                    "update orders set status = 'refunded' where order_number in ({})",
                    numbers(&c)
                ),
                c.len(),
            )
        })
        .collect()
}

/// A wave's inserts: pending orders, and the ones paid and refunded in one transaction.
fn new_orders(rng: &mut StdRng, wave: &[Order]) -> Vec<Tx> {
    let mut txs = Vec::new();
    // Inserts (pending), except the paid-and-refunded-at-once ones.
    let pending: Vec<&Order> = wave
        .iter()
        .filter(|o| o.kind != OrderKind::PaidRefundedOneTx)
        .collect();
    for c in chunks(rng, &pending, 40) {
        let values: Vec<String> = c.iter().map(|o| o.values("pending", false)).collect();
        txs.push(single(
            format!(
                "insert into orders ({ORDER_COLUMNS}) values {}",
                values.join(", ")
            ),
            c.len(),
        ));
    }
    // Paid and refunded in one transaction.
    let one_tx: Vec<&Order> = wave
        .iter()
        .filter(|o| o.kind == OrderKind::PaidRefundedOneTx)
        .collect();
    for c in chunks(rng, &one_tx, 4) {
        let values: Vec<String> = c.iter().map(|o| o.values("paid", true)).collect();
        txs.push(Tx {
            statements: vec![
                (
                    format!(
                        "insert into orders ({ORDER_COLUMNS}) values {}",
                        values.join(", ")
                    ),
                    c.len() as u64,
                ),
                (
                    format!(
                        "update orders set status = 'refunded' where order_number in ({})",
                        numbers(&c)
                    ),
                    c.len() as u64,
                ),
            ],
        });
    }
    txs
}

/// Wave `w`'s updates of orders: payments, quick refunds, and unrelated edits of the previous wave.
fn order_updates(rng: &mut StdRng, orders: &[Order], w: usize) -> Vec<Tx> {
    let mut txs = Vec::new();
    let wave = wave_of(orders, w);
    // Payments, in random order and groups.
    let mut to_pay: Vec<&Order> = wave
        .iter()
        .filter(|o| o.kind != OrderKind::PaidRefundedOneTx && o.kind.paid())
        .collect();
    for i in (1..to_pay.len()).rev() {
        let j = rng.random_range(0..=i);
        to_pay.swap(i, j);
    }
    for c in chunks(rng, &to_pay, 25) {
        txs.push(single(
            format!(
                "update orders set status = 'paid', paid_at = now() where order_number in ({})",
                numbers(&c)
            ),
            c.len(),
        ));
    }
    // Quick refunds (and refunds of orders never paid).
    let soon: Vec<&Order> = wave
        .iter()
        .filter(|o| {
            matches!(
                o.kind,
                OrderKind::RefundedSoon | OrderKind::DeniedThenRefunded | OrderKind::RefundedUnpaid
            )
        })
        .collect();
    for c in chunks(rng, &soon, 6) {
        txs.push(single(
            format!(
                "update orders set status = 'refunded' where order_number in ({})",
                numbers(&c)
            ),
            c.len(),
        ));
    }
    // Unrelated edits of paid orders of the previous wave: same event, nothing new to record.
    if w > 0 {
        let touched: Vec<&Order> = wave_of(orders, w - 1)
            .iter()
            .filter(|o| {
                matches!(o.kind, OrderKind::Paid | OrderKind::PaidLargeUserAgent)
                    && rng.random_bool(0.5)
            })
            .collect();
        for c in chunks(rng, &touched, 50) {
            txs.push(single(
                format!(
                    "update orders set notes = 'edited in wave {w}' where order_number in ({})",
                    numbers(&c)
                ),
                c.len(),
            ));
        }
    }
    txs
}

/// A wave's leads: created, then won or lost.
fn lead_changes(rng: &mut StdRng, wave_leads: &[Lead]) -> Vec<Tx> {
    let mut txs = Vec::new();
    for c in chunks(rng, wave_leads, 40) {
        let values: Vec<String> = c
            .iter()
            .map(|l| {
                format!(
                    "({}, {}, {}, {}::numeric, {}, {}, 'new')",
                    l.id,
                    lit(&l.email),
                    lit(&l.phone),
                    lit(&l.deal_value),
                    lit(&Some(l.currency.clone())),
                    lit(&l.consent)
                )
            })
            .collect();
        txs.push(single(
            format!(
                "insert into leads (id, email, phone, deal_value, currency, consent, stage) \
                 values {}",
                values.join(", ")
            ),
            c.len(),
        ));
    }
    for c in chunks(rng, wave_leads, 25) {
        let ids = |won: bool| {
            c.iter()
                .filter(|l| (l.kind != LeadKind::Lost) == won)
                .map(|l| l.id.to_string())
                .collect::<Vec<_>>()
        };
        let mut statements = Vec::new();
        for (won, sql) in [
            (
                true,
                "update leads set stage = 'won', won_at = now() where id in",
            ),
            (false, "update leads set stage = 'lost' where id in"),
        ] {
            let ids = ids(won);
            if !ids.is_empty() {
                statements.push((format!("{sql} ({})", ids.join(", ")), ids.len() as u64));
            }
        }
        txs.push(Tx { statements });
    }
    txs
}
