//! Data Manager rows to ingest requests: an event per conversion or restatement, one request per
//! product destination, and the full refunds that go to the Google Ads API instead.

use super::*;
use crate::identity::MatchKeys;

/// The product destination id of a conversion action: the id of
/// `customers/{cid}/conversionActions/{id}`, or a bare id as is.
pub fn product_destination_id(action: &str) -> Option<&str> {
    let id = action
        .rsplit_once("/conversionActions/")
        .map_or(action, |(_, id)| id)
        .trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// The row's product destination id, or the failure saying the rule lacks a usable one.
fn destination_id(d: &Delivery) -> Result<&str, Outcome> {
    d.payload
        .conversion_action
        .as_deref()
        .and_then(product_destination_id)
        .ok_or_else(|| {
            Outcome::failed(
                "google data manager needs a conversion action (rule google.conversion_action: \
                 customers/{id}/conversionActions/{id} or the bare id)",
            )
        })
}

/// `eventSource` for the rule's `action_source` (none when the rule has none).
pub fn event_source(action_source: Option<&str>) -> Option<&'static str> {
    Some(match action_source? {
        "website" => "WEB",
        "app" => "APP",
        "physical_store" => "IN_STORE",
        "phone_call" => "PHONE",
        _ => "OTHER",
    })
}

/// One `Event` for row `d`, with `value` as its conversion value (the row's own for conversions
/// and restatements, 0 for a restatement to zero), or the outcome that replaces sending it.
/// Depends on nothing but the row, so that a retry is byte for byte the first attempt.
pub fn encode_event(
    d: &Delivery,
    value: Option<serde_json::Number>,
    now: DateTime<Utc>,
) -> Result<Value, Outcome> {
    destination_id(d)?;
    let keys = &d.payload.keys;
    let mut e = Map::new();
    e.insert("transactionId".into(), json!(d.event_id));
    e.insert(
        "eventTimestamp".into(),
        json!(d.event_time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    if let Some(v) = value {
        e.insert("conversionValue".into(), Value::Number(v));
    }
    if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        e.insert("currency".into(), json!(cur.to_ascii_uppercase()));
    }
    if let Some(source) = event_source(d.action_source.as_deref()) {
        e.insert("eventSource".into(), json!(source));
    }
    let (clicked_by, ad) = ad_identifiers(keys);
    let ids = user_identifiers(keys);
    if !clicked_by && ids.is_empty() {
        return Err(Outcome::skipped(
            "no usable match key for google data manager",
        ));
    }
    let clicked = d.payload.click_time.unwrap_or(d.event_time);
    if d.kind == Kind::Conversion && clicked < now - TimeDelta::days(MAX_CLICK_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for google data manager ({MAX_CLICK_AGE_DAYS} days)"
        )));
    }
    if !ad.is_empty() {
        e.insert("adIdentifiers".into(), Value::Object(ad));
    }
    if !ids.is_empty() {
        e.insert("userData".into(), json!({ "userIdentifiers": ids }));
    }
    let consent = google_ads::ad_user_data_consent(d, ["CONSENT_GRANTED", "CONSENT_DENIED"]);
    if let Some(consent) = consent {
        e.insert("consent".into(), consent);
    }
    Ok(Value::Object(e))
}

/// A row's `adIdentifiers`: one click id (gclid, else gbraid, else wbraid) and the landing page's
/// device; `true` when there is a click id.
fn ad_identifiers(keys: &MatchKeys) -> (bool, Map<String, Value>) {
    let click = google_ads::click_id(keys);
    let mut ad = Map::new();
    if let Some((field, v)) = click {
        ad.insert(field.into(), json!(v));
    }
    let mut device = Map::new();
    if let Some(ua) = keys.get(&MatchKey::UserAgent) {
        device.insert("userAgent".into(), json!(ua));
    }
    if let Some(ip) = keys.get(&MatchKey::ClientIp) {
        device.insert("ipAddress".into(), json!(ip));
    }
    if !device.is_empty() {
        ad.insert("landingPageDeviceInfo".into(), Value::Object(device));
    }
    (click.is_some(), ad)
}

/// A row's `userIdentifiers`: email, phone, and an address when all four parts are known.
fn user_identifiers(keys: &MatchKeys) -> Vec<Value> {
    let mut ids = Vec::new();
    if let Some(v) = keys.get(&MatchKey::Email) {
        ids.push(json!({ "emailAddress": v }));
    }
    if let Some(v) = keys.get(&MatchKey::Phone) {
        ids.push(json!({ "phoneNumber": v }));
    }
    // An address is matched as a whole: all four parts or none (§2.5).
    if let (Some(given), Some(family), Some(region), Some(postal)) = (
        keys.get(&MatchKey::FirstName),
        keys.get(&MatchKey::LastName),
        keys.get(&MatchKey::Country),
        keys.get(&MatchKey::Zip),
    ) {
        ids.push(json!({"address": {
            "givenName": given, "familyName": family, "regionCode": region, "postalCode": postal,
        }}));
    }
    ids
}

impl GoogleDataManager {
    /// Encodes `batch` as of `now`: the ingest requests (one per product destination, of the last
    /// event of each transaction) and the rows to retract through the Google Ads API.
    pub(super) fn encode(&self, batch: &[Delivery], now: DateTime<Utc>) -> (Plan, Vec<usize>) {
        let mut plan = Plan {
            items: Vec::with_capacity(batch.len()),
            ..Plan::default()
        };
        let mut retractions = Vec::new();
        // The last row of each (destination id, transaction id) in the batch: earlier ones would
        // be overwritten by it at Google (restatements of one conversion, last wins).
        let mut last: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, d) in batch.iter().enumerate() {
            let encoded = match (d.kind, self.refunds) {
                (Kind::Retraction, GoogleRefunds::Skip) => Err(Outcome::skipped(CANNOT_RETRACT)),
                (Kind::Retraction, GoogleRefunds::Retract) => match destination_id(d) {
                    Ok(_) => {
                        retractions.push(i);
                        plan.items.push(Value::Null);
                        continue;
                    }
                    Err(o) => Err(o),
                },
                (Kind::Retraction, GoogleRefunds::RestateZero) => {
                    encode_event(d, Some(0.into()), now)
                }
                (Kind::Restatement, _) => match value_number(d) {
                    Ok(Some(v)) => encode_event(d, Some(v), now),
                    Ok(None) => Err(Outcome::failed(
                        "google data manager: a restatement needs a value",
                    )),
                    Err(e) => Err(Outcome::failed(format!("google data manager: {e}"))),
                },
                (Kind::Conversion, _) => match value_number(d) {
                    Ok(v) => encode_event(d, v, now),
                    Err(e) => Err(Outcome::failed(format!("google data manager: {e}"))),
                },
            };
            match encoded {
                Ok(event) => {
                    let id = destination_id(d).unwrap_or_default();
                    if let Some(earlier) = last.insert((id, d.event_id.as_str()), i) {
                        plan.not_sent.push((
                            earlier,
                            Outcome::skipped(
                                "superseded by a later restatement of the same conversion in \
                                 the same batch (Data Manager keeps the last value)",
                            ),
                        ));
                        plan.items[earlier] = Value::Null;
                    }
                    plan.items.push(event);
                }
                Err(outcome) => {
                    plan.items.push(Value::Null);
                    plan.not_sent.push((i, outcome));
                }
            }
        }
        let mut kept: Vec<(&(&str, &str), &usize)> = last.iter().collect();
        kept.sort_by_key(|(_, i)| **i);
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for ((id, _), i) in kept {
            groups.entry(id).or_default().push(*i);
        }
        plan.requests = groups
            .into_iter()
            .map(|(id, rows)| Request {
                rows,
                ..self.request(id)
            })
            .collect();
        (plan, retractions)
    }

    /// The `IngestEventsRequest` of events to product destination `id`.
    pub(super) fn request(&self, id: &str) -> Request {
        let mut destination = json!({
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": self.operating_account},
            "productDestinationId": id,
        });
        if let Some(login) = &self.login_account {
            destination["loginAccount"] = json!({"accountType": "GOOGLE_ADS", "accountId": login});
        }
        let request = Request::new(&self.ingest_url, "events")
            .with("destinations", json!([destination]))
            .with("encoding", "HEX");
        if self.validate_only {
            request.with("validateOnly", true)
        } else {
            request
        }
    }
}
