//! `sluice bench --chain` (and `cargo bench -p sluice-bench --bench chain`): events/s per core
//! through the function chain, in process, on one thread: canonicalisation alone (the baseline,
//! measured in the same run) next to the full chain — validation against a registry schema and
//! every built-in enricher on, geolocation included (against a database built for the run).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use sluice_event::Position;
use sluice_functions::mmdb::{self, Writer};
use sluice_functions::{
    Chain, ChainState, EnrichConfig, FunctionSpec, Functions, Outcome, Registry, ValidationConfig,
};

const UAS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];
const REFERERS: &[&str] = &[
    "https://www.google.com/search?q=running+shoes",
    "https://l.facebook.com/l.php?u=x",
    "https://shop.example.com/cart",
    "https://someblog.dev/post",
];

/// The raw records: native tracks and pages, Segment pages and Snowplow self-describing events,
/// about `event_bytes` each, from many users.
fn records(n: usize, event_bytes: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let user = format!("user-{}", i % 5000);
            let ip = format!("81.2.{}.{}", 69 + i % 4, i % 250);
            let pad = "x".repeat(event_bytes.saturating_sub(420));
            let url = format!(
                "https://shop.example.com/p/{}?utm_source=news&utm_medium=email&utm_campaign=c{}",
                i % 100,
                i % 7
            );
            // The same day and hour as `received_at` below: inside any event-time window.
            let ts = format!("2025-11-27T10:{:02}:{:02}Z", (i / 60) % 60, i % 60);
            let (protocol, payload) = match i % 5 {
                0 | 1 => (
                    "native",
                    json!({"event": "Order Completed", "userId": user, "timestamp": ts,
                        "properties": {"total": (i % 500) as f64 / 3.0, "currency": "EUR", "pad": pad},
                        "context": {"page": {"url": url, "referrer": REFERERS[i % REFERERS.len()]},
                                    "userAgent": UAS[i % UAS.len()], "traits": {"email": format!("{user}@example.com")}}}),
                ),
                2 | 3 => (
                    "segment",
                    json!({"type": "page", "name": "Product", "anonymousId": user, "timestamp": ts, "sentAt": ts,
                        "properties": {"url": url, "referrer": REFERERS[i % REFERERS.len()], "pad": pad},
                        "context": {"userAgent": UAS[i % UAS.len()], "ip": ip}}),
                ),
                _ => {
                    let pr = json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                        "data": {"schema": "iglu:com.acme/add_to_cart/jsonschema/1-0-0", "data": {"sku": format!("P-{}", i % 100), "qty": 1 + i % 3}}});
                    (
                        "snowplow",
                        json!({"e": "ue", "ue_pr": pr.to_string(), "duid": user, "url": url, "refr": REFERERS[i % REFERERS.len()],
                            "ua": UAS[i % UAS.len()], "dtm": "1764237600000", "stm": "1764237600100", "p": "web", "aid": "shop", "pad": pad}),
                    )
                }
            };
            serde_json::to_vec(&json!({
                "event_id": format!("e{i}"), "source": "web", "protocol": protocol,
                "received_at": 1_764_237_600_000_000_i64 + i as i64 * 1000, "ip": ip, "payload": payload
            }))
            .unwrap_or_default()
        })
        .collect()
}

fn schema(name: &str, props: serde_json::Value, required: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
        "self": {"vendor": "com.acme", "name": name, "format": "jsonschema", "version": "1-0-0"},
        "type": "object", "properties": props, "required": required
    }))
    .unwrap_or_default()
}

fn measure(chain: &Chain, records: &[Vec<u8>]) -> (f64, usize) {
    let mut state = ChainState::default();
    let mut good = 0;
    let start = Instant::now();
    for (i, r) in records.iter().enumerate() {
        let pos = Position {
            partition: 0,
            offset: i as u64,
        };
        if chain.process(r, pos, &mut state).is_ok() {
            good += 1;
        }
    }
    (records.len() as f64 / start.elapsed().as_secs_f64(), good)
}

/// Runs `records` through [`Chain::process_batch`] in runner batches of 2,000, with the user
/// functions deployed in `chain` now. Returns events/s and the good events written (kept in
/// `keep` when given).
fn measure_batches(
    chain: &Chain,
    records: &[Vec<u8>],
    mut keep: Option<&mut Vec<bytes::Bytes>>,
) -> (f64, usize) {
    let rt = tokio::runtime::Handle::current();
    let live = chain.live();
    let mut state = ChainState::default();
    let mut good = 0;
    let start = Instant::now();
    for (n, batch) in records.chunks(2000).enumerate() {
        let inputs: Vec<(Position, &[u8])> = batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pos = Position {
                    partition: 0,
                    offset: (n * 2000 + i) as u64,
                };
                (pos, &r[..])
            })
            .collect();
        let out = rt.block_on(chain.process_batch(&inputs, &mut state, &live));
        for o in out {
            if let Outcome::Good(g) = o {
                good += g.len();
                if let Some(keep) = keep.as_deref_mut() {
                    keep.extend(g);
                }
            }
        }
    }
    (records.len() as f64 / start.elapsed().as_secs_f64(), good)
}

/// A trivial function, in batch and in per-event mode.
const TRIVIAL_BATCH: &str = "export function process(events, ctx) {\n  for (const e of events) e.properties.seen = true;\n  return events;\n}\n";
const TRIVIAL: &str = "export function transform(event, ctx) {\n  event.properties.seen = true;\n  return event;\n}\n";
/// A realistic one: checks the required fields, derives two properties, drops test traffic
/// (the test accounts: user ids ending in 7, a tenth of the users).
const REALISTIC: &str = r#"const REQUIRED = ["event_id", "event", "source", "timestamp"];
export function transform(event, ctx) {
  for (const k of REQUIRED) {
    if (!event[k]) throw new Error(`missing ${k}`);
  }
  const who = event.user_id || event.anonymous_id;
  if (!who) throw new Error("missing user_id and anonymous_id");
  if (who.endsWith("7") || event.properties.test === true) return null;
  const p = event.properties;
  p.revenue_cents = typeof p.total === "number" ? Math.round(p.total * 100) : 0;
  const m = event.enriched || {};
  p.channel = m.mkt_source ? `${m.mkt_source}/${m.mkt_medium || "none"}` : "direct";
  return event;
}
"#;

/// What one variant measured.
struct Variant {
    label: &'static str,
    rate: f64,
    good: usize,
    /// µs/event inside the function's runtime (the call and the values in and out).
    in_js: f64,
}

/// The user-function variants: the full chain through the batch path without functions, then
/// with a trivial function in batch mode and in per-event mode, and a realistic one in
/// per-event mode (Lambda's default batch of 100); then the same per-event modules in Node.js
/// when `node` is on the PATH.
fn measure_functions(
    make_chain: &dyn Fn() -> anyhow::Result<Chain>,
    records: &[Vec<u8>],
    root: &std::path::Path,
) -> anyhow::Result<()> {
    let mut variants = Vec::new();
    let mut seen = Vec::new();
    for (label, code) in [
        ("none", None),
        ("batch", Some(TRIVIAL_BATCH)),
        ("event", Some(TRIVIAL)),
        ("realistic", Some(REALISTIC)),
    ] {
        let dir = root.join(format!("functions-{label}"));
        let functions = Arc::new(Functions::open(&dir, 1).map_err(anyhow::Error::msg)?);
        if let Some(code) = code {
            functions
                .deploy(label, code, &FunctionSpec::default())
                .map_err(anyhow::Error::msg)?;
        }
        let chain = make_chain()?.with_functions(functions.clone());
        measure_batches(&chain, &records[..records.len().min(2000)], None);
        let in_runtime = || {
            functions
                .stats()
                .first()
                .map_or(0.0, |s| s.duration_seconds)
        };
        let before = in_runtime();
        let keep = (label == "none").then_some(&mut seen);
        let (rate, good) = measure_batches(&chain, records, keep);
        variants.push(Variant {
            label,
            rate,
            good,
            in_js: (in_runtime() - before) * 1e6 / records.len() as f64,
        });
    }
    let base = variants[0].rate;
    let added = |v: &Variant| 1e6 / v.rate - 1e6 / base;
    println!("user functions on top of validate + every enricher (batches of 100):");
    for v in &variants {
        let name = match v.label {
            "none" => "no function:              ",
            "batch" => "trivial process(events):  ",
            "event" => "trivial transform(event): ",
            _ => "realistic transform:      ",
        };
        println!(
            "{name}{:>10.0} events/s per core  ({:.2} µs/event, +{:.2} µs over no function, {:.2} µs in the runtime, {} good)",
            v.rate,
            1e6 / v.rate,
            added(v),
            v.in_js,
            v.good,
        );
    }
    let realistic = &variants[3];
    println!(
        "realistic function alone:  {:>9.0} events/s per core (its added µs/event only; target 30k)",
        1e6 / added(realistic)
    );
    if variants[1..3].iter().any(|v| v.good != variants[0].good) {
        anyhow::bail!(
            "a trivial function changed how many events are good: {:?}",
            variants
                .iter()
                .map(|v| (v.label, v.good))
                .collect::<Vec<_>>()
        );
    }
    match crate::node::measure(
        root,
        &seen,
        &[("trivial", TRIVIAL), ("realistic", REALISTIC)],
    )? {
        None => println!("node is not on the PATH: no comparison with Node.js"),
        Some(node) => {
            println!(
                "Node.js {} on the same {} good events (JSON.parse, call, JSON.stringify per event, one thread):",
                node.version,
                seen.len()
            );
            for (v, n) in [(&variants[2], &node.runs[0]), (realistic, &node.runs[1])] {
                println!(
                    "  {:<10} {:>8.2} µs/event ({} kept, {} threw); Sluice adds {:.2} µs/event: {:.2}× Node",
                    n.label,
                    n.us_per_event,
                    n.kept,
                    n.failed,
                    added(v),
                    added(v) / n.us_per_event
                );
            }
            if node.runs[1].kept != realistic.good {
                anyhow::bail!(
                    "Node.js kept {} events of the realistic function, Sluice {}",
                    node.runs[1].kept,
                    realistic.good
                );
            }
        }
    }
    Ok(())
}

/// Runs the chain benchmark.
pub fn run(events: usize, event_bytes: usize, root: &std::path::Path) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::open(root.join("schemas")).map_err(anyhow::Error::msg)?);
    registry
        .push(None, &schema("order", json!({"total": {"type": "number", "minimum": 0}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}), json!(["total", "currency"])))
        .map_err(anyhow::Error::msg)?;
    registry
        .push(
            None,
            &schema(
                "add_to_cart",
                json!({"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}),
                json!(["sku", "qty"]),
            ),
        )
        .map_err(anyhow::Error::msg)?;
    let mut w = Writer::new("GeoIP2-City");
    for third in 69..73u8 {
        let net: IpAddr = format!("81.2.{third}.0").parse()?;
        w.insert(
            net,
            24,
            &mmdb::city(
                "GB",
                ("ENG", "England"),
                "London",
                "SW1A",
                (51.5, -0.09),
                "Europe/London",
            ),
        )
        .map_err(anyhow::Error::msg)?;
    }
    let db = root.join("city.mmdb");
    std::fs::write(&db, w.finish()).context("writing the geo database")?;

    let mut off = EnrichConfig::default();
    off.clock_skew.enabled = false;
    off.page.enabled = false;
    off.campaign.enabled = false;
    off.referer.enabled = false;
    off.ua.enabled = false;
    off.bots.enabled = false;
    off.session.enabled = false;
    off.fingerprint.enabled = false;
    let baseline = Chain::new(
        registry.clone(),
        ValidationConfig {
            enabled: false,
            ..Default::default()
        },
        off,
        sluice_functions::DEFAULT_MAX_EVENT_BYTES,
    )
    .map_err(anyhow::Error::msg)?;
    let mut all = EnrichConfig::all_on("bench-key-0123456789");
    all.geo.enabled = true;
    all.geo.database = Some(db);
    let mut validation = ValidationConfig::default();
    validation.bindings.insert(
        "Order Completed".into(),
        "iglu:com.acme/order/jsonschema/1-0-0".into(),
    );
    let make_full = || {
        Chain::new(
            registry.clone(),
            validation.clone(),
            all.clone(),
            sluice_functions::DEFAULT_MAX_EVENT_BYTES,
        )
        .map_err(anyhow::Error::msg)
    };
    let full = make_full()?;

    let records = records(events, event_bytes);
    // Warm up both (allocator, caches, compiled schemas).
    let warm = &records[..records.len().min(2000)];
    measure(&baseline, warm);
    measure(&full, warm);
    let (base_rate, base_good) = measure(&baseline, &records);
    let (full_rate, full_good) = measure(&full, &records);
    println!(
        "function chain, one thread, {} events of ~{} B (native, Segment, Snowplow):",
        records.len(),
        event_bytes
    );
    println!(
        "canonicalise only:        {:>10.0} events/s per core  ({:.2} µs/event, {} good)",
        base_rate,
        1e6 / base_rate,
        base_good
    );
    println!(
        "validate + every enricher: {:>9.0} events/s per core  ({:.2} µs/event, {} good)",
        full_rate,
        1e6 / full_rate,
        full_good
    );
    println!(
        "cost of validation and enrichment: {:.2} µs/event ({:.0} % of the baseline's rate)",
        1e6 / full_rate - 1e6 / base_rate,
        100.0 * full_rate / base_rate
    );
    if full_good != base_good {
        anyhow::bail!(
            "the full chain sent {} events to bad",
            base_good.saturating_sub(full_good)
        );
    }
    measure_functions(&make_full, &records, root)
}
