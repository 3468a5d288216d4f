//! Values sent as stored: click ids, cookies, lead ids, IP address, user agent, and Meta's `fbc`.

use std::borrow::Cow;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::text::clean_as_stored;
use super::{Reason, EMPTY};

/// Reason for an `fbc` that is not `fb.<digit>.<13-digit ms>.<fbclid>`.
const INVALID_FBC: Reason = "invalid fbc";

/// Reason for an `fbclid` with whitespace inside.
const INVALID_FBCLID: Reason = "invalid fbclid";

/// Reason for a client IP that is neither IPv4 nor IPv6.
const INVALID_IP: Reason = "invalid IP address";

/// Reason for an msclkid that is not 32 hex characters once its cookie prefix and session suffix are removed.
const INVALID_MSCLKID: Reason = "invalid msclkid";

/// Validates a Microsoft click id, or says why it is left out.
///
/// Stored as the bare GUID of 32 hex characters (platforms-next.md §1.4): the UET tag keeps it in the
/// `_uetmsclkid` cookie as `_uet<guid>`, and sends it as `<guid>-1` / `<guid>-0` (new / repeat
/// session), so a `_uet` prefix and a `-0`/`-1` suffix are removed, as are the dashes of a GUID
/// written `8-4-4-4-12`. The hex digits keep their case.
pub(crate) fn msclkid_checked(raw: &str) -> Result<String, Reason> {
    let cleaned = clean_as_stored(raw).ok_or(EMPTY)?;
    let mut id: &str = &cleaned;
    id = id.strip_prefix("_uet").unwrap_or(id);
    if id.len() == 34 {
        id = id
            .strip_suffix("-0")
            .or_else(|| id.strip_suffix("-1"))
            .unwrap_or(id);
    }
    let dashed = id.len() == 36
        && id
            .char_indices()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'));
    let bare: String = if dashed {
        id.chars().filter(|c| *c != '-').collect()
    } else {
        id.to_owned()
    };
    if bare.len() == 32 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(bare)
    } else {
        Err(INVALID_MSCLKID)
    }
}

/// Normalizes a Microsoft click id to its bare 32-hex GUID; `None` when it has another shape.
pub fn normalize_msclkid(raw: &str) -> Option<String> {
    msclkid_checked(raw).ok()
}

/// Reason for an Outbrain click id with whitespace inside.
const INVALID_OB_CLICK_ID: Reason = "invalid outbrain click id";

/// Reason for a Taboola click id that is not 66–1,024 URL-safe base64 characters.
const INVALID_TABOOLA_CLICK_ID: Reason = "invalid taboola click id";

/// Shortest Taboola click id ("66 characters or more", Taboola's postback page).
const TABOOLA_CLICK_ID_MIN: usize = 66;

/// Longest Taboola click id kept (Taboola gives no upper bound; this only bounds junk).
const TABOOLA_CLICK_ID_MAX: usize = 1_024;

/// Validates an Outbrain click id: as stored, trimmed, without whitespace inside (Outbrain publishes
/// no format; a value with a space is a pasted sentence, not an id).
pub(crate) fn ob_click_id_checked(raw: &str) -> Result<String, Reason> {
    let cleaned = clean_as_stored(raw).ok_or(EMPTY)?;
    if cleaned.chars().any(char::is_whitespace) {
        return Err(INVALID_OB_CLICK_ID);
    }
    Ok(cleaned.into_owned())
}

/// Validates a Taboola click id: trimmed, 66–1,024 characters of URL-safe base64 (`A–Z a–z 0–9 - _`),
/// case kept. Taboola's bulk endpoint answers 204 even for a click id it cannot parse and loses the
/// conversion, so a malformed one is left out here, visibly, instead.
pub(crate) fn taboola_click_id_checked(raw: &str) -> Result<String, Reason> {
    let cleaned = clean_as_stored(raw).ok_or(EMPTY)?;
    let shape = (TABOOLA_CLICK_ID_MIN..=TABOOLA_CLICK_ID_MAX).contains(&cleaned.len())
        && cleaned
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !shape {
        return Err(INVALID_TABOOLA_CLICK_ID);
    }
    Ok(cleaned.into_owned())
}

/// A value sent exactly as stored, trimmed (after NFC), or `EMPTY`.
pub(crate) fn as_stored_checked(raw: &str) -> Result<String, Reason> {
    clean_as_stored(raw).map(Cow::into_owned).ok_or(EMPTY)
}

/// Normalizes a click id, cookie, lead id or user agent: trimmed, otherwise exactly as stored.
pub fn normalize_click_id(raw: &str) -> Option<String> {
    as_stored_checked(raw).ok()
}

/// Validates a client IP address, or says why it is left out.
///
/// Sent as stored, but only when it parses: one malformed IP can make Meta or TikTok reject the whole
/// batch. Postgres `inet` text of a host (`203.0.113.5/32`) loses its full-length prefix.
pub(crate) fn client_ip_checked(raw: &str) -> Result<String, Reason> {
    let cleaned = clean_as_stored(raw).ok_or(EMPTY)?;
    let host = match cleaned.split_once('/') {
        Some((host, "32")) if host.parse::<std::net::Ipv4Addr>().is_ok() => host,
        Some((host, "128")) if host.parse::<std::net::Ipv6Addr>().is_ok() => host,
        _ => &*cleaned,
    };
    host.parse::<IpAddr>().map_err(|_| INVALID_IP)?;
    Ok(host.to_owned())
}

/// Validates a client IP address (IPv4 or IPv6, an `inet` host prefix dropped); `None` when invalid.
pub fn normalize_client_ip(raw: &str) -> Option<String> {
    client_ip_checked(raw).ok()
}

/// Validates a stored `fbc`, or says why it is left out.
///
/// Shape: `fb.` + one digit + `.` + 13 digits of milliseconds + `.` + the fbclid. The fbclid may carry
/// the optional fifth segment Meta's parameter builder appends (`.AQICAQMC`), which Meta accepts.
pub(crate) fn fbc_checked(raw: &str) -> Result<String, Reason> {
    let cleaned = clean_as_stored(raw).ok_or(EMPTY)?;
    let mut parts = cleaned.splitn(4, '.');
    let (Some("fb"), Some(index), Some(millis), Some(fbclid)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID_FBC);
    };
    let index_ok = index.len() == 1 && index.bytes().all(|b| b.is_ascii_digit());
    let millis_ok = millis.len() == 13 && millis.bytes().all(|b| b.is_ascii_digit());
    let fbclid_ok = !fbclid.is_empty() && !fbclid.chars().any(char::is_whitespace);
    if index_ok && millis_ok && fbclid_ok {
        Ok(cleaned.into_owned())
    } else {
        Err(INVALID_FBC)
    }
}

/// Validates a stored `fbc` (`fb.1.1554763741205.IwAR…`); `None` when it has another shape.
pub fn normalize_fbc(raw: &str) -> Option<String> {
    fbc_checked(raw).ok()
}

/// Builds an `fbc` from a bare fbclid, or says why it cannot.
pub(crate) fn fbc_from_fbclid_checked(
    fbclid: &str,
    click_time: DateTime<Utc>,
) -> Result<String, Reason> {
    let fbclid = clean_as_stored(fbclid).ok_or(EMPTY)?;
    if fbclid.chars().any(char::is_whitespace) {
        return Err(INVALID_FBCLID);
    }
    Ok(format!("fb.1.{}.{fbclid}", click_time.timestamp_millis()))
}

/// Builds `fb.1.<click time in ms>.<fbclid>` (the fbclid keeps its case); `None` for a blank fbclid or
/// one with whitespace inside. Pass the click time if known, else the event time.
pub fn fbc_from_fbclid(fbclid: &str, click_time: DateTime<Utc>) -> Option<String> {
    fbc_from_fbclid_checked(fbclid, click_time).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_msclkid_is_stored_as_its_bare_guid() {
        let guid = "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0";
        for raw in [
            guid.to_string(),
            format!(" {guid} "),
            format!("_uet{guid}"),
            format!("{guid}-1"),
            format!("{guid}-0"),
            format!("_uet{guid}-1"),
            "3d5a6b0c-9e2f-41a8-b7c6-d5e4f3a2b1c0".to_string(),
        ] {
            assert_eq!(normalize_msclkid(&raw).as_deref(), Some(guid), "{raw}");
        }
        for raw in [
            "msclkidvalue123",
            "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c",
            "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0-2",
            "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1cg",
        ] {
            assert_eq!(msclkid_checked(raw), Err(INVALID_MSCLKID), "{raw}");
        }
        assert_eq!(msclkid_checked("  "), Err(EMPTY));
    }

    #[test]
    fn a_well_formed_fbc_passes_as_stored() {
        let fbc =
            "fb.1.1554763741205.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk";
        assert_eq!(normalize_fbc(&format!("  {fbc} ")).as_deref(), Some(fbc));
        let with_appendix = format!("{fbc}.AQICAQMC");
        assert_eq!(normalize_fbc(&with_appendix), Some(with_appendix));
    }

    #[test]
    fn a_malformed_fbc_is_left_out() {
        for raw in [
            "IwAR2F4",
            "fb.1.155476374120.IwAR",
            "fb.12.1554763741205.IwAR",
            "fb.1.1554763741205.",
            "fb.1.1554763741205",
            "fb.x.1554763741205.IwAR",
            "fx.1.1554763741205.IwAR",
            "fb.1.1554763741205.Iw AR",
        ] {
            assert_eq!(fbc_checked(raw), Err(INVALID_FBC), "{raw}");
        }
    }

    #[test]
    fn fbc_is_built_from_fbclid_in_milliseconds_keeping_case() {
        let time = DateTime::from_timestamp_millis(1_554_763_741_205).unwrap();
        assert_eq!(
            fbc_from_fbclid(" IwAR2F4-dbP0l7 ", time).as_deref(),
            Some("fb.1.1554763741205.IwAR2F4-dbP0l7")
        );
        assert_eq!(fbc_from_fbclid_checked("Iw AR", time), Err(INVALID_FBCLID));
        assert_eq!(fbc_from_fbclid_checked(" ", time), Err(EMPTY));
    }

    #[test]
    fn client_ips_must_parse() {
        assert_eq!(
            normalize_client_ip(" 203.0.113.5 ").as_deref(),
            Some("203.0.113.5")
        );
        assert_eq!(
            normalize_client_ip("203.0.113.5/32").as_deref(),
            Some("203.0.113.5")
        );
        assert_eq!(
            normalize_client_ip("2001:db8::1").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            normalize_client_ip("2001:db8::1/128").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(client_ip_checked("203.0.113.0/24"), Err(INVALID_IP));
        assert_eq!(client_ip_checked("localhost"), Err(INVALID_IP));
    }

    #[test]
    fn click_ids_are_only_trimmed() {
        assert_eq!(
            normalize_click_id(" Cj0KCQ-abc_DEF ").as_deref(),
            Some("Cj0KCQ-abc_DEF")
        );
        assert_eq!(as_stored_checked("\t"), Err(EMPTY));
    }
}
