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

pub(super) fn corpus() -> Vec<CorpusRow> {
    let good = |r: &str| -> CorpusRow {
        vec![
            ("ref", Some(r.to_string())),
            ("email", Some(format!("{r}@example.com"))),
            ("ua", Some("Mozilla/5.0 corpus".into())),
            ("amount", Some("10.00".into())),
            ("consent", Some("granted".into())),
        ]
    };
    let with = |r: &str, col: &'static str, value: Option<String>| -> CorpusRow {
        let mut row = good(r);
        row.retain(|(c, _)| *c != col);
        row.push((col, value));
        row
    };
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
    // Text that looks like other encodings, control and invisible characters.
    for (i, text) in [
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
    ]
    .iter()
    .enumerate()
    {
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
    // Emails of every broken shape.
    for (i, email) in [
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
    ]
    .iter()
    .enumerate()
    {
        rows.push(with(
            &format!("email-{i}"),
            "email",
            Some(email.to_string()),
        ));
    }
    rows.push(with(
        "email-long",
        "email",
        Some(format!("{}@example.com", "x".repeat(5_000))),
    ));
    // Phones of every broken shape.
    for (i, phone) in [
        "",
        "+",
        "0",
        "000",
        "abc",
        "+1 (650) 555-12",
        "++16505551212",
        &"1".repeat(40),
        "+999 123",
        "☎ 650 555 1212",
        "６５０５５５１２１２",
        "+44 20 7946 0958 ext. 12",
        "650-555-1212 or 650-555-1213",
        "+1-650-555-1212;ext=9",
        "tel:+16505551212",
        "-1",
        "1e10",
    ]
    .iter()
    .enumerate()
    {
        rows.push(with(
            &format!("phone-{i}"),
            "phone",
            Some(phone.to_string()),
        ));
    }
    // Non-numeric and odd values in the text column mapped to `value`.
    for (i, amount) in [
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
    ]
    .iter()
    .enumerate()
    {
        rows.push(with(
            &format!("amount-{i}"),
            "amount",
            Some(amount.to_string()),
        ));
    }
    // Currencies, consent values, IPs and user agents that are not what they should be.
    for (i, currency) in ["usd", "US", "EURO", "€€€", "", "12", " eur "]
        .iter()
        .enumerate()
    {
        rows.push(with(
            &format!("currency-{i}"),
            "currency",
            Some(currency.to_string()),
        ));
    }
    for (i, consent) in ["", "TRUE", "nope", "grantedx", "✓"].iter().enumerate() {
        rows.push(with(
            &format!("consent-{i}"),
            "consent",
            Some(consent.to_string()),
        ));
    }
    for (i, ip) in ["999.1.1.1", "::g", "localhost", "203.0.113.7/24", ""]
        .iter()
        .enumerate()
    {
        rows.push(with(&format!("ip-{i}"), "ip", Some(ip.to_string())));
    }
    // Huge values.
    rows.push(with("huge-ua", "ua", Some("U".repeat(200_000))));
    rows.push(with("huge-name", "first_name", Some("N".repeat(1_000_000))));
    rows.push(with("huge-amount", "amount", Some("9".repeat(10_000))));
    // An id far longer than any index entry can hold, and not compressible.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: String = (0..4_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    rows.push(with(&format!("huge-ref-{noise}"), "zip", None));
    rows
}
