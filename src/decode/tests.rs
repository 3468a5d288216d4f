//! Decoder tests: round trips through a message builder, literal bytes, every truncation and
//! corruption, and property tests.

use super::test_encoder::{encode, Builder};
use super::*;
use chrono::{TimeDelta, TimeZone};
use proptest::prelude::*;

/// A text datum.
fn t(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A fixed commit time with microseconds.
fn when() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 9, 14, 5, 7).unwrap() + TimeDelta::microseconds(123_456)
}

/// One or more instances of every message kind, with the variants that change the layout.
fn samples() -> Vec<PgOutput> {
    let mut all = transaction_samples();
    all.extend(row_samples());
    all.extend(message_samples());
    all
}

/// Begin, Commit, Origin, Relation and Type: the messages around and about the rows.
fn transaction_samples() -> Vec<PgOutput> {
    vec![
        PgOutput::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: when(),
            xid: 770,
        }),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x16_B374_D848),
            end_lsn: Lsn(0x16_B374_D878),
            commit_time: when(),
        }),
        PgOutput::Origin(Origin {
            commit_lsn: Lsn(7),
            name: "upstream".into(),
        }),
        PgOutput::Relation(Relation {
            oid: 16384,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: b'd',
            columns: vec![
                RelationColumn {
                    key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                RelationColumn {
                    key: false,
                    name: "total".into(),
                    type_oid: 1700,
                    type_modifier: 655366,
                },
            ],
        }),
        PgOutput::Relation(Relation {
            oid: 1,
            namespace: "s".into(),
            name: "empty".into(),
            replica_identity: b'n',
            columns: vec![],
        }),
        PgOutput::Type(TypeInfo {
            oid: 90001,
            namespace: "public".into(),
            name: "mood".into(),
        }),
    ]
}

/// Insert, Update, Delete and Truncate, with every kind of datum and old tuple.
fn row_samples() -> Vec<PgOutput> {
    let row = Tuple(vec![
        t("42"),
        Datum::Null,
        Datum::UnchangedToast,
        Datum::Binary(Bytes::from_static(&[0, 1, 2])),
        t(""),
        t("ünïcode"),
    ]);
    let key = Tuple(vec![t("42"), Datum::Null, Datum::Null]);
    vec![
        PgOutput::Insert(Insert {
            relation: 16384,
            new: row.clone(),
        }),
        PgOutput::Insert(Insert {
            relation: 16384,
            new: Tuple(vec![]),
        }),
        PgOutput::Update(Update {
            relation: 16384,
            old: None,
            new: row.clone(),
        }),
        PgOutput::Update(Update {
            relation: 16384,
            old: Some(OldTuple::Key(key.clone())),
            new: row.clone(),
        }),
        PgOutput::Update(Update {
            relation: 16384,
            old: Some(OldTuple::Full(row.clone())),
            new: row.clone(),
        }),
        PgOutput::Delete(Delete {
            relation: 16384,
            old: OldTuple::Key(key),
        }),
        PgOutput::Delete(Delete {
            relation: 16384,
            old: OldTuple::Full(row),
        }),
        PgOutput::Truncate(Truncate {
            options: 3,
            relations: vec![16384, 16390, 4_000_000_000],
        }),
        PgOutput::Truncate(Truncate {
            options: 0,
            relations: vec![],
        }),
    ]
}

/// Logical decoding messages, transactional or not.
fn message_samples() -> Vec<PgOutput> {
    vec![
        PgOutput::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(0x1_0000_0001),
            prefix: "pgcapi".into(),
            content: Bytes::from_static(b"{\"hello\":1}"),
        }),
        PgOutput::Message(LogicalMessage {
            transactional: false,
            lsn: Lsn(1),
            prefix: String::new(),
            content: Bytes::new(),
        }),
    ]
}

const AT: Lsn = Lsn(0x16B3748);

#[test]
fn every_message_kind_round_trips() {
    for m in samples() {
        let bytes = encode(&m);
        assert_eq!(decode(&bytes, AT).unwrap(), m, "{}", m.kind());
    }
}

#[test]
fn an_insert_decodes_from_literal_bytes_as_slices_of_the_input() {
    let data = Bytes::from_static(&[
        b'I', 0, 0, 0x40, 0x00, b'N', 0, 3, b't', 0, 0, 0, 2, b'4', b'2', b'n', b'u',
    ]);
    let PgOutput::Insert(insert) = decode(&data, AT).unwrap() else {
        panic!("not an insert")
    };
    assert_eq!(insert.relation, 16384);
    assert_eq!(
        insert.new,
        Tuple(vec![t("42"), Datum::Null, Datum::UnchangedToast])
    );
    let Datum::Text(v) = &insert.new.0[0] else {
        panic!("not text")
    };
    // Zero-copy: the value points into the message buffer.
    assert_eq!(v.as_ptr(), data[13..].as_ptr());
}

#[test]
fn begin_and_commit_decode_from_literal_bytes() {
    // Commit time 0 is the PostgreSQL epoch; 1_000_000 is one second later.
    let begin = Bytes::from_static(&[
        b'B', 0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2,
    ]);
    assert_eq!(
        decode(&begin, AT).unwrap(),
        PgOutput::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap(),
            xid: 0x302,
        })
    );
    let commit = Bytes::from_static(&[
        b'C', 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0x0F, 0x42, 0x40,
    ]);
    assert_eq!(
        decode(&commit, AT).unwrap(),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(9),
            end_lsn: Lsn(10),
            commit_time: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).unwrap(),
        })
    );
}

#[test]
fn an_empty_namespace_means_pg_catalog() {
    let rel = Builder::default()
        .u8(b'R')
        .u32(1259)
        .cstr("")
        .cstr("pg_class")
        .u8(b'n')
        .i16(0)
        .bytes();
    let PgOutput::Relation(rel) = decode(&rel, AT).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(rel.qualified_name(), "pg_catalog.pg_class");
    let ty = Builder::default()
        .u8(b'Y')
        .u32(16)
        .cstr("")
        .cstr("bool")
        .bytes();
    let PgOutput::Type(ty) = decode(&ty, AT).unwrap() else {
        panic!("not a type")
    };
    assert_eq!(ty.namespace, "pg_catalog");
}

#[test]
fn relation_helpers_find_columns_and_qualify_names() {
    let PgOutput::Relation(rel) = samples().swap_remove(3) else {
        panic!("sample 3 is a relation")
    };
    assert_eq!(rel.qualified_name(), "public.orders");
    assert_eq!(rel.column_index("total"), Some(1));
    assert_eq!(rel.column_index("id"), Some(0));
    assert_eq!(rel.column_index("missing"), None);
    assert!(rel.columns[0].key && !rel.columns[1].key);
}

#[test]
fn every_truncation_of_every_message_is_an_error() {
    for m in samples() {
        let full = encode(&m);
        for len in 0..full.len() {
            let cut = full.slice(..len);
            assert!(
                decode(&cut, AT).is_err(),
                "{} cut at {len} decoded",
                m.kind()
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for m in samples() {
        let mut bytes = encode(&m).to_vec();
        bytes.push(0);
        let err = decode(&Bytes::from(bytes), AT).unwrap_err();
        assert!(err.detail().contains("trailing"), "{err}");
    }
}

#[test]
fn corrupting_any_byte_never_panics() {
    for m in samples() {
        let full = encode(&m).to_vec();
        for i in 0..full.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff, b'n', b't', b'N', b'K'] {
                let mut bad = full.clone();
                bad[i] = v;
                let _ = decode(&Bytes::from(bad), AT);
            }
        }
    }
}

#[test]
fn errors_name_the_lsn_the_message_and_the_byte() {
    let full = encode(&PgOutput::Insert(Insert {
        relation: 16384,
        new: Tuple(vec![t("a@example.com")]),
    }));
    let err = decode(&full.slice(..full.len() - 1), AT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed pgoutput at LSN 0/16B3748: Insert: tuple truncated at byte 13"
    );
    assert_eq!(err.lsn(), AT);
    assert_eq!(err.message_kind(), "Insert");
    // The partial value must never appear in the error.
    assert!(!err.to_string().contains("example"));
}

#[test]
fn unknown_tags_and_kinds_are_errors() {
    let err = decode(&Bytes::from_static(b"X"), AT).unwrap_err();
    assert!(
        err.to_string().contains("unknown message tag 0x58"),
        "{err}"
    );
    let err = decode(&Bytes::new(), AT).unwrap_err();
    assert!(err.to_string().contains("message tag truncated"), "{err}");
    // Streaming messages (protocol v2) are not v1.
    assert!(decode(&Bytes::from_static(b"S\0\0\0\x01\x01"), AT).is_err());
    let bad_kind = Builder::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b'x')
        .bytes();
    let err = decode(&bad_kind, AT).unwrap_err();
    assert!(err.detail().contains("unknown tuple column kind"), "{err}");
    let bad_old = Builder::default().u8(b'D').u32(1).u8(b'N').i16(0).bytes();
    assert!(decode(&bad_old, AT).is_err());
    let negative = Builder::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(-1)
        .bytes();
    let err = decode(&negative, AT).unwrap_err();
    assert!(err.detail().contains("negative"), "{err}");
    let negative_count = Builder::default().u8(b'I').u32(1).u8(b'N').i16(-1).bytes();
    assert!(decode(&negative_count, AT).is_err());
}

#[test]
fn huge_counts_do_not_allocate_before_failing() {
    let truncate = Builder::default()
        .u8(b'T')
        .u32(u32::MAX)
        .u8(0)
        .u32(1)
        .bytes();
    assert!(decode(&truncate, AT).is_err());
    let relation = Builder::default()
        .u8(b'R')
        .u32(1)
        .cstr("a")
        .cstr("b")
        .u8(b'd')
        .i16(i16::MAX)
        .bytes();
    assert!(decode(&relation, AT).is_err());
    let message = Builder::default()
        .u8(b'M')
        .u8(1)
        .u64(1)
        .cstr("p")
        .i32(i32::MAX)
        .bytes();
    assert!(decode(&message, AT).is_err());
}

#[test]
fn out_of_range_timestamps_and_bad_utf8_are_errors() {
    let begin = Builder::default()
        .u8(b'B')
        .u64(1)
        .u64(i64::MAX as u64)
        .u32(1)
        .bytes();
    let err = decode(&begin, AT).unwrap_err();
    assert!(err.detail().contains("out of range"), "{err}");
    let origin = Builder::default()
        .u8(b'O')
        .u64(1)
        .extend(&[0xff, 0xfe, 0])
        .bytes();
    let err = decode(&origin, AT).unwrap_err();
    assert!(err.detail().contains("not UTF-8"), "{err}");
}

#[test]
fn the_relation_cache_keeps_the_latest_schema() {
    let mut cache = RelationCache::new();
    assert!(cache.is_empty());
    let PgOutput::Relation(mut rel) = samples().swap_remove(3) else {
        panic!("sample 3 is a relation")
    };
    let first = cache.insert(rel.clone());
    assert_eq!(first.columns.len(), 2);
    rel.columns.pop();
    cache.insert(rel);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(16384).unwrap().columns.len(), 1);
    // The earlier Arc still describes the tuples decoded before the change.
    assert_eq!(first.columns.len(), 2);
    assert!(cache.get(1).is_none());
    cache.clear();
    assert!(cache.get(16384).is_none());
}

#[test]
fn unchanged_toast_is_filled_from_a_full_old_tuple() {
    let mut new = Tuple(vec![t("1"), Datum::UnchangedToast, Datum::UnchangedToast]);
    let old = OldTuple::Full(Tuple(vec![t("0"), t("long notes"), Datum::Null]));
    fill_unchanged_toast(&mut new, Some(&old));
    assert_eq!(new, Tuple(vec![t("1"), t("long notes"), Datum::Null]));
}

#[test]
fn unchanged_toast_is_filled_only_from_key_values_of_a_key_tuple() {
    let mut new = Tuple(vec![Datum::UnchangedToast, Datum::UnchangedToast]);
    let old = OldTuple::Key(Tuple(vec![t("key"), Datum::Null]));
    fill_unchanged_toast(&mut new, Some(&old));
    assert_eq!(new, Tuple(vec![t("key"), Datum::UnchangedToast]));
}

#[test]
fn unchanged_toast_stays_without_an_old_tuple_or_value() {
    let mut new = Tuple(vec![Datum::UnchangedToast, t("x"), Datum::UnchangedToast]);
    fill_unchanged_toast(&mut new, None);
    assert_eq!(new.0[0], Datum::UnchangedToast);
    // A shorter old tuple, or an old value that is itself unchanged TOAST, leaves the slot alone.
    let old = OldTuple::Full(Tuple(vec![Datum::UnchangedToast, t("y")]));
    fill_unchanged_toast(&mut new, Some(&old));
    assert_eq!(
        new,
        Tuple(vec![Datum::UnchangedToast, t("x"), Datum::UnchangedToast])
    );
}

/// Any datum.
fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Text(v.into())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Binary(v.into())),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&Bytes::from(data), AT);
    }

    #[test]
    fn random_bodies_after_a_valid_tag_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut data = vec![tag];
        data.extend(body);
        let _ = decode(&Bytes::from(data), AT);
    }

    #[test]
    fn random_updates_round_trip(
        relation in any::<u32>(),
        new in proptest::collection::vec(datum(), 0..20),
        old in proptest::option::of((any::<bool>(), proptest::collection::vec(datum(), 0..20))),
    ) {
        let m = PgOutput::Update(Update {
            relation,
            old: old.map(|(key, t)| if key { OldTuple::Key(Tuple(t)) } else { OldTuple::Full(Tuple(t)) }),
            new: Tuple(new),
        });
        prop_assert_eq!(decode(&encode(&m), AT).unwrap(), m);
    }
}
