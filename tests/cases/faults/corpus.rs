//! The malformed-input corpus: a table whose every column is text, and the garbage fed through it.

use crate::support::CONTRACT_TOML;

/// A table whose every column is text (or nullable), so that any garbage can reach the rules.
pub(super) const SALES_SQL: &str = "create table public.sales (
    id          bigserial primary key,
    ref         text,
    email       text,
    phone       text,
    first_name  text,
    last_name   text,
    city        text,
    zip         text,
    country     text,
    ip          text,
    ua          text,
    amount      text,
    currency    text,
    consent     text,
    status      text,
    sold_at     timestamptz
)";

/// The contract's destinations and one rule over `public.sales` that maps the text column `amount`
/// to `value`.
pub(super) fn corpus_config() -> String {
    let start = CONTRACT_TOML.find("[source]").unwrap();
    let rules = CONTRACT_TOML.find("[[rules]]").unwrap();
    format!(
        "{}\n{}",
        &CONTRACT_TOML[start..rules],
        r#"[[rules]]
name = "sale_done"
table = "public.sales"
when = { status = "done" }
event = "Purchase"
event_id = "sale-{ref}"
event_time = "{sold_at}"
value = "{amount}"
currency = "{currency}"
consent = "consent"
action_source = "website"
event_source_url = "https://shop.example.com/sales/{ref}"
destinations = ["meta", "google", "tiktok"]

[rules.match]
email = "email"
phone = "phone"
first_name = "first_name"
last_name = "last_name"
city = "city"
zip = "zip"
country = "country"
client_ip = "ip"
user_agent = "ua"

[rules.google]
conversion_action = "customers/1234567890/conversionActions/1001"

[rules.tiktok]
event = "CompletePayment"
"#
    )
}

/// One corpus row: column name → value (absent columns are NULL).
pub(super) type CorpusRow = Vec<(&'static str, Option<String>)>;

/// A row every rule accepts, with the id `r`.
fn good(r: &str) -> CorpusRow {
    vec![
        ("ref", Some(r.to_string())),
        ("email", Some(format!("{r}@example.com"))),
        ("ua", Some("Mozilla/5.0 corpus".into())),
        ("amount", Some("10.00".into())),
        ("consent", Some("granted".into())),
    ]
}

/// [`good`] with `col` set to `value`.
fn with(r: &str, col: &'static str, value: Option<String>) -> CorpusRow {
    let mut row = good(r);
    row.retain(|(c, _)| *c != col);
    row.push((col, value));
    row
}

/// One row a value, `col` set to it, with the ids `{prefix}-{i}`.
fn each(rows: &mut Vec<CorpusRow>, prefix: &str, col: &'static str, values: &[&str]) {
    for (i, value) in values.iter().enumerate() {
        rows.push(with(&format!("{prefix}-{i}"), col, Some(value.to_string())));
    }
}

/// Text that looks like other encodings, control and invisible characters.
const ENCODINGS: &[&str] = &[
    "Ã©Ã¨Ã ",
    "\u{FFFD}\u{FFFD}",
    "\\xff\\xfe\\x00",
    "caf\u{0065}\u{0301}",
    "\u{202E}evil\u{202C}",
    "zero\u{200B}width",
    "\u{1}\u{2}\u{7f}",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀",
    "Ð¿Ñ€Ð¸Ð²ÐµÑ‚",
    "'; drop table sales; --",
];

/// Emails of every broken shape.
const EMAILS: &[&str] = &[
    "",
    " ",
    "@",
    "a@",
    "@b.com",
    "a@b",
    "a@@b.com",
    "a b@c.com",
    "a@b..com",
    ".a@b.com",
    "a@b.c",
    "mailto:a@b.com",
    "\"q\"@x.com",
    "a@[127.0.0.1]",
    "ÜNÏCØDÉ@exämple.com",
    "<a@b.com>",
    "a@b.com, c@d.com",
    "a@b.com\n",
];

/// Phones of every broken shape.
const PHONES: &[&str] = &[
    "",
    "+",
    "0",
    "000",
    "abc",
    "+1 (650) 555-12",
    "++16505551212",
    "1111111111111111111111111111111111111111",
    "+999 123",
    "☎ 650 555 1212",
    "６５０５５５１２１２",
    "+44 20 7946 0958 ext. 12",
    "650-555-1212 or 650-555-1213",
    "+1-650-555-1212;ext=9",
    "tel:+16505551212",
    "-1",
    "1e10",
];

/// Non-numeric and odd values in the text column mapped to `value`.
const AMOUNTS: &[&str] = &[
    "abc",
    "12,50",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "",
    " ",
    "$10",
    "10 USD",
    "0x10",
    "1_000",
    "½",
    "١٠",
    "  42  ",
    "-5",
    "0",
    "1e-9",
    "99999999999999999999999999",
];

pub(super) fn corpus() -> Vec<CorpusRow> {
    // NULLs everywhere, and empty or blank ids.
    let mut rows: Vec<CorpusRow> = vec![
        vec![],
        vec![("ref", Some(String::new()))],
        vec![("ref", Some("   ".into()))],
        vec![("ref", Some("nulls".into()))],
        with("null-consent", "consent", None),
        with("null-amount", "amount", None),
        with("null-currency", "currency", None),
    ];
    for (i, text) in ENCODINGS.iter().enumerate() {
        let mut row = good(&format!("enc-{i}"));
        for col in ["first_name", "last_name", "city", "zip", "country"] {
            row.push((col, Some(text.to_string())));
        }
        rows.push(row);
        rows.push(with(
            &format!("enc-email-{i}"),
            "email",
            Some(text.to_string()),
        ));
        rows.push(with(
            &format!("enc-phone-{i}"),
            "phone",
            Some(text.to_string()),
        ));
        rows.push(with(
            &format!("enc-ref-{i}-{text}"),
            "consent",
            Some("yes".into()),
        ));
    }
    each(&mut rows, "email", "email", EMAILS);
    rows.push(with(
        "email-long",
        "email",
        Some(format!("{}@example.com", "x".repeat(5_000))),
    ));
    each(&mut rows, "phone", "phone", PHONES);
    each(&mut rows, "amount", "amount", AMOUNTS);
    // Currencies, consent values, IPs and user agents that are not what they should be.
    let currencies = ["usd", "US", "EURO", "€€€", "", "12", " eur "];
    each(&mut rows, "currency", "currency", &currencies);
    each(
        &mut rows,
        "consent",
        "consent",
        &["", "TRUE", "nope", "grantedx", "✓"],
    );
    let ips = ["999.1.1.1", "::g", "localhost", "203.0.113.7/24", ""];
    each(&mut rows, "ip", "ip", &ips);
    // Huge values.
    rows.push(with("huge-ua", "ua", Some("U".repeat(200_000))));
    rows.push(with("huge-name", "first_name", Some("N".repeat(1_000_000))));
    rows.push(with("huge-amount", "amount", Some("9".repeat(10_000))));
    // An id far longer than any index entry can hold, and not compressible.
    let noise = noise(0x9E37_79B9_7F4A_7C15, 4_000);
    rows.push(with(&format!("huge-ref-{noise}"), "zip", None));
    rows
}

/// `len` letters from a xorshift generator seeded with `x`: text that does not compress.
pub(super) fn noise(mut x: u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}
