//! `sluice bench --sustained`: what one node keeps up with, not what it accepts in a burst.
//!
//! A default server with every role on, README's example counters and model (and, with
//! `--function`, a deployed user function) is warmed up at the first rate, then offered a ramp
//! of rates, each for `--step-secs`, by an open-loop client: requests leave on a fixed schedule
//! whatever the answers, and an ack's latency counts from the moment its request was due, so a
//! slow server cannot hide its queue (no coordinated omission). Twice a second the client reads
//! each stage's lag from `/health` and the process's resident memory.
//!
//! A rate is *held* when every request was acked, the acks kept pace with the offer, every
//! stage's lag stayed bounded (its troughs, as sinks deliver in flushes, under
//! [`LAG_BOUND_SECS`] of traffic at the end and not rising), and memory stayed flat. The ramp
//! stops at the first rate not held and names the stage that limits it.
//!
//! Some state fills for longer than a step by design, each part to a ceiling the server
//! reports with its size in `/metrics` ([`BOUNDED`]): the dedupe index (up to
//! `dedupe_max_entries`), the model's pending examples (up to its horizon or `max_pending`)
//! and the embedded hot store's memtables and cache. Memory is *flat* when resident memory
//! less those parts does not grow; the parts and their ceilings are printed with each step,
//! so the figure to size a machine by is the flat remainder plus the ceilings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_server::{Config, Server};

/// A held rate leaves every stage less than this many seconds of traffic behind.
const LAG_BOUND_SECS: f64 = 5.0;
/// Over a held step's second half, no stage's lag grows faster than this share of the rate.
const LAG_GROWTH_SHARE: f64 = 0.05;
/// A held step ends with resident memory at most this much above its middle (share, bytes).
const RSS_GROWTH: (f64, u64) = (0.10, 64 << 20);
/// Acks must reach this share of the offered rate.
const ACK_SHARE: f64 = 0.95;
/// The unjudged run at the first rate before the ramp (at most one step).
const WARM_UP: Duration = Duration::from_secs(20);
/// How often each stage's lag and the memory are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Requests in flight at most; beyond it the schedule slips, which the ack rate shows.
const MAX_IN_FLIGHT: usize = 512;

/// What the ramp offers.
pub(crate) struct Ramp {
    pub(crate) rates: Vec<u64>,
    pub(crate) step: Duration,
    pub(crate) batch: usize,
    pub(crate) event_bytes: usize,
    pub(crate) function: Option<PathBuf>,
}

/// The bounded parts of memory: each part's gauge of current bytes and of its ceiling, as
/// the server exports them (a gauge with labels is summed over them).
const BOUNDED: [(&str, &str, &str); 4] = [
    (
        "dedupe index",
        "sluice_collector_dedupe_bytes",
        "sluice_collector_dedupe_ceiling_bytes",
    ),
    (
        "pending examples",
        "sluice_predict_pending_bytes",
        "sluice_predict_pending_ceiling_bytes",
    ),
    (
        "hot store",
        "sluice_hot_store_memory_bytes",
        "sluice_hot_store_memory_ceiling_bytes",
    ),
    (
        "hot cache",
        "sluice_hot_cache_bytes",
        "sluice_hot_cache_ceiling_bytes",
    ),
];

/// One second's reading: each stage's lag, the process's resident memory and the bounded
/// parts of it (name → bytes now and at their ceiling).
#[derive(Clone, Debug, Default)]
struct Sample {
    at: f64,
    lags: BTreeMap<String, u64>,
    rss: u64,
    bounded: BTreeMap<&'static str, (u64, u64)>,
}

impl Sample {
    /// Resident memory less the bounded parts: what must stay flat.
    fn unbounded(&self) -> u64 {
        let bounded: u64 = self.bounded.values().map(|(now, _)| now).sum();
        self.rss.saturating_sub(bounded)
    }
}

/// What one step measured.
#[derive(Debug)]
struct Step {
    rate: u64,
    acked_per_sec: f64,
    refused: usize,
    refusal: Option<String>,
    p50_ms: f64,
    p99_ms: f64,
    samples: Vec<Sample>,
    secs: f64,
}

/// Runs the ramp against a fresh server under `root` and prints one line per step.
pub(crate) async fn run(ramp: &Ramp, root: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!ramp.rates.is_empty(), "--rates needs at least one rate");
    let mut config = Config::from_toml(sluice_predict::bench::HOT_AND_MODEL)?;
    config.data_dir = root.join("data");
    config.http = "127.0.0.1:0".parse()?;
    config.pg = "127.0.0.1:0".parse()?;
    let running = Server::start(config.validate()?).await?;
    let addr = running.http_addr.context("server has no http address")?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()?;
    if let Some(path) = &ramp.function {
        deploy(&client, &base, path).await?;
    }
    println!(
        "sluice bench --sustained: steps of {} s, batches up to {}, ~{} B events, {} cores, function: {}",
        ramp.step.as_secs(),
        ramp.batch,
        ramp.event_bytes,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        ramp.function
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    let result = climb(ramp, &client, &base).await;
    // After a rate that was not held the backlog may outlast the drain deadline; that is the
    // finding already printed, not a failure of the benchmark.
    if let Err(e) = running.shutdown().await {
        println!("shutdown: {e}");
    }
    result
}

/// Offers each rate in turn until one is not held; prints the verdict.
async fn climb(ramp: &Ramp, client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    // First use creates tables and columns and fills caches: not what a running node pays.
    let warm_up = ramp.step.min(WARM_UP);
    let first = offer(client, base, ("warm", ramp.rates[0]), ramp, warm_up).await?;
    println!(
        "warm-up at {} events/s for {:.0} s: acked {:.0}/s",
        first.rate, first.secs, first.acked_per_sec
    );
    let mut best = None;
    for &rate in &ramp.rates {
        drain(client, base).await?;
        let step = offer(client, base, ("step", rate), ramp, ramp.step).await?;
        let verdict = judge(&step);
        print_step(&step, &verdict);
        match verdict {
            Ok(()) => best = Some(rate),
            Err(limit) => {
                print_summary(best, ramp.step, Some((rate, &limit)));
                return Ok(());
            }
        }
    }
    print_summary(best, ramp.step, None);
    Ok(())
}

fn print_summary(best: Option<u64>, step: Duration, failed: Option<(u64, &str)>) {
    let held = best.map_or("none of the rates".to_string(), |r| format!("{r} events/s"));
    match failed {
        Some((rate, limit)) => println!(
            "sustained: highest rate held for {} s: {held}; at {rate} events/s the limit is {limit}",
            step.as_secs()
        ),
        None => println!(
            "sustained: highest rate held for {} s: {held} (every rate offered was held)",
            step.as_secs()
        ),
    }
}

/// Deploys the user function in `path` after validation, as `bench`.
async fn deploy(client: &reqwest::Client, base: &str, path: &Path) -> anyhow::Result<()> {
    let code = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read function {}", path.display()))?;
    let resp = client
        .put(format!("{base}/v1/functions/bench"))
        .header("content-type", "application/javascript")
        .body(code)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(
        status.is_success(),
        "deploying {}: {status}: {text}",
        path.display()
    );
    Ok(())
}

/// Waits until every stage has caught up, so that each step starts from an empty pipeline.
async fn drain(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let lags = lags(client, base).await?;
        if lags.values().all(|lag| *lag == 0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline did not catch up within 900 s: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each consumer stage's lag, from `/health`.
pub(crate) async fn lags(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let health: serde_json::Value = client
        .get(format!("{base}/health"))
        .send()
        .await?
        .json()
        .await?;
    let stages = health["stages"]
        .as_object()
        .context("/health has no stages")?;
    Ok(stages
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s["lag"].as_u64()?)))
        .collect())
}

/// The bounded parts of memory, from `/metrics` (see [`BOUNDED`]).
async fn bounded(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<BTreeMap<&'static str, (u64, u64)>> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let sum = |name: &str| crate::bench::metric_sum(&text, name) as u64;
    Ok(BOUNDED
        .iter()
        .map(|(part, now, ceiling)| (*part, (sum(now), sum(ceiling))))
        .collect())
}

/// The process's resident memory in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Outcomes of the step's requests: latency from when each was due, and refusals.
#[derive(Default)]
struct Acks {
    latencies: Vec<Duration>,
    events: usize,
    refused: usize,
    refusal: Option<String>,
}

/// Offers `rate` events/s for the step's duration and samples the stages every second. Event
/// ids carry `phase` and the rate, so no two offers send the same id.
async fn offer(
    client: &reqwest::Client,
    base: &str,
    (phase, rate): (&str, u64),
    ramp: &Ramp,
    duration: Duration,
) -> anyhow::Result<Step> {
    let batch = ramp.batch.min((rate as usize / 20).max(1));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(batch as f64 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sampler = tokio::time::interval(SAMPLE_EVERY);
    let mut samples = Vec::new();
    let mut requests = tokio::task::JoinSet::new();
    let mut seq = 0usize;
    loop {
        tokio::select! {
            due = ticker.tick() => {
                // Ticks missed while every slot was taken come in a burst; none past the end.
                if due >= end || tokio::time::Instant::now() >= end { break; }
                let slot = slots.clone().acquire_owned().await?;
                let body = body(&format!("{phase}-{rate}"), seq, batch, ramp.event_bytes);
                seq += batch;
                let (client, url, acks) = (client.clone(), format!("{base}/v1/events"), acks.clone());
                requests.spawn(async move {
                    let outcome = client.post(url).body(body).send().await;
                    record(&acks, outcome, due.into_std(), batch).await;
                    drop(slot);
                });
            }
            _ = sampler.tick() => {
                let (lags, bounded) = (lags(client, base).await?, bounded(client, base).await?);
                let at = start.elapsed().as_secs_f64();
                samples.push(Sample { at, lags, rss: rss(), bounded });
            }
        }
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    let mut acks = std::mem::take(&mut *acks.lock().expect("acks lock"));
    acks.latencies.sort();
    let pct = |q: f64| {
        let l = &acks.latencies;
        l.get(((l.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Step {
        rate,
        acked_per_sec: acks.events as f64 / secs,
        refused: acks.refused,
        refusal: acks.refusal.clone(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        samples,
        secs,
    })
}

/// Records one request's outcome.
async fn record(
    acks: &Mutex<Acks>,
    outcome: reqwest::Result<reqwest::Response>,
    due: Instant,
    events: usize,
) {
    let refusal = match outcome {
        Ok(resp) if resp.status().is_success() => None,
        Ok(resp) => {
            let status = resp.status();
            Some(format!(
                "{status}: {}",
                resp.text().await.unwrap_or_default()
            ))
        }
        Err(e) => Some(e.to_string()),
    };
    let mut acks = acks.lock().expect("acks lock");
    match refusal {
        None => {
            acks.latencies.push(due.elapsed());
            acks.events += events;
        }
        Some(why) => {
            acks.refused += 1;
            acks.refusal.get_or_insert(why);
        }
    }
}

/// One NDJSON body of `batch` events: product views, orders and page views of 10,000 users, so
/// that the counters, the profile and the model all work.
fn body(run: &str, seq: usize, batch: usize, event_bytes: usize) -> bytes::Bytes {
    let pad = "x".repeat(event_bytes.saturating_sub(300).max(1));
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut out = String::with_capacity(batch * (event_bytes + 64));
    for i in seq..seq + batch {
        let user = (i * 7919) % 10_000;
        let (name, props) = match i % 10 {
            0 => ("Order Completed", format!(r#""revenue":{}.5"#, i % 200)),
            1 | 2 => ("Page Viewed", format!(r#""path":"/p/{}""#, i % 997)),
            _ => (
                "Product Viewed",
                format!(r#""category":"c{}","sku":"s{}""#, i % 23, i % 5000),
            ),
        };
        out.push_str(&format!(
            r#"{{"event":"{name}","event_id":"sus-{run}-{i:010}","user_id":"u{user}","timestamp":"{now}","properties":{{{props},"pad":"{pad}"}},"context":{{"library":{{"name":"bench","version":"1"}}}}}}"#
        ));
        out.push('\n');
    }
    bytes::Bytes::from(out)
}

/// `Ok` when the step's rate was held, else the limit in words.
fn judge(step: &Step) -> Result<(), String> {
    if step.refused > 0 {
        return Err(format!(
            "intake: {} requests refused ({})",
            step.refused,
            step.refusal.as_deref().unwrap_or("?")
        ));
    }
    let rate = step.rate as f64;
    if let Some((stage, why)) = worst_stage(step) {
        return Err(format!("{stage}: {why}"));
    }
    if step.acked_per_sec < ACK_SHARE * rate {
        return Err(format!(
            "intake: acks at {:.0} events/s fell behind the offer (p99 {:.0} ms)",
            step.acked_per_sec, step.p99_ms
        ));
    }
    let (mid, end) = mid_end(&step.samples);
    let (from, to) = (mid.unbounded(), end.unbounded());
    if to as f64 > from as f64 * (1.0 + RSS_GROWTH.0) + RSS_GROWTH.1 as f64 {
        return Err(format!(
            "memory: resident memory less its bounded parts grew from {} MiB to {} MiB",
            from >> 20,
            to >> 20
        ));
    }
    Ok(())
}

/// The stage furthest from bounded, if any is. Sinks deliver in flushes, so a stage's lag is a
/// saw; its troughs say whether it keeps up: the lowest lag of the step's last quarter must be
/// under the bound, and must not have risen since the lowest of its second quarter.
fn worst_stage(step: &Step) -> Option<(String, String)> {
    let rate = step.rate as f64;
    let n = step.samples.len();
    let (early, late) = (&step.samples[n / 4..n / 2], &step.samples[n * 3 / 4..]);
    let (t0, t1) = (early.first()?.at, late.last()?.at);
    let mut worst: Option<(f64, String, String)> = None;
    for stage in late.last()?.lags.keys() {
        let (from, to) = (trough(early, stage), trough(late, stage));
        let growth = (to as f64 - from as f64) / (t1 - t0).max(1.0);
        let behind = to as f64 / rate;
        let score = (behind / LAG_BOUND_SECS).max(growth / (LAG_GROWTH_SHARE * rate));
        if score > 1.0 && worst.as_ref().is_none_or(|w| score > w.0) {
            let why = format!(
                "at least {to} events behind ({behind:.1} s of traffic), growing {growth:.0}/s"
            );
            worst = Some((score, stage.clone(), why));
        }
    }
    worst.map(|(_, stage, why)| (stage, why))
}

/// The lowest lag of `stage` over `samples` (a stage not yet reporting counts as caught up).
fn trough(samples: &[Sample], stage: &str) -> u64 {
    samples
        .iter()
        .map(|s| s.lags.get(stage).copied().unwrap_or(0))
        .min()
        .unwrap_or(0)
}

/// The samples at the step's middle and end.
fn mid_end(samples: &[Sample]) -> (Sample, Sample) {
    let mid = samples.get(samples.len() / 2).cloned().unwrap_or_default();
    let end = samples.last().cloned().unwrap_or_default();
    (mid, end)
}

/// Each stage's delivery rate over the step: the ack rate less its lag's growth.
fn delivered(step: &Step) -> BTreeMap<String, (f64, u64)> {
    let (Some(first), Some(last)) = (step.samples.first(), step.samples.last()) else {
        return BTreeMap::new();
    };
    last.lags
        .iter()
        .map(|(stage, &end)| {
            let start = first.lags.get(stage).copied().unwrap_or(0);
            let growth = (end as f64 - start as f64) / (last.at - first.at).max(1.0);
            (stage.clone(), ((step.acked_per_sec - growth).max(0.0), end))
        })
        .collect()
}

fn print_step(step: &Step, verdict: &Result<(), String>) {
    let (mid, end) = mid_end(&step.samples);
    println!(
        "offered {:>7} events/s: acked {:>8.0}/s, ack p50 {:.1} ms, p99 {:.1} ms, rss {} MiB \
         ({} MiB less bounded parts, {} MiB at mid-step), {:.0} s -> {}",
        step.rate,
        step.acked_per_sec,
        step.p50_ms,
        step.p99_ms,
        end.rss >> 20,
        end.unbounded() >> 20,
        mid.unbounded() >> 20,
        step.secs,
        match verdict {
            Ok(()) => "held".to_string(),
            Err(why) => format!("not held ({why})"),
        }
    );
    for (stage, (per_sec, lag)) in delivered(step) {
        println!("    {stage:<22} delivered {per_sec:>8.0}/s, lag at end {lag}");
    }
    for (part, (now, ceiling)) in &end.bounded {
        println!(
            "    {part:<22} holds {:>6.1} MiB of at most {:.1} MiB",
            *now as f64 / f64::from(1 << 20),
            *ceiling as f64 / f64::from(1 << 20)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: u64, lags: &[(f64, u64)], rss: &[u64]) -> Step {
        let samples = lags
            .iter()
            .zip(rss)
            .map(|(&(at, lag), &rss)| Sample {
                at,
                lags: [("lake/events".to_string(), lag)].into(),
                rss,
                bounded: BTreeMap::new(),
            })
            .collect();
        Step {
            rate,
            acked_per_sec: rate as f64,
            refused: 0,
            refusal: None,
            p50_ms: 1.0,
            p99_ms: 2.0,
            samples,
            secs: 10.0,
        }
    }

    /// Lags sampled once a second.
    fn saw(lags: &[u64]) -> Vec<(f64, u64)> {
        lags.iter()
            .enumerate()
            .map(|(i, &l)| (i as f64, l))
            .collect()
    }

    #[test]
    fn a_saw_that_returns_low_and_flat_memory_are_held() {
        let s = step(
            1000,
            &saw(&[0, 2000, 0, 2000, 100, 2000, 0, 1900]),
            &[100; 8],
        );
        assert_eq!(judge(&s), Ok(()));
    }

    #[test]
    fn rising_troughs_name_their_stage() {
        let s = step(
            1000,
            &saw(&[0, 2000, 0, 2500, 1000, 3000, 2000, 4000]),
            &[100; 8],
        );
        let why = judge(&s).unwrap_err();
        assert!(
            why.starts_with("lake/events: at least 2000 events behind"),
            "{why}"
        );
    }

    #[test]
    fn troughs_over_the_bound_are_not_held_even_when_flat() {
        let s = step(
            1000,
            &saw(&[0, 6000, 6000, 7000, 6000, 7000, 6000, 7000]),
            &[100; 8],
        );
        assert!(judge(&s).unwrap_err().contains("6.0 s of traffic"));
    }

    #[test]
    fn refusals_and_memory_growth_are_limits() {
        let mut s = step(
            1000,
            &saw(&[0; 8]),
            &[
                100,
                100,
                100,
                100,
                100 << 20,
                200 << 20,
                300 << 20,
                400 << 20,
            ],
        );
        assert!(judge(&s).unwrap_err().starts_with("memory: "));
        // The same growth, all of it in a bounded part that the server reports, is flat.
        for (sample, rss) in s.samples.iter_mut().zip([0, 0, 0, 0, 100, 200, 300, 400]) {
            sample.bounded.insert("dedupe index", (rss << 20, 1 << 30));
        }
        assert_eq!(judge(&s), Ok(()));
        s.refused = 2;
        s.refusal = Some("503 Service Unavailable: behind".into());
        assert!(judge(&s).unwrap_err().contains("2 requests refused (503"));
    }

    #[test]
    fn bodies_are_ndjson_of_distinct_events() {
        let b = body("step-500", 30, 10, 400);
        let lines: Vec<serde_json::Value> = std::str::from_utf8(&b)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0]["event_id"], "sus-step-500-0000000030");
        assert_eq!(lines[0]["event"], "Order Completed");
        assert!(lines.iter().any(|l| l["event"] == "Product Viewed"));
    }
}
