//! The protobuf-JSON shape of Google Ads upload requests: field names, types and enum values.
//!
//! Google parses REST bodies as proto3 JSON: both `lowerCamelCase` and `snake_case` names are
//! accepted, an unknown field or a wrongly typed value fails the whole request (HTTP 400), and
//! null means "unset". The sandbox camel-cases keys first, then walks the body against [`Kind`].

use serde_json::{Map, Value};

/// The expected JSON kind of a field.
pub(super) enum Kind {
    /// A string.
    Str,
    /// A double: a JSON number or a numeric string.
    Num,
    /// An integer: a JSON integer or a string of digits.
    Int,
    /// A boolean.
    Bool,
    /// One of the enum's value names.
    Enum(&'static [&'static str]),
    /// A message with these fields.
    Obj(&'static [(&'static str, Kind)]),
    /// A message whose fields the sandbox does not check.
    AnyObj,
    /// A repeated field.
    List(&'static Kind),
}

/// `ConsentStatus` values.
const CONSENT: &[&str] = &["UNSPECIFIED", "UNKNOWN", "GRANTED", "DENIED"];

/// `UserIdentifier` (only hashed email and phone are allowed in uploads; checked later).
static USER_IDENTIFIER: Kind = Kind::Obj(&[
    (
        "userIdentifierSource",
        Kind::Enum(&["UNSPECIFIED", "UNKNOWN", "FIRST_PARTY", "THIRD_PARTY"]),
    ),
    ("hashedEmail", Kind::Str),
    ("hashedPhoneNumber", Kind::Str),
    ("mobileId", Kind::Str),
    ("thirdPartyUserId", Kind::Str),
    ("addressInfo", Kind::AnyObj),
]);

/// `ClickConversion` (§2.1).
static CLICK_CONVERSION: Kind = Kind::Obj(&[
    ("gclid", Kind::Str),
    ("gbraid", Kind::Str),
    ("wbraid", Kind::Str),
    ("conversionAction", Kind::Str),
    ("conversionDateTime", Kind::Str),
    ("conversionValue", Kind::Num),
    ("currencyCode", Kind::Str),
    ("orderId", Kind::Str),
    ("externalAttributionData", Kind::AnyObj),
    ("customVariables", Kind::List(&Kind::AnyObj)),
    ("cartData", Kind::AnyObj),
    ("userIdentifiers", Kind::List(&USER_IDENTIFIER)),
    (
        "conversionEnvironment",
        Kind::Enum(&["UNSPECIFIED", "UNKNOWN", "APP", "WEB"]),
    ),
    (
        "consent",
        Kind::Obj(&[
            ("adUserData", Kind::Enum(CONSENT)),
            ("adPersonalization", Kind::Enum(CONSENT)),
        ]),
    ),
    (
        "customerType",
        Kind::Enum(&["UNSPECIFIED", "UNKNOWN", "NEW", "RETURNING"]),
    ),
    ("userIpAddress", Kind::Str),
    ("sessionAttributesEncoded", Kind::Str),
    ("sessionAttributesKeyValuePairs", Kind::AnyObj),
]);

/// `UploadClickConversionsRequest` body (the customer id is in the URL).
pub(super) static UPLOAD_CLICKS_REQUEST: Kind = Kind::Obj(&[
    ("conversions", Kind::List(&CLICK_CONVERSION)),
    ("partialFailure", Kind::Bool),
    ("validateOnly", Kind::Bool),
    ("jobId", Kind::Int),
    ("debugEnabled", Kind::Bool),
]);

/// `ConversionAdjustment` (§2.2).
static CONVERSION_ADJUSTMENT: Kind = Kind::Obj(&[
    (
        "gclidDateTimePair",
        Kind::Obj(&[("gclid", Kind::Str), ("conversionDateTime", Kind::Str)]),
    ),
    ("orderId", Kind::Str),
    ("conversionAction", Kind::Str),
    ("adjustmentDateTime", Kind::Str),
    (
        "adjustmentType",
        Kind::Enum(&[
            "UNSPECIFIED",
            "UNKNOWN",
            "RETRACTION",
            "RESTATEMENT",
            "ENHANCEMENT",
        ]),
    ),
    (
        "restatementValue",
        Kind::Obj(&[("adjustedValue", Kind::Num), ("currencyCode", Kind::Str)]),
    ),
    ("userIdentifiers", Kind::List(&USER_IDENTIFIER)),
    ("userAgent", Kind::Str),
]);

/// `UploadConversionAdjustmentsRequest` body.
pub(super) static UPLOAD_ADJUSTMENTS_REQUEST: Kind = Kind::Obj(&[
    ("conversionAdjustments", Kind::List(&CONVERSION_ADJUSTMENT)),
    ("partialFailure", Kind::Bool),
    ("validateOnly", Kind::Bool),
    ("jobId", Kind::Int),
]);

/// Rewrites every object key from `snake_case` to `lowerCamelCase`, as proto3 JSON accepts both.
pub(super) fn camelize_keys(value: Value) -> Value {
    match value {
        // Keys already in camel case (what pgcapi sends) stay where they are: only the values are
        // visited, without rebuilding the map.
        Value::Object(mut obj) if !obj.keys().any(|k| k.contains('_')) => {
            for inner in obj.values_mut() {
                *inner = camelize_keys(std::mem::take(inner));
            }
            Value::Object(obj)
        }
        Value::Object(obj) => {
            let mut out = Map::with_capacity(obj.len());
            for (key, inner) in obj {
                out.insert(to_camel(&key), camelize_keys(inner));
            }
            Value::Object(out)
        }
        Value::Array(mut items) => {
            for inner in &mut items {
                *inner = camelize_keys(std::mem::take(inner));
            }
            Value::Array(items)
        }
        other => other,
    }
}

/// `order_id` → `orderId`; names without underscores are unchanged.
fn to_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `orderId` → `order_id`, the proto field name Google uses in error paths.
pub(super) fn to_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks `value` against `kind`; the error is a Google-style message naming the path, not the value.
pub(super) fn check(value: &Value, kind: &Kind, path: &str) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let invalid = |ty: &str| Err(format!("Invalid value at '{path}' ({ty})"));
    match kind {
        Kind::Str if value.is_string() => Ok(()),
        Kind::Str => invalid("TYPE_STRING"),
        Kind::Bool if value.is_boolean() => Ok(()),
        Kind::Bool => invalid("TYPE_BOOL"),
        Kind::Num if super::super::as_number(value).is_some() => Ok(()),
        Kind::Num => invalid("TYPE_DOUBLE"),
        Kind::Int if value.as_i64().is_some() || super::super::as_unix_seconds(value).is_some() => {
            Ok(())
        }
        Kind::Int => invalid("TYPE_INT64"),
        Kind::Enum(names) if value.as_str().is_some_and(|s| names.contains(&s)) => Ok(()),
        Kind::Enum(_) => invalid("TYPE_ENUM"),
        Kind::AnyObj if value.is_object() => Ok(()),
        Kind::AnyObj => invalid("TYPE_MESSAGE"),
        Kind::List(inner) => {
            let Some(items) = value.as_array() else {
                return invalid("TYPE_MESSAGE[]");
            };
            for (i, item) in items.iter().enumerate() {
                check(item, inner, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Kind::Obj(fields) => {
            let Some(obj) = value.as_object() else {
                return invalid("TYPE_MESSAGE");
            };
            for (key, inner) in obj {
                let Some((_, field_kind)) = fields.iter().find(|(name, _)| name == key) else {
                    let at = if path.is_empty() {
                        String::new()
                    } else {
                        format!(" at '{path}'")
                    };
                    return Err(format!(
                        "Invalid JSON payload received. Unknown name \"{}\"{at}: Cannot find field.",
                        to_snake(key)
                    ));
                };
                let child = if path.is_empty() {
                    to_snake(key)
                } else {
                    format!("{path}.{}", to_snake(key))
                };
                check(inner, field_kind, &child)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snake_case_keys_become_camel_case_recursively() {
        let value =
            camelize_keys(json!({"order_id": "1", "user_identifiers": [{"hashed_email": "x"}]}));
        assert_eq!(
            value,
            json!({"orderId": "1", "userIdentifiers": [{"hashedEmail": "x"}]})
        );
    }

    #[test]
    fn unknown_field_is_reported_with_its_path() {
        let body = json!({"conversions": [{"orderId": "1", "bogus": 1}], "partialFailure": true});
        let err = check(&body, &UPLOAD_CLICKS_REQUEST, "").unwrap_err();
        assert!(
            err.contains("Unknown name \"bogus\" at 'conversions[0]'"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_field_but_not_the_value() {
        let body = json!({"conversions": [{"conversionValue": "twelve"}]});
        let err = check(&body, &UPLOAD_CLICKS_REQUEST, "").unwrap_err();
        assert_eq!(
            err,
            "Invalid value at 'conversions[0].conversion_value' (TYPE_DOUBLE)"
        );
    }
}
