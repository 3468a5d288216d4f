//! Tests of the text-value parsers, one family of types at a time.

use super::type_oid::*;
use super::*;
use bytes::Bytes;
use chrono::TimeZone;
use proptest::prelude::*;

proptest! {
    /// The text types are taken as is: `is_plain_text` callers may skip `parse_value`.
    #[test]
    fn plain_text_types_parse_to_their_own_text(text in any::<String>()) {
        for oid in [TEXT, VARCHAR, BPCHAR, CHAR, NAME] {
            prop_assert!(is_plain_text(oid));
            prop_assert_eq!(
                parse_value(oid, text.as_bytes()).unwrap().into_text(),
                Some(text.clone())
            );
        }
    }
}

/// Parses `s` as type `oid`.
fn p(oid: u32, s: &str) -> Result<Value, ValueError> {
    parse_value(oid, s.as_bytes())
}

/// A UTC instant.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

#[test]
fn text_types_are_kept_as_is_including_padding() {
    assert_eq!(p(TEXT, "héllo").unwrap(), Value::Text("héllo".into()));
    assert_eq!(p(VARCHAR, "").unwrap(), Value::Text(String::new()));
    assert_eq!(p(BPCHAR, "ab   ").unwrap(), Value::Text("ab   ".into()));
    assert_eq!(p(NAME, "orders").unwrap(), Value::Text("orders".into()));
    assert_eq!(p(CHAR, "x").unwrap(), Value::Text("x".into()));
    assert!(parse_value(TEXT, &[0xff]).is_err());
}

#[test]
fn unknown_types_are_text() {
    assert_eq!(p(99999, "happy").unwrap(), Value::Text("happy".into()));
    assert_eq!(p(BYTEA, "\\x00ff").unwrap(), Value::Text("\\x00ff".into()));
}

#[test]
fn integers_parse_within_range() {
    assert_eq!(p(INT2, "-32768").unwrap(), Value::Int(-32768));
    assert_eq!(p(INT4, "42").unwrap(), Value::Int(42));
    assert_eq!(
        p(INT8, "9223372036854775807").unwrap(),
        Value::Int(i64::MAX)
    );
    assert_eq!(p(OID, "4294967295").unwrap(), Value::Int(4_294_967_295));
    assert!(p(INT8, "9223372036854775808").is_err());
    assert!(p(INT4, "1.5").is_err());
    assert!(p(INT4, "").is_err());
    assert!(p(OID, "-1").is_err());
}

#[test]
fn floats_parse_including_special_values() {
    assert_eq!(p(FLOAT8, "2.75").unwrap(), Value::Float(2.75));
    assert_eq!(p(FLOAT4, "1e+20").unwrap(), Value::Float(1e20));
    assert_eq!(p(FLOAT8, "-0").unwrap(), Value::Float(-0.0));
    assert_eq!(p(FLOAT8, "Infinity").unwrap(), Value::Float(f64::INFINITY));
    assert_eq!(
        p(FLOAT8, "-Infinity").unwrap(),
        Value::Float(f64::NEG_INFINITY)
    );
    let Value::Float(nan) = p(FLOAT8, "NaN").unwrap() else {
        panic!("not a float")
    };
    assert!(nan.is_nan());
    assert!(p(FLOAT8, "abc").is_err());
    assert_eq!(Value::Float(f64::NAN).to_text().unwrap(), "NaN");
    assert_eq!(Value::Float(f64::INFINITY).to_text().unwrap(), "Infinity");
    assert_eq!(Value::Float(2.5).to_text().unwrap(), "2.5");
}

#[test]
fn numerics_keep_their_text_and_reject_nan() {
    assert_eq!(p(NUMERIC, "12.50").unwrap(), Value::Numeric("12.50".into()));
    assert_eq!(
        p(NUMERIC, "-0.001").unwrap(),
        Value::Numeric("-0.001".into())
    );
    assert_eq!(
        p(NUMERIC, "123456789012345678901234567890").unwrap(),
        Value::Numeric("123456789012345678901234567890".into())
    );
    for bad in [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e5",
        "",
        "-",
        "1.",
        ".5",
        "1.2.3",
        "+1",
    ] {
        assert!(p(NUMERIC, bad).is_err(), "{bad}");
    }
    assert_eq!(
        p(NUMERIC, "NaN").unwrap_err().reason(),
        "NaN and infinite values are not supported"
    );
    assert_eq!(Value::Numeric("12.50".into()).to_text().unwrap(), "12.50");
}

#[test]
fn booleans_are_t_or_f() {
    assert_eq!(p(BOOL, "t").unwrap(), Value::Bool(true));
    assert_eq!(p(BOOL, "f").unwrap(), Value::Bool(false));
    assert!(p(BOOL, "yes").is_err());
    assert_eq!(Value::Bool(true).to_text().unwrap(), "true");
}

#[test]
fn dates_parse_iso_output_including_bc_and_reject_infinity() {
    let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    assert_eq!(p(DATE, "2024-02-29").unwrap(), Value::Date(d(2024, 2, 29)));
    assert_eq!(
        p(DATE, "0044-03-15 BC").unwrap(),
        Value::Date(d(-43, 3, 15))
    );
    assert_eq!(p(DATE, "0001-01-01 BC").unwrap(), Value::Date(d(0, 1, 1)));
    assert_eq!(p(DATE, "10000-01-01").unwrap(), Value::Date(d(10000, 1, 1)));
    for bad in [
        "2023-02-29",
        "2024-1-05",
        "15.01.2024",
        "01/15/2024",
        "2024-01-15x",
        "",
    ] {
        assert!(p(DATE, bad).is_err(), "{bad}");
    }
    let err = p(DATE, "infinity").unwrap_err();
    assert_eq!(err.reason(), "infinite dates are not supported");
    assert_eq!(Value::Date(d(2024, 1, 5)).to_text().unwrap(), "2024-01-05");
}

#[test]
fn timestamps_parse_with_fractional_seconds() {
    let naive = |s| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
    assert_eq!(
        p(TIMESTAMP, "2024-01-15 10:30:00").unwrap(),
        Value::Timestamp(naive("2024-01-15 10:30:00"))
    );
    assert_eq!(
        p(TIMESTAMP, "2024-01-15 10:30:00.5").unwrap(),
        Value::Timestamp(naive("2024-01-15 10:30:00.500"))
    );
    assert_eq!(
        p(TIMESTAMP, "2024-01-15 10:30:00.000123").unwrap(),
        Value::Timestamp(naive("2024-01-15 10:30:00.000123"))
    );
    assert!(p(TIMESTAMP, "2024-01-15 10:30:00+00").is_err());
    assert!(p(TIMESTAMP, "2024-01-15 25:00:00").is_err());
    assert!(p(TIMESTAMP, "2024-01-15 10:30").is_err());
    assert!(p(TIMESTAMP, "2024-01-15 10:30:00.").is_err());
    assert!(p(TIMESTAMP, "-infinity").is_err());
    assert_eq!(
        p(TIMESTAMP, "2024-01-15 10:30:00.25")
            .unwrap()
            .to_text()
            .unwrap(),
        "2024-01-15T10:30:00.250"
    );
    assert_eq!(
        p(TIMESTAMP, "2024-01-15 10:30:00")
            .unwrap()
            .to_text()
            .unwrap(),
        "2024-01-15T10:30:00"
    );
}

#[test]
fn timestamptz_offsets_convert_to_utc() {
    let cases = [
        ("2024-01-15 10:30:00+00", utc(2024, 1, 15, 10, 30, 0)),
        ("2024-01-15 10:30:00-05", utc(2024, 1, 15, 15, 30, 0)),
        ("2024-01-15 10:30:00+05:30", utc(2024, 1, 15, 5, 0, 0)),
        ("2024-01-15 10:30:00-03:30:15", utc(2024, 1, 15, 14, 0, 15)),
        ("2024-01-01 01:00:00+14", utc(2023, 12, 31, 11, 0, 0)),
        ("2024-01-15T10:30:00Z", utc(2024, 1, 15, 10, 30, 0)),
    ];
    for (text, want) in cases {
        assert_eq!(
            p(TIMESTAMPTZ, text).unwrap(),
            Value::TimestampTz(want),
            "{text}"
        );
    }
    let Value::TimestampTz(t) = p(TIMESTAMPTZ, "2024-01-15 10:30:00.123456+01").unwrap() else {
        panic!("not a timestamptz")
    };
    assert_eq!(t.timestamp_subsec_micros(), 123_456);
    assert_eq!(
        Value::TimestampTz(t).to_text().unwrap(),
        "2024-01-15T09:30:00.123456Z"
    );
    assert_eq!(
        Value::TimestampTz(utc(2024, 1, 15, 9, 30, 0))
            .to_text()
            .unwrap(),
        "2024-01-15T09:30:00Z"
    );
}

#[test]
fn timestamptz_handles_bc_and_rejects_bad_input() {
    let Value::TimestampTz(t) = p(TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC").unwrap() else {
        panic!("not a timestamptz")
    };
    assert_eq!(t, utc(-43, 3, 15, 12, 0, 0));
    for bad in [
        "2024-01-15 10:30:00",
        "2024-01-15 10:30:00+5",
        "2024-01-15 10:30:00+05:60",
        "2024-01-15 10:30:00+05:30 AD",
        "2024-01-15 10:30:00 PST",
        "Mon Jan 15 10:30:00 2024 PST",
        "0000-01-01 00:00:00+00 BC",
    ] {
        assert!(p(TIMESTAMPTZ, bad).is_err(), "{bad}");
    }
    let err = p(TIMESTAMPTZ, "infinity").unwrap_err();
    assert_eq!(err.reason(), "infinite timestamps are not supported");
    assert_eq!(
        err.to_string(),
        "invalid timestamptz value (type oid 1184): infinite timestamps are not supported"
    );
}

#[test]
fn inet_and_cidr_split_hosts_from_networks() {
    let v4: IpAddr = "192.168.0.1".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(p(INET, "192.168.0.1").unwrap(), Value::Inet(v4));
    assert_eq!(p(INET, "192.168.0.1/32").unwrap(), Value::Inet(v4));
    assert_eq!(p(INET, "2001:db8::1").unwrap(), Value::Inet(v6));
    assert_eq!(p(CIDR, "2001:db8::1/128").unwrap(), Value::Inet(v6));
    let net = p(CIDR, "10.0.0.0/8").unwrap();
    assert_eq!(net, Value::Network("10.0.0.0".parse().unwrap(), 8));
    assert_eq!(net.to_text().unwrap(), "10.0.0.0/8");
    assert!(p(INET, "10.0.0.1/33").is_err());
    assert!(p(INET, "10.0.0.256").is_err());
    assert!(p(INET, "host").is_err());
    assert_eq!(Value::Inet(v6).to_text().unwrap(), "2001:db8::1");
}

#[test]
fn uuids_are_validated_and_lowercased() {
    let s = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(p(UUID, s).unwrap(), Value::Uuid(s.into()));
    assert_eq!(p(UUID, &s.to_uppercase()).unwrap(), Value::Uuid(s.into()));
    assert!(p(UUID, "a0eebc999c0b4ef8bb6d6bb9bd380a11").is_err());
    assert!(p(UUID, "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").is_err());
}

#[test]
fn json_and_jsonb_parse_to_values() {
    let v = p(JSONB, r#"{"a": [1, "x", null]}"#).unwrap();
    assert_eq!(v, Value::Json(serde_json::json!({"a": [1, "x", null]})));
    assert_eq!(v.to_text().unwrap(), r#"{"a":[1,"x",null]}"#);
    assert_eq!(p(JSON, "3").unwrap(), Value::Json(serde_json::json!(3)));
    let err = p(JSON, "{nope").unwrap_err();
    assert_eq!(err.reason(), "not valid JSON");
}

#[test]
fn errors_never_contain_the_value() {
    let secret = "jane.doe@example.com";
    for oid in [
        INT4,
        FLOAT8,
        NUMERIC,
        BOOL,
        DATE,
        TIMESTAMP,
        TIMESTAMPTZ,
        INET,
        UUID,
        JSON,
    ] {
        let err = p(oid, secret).unwrap_err();
        assert!(!err.to_string().contains("jane"), "{err}");
        assert_eq!(err.type_oid(), oid);
    }
}

#[test]
fn datums_map_null_text_and_reject_toast_and_binary() {
    assert_eq!(parse_datum(INT4, &Datum::Null).unwrap(), Value::Null);
    assert_eq!(
        parse_datum(INT4, &Datum::Text(Bytes::from_static(b"7"))).unwrap(),
        Value::Int(7)
    );
    assert!(parse_datum(TEXT, &Datum::UnchangedToast).is_err());
    assert!(parse_datum(TEXT, &Datum::Binary(Bytes::from_static(b"x"))).is_err());
    assert_eq!(Value::Null.to_text(), None);
    assert!(Value::Null.is_null());
}

proptest! {
    #[test]
    fn random_text_never_panics_for_any_type(
        oid in proptest::sample::select(vec![
            BOOL, INT2, INT4, INT8, OID, FLOAT4, FLOAT8, NUMERIC, DATE, TIMESTAMP,
            TIMESTAMPTZ, INET, CIDR, UUID, JSON, JSONB, TEXT, 4242,
        ]),
        text in "[0-9:. +\\-TZBCa-f/]{0,40}",
    ) {
        let _ = p(oid, &text);
    }

    #[test]
    fn timestamptz_round_trips_through_text(secs in -60_000_000_000i64..200_000_000_000, micros in 0u32..1_000_000) {
        let t = DateTime::from_timestamp(secs, micros * 1000).unwrap();
        let text = t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
        prop_assume!(t.year() > 0);
        prop_assert_eq!(p(TIMESTAMPTZ, &text).unwrap(), Value::TimestampTz(t));
    }
}
use chrono::Datelike;
