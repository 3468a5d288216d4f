//! The fault suite's model: what happens to each order and lead, and what each must end as.

use super::*;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::Rng;

/// What happens to an order, and so what it must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum OrderKind {
    /// Paid with consent and identifiers: sent to every platform.
    Paid,
    /// Paid, but without a user agent: Meta refuses website events without one (failed); the others send.
    PaidNoUserAgent,
    /// Paid, with a 3 KB random user agent stored out of line (TOAST): the payment UPDATE leaves it
    /// unchanged, so the WAL does not carry it and capture reads it back. Sent everywhere, with it.
    PaidLargeUserAgent,
    /// Paid, refunded a few transactions later (usually before it was sent).
    RefundedSoon,
    /// Paid, refunded a few waves later (usually after it was sent).
    RefundedLater,
    /// Inserted paid and refunded in the same transaction.
    PaidRefundedOneTx,
    /// Paid without consent (`ad_consent = false`).
    ConsentDenied,
    /// Paid, consent never asked (`ad_consent is null`).
    ConsentUnknown,
    /// Paid without consent, then refunded.
    DeniedThenRefunded,
    /// Paid with consent but no identifier at all.
    NoMatchKey,
    /// Paid with a currency that is not an ISO code.
    BadCurrency,
    /// Paid with `total = 'NaN'`.
    BadValue,
    /// Refunded without ever being paid.
    RefundedUnpaid,
}

/// The order mix, in percent.
pub(super) const ORDER_MIX: &[(OrderKind, u32)] = &[
    (OrderKind::Paid, 47),
    (OrderKind::PaidNoUserAgent, 3),
    (OrderKind::PaidLargeUserAgent, 3),
    (OrderKind::RefundedSoon, 6),
    (OrderKind::RefundedLater, 12),
    (OrderKind::PaidRefundedOneTx, 3),
    (OrderKind::ConsentDenied, 7),
    (OrderKind::ConsentUnknown, 4),
    (OrderKind::DeniedThenRefunded, 2),
    (OrderKind::NoMatchKey, 4),
    (OrderKind::BadCurrency, 3),
    (OrderKind::BadValue, 3),
    (OrderKind::RefundedUnpaid, 3),
];

impl OrderKind {
    /// Whether the order ever has `status = 'paid'`.
    pub(super) fn paid(self) -> bool {
        self != OrderKind::RefundedUnpaid
    }

    /// Whether the order ends refunded.
    pub(super) fn refunded(self) -> bool {
        matches!(
            self,
            OrderKind::RefundedSoon
                | OrderKind::RefundedLater
                | OrderKind::PaidRefundedOneTx
                | OrderKind::DeniedThenRefunded
                | OrderKind::RefundedUnpaid
        )
    }

    /// Whether paying it makes `failed` rows (`invalid-…` ids) instead of `order-N` conversions.
    pub(super) fn invalid(self) -> bool {
        matches!(self, OrderKind::BadCurrency | OrderKind::BadValue)
    }
}

/// What happens to a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum LeadKind {
    /// Won with consent: sent to Meta and Google.
    Won,
    /// Won without a deal value: Meta refuses a Purchase without value (failed at the platform, after
    /// bisecting its batch); Google takes it.
    WonNoValue,
    /// Won, consent denied.
    WonDenied,
    /// Won, consent unknown (NULL, empty or unrecognised).
    WonUnknownConsent,
    /// Won with consent and no identifier.
    WonNoMatchKey,
    /// Won with a currency that is not an ISO code.
    WonBadCurrency,
    /// Won with `deal_value = 'NaN'`.
    WonBadValue,
    /// Lost: no event at all.
    Lost,
}

/// The lead mix, in percent.
pub(super) const LEAD_MIX: &[(LeadKind, u32)] = &[
    (LeadKind::Won, 71),
    (LeadKind::WonNoValue, 2),
    (LeadKind::WonDenied, 8),
    (LeadKind::WonUnknownConsent, 4),
    (LeadKind::WonNoMatchKey, 4),
    (LeadKind::WonBadCurrency, 3),
    (LeadKind::WonBadValue, 3),
    (LeadKind::Lost, 5),
];

impl LeadKind {
    pub(super) fn invalid(self) -> bool {
        matches!(self, LeadKind::WonBadCurrency | LeadKind::WonBadValue)
    }
}

/// One order of the workload.
#[derive(Debug, Clone)]
pub(super) struct Order {
    pub(super) number: usize,
    pub(super) kind: OrderKind,
    pub(super) email: Option<String>,
    pub(super) phone: Option<String>,
    pub(super) first_name: Option<String>,
    pub(super) last_name: Option<String>,
    pub(super) country: Option<String>,
    pub(super) client_ip: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) gclid: Option<String>,
    pub(super) total: String,
    pub(super) currency: String,
    pub(super) consent: Option<bool>,
}

impl Order {
    pub(super) fn event_id(&self) -> String {
        format!("order-{}", self.order_number())
    }

    pub(super) fn order_number(&self) -> String {
        format!("f-{}", self.number)
    }

    /// The SQL values tuple for `insert into orders (ORDER_COLUMNS)`.
    pub(super) fn values(&self, status: &str, paid: bool) -> String {
        format!(
            "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}::numeric, {}, '{status}', {}, {})",
            lit(&Some(self.order_number())),
            lit(&self.email),
            lit(&self.phone),
            lit(&self.first_name),
            lit(&self.last_name),
            lit(&self.country),
            self.client_ip
                .as_ref()
                .map_or("null".to_string(), |ip| format!("'{ip}'::inet")),
            lit(&self.user_agent),
            lit(&self.gclid),
            lit(&Some(self.total.clone())),
            lit(&Some(self.currency.clone())),
            self.consent.map_or("null".to_string(), |c| c.to_string()),
            if paid { "now()" } else { "null" },
        )
    }
}

pub(super) const ORDER_COLUMNS: &str =
    "order_number, email, phone, first_name, last_name, country, client_ip, \
                             user_agent, gclid, total, currency, status, ad_consent, paid_at";

/// One lead of the workload.
#[derive(Debug, Clone)]
pub(super) struct Lead {
    pub(super) id: usize,
    pub(super) kind: LeadKind,
    pub(super) email: Option<String>,
    pub(super) phone: Option<String>,
    pub(super) deal_value: Option<String>,
    pub(super) currency: String,
    pub(super) consent: Option<String>,
}

impl Lead {
    pub(super) fn event_id(&self) -> String {
        format!("deal-{}", self.id)
    }
}

/// A SQL string literal (or `null`).
pub(super) fn lit(value: &Option<String>) -> String {
    match value {
        None => "null".to_string(),
        Some(v) => format!("'{}'", v.replace('\'', "''")),
    }
}

pub(super) fn pick<T: Copy>(rng: &mut StdRng, mix: &[(T, u32)]) -> T {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (kind, weight) in mix {
        if roll < *weight {
            return *kind;
        }
        roll -= weight;
    }
    unreachable!("weights cover the roll")
}

pub(super) fn one_of<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

pub(super) fn make_order(rng: &mut StdRng, number: usize) -> Order {
    let kind = pick(rng, ORDER_MIX);
    // Identifiers in the shapes a shop really has: mixed case, spaces, several phone formats.
    let mut email = match rng.random_range(0..10) {
        0..=5 => Some(format!("Buyer.{number}@Example.com")),
        6..=7 => Some(format!("  buyer{number}@example.COM ")),
        _ => None,
    };
    let last4 = format!("{:04}", number % 10_000);
    let phone = match rng.random_range(0..4) {
        0 | 1 => Some(format!("+1 650 555 {last4}")),
        2 => Some(format!("(650) 555-{last4}")),
        _ => None,
    };
    if email.is_none() && phone.is_none() {
        email = Some(format!("buyer{number}@example.net"));
    }
    let mut order = Order {
        number,
        kind,
        email,
        phone,
        first_name: rng.random_bool(0.5).then(|| "Ada".to_string()),
        last_name: rng.random_bool(0.5).then(|| "Lovelace".to_string()),
        country: rng.random_bool(0.5).then(|| "US".to_string()),
        client_ip: rng
            .random_bool(0.5)
            .then(|| format!("203.0.113.{}", number % 250)),
        user_agent: Some(format!("Mozilla/5.0 (pgcapi fault suite; {number})")),
        gclid: rng.random_bool(0.3).then(|| format!("Cj0K-fault_{number}")),
        total: format!("{}.{:02}", 5 + number % 500, number % 100),
        currency: one_of(rng, &["USD", "EUR", "usd"]).to_string(),
        consent: Some(true),
    };
    match kind {
        OrderKind::PaidNoUserAgent => order.user_agent = None,
        OrderKind::PaidLargeUserAgent => {
            order.user_agent = Some(format!(
                "Mozilla/5.0 ({number}) {}",
                Alphanumeric.sample_string(rng, LARGE_USER_AGENT)
            ))
        }
        OrderKind::ConsentDenied | OrderKind::DeniedThenRefunded => order.consent = Some(false),
        OrderKind::ConsentUnknown => order.consent = None,
        OrderKind::NoMatchKey => {
            order.email = None;
            order.phone = None;
            order.first_name = None;
            order.last_name = None;
            order.country = None;
            order.client_ip = None;
            order.user_agent = None;
            order.gclid = None;
        }
        OrderKind::BadCurrency => order.currency = one_of(rng, &["X1Y", "$$$", "U$D"]).into(),
        OrderKind::BadValue => order.total = "NaN".into(),
        _ => {}
    }
    order
}

pub(super) fn make_lead(rng: &mut StdRng, id: usize) -> Lead {
    let kind = pick(rng, LEAD_MIX);
    let granted = ["granted", "YES", " true ", "1", "y", "Granted"];
    let mut lead = Lead {
        id,
        kind,
        email: Some(format!("Lead.{id}@Example.org")),
        phone: rng
            .random_bool(0.5)
            .then(|| format!("+44 20 7946 {:04}", id % 10_000)),
        deal_value: Some(format!("{}.50", 100 + id % 900)),
        currency: "USD".into(),
        consent: Some(one_of(rng, &granted).to_string()),
    };
    match kind {
        LeadKind::WonNoValue => lead.deal_value = None,
        LeadKind::WonDenied => {
            lead.consent = Some(one_of(rng, &["denied", "no", "false", "0", "revoked"]).into())
        }
        LeadKind::WonUnknownConsent => {
            lead.consent =
                [None, Some(String::new()), Some("maybe".into())][rng.random_range(0..3)].clone()
        }
        LeadKind::WonNoMatchKey => {
            lead.email = None;
            lead.phone = None;
        }
        LeadKind::WonBadCurrency => lead.currency = "1X2".into(),
        LeadKind::WonBadValue => lead.deal_value = Some("NaN".into()),
        LeadKind::Won | LeadKind::Lost => {}
    }
    lead
}
