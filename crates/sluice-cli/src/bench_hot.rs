//! `sluice bench --hot`: the hot tier and the online model, measured in one run:
//! - the online model (FTRL-Proximal) next to Vowpal Wabbit on the same labeled example stream
//!   (the synthetic purchase stream of `sluice_predict::synthetic`, labeled by the engine's own
//!   delayed-label rule), both reading the same VW text file: training throughput and
//!   progressive log-loss; VW runs as its C++ driver (`python -m vowpalwabbit -d FILE`) from the
//!   `vowpalwabbit` PyPI package, found through `--python` (skipped, with the reason, if
//!   missing);
//! - hot-store writes (atomic batches of 500 profiles with positions) and point reads (p50,
//!   p99), for the embedded store and, when reachable, Redis;
//! - the hot projection alone (profile, README's counters and model, embedded store) over a
//!   `good` topic filled beforehand: the stage's own ceiling, with nothing else on the cores;
//! - through a real server (collector, functions, hot, predict): the synthetic stream posted
//!   over HTTP until the hot tier holds all of it, then `GET /v1/profiles/{id}` p50/p99.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_hot::{EmbeddedStore, HotStore, WriteBatch};
use sluice_predict::ftrl::{Ftrl, log_loss};
use sluice_predict::{ModelConfig, OnlineModel, run_offline, synthetic};
use sluice_server::{Config, Server};

const BITS: u32 = 18;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs the hot-tier benchmark.
pub async fn run(root: &Path, users: usize, python: &str) -> anyhow::Result<()> {
    println!(
        "sluice bench --hot: synthetic purchase stream, {users} users x 10 views, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    model_vs_vw(root, users, python)?;
    store_figures(
        "embedded",
        Arc::new(EmbeddedStore::open(&root.join("store"), false)?),
    )
    .await?;
    match sluice_hot::RedisStore::connect(
        "redis://127.0.0.1:6379",
        &format!("sluice-bench:{}:", std::process::id()),
    )
    .await
    {
        Ok(store) => {
            let store = Arc::new(store);
            // Reachable at connect time is not yet usable; a failed first write says so.
            if let Err(e) = store_figures("redis", store).await {
                println!("redis:                skipped ({e:#})");
            }
        }
        Err(e) => println!("redis:                skipped ({e})"),
    }
    projection_alone(root, users).await?;
    through_server(root, users).await
}

fn model_vs_vw(root: &Path, users: usize, python: &str) -> anyhow::Result<()> {
    let stream = synthetic::generate(42, users, 10);
    let config: ModelConfig = serde_json::from_value(serde_json::json!({
        "name": "bench", "outcome": "Order Completed", "bits": BITS,
        "examples": ["Product Viewed"], "l2": 0.0,
    }))?;
    let spec = config.validate()?;
    let params = spec.params;
    let mut engine = OnlineModel::new(spec);
    engine.tap_examples();
    let hot = sluice_hot::HotConfig::default().validate()?;
    let t = Instant::now();
    run_offline(&mut engine, &stream.events, &hot);
    let engine_secs = t.elapsed().as_secs_f64();
    let examples = engine.take_tapped();
    let s = engine.stats();
    println!(
        "engine (events -> profile -> features -> score -> delayed labels): {} events in {:.2} s = {:.0} events/s; {} examples, {:.1} % positive, progressive log-loss {:.4} (base rate {:.4}), AUC {:.3}",
        stream.events.len(),
        engine_secs,
        stream.events.len() as f64 / engine_secs,
        s.examples,
        100.0 * s.positives as f64 / s.examples.max(1) as f64,
        s.log_loss(),
        s.baseline_log_loss(),
        s.auc()
    );

    // The same labeled stream as VW text: `<label> |f <index>:<value> ...`.
    let mask = (1u32 << BITS) - 1;
    let path = root.join("examples.vw");
    let mut text = String::new();
    for ex in &examples {
        text.push_str(if ex.label { "1 |f" } else { "-1 |f" });
        for (i, v) in &ex.features {
            text.push_str(&format!(" {}:{v}", i & mask));
        }
        text.push('\n');
    }
    std::fs::write(&path, &text)?;

    // Ours: parse the same text, predict, learn.
    let t = Instant::now();
    let mut model = Ftrl::new(params);
    let mut loss = 0.0;
    let mut n = 0usize;
    for line in text.lines() {
        let (label, rest) = line.split_once(" |f").unwrap_or((line, ""));
        let y = label == "1";
        let x: Vec<(u32, f32)> = rest
            .split_ascii_whitespace()
            .filter_map(|f| {
                let (i, v) = f.split_once(':')?;
                Some((i.parse().ok()?, v.parse().ok()?))
            })
            .collect();
        loss += log_loss(model.learn(&x, y), y);
        n += 1;
    }
    let ours = t.elapsed().as_secs_f64();
    println!(
        "sluice FTRL:          {:>10.0} examples/s   progressive log-loss {:.4}   ({n} examples, alpha {} beta {} l1 {} l2 {}, 2^{BITS} weights, text parsing included)",
        n as f64 / ours,
        loss / n as f64,
        params.alpha,
        params.beta,
        params.l1,
        params.l2
    );
    let vw_args = |file: &Path| {
        vec![
            "-m".to_string(),
            "vowpalwabbit".into(),
            "-d".into(),
            file.display().to_string(),
            "--loss_function".into(),
            "logistic".into(),
            "-b".into(),
            BITS.to_string(),
            "--ftrl".into(),
            "--ftrl_alpha".into(),
            params.alpha.to_string(),
            "--ftrl_beta".into(),
            params.beta.to_string(),
            "--noconstant".into(),
        ]
    };
    // VW's start-up (Python, the driver) is a large part of a short run: time the stream
    // once and five times over, and take the difference, which is four passes of pure work.
    let five = root.join("examples5.vw");
    std::fs::write(&five, text.repeat(5))?;
    let run_vw = |file: &Path| -> anyhow::Result<(f64, String)> {
        let t = Instant::now();
        let out = std::process::Command::new(python)
            .args(vw_args(file))
            .output()
            .with_context(|| format!("cannot run {python}"))?;
        let secs = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "vowpalwabbit failed: {}",
            stderr.trim()
        );
        Ok((secs, stderr))
    };
    match run_vw(&path).and_then(|once| Ok((once, run_vw(&five)?.0))) {
        Ok(((once, stderr), five_secs)) => {
            let avg = stderr
                .lines()
                .find_map(|l| l.strip_prefix("average loss = "))
                .unwrap_or("?")
                .trim()
                .to_string();
            let work = (five_secs - once).max(1e-9);
            println!(
                "Vowpal Wabbit --ftrl: {:>10.0} examples/s   progressive log-loss {avg}   (C++ driver, text parsing included; 5 passes {:.2} s minus 1 pass {:.2} s)",
                4.0 * n as f64 / work,
                five_secs,
                once
            );
        }
        Err(e) => println!("Vowpal Wabbit:        skipped ({e:#})"),
    }
    Ok(())
}

async fn store_figures(name: &str, store: Arc<dyn HotStore>) -> anyhow::Result<()> {
    const KEYS: usize = 50_000;
    const BATCH: usize = 500;
    let profile = |i: usize| {
        serde_json::to_vec(&serde_json::json!({
            "id": format!("user-{i}"), "first_seen": 1, "last_seen": 2, "events_total": 12,
            "event_counts": {"Product Viewed": 10, "Order Completed": 2},
            "traits": {"plan": "pro", "email": format!("user-{i}@example.com")},
            "last_events": [{"event_id": "e1", "event": "Product Viewed", "event_type": "track", "timestamp": 1, "properties": {"sku": "abc", "price": 12.5}}],
            "session": {"id": "e1", "started": 1, "last": 2, "events": 3}, "sessions": 1,
            "predictions": {"purchase_30m": {"score": 0.12, "at": 2, "event_id": "e1"}}
        }))
        .unwrap_or_default()
    };
    let bytes = profile(0).len();
    let t = Instant::now();
    let mut position: Option<u64> = None;
    for start in (0..KEYS).step_by(BATCH) {
        let next = (start + BATCH) as u64;
        let batch = WriteBatch {
            consumer: "bench".into(),
            positions: BTreeMap::from([(0, (position, next))]),
            puts: (start..start + BATCH)
                .map(|i| (format!("p:user-{i}"), profile(i)))
                .collect(),
            ..WriteBatch::default()
        };
        store.write(Arc::new(batch)).await?;
        position = Some(next);
    }
    let write = t.elapsed().as_secs_f64();
    let mut rng = synthetic::Rng::new(7);
    let mut lat = Vec::with_capacity(20_000);
    let t = Instant::now();
    for _ in 0..20_000 {
        let key = [format!("p:user-{}", rng.next_u64() as usize % KEYS)];
        let s = Instant::now();
        let v = store.get_many(&key).await?;
        lat.push(s.elapsed());
        anyhow::ensure!(v[0].is_some(), "a written key is missing");
    }
    let read = t.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "{name:<9} store:      writes {:>8.0} values/s ({} B JSON, atomic batches of {BATCH} with positions); point reads {:>8.0}/s, p50 {:.1} us, p99 {:.1} us",
        KEYS as f64 / write,
        bytes,
        lat.len() as f64 / read,
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6
    );
    Ok(())
}

/// The hot projection alone (`sluice_predict::bench`), its runs printed.
pub(crate) async fn projection_alone(root: &Path, users: usize) -> anyhow::Result<()> {
    let runs = sluice_predict::bench::projection_alone(root, users)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    for run in runs {
        println!("{run}");
    }
    Ok(())
}

async fn through_server(root: &Path, users: usize) -> anyhow::Result<()> {
    let config = Config::from_toml(&format!(
        r#"
data_dir = "{}"
http = "127.0.0.1:0"
roles = ["collector", "runner", "hot", "predict"]
[collector]
max_backlog_events = 100000000
[[hot.counters]]
name = "views_1h"
events = ["Product Viewed"]
window = "1h"
[[predict.models]]
name = "purchase_30m"
outcome = "Order Completed"
examples = ["Product Viewed"]
"#,
        root.join("server").display()
    ))?;
    let running = Server::start(config.validate()?).await?;
    let base = format!(
        "http://{}",
        running
            .http_addr
            .context("the server has no HTTP address")?
    );
    let client = reqwest::Client::new();
    let stream = synthetic::generate(43, users, 10);
    let lines: Vec<String> = stream
        .events
        .iter()
        .map(|e| {
            serde_json::json!({
                "event_id": e.event_id, "type": e.event_type.as_str(), "event": e.event,
                "user_id": e.user_id, "timestamp": sluice_event::format_micros(e.timestamp),
                "properties": serde_json::from_str::<serde_json::Value>(e.properties.get()).unwrap_or_default(),
            })
            .to_string()
        })
        .collect();
    let t = Instant::now();
    for chunk in lines.chunks(500) {
        let resp = client
            .post(format!("{base}/v1/events"))
            .body(chunk.join("\n"))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "ingest answered {}",
            resp.status()
        );
    }
    let acked = t.elapsed().as_secs_f64();
    let metric = |text: &str| crate::bench::metric_sum(text, "sluice_hot_events_total");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let m = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        if metric(&m) >= lines.len() as f64 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the hot tier did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let visible = t.elapsed().as_secs_f64();
    println!(
        "through the server:   {} events acked in {:.2} s, all in the hot tier (profiles, counter, model) after {:.2} s = {:.0} events/s end to end",
        lines.len(),
        acked,
        visible,
        lines.len() as f64 / visible
    );
    let mut rng = synthetic::Rng::new(9);
    let mut lat = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let user = rng.next_u64() as usize % users;
        let s = Instant::now();
        let resp = client
            .get(format!("{base}/v1/profiles/user-{user}"))
            .send()
            .await?;
        let ok = resp.status().is_success();
        let _ = resp.bytes().await?;
        lat.push(s.elapsed());
        anyhow::ensure!(ok, "profile read failed");
    }
    lat.sort();
    println!(
        "GET /v1/profiles/{{id}}: p50 {:.2} ms, p99 {:.2} ms (5,000 sequential requests, one keep-alive connection)",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    freshness(&client, &base).await?;
    let mut f = std::io::stdout();
    let _ = f.flush();
    running.shutdown().await?;
    Ok(())
}

/// Ack → visible in the hot tier at steady load: a background client sends 100-event batches
/// every 50 ms (2,000 events/s), and 200 probe events, one at a time, are each timed from their
/// ack until their user's profile answers.
async fn freshness(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let background = {
        let (client, base, stop, sent) =
            (client.clone(), base.to_string(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let body: Vec<String> = (0..100)
                    .map(|i| {
                        n += 1;
                        serde_json::json!({"event": "Product Viewed", "user_id": format!("load-{}", (n + i) % 5000),
                            "properties": {"sku": format!("s{}", n % 97)}})
                        .to_string()
                    })
                    .collect();
                if let Ok(r) = client
                    .post(format!("{base}/v1/events"))
                    .body(body.join("\n"))
                    .send()
                    .await
                    && r.status().is_success()
                {
                    sent.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let started = Instant::now();
    let mut lat = Vec::with_capacity(200);
    for i in 0..200 {
        let user = format!("probe-{i}");
        let resp = client
            .post(format!("{base}/v1/events"))
            .body(serde_json::json!({"event": "Product Viewed", "user_id": user}).to_string())
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "probe ingest answered {}",
            resp.status()
        );
        let acked = Instant::now();
        let deadline = acked + Duration::from_secs(30);
        loop {
            let r = client
                .get(format!("{base}/v1/profiles/{user}"))
                .send()
                .await?;
            if r.status().is_success() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "probe {user} never became visible"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lat.push(acked.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    background.await?;
    let rate =
        sent.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "ack -> visible in the hot tier at steady load ({rate:.0} events/s in the background): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (200 probes)",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    Ok(())
}
