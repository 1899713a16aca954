//! The function chain on real inputs: validation against the registry with each policy,
//! geolocation from a MaxMind database built here, and bad rows of every family the chain
//! produces.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use sluice_event::{BadKind, BadRow, Event, Position};
use sluice_functions::mmdb::{self, Writer};
use sluice_functions::{
    Chain, ChainState, EnrichConfig, OnInvalid, Registry, SourcePolicy, ValidationConfig,
};

const POS: Position = Position {
    partition: 0,
    offset: 7,
};

fn raw(payload: Value, ip: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": "e1", "source": "web", "protocol": "native", "received_at": 1_800_000_000_000_000_i64,
        "ip": ip, "payload": payload
    }))
    .unwrap()
}

fn snowplow(payload: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": "sp1", "source": "web", "protocol": "snowplow", "received_at": 1_800_000_000_000_000_i64,
        "payload": payload
    }))
    .unwrap()
}

fn chain(
    dir: &std::path::Path,
    validation: ValidationConfig,
    enrich: EnrichConfig,
) -> (Arc<Registry>, Chain) {
    let registry = Arc::new(Registry::open(dir.join("schemas")).unwrap());
    let chain = Chain::new(registry.clone(), validation, enrich, 64 * 1024).unwrap();
    (registry, chain)
}

fn good(r: Result<bytes::Bytes, bytes::Bytes>) -> Event {
    let b = r.unwrap_or_else(|b| panic!("went bad: {}", String::from_utf8_lossy(&b)));
    serde_json::from_slice(&b).unwrap()
}

fn bad(r: Result<bytes::Bytes, bytes::Bytes>) -> BadRow {
    let b = r.expect_err("should go bad");
    serde_json::from_slice(&b).unwrap()
}

fn order_schema(version: &str, extra: Value) -> Vec<u8> {
    let mut props = json!({"total": {"type": "number", "minimum": 0}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}});
    if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    serde_json::to_vec(&json!({
        "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
        "self": {"vendor": "com.acme", "name": "order", "format": "jsonschema", "version": version},
        "type": "object", "properties": props, "required": ["total", "currency"], "additionalProperties": false
    }))
    .unwrap()
}

#[test]
fn bound_events_are_policed_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = ValidationConfig::default();
    v.bindings.insert(
        "Order Completed".into(),
        "iglu:com.acme/order/jsonschema/1-0-0".into(),
    );
    v.sources.insert(
        "web".into(),
        SourcePolicy {
            on_invalid: Some(OnInvalid::Flag),
            ..Default::default()
        },
    );
    let (registry, c) = chain(dir.path(), v.clone(), EnrichConfig::default());
    registry
        .push(None, &order_schema("1-0-0", json!({})))
        .unwrap();
    let mut st = ChainState::default();
    let order = |props: Value| {
        raw(
            json!({"event": "Order Completed", "userId": "u1", "properties": props}),
            "127.0.0.1",
        )
    };

    // Valid: passes, with the schema named.
    let e = good(c.process(&order(json!({"total": 5, "currency": "EUR"})), POS, &mut st));
    assert_eq!(
        e.enriched.schema.as_deref(),
        Some("iglu:com.acme/order/jsonschema/1-0-0")
    );
    assert_eq!(e.enriched.validation_errors, None);

    // Invalid, source "web" flags: passes with every violation listed.
    let e = good(c.process(
        &order(json!({"total": -1, "currency": "euro", "x": 1})),
        POS,
        &mut st,
    ));
    let errors: Vec<Value> =
        serde_json::from_str(e.enriched.validation_errors.as_deref().unwrap()).unwrap();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().any(|e| e["path"] == "properties/total"),
        "{errors:?}"
    );

    // Same event from another source: the default policy sends it to bad.
    let mut other =
        serde_json::from_slice::<Value>(&order(json!({"total": -1, "currency": "EUR"}))).unwrap();
    other["source"] = json!("app");
    let row = bad(c.process(&serde_json::to_vec(&other).unwrap(), POS, &mut st));
    assert_eq!(row.kind, BadKind::SchemaViolation);
    assert_eq!(row.function, "validate");
    assert!(row.reason.contains("minimum"), "{}", row.reason);
    // The bad row carries the whole raw record, for replay.
    let payload: Value = serde_json::from_str(row.payload.get()).unwrap();
    assert_eq!(payload["source"], "app");
    assert_eq!(payload["payload"]["properties"]["total"], -1);

    // Events of other names are not checked.
    good(c.process(
        &raw(
            json!({"event": "Viewed", "properties": {"total": "x"}}),
            "127.0.0.1",
        ),
        POS,
        &mut st,
    ));
}

#[test]
fn snowplow_self_describing_events_use_the_schema_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, c) = chain(
        dir.path(),
        ValidationConfig::default(),
        EnrichConfig::default(),
    );
    registry
        .push(None, &order_schema("1-0-0", json!({})))
        .unwrap();
    registry
        .push(
            None,
            &order_schema("1-0-1", json!({"coupon": {"type": "string"}})),
        )
        .unwrap();
    let mut st = ChainState::default();
    let ue = |version: &str, data: Value| {
        let pr = json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
            "data": {"schema": format!("iglu:com.acme/order/jsonschema/{version}"), "data": data}});
        snowplow(json!({"e": "ue", "ue_pr": pr.to_string(), "duid": "d1"}))
    };
    good(c.process(
        &ue("1-0-0", json!({"total": 1, "currency": "USD"})),
        POS,
        &mut st,
    ));
    // A new addition adds a field: valid there, not under 1-0-0.
    let with_coupon = json!({"total": 1, "currency": "USD", "coupon": "X"});
    good(c.process(&ue("1-0-1", with_coupon.clone()), POS, &mut st));
    let row = bad(c.process(&ue("1-0-0", with_coupon), POS, &mut st));
    assert_eq!(row.kind, BadKind::SchemaViolation);
    // An unknown schema passes by default...
    good(c.process(&ue("9-0-0", json!({})), POS, &mut st));
    // ...and is a violation when the policy says so.
    let v = ValidationConfig {
        on_unknown_schema: sluice_functions::OnUnknown::Bad,
        ..Default::default()
    };
    let (_, strict) = chain(dir.path(), v, EnrichConfig::default());
    let row = bad(strict.process(&ue("9-0-0", json!({})), POS, &mut st));
    assert!(row.reason.contains("not found"), "{}", row.reason);
    // Entities are checked too.
    let co = json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
        "data": [{"schema": "iglu:com.acme/order/jsonschema/1-0-0", "data": {"total": "NaN"}}]});
    let row = bad(c.process(
        &snowplow(json!({"e": "pv", "url": "https://a.example/", "co": co.to_string()})),
        POS,
        &mut st,
    ));
    assert!(
        row.reason.contains("context.entities[0].data"),
        "{}",
        row.reason
    );
}

fn geo_db(dir: &std::path::Path) -> std::path::PathBuf {
    let mut w = Writer::new("GeoIP2-City");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    w.insert(
        ip("81.2.69.0"),
        24,
        &mmdb::city(
            "GB",
            ("ENG", "England"),
            "London",
            "SW1A",
            (51.5142, -0.0931),
            "Europe/London",
        ),
    )
    .unwrap();
    w.insert(
        ip("89.160.20.0"),
        24,
        &mmdb::city(
            "SE",
            ("E", "Östergötland County"),
            "Linköping",
            "581 00",
            (58.4167, 15.6167),
            "Europe/Stockholm",
        ),
    )
    .unwrap();
    w.insert(
        ip("2001:db8::"),
        32,
        &mmdb::city(
            "DE",
            ("BE", "Land Berlin"),
            "Berlin",
            "10115",
            (52.52, 13.405),
            "Europe/Berlin",
        ),
    )
    .unwrap();
    // A damaged record: latitude is text.
    w.insert(
        ip("198.51.100.0"),
        24,
        &mmdb::map([("location", mmdb::map([("latitude", mmdb::s("north"))]))]),
    )
    .unwrap();
    let err = w.insert(ip("10.0.0.0"), 33, &mmdb::s("x")).unwrap_err();
    assert!(err.contains("is not a network"), "{err}");
    let path = dir.join("city.mmdb");
    std::fs::write(&path, w.finish()).unwrap();
    path
}

#[test]
fn ip_addresses_geolocate_from_a_maxmind_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut enrich = EnrichConfig::default();
    enrich.geo.enabled = true;
    enrich.geo.database = Some(geo_db(dir.path()));
    enrich.ip_anonymization.enabled = true;
    let (_, c) = chain(dir.path(), ValidationConfig::default(), enrich);
    let mut st = ChainState::default();
    type Row<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let table: &[Row] = &[
        // ip, country, region, city, anonymised ip
        (
            "81.2.69.142",
            Some("GB"),
            Some("ENG"),
            Some("London"),
            Some("81.2.69.0"),
        ),
        (
            "89.160.20.112",
            Some("SE"),
            Some("E"),
            Some("Linköping"),
            Some("89.160.20.0"),
        ),
        (
            "2001:db8:1234::7",
            Some("DE"),
            Some("BE"),
            Some("Berlin"),
            Some("2001:db8:1234::"),
        ),
        (
            "::ffff:81.2.69.1",
            Some("GB"),
            Some("ENG"),
            Some("London"),
            Some("81.2.69.0"),
        ),
        ("10.1.2.3", None, None, None, Some("10.1.2.0")),
        ("8.8.8.8", None, None, None, Some("8.8.8.0")),
    ];
    for (ip, country, region, city, masked) in table {
        let e = good(c.process(&raw(json!({"event": "x"}), ip), POS, &mut st));
        assert_eq!(e.enriched.geo_country.as_deref(), *country, "{ip}");
        assert_eq!(e.enriched.geo_region.as_deref(), *region, "{ip}");
        assert_eq!(e.enriched.geo_city.as_deref(), *city, "{ip}");
        assert_eq!(e.enriched.ip.as_deref(), *masked, "{ip}");
        let ctx: Value = serde_json::from_str(e.context.get()).unwrap();
        assert_eq!(
            ctx["ip"].as_str(),
            *masked,
            "the context keeps only the masked address"
        );
        if country.is_some() {
            assert!(e.enriched.geo_latitude.is_some() && e.enriched.geo_timezone.is_some());
        }
    }
    let e = good(c.process(
        &raw(
            json!({"event": "x", "context": {"ip": "81.2.69.9"}}),
            "10.0.0.1",
        ),
        POS,
        &mut st,
    ));
    assert_eq!(
        e.enriched.geo_city.as_deref(),
        Some("London"),
        "the tracker's ip wins over the peer's"
    );
    // A record that does not decode is an enrichment failure naming the enricher.
    let row = bad(c.process(&raw(json!({"event": "x"}), "198.51.100.9"), POS, &mut st));
    assert_eq!(row.kind, BadKind::EnrichmentFailure);
    assert_eq!(row.function, "enrich:geo");
}

#[test]
fn an_event_over_the_size_limit_after_enrichment_is_a_size_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let (_, c) = chain(
        dir.path(),
        ValidationConfig::default(),
        EnrichConfig::default(),
    );
    let mut st = ChainState::default();
    let big = "x".repeat(70 * 1024);
    let row = bad(c.process(
        &raw(
            json!({"event": "x", "properties": {"blob": big}}),
            "127.0.0.1",
        ),
        POS,
        &mut st,
    ));
    assert_eq!(row.kind, BadKind::Size);
    assert_eq!(row.function, "size");
    let row = bad(c.process(b"{not json", POS, &mut st));
    assert_eq!(row.kind, BadKind::Parse);
}

/// Issue 16: an event time far from when the event was received becomes an `event_time` bad
/// row naming both times and the bound, instead of a lake partition of its own; inside the
/// window (default 5 years back, 1 day ahead; configurable) it is good.
#[test]
fn event_times_outside_the_window_are_event_time_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut enrich = EnrichConfig::default();
    // Off, so that a time ahead of the receipt is the device's own, not clamped to it.
    enrich.clock_skew.enabled = false;
    let (_, c) = chain(dir.path(), ValidationConfig::default(), enrich);
    let mut st = ChainState::default();
    let at = |ts: &str| raw(json!({"event": "x", "timestamp": ts}), "127.0.0.1");
    // Received 2027-01-15T08:00:00Z.
    let good_times = ["2022-02-01T00:00:00Z", "2027-01-16T07:00:00Z"];
    for ts in good_times {
        let e = good(c.process(&at(ts), POS, &mut st));
        assert_eq!(
            e.timestamp,
            sluice_event::parse_timestamp(&json!(ts)).unwrap()
        );
    }
    let bad_times = [
        ("2021-12-01T00:00:00Z", "event_time_window.past"),
        ("2027-01-17T00:00:00Z", "event_time_window.future"),
        // A broken clock's correction is refused, so the device's 1900 is kept: still bad.
        ("1900-01-02T00:00:00Z", "event_time_window.past"),
    ];
    for (ts, bound) in bad_times {
        let row = bad(c.process(&at(ts), POS, &mut st));
        assert_eq!(row.kind, BadKind::EventTime, "{ts}");
        assert_eq!(row.function, "event_time");
        assert!(row.reason.contains(bound), "{}", row.reason);
        assert!(row.reason.contains(&ts[..10]), "{}", row.reason);
        assert!(row.reason.contains("2027-01-15T08:00:00"), "{}", row.reason);
    }
    // A configured window applies to Snowplow's times too.
    let narrow = sluice_functions::EventTimeWindow {
        past: std::time::Duration::from_secs(3600),
        future: std::time::Duration::from_secs(60),
    };
    let c = c.with_time_window(narrow);
    let hour_ago = (1_800_000_000_000_i64 - 2 * 3_600_000).to_string();
    let row = bad(c.process(
        &snowplow(json!({"e": "pv", "p": "web", "tv": "js-3", "dtm": hour_ago})),
        POS,
        &mut st,
    ));
    assert_eq!(row.kind, BadKind::EventTime);
    let now = (1_800_000_000_000_i64 - 60_000).to_string();
    good(c.process(
        &snowplow(json!({"e": "pv", "p": "web", "tv": "js-3", "dtm": now})),
        POS,
        &mut st,
    ));
}

/// Without user functions a batch goes through the chain one event at a time. What comes out
/// must be what the chain makes of the same records one by one, and what the stages make of
/// them in order: a user's session carried from event to event (a new one after a gap of more
/// than 30 minutes), validation's bad rows for invalid events, a parse bad row for an unreadable
/// record.
#[tokio::test]
async fn a_batch_without_functions_comes_out_as_its_records_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = ValidationConfig::default();
    v.bindings.insert(
        "Order Completed".into(),
        "iglu:com.acme/order/jsonschema/1-0-0".into(),
    );
    let (registry, c) = chain(dir.path(), v, EnrichConfig::all_on("pii-key-0123456789"));
    registry
        .push(None, &order_schema("1-0-0", json!({})))
        .unwrap();
    // Four users in turn, one event every 7 minutes (28 between a user's events), 45 more
    // minutes every tenth record: each user's next event then opens a session. All of it the
    // day before the records were received (a time ahead of the receipt would be clamped to it).
    let minute = |i: usize| i * 7 + 45 * (i / 10);
    let records: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            if i == 13 {
                return b"{not json".to_vec();
            }
            let m = minute(i);
            let ts = format!("2027-01-14T{:02}:{:02}:00Z", m / 60, m % 60);
            let currency = if i % 11 == 4 { "eur" } else { "EUR" };
            let payload = json!({"event": "Order Completed", "userId": format!("u{}", i % 4),
                "timestamp": ts, "properties": {"total": i, "currency": currency},
                "context": {"page": {"url": "https://shop.example.com/?utm_source=news"},
                            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"}});
            serde_json::to_vec(&json!({
                "event_id": format!("e{i}"), "source": "web", "protocol": "native",
                "received_at": 1_800_000_000_000_000_i64, "ip": "81.2.69.1", "payload": payload
            }))
            .unwrap()
        })
        .collect();
    let at = |i: usize| Position {
        partition: 0,
        offset: i as u64,
    };
    let mut st = ChainState::default();
    let one_by_one: Vec<_> = (0..records.len())
        .map(|i| c.process(&records[i], at(i), &mut st))
        .collect();
    let inputs: Vec<(Position, &[u8])> = (0..records.len())
        .map(|i| (at(i), &records[i][..]))
        .collect();
    let mut st = ChainState::default();
    let batch = c.process_batch(&inputs, &mut st, &c.live()).await;
    assert_eq!(batch.len(), records.len());
    // Per user: the minute of their last good event and their session index.
    let mut sessions: std::collections::HashMap<String, (usize, i32)> = Default::default();
    for (i, (single, batched)) in one_by_one.into_iter().zip(batch).enumerate() {
        let invalid = i % 11 == 4 || i == 13;
        match (single, batched) {
            (Ok(g), sluice_functions::Outcome::Good(gs)) if !invalid => {
                assert_eq!(gs, std::slice::from_ref(&g), "record {i}");
                let e = good(Ok(g));
                let user = e.user_id.clone().unwrap();
                let index = match sessions.get(&user) {
                    Some((last, index)) if minute(i) - last > 30 => index + 1,
                    Some((_, index)) => *index,
                    None => 1,
                };
                assert_eq!(e.enriched.session_index, Some(index), "record {i}");
                sessions.insert(user, (minute(i), index));
            }
            (Err(b), sluice_functions::Outcome::Bad(bb)) if invalid => {
                let (b, bb) = (bad(Err(b)), bad(Err(bb)));
                let kind = if i == 13 {
                    BadKind::Parse
                } else {
                    BadKind::SchemaViolation
                };
                assert_eq!((b.kind, bb.kind), (kind, kind), "record {i}");
                assert_eq!((&b.reason, &b.function), (&bb.reason, &bb.function));
                assert_eq!((&b.event_id, b.raw), (&bb.event_id, bb.raw), "record {i}");
            }
            (single, batched) => {
                panic!("record {i}: {single:?} one by one, {batched:?} in a batch")
            }
        }
    }
    let opened: i32 = sessions.values().map(|(_, index)| index).sum();
    assert!(opened > 2 * 4, "the gaps opened sessions: {opened}");
}
