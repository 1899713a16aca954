//! `sluice bench --protocols`: durable intake through each protocol's endpoint, in one run.
//!
//! Every protocol carries the same logical events (same count, ids, users and padding), each
//! against a fresh collector-only server, so the figures differ only by what each endpoint
//! costs: decoding its wire format, the checks, and the durable append. The HTTP no-op of the
//! same run is printed beside them as the ceiling.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use sluice_server::{Config, Server};

use crate::bench::{BenchArgs, Load, drive};

/// One logical event of the benchmark.
struct Ev {
    id: String,
    user: String,
    path: String,
    value: usize,
    ms: i64,
}

fn events(args: &BenchArgs, tag: &str) -> Vec<Ev> {
    let run = std::process::id();
    (0..args.events)
        .map(|seq| Ev {
            id: format!("{run:08x}-{tag:0>4.4}-4000-8000-{seq:012x}"),
            user: format!("user-{}", seq % 10_000),
            path: format!("/products/{}", seq % 997),
            value: seq % 1000,
            ms: 1_795_000_000_000 + seq as i64,
        })
        .collect()
}

fn pad(args: &BenchArgs) -> String {
    "x".repeat(args.event_bytes.saturating_sub(260).max(1))
}

fn native_event(e: &Ev, pad: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "track", "event": "Page Viewed", "messageId": e.id, "userId": e.user,
        "timestamp": chrono::DateTime::from_timestamp_millis(e.ms).map(|t| t.to_rfc3339()),
        "properties": {"path": e.path, "referrer": "https://example.com/", "value": e.value, "pad": pad},
        "context": {"library": {"name": "bench", "version": "1"}},
    })
}

fn chunks(all: &[Ev], per: usize) -> impl Iterator<Item = &[Ev]> {
    all.chunks(per.max(1))
}

/// The protocols measured, in order (native first: the others are compared with it).
const PROTOCOLS: [&str; 5] = ["native", "segment", "snowplow", "kinesis", "firehose"];

/// One protocol's load and bodies.
fn load(name: &str, args: &BenchArgs, base: &str) -> anyhow::Result<(Load, Vec<Bytes>)> {
    let pad = pad(args);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(match name {
        "native" => native(args, base, &pad),
        "segment" => segment(args, base, &pad),
        "snowplow" => snowplow(args, base, &pad),
        "kinesis" => kinesis(args, base, &pad, &b64),
        "firehose" => firehose(args, base, &pad, &b64),
        other => anyhow::bail!("unknown protocol {other}"),
    })
}

fn native(args: &BenchArgs, base: &str, pad: &str) -> (Load, Vec<Bytes>) {
    let evs = events(args, "nat");
    let bodies = chunks(&evs, args.batch)
        .map(|c| {
            let mut body = Vec::new();
            for e in c {
                body.extend_from_slice(native_event(e, pad).to_string().as_bytes());
                body.push(b'\n');
            }
            Bytes::from(body)
        })
        .collect();
    (Load::plain(format!("{base}/v1/events"), args.batch), bodies)
}

fn segment(args: &BenchArgs, base: &str, pad: &str) -> (Load, Vec<Bytes>) {
    // Segment caps a request at 500 KB and 2,500 messages.
    let per = args
        .batch
        .min(2_500)
        .min((450 << 10) / args.event_bytes.max(1));
    let evs = events(args, "seg");
    let bodies = chunks(&evs, per)
        .map(|c| {
            let batch: Vec<_> = c.iter().map(|e| native_event(e, pad)).collect();
            Bytes::from(
                serde_json::json!({"batch": batch, "sentAt": "2026-11-27T10:00:00Z"}).to_string(),
            )
        })
        .collect();
    (Load::plain(format!("{base}/v1/batch"), per), bodies)
}

fn snowplow(args: &BenchArgs, base: &str, pad: &str) -> (Load, Vec<Bytes>) {
    let evs = events(args, "snow");
    let bodies = chunks(&evs, args.batch)
        .map(|c| {
            let data: Vec<_> = c
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "e": "se", "eid": e.id, "tv": "bench-1", "aid": "bench", "p": "srv",
                        "uid": e.user, "dtm": e.ms.to_string(), "stm": e.ms.to_string(),
                        "se_ca": "bench", "se_ac": "Page Viewed", "se_la": e.path,
                        "se_pr": pad, "se_va": e.value.to_string(),
                    })
                })
                .collect();
            Bytes::from(
                serde_json::json!({
                    "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
                    "data": data,
                })
                .to_string(),
            )
        })
        .collect();
    (
        Load::plain(
            format!("{base}/com.snowplowanalytics.snowplow/tp2"),
            args.batch,
        ),
        bodies,
    )
}

/// A load of AWS JSON 1.1 batch calls (Kinesis `PutRecords`, Firehose `PutRecordBatch`):
/// `record` makes one entry of the `Records` array, `stream` is the body's stream member.
fn aws_load(
    args: &BenchArgs,
    base: &str,
    (tag, target, stream, ok): (&str, &str, &str, &'static str),
    record: impl Fn(&Ev) -> serde_json::Value,
) -> (Load, Vec<Bytes>) {
    // Kinesis and Firehose take at most 500 records per call.
    let per = args.batch.min(500);
    let evs = events(args, tag);
    let bodies = chunks(&evs, per)
        .map(|c| {
            let records: Vec<_> = c.iter().map(&record).collect();
            let mut body = serde_json::json!({"Records": records});
            body[stream] = serde_json::Value::from("raw");
            Bytes::from(body.to_string())
        })
        .collect();
    (
        Load {
            url: format!("{base}/"),
            headers: vec![
                ("x-amz-target", target.into()),
                ("content-type", "application/x-amz-json-1.1".into()),
            ],
            events_per_body: per,
            must_contain: Some(ok),
        },
        bodies,
    )
}

fn kinesis(
    args: &BenchArgs,
    base: &str,
    pad: &str,
    b64: &base64::engine::GeneralPurpose,
) -> (Load, Vec<Bytes>) {
    let call = (
        "kin",
        "Kinesis_20131202.PutRecords",
        "StreamName",
        "\"FailedRecordCount\":0",
    );
    aws_load(args, base, call, |e| {
        serde_json::json!({
            "Data": b64.encode(native_event(e, pad).to_string()),
            "PartitionKey": e.user,
        })
    })
}

fn firehose(
    args: &BenchArgs,
    base: &str,
    pad: &str,
    b64: &base64::engine::GeneralPurpose,
) -> (Load, Vec<Bytes>) {
    let call = (
        "fire",
        "Firehose_20150804.PutRecordBatch",
        "DeliveryStreamName",
        "\"FailedPutCount\":0",
    );
    aws_load(
        args,
        base,
        call,
        |e| serde_json::json!({"Data": b64.encode(format!("{}\n", native_event(e, pad)))}),
    )
}

/// Runs every protocol's load against its own fresh collector-only server.
pub async fn run(args: &BenchArgs, root: &Path, noop_events_per_sec: f64) -> anyhow::Result<()> {
    let mut native = None;
    for (i, name) in PROTOCOLS.into_iter().enumerate() {
        let mut config = Config {
            data_dir: root.join(format!("proto-{i}")),
            roles: vec!["collector".into()],
            ..Config::default()
        };
        config.http = "127.0.0.1:0".parse()?;
        config.pg = "127.0.0.1:0".parse()?;
        let running = Server::start(config.validate()?).await?;
        let addr = running.http_addr.context("server has no http address")?;
        // Only this protocol's bodies are held at a time: they are large.
        let (load, bodies) = load(name, args, &format!("http://{addr}"))?;
        let result = drive(&load, Arc::new(bodies), args.connections)
            .await
            .with_context(|| format!("{name} load failed"))?;
        running.shutdown().await?;
        let base = *native.get_or_insert(result.events_per_sec);
        println!(
            "{name:<9} intake:      {:>10.0} events/s   (p50 {:.1} ms, p99 {:.1} ms; {:.0}% of native, {:.0}% of no-op)",
            result.events_per_sec,
            result.p50_ms,
            result.p99_ms,
            100.0 * result.events_per_sec / base.max(1.0),
            100.0 * result.events_per_sec / noop_events_per_sec.max(1.0),
        );
    }
    Ok(())
}
