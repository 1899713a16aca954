//! The known holes (issue 16, items 4–6): scenarios for faults Sluice does not survive yet.
//! Each asserts what Sluice should do, so each fails today and says what it found; once a
//! hole is fixed its scenario moves into `chaos.rs` and the normal suite. Built only with the
//! `chaos-holes` feature (`cargo xtask chaos --holes`), so the normal suite stays green.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_chaos::checker::History;
use sluice_chaos::fault::{self, RedisServer};
use sluice_chaos::harness::{self, Sinks};
use sluice_chaos::observe;
use sluice_chaos::workload::{self, Progress, Target, Workload};
use sluice_chaos::{Profile, Scorecard};
use sluice_testkit::SluiceProcess;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const LAKE: &str = "[lake]\nflush_interval = \"300ms\"\n";

fn workload(run: &str, batches: usize, give_up: Duration) -> Arc<Workload> {
    Arc::new(Workload {
        run: run.to_string(),
        clients: 2,
        batches,
        batch: 50,
        users: 20,
        names: vec!["hole_view".into()],
        give_up_after: give_up,
    })
}

/// Runs `w` against `base` to the end; its history.
async fn phase(w: &Arc<Workload>, base: &str) -> anyhow::Result<Arc<History>> {
    let history = Arc::new(History::default());
    workload::run(
        w.clone(),
        Target::new(base.to_string()),
        history.clone(),
        Arc::new(Progress::default()),
    )
    .await?;
    Ok(history)
}

async fn health(base: &str) -> u16 {
    match reqwest::get(format!("{base}/health")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Under investigation, kept out of the normal suite: it passed in one quick run and failed in
/// the next (cause not yet known). T10 (hot tier): the private Redis behind the hot tier is SIGKILLed mid-batch and restarted
/// while events flow. After the run every profile counts exactly the user's events in the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_batch_keeps_the_hot_tier_exact() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let (clients, batches, kills) = profile.pick((2, 40, 3), (4, 200, 10));
    let w = workload("r", batches * clients / 2, Duration::from_secs(120));
    let dir = harness::scratch()?;
    let redis = Arc::new(Mutex::new(RedisServer::start(&dir.path().join("redis"))?));
    let toml = format!(
        "{LAKE}[hot]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"chaos:\"\n",
        redis.lock().expect("redis lock").url()
    );
    let server = harness::spawn(Path::new(BIN), dir.path(), &dir.path().join("data"), &toml)?;
    let target = Target::new(server.url());
    let history = Arc::new(History::default());
    let progress = Arc::new(Progress::default());
    // The nemesis here kills Redis, not the server.
    let killer = {
        let redis = redis.clone();
        harness::faults_at_thresholds(progress.clone(), w.total(), kills, move |_| {
            let mut r = redis.lock().expect("redis lock");
            r.kill9();
            r.restart()
        })
    };
    workload::run(w.clone(), target, history.clone(), progress).await?;
    let done = killer.await??;
    let mut card = Scorecard::new("redis_kill", &["T11"], profile, 0);
    card.faults = done;
    if done != kills {
        card.violations
            .push(format!("only {done} of {kills} Redis kills happened"));
    }
    let sinks = Sinks {
        typed: false,
        hot: true,
        postgres: None,
    };
    harness::drain_and_check(
        &mut card,
        &server.url(),
        &w,
        &history,
        &sinks,
        Duration::from_secs(120),
    )
    .await?;
    card.finish()
}

/// Hole 4: journal retention ignores how far consumers have read. With the lake stage down
/// for longer than `retention_age`, no acked event may be deleted before the lake reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_retention_under_lag() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let dir = harness::scratch()?;
    let data = dir.path().join("data");
    let toml = format!("{LAKE}[journal]\nsegment_bytes = 65536\nretention_age = \"2s\"\n");
    std::fs::write(dir.path().join("sluice.toml"), &toml)?;
    let config = dir.path().join("sluice.toml").to_string_lossy().to_string();
    let mut no_lake = SluiceProcess::spawn(
        Path::new(BIN),
        &data,
        &["--config", &config, "--role", "collector,functions"],
    )?;
    let w = workload("ra", 40, Duration::from_secs(30));
    let h = phase(&w, &no_lake.url()).await?;
    // Wait until retention has run over the sealed segments of `good` (their count drops) or
    // a deadline passes.
    let good = data.join("journal/good");
    let count = || fault::files_under(&good, &|_| true).len();
    let peak = count();
    let deleted = sluice_testkit::wait_until(Duration::from_secs(30), "retention", || {
        Ok((count() < peak).then_some(()))
    })
    .is_ok();
    no_lake.terminate(Duration::from_secs(60))?;
    let server = harness::spawn(Path::new(BIN), dir.path(), &data, &toml)?;
    let mut card = Scorecard::new("hole_retention_under_lag", &["T13"], profile, 0);
    card.note("good_files_before", peak);
    card.note("good_files_after_retention", count());
    card.note("retention_ran", deleted);
    harness::drain_and_check(
        &mut card,
        &server.url(),
        &w,
        &h,
        &Sinks::default(),
        Duration::from_secs(60),
    )
    .await?;
    card.finish()
}

/// Hole 5: a damaged `raw` segment must quarantine its partition, not stop the server: the
/// server starts, and new events are acked and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_corrupt_raw_segment() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let dir = harness::scratch()?;
    let data = dir.path().join("data");
    let toml = format!("{LAKE}[journal]\nsegment_bytes = 16384\n");
    let mut server = harness::spawn(Path::new(BIN), dir.path(), &data, &toml)?;
    let w = workload("ca", 20, Duration::from_secs(30));
    phase(&w, &server.url()).await?;
    server.terminate(Duration::from_secs(60))?;
    let mut card = Scorecard::new("hole_corrupt_raw_segment", &["T3"], profile, 0);
    // The first (sealed) segment of partition 0.
    let segments = fault::files_under(&data.join("journal/raw/0"), &|p| {
        p.extension().is_some_and(|e| e == "log" || e == "seg")
    });
    card.note("raw_segments_p0", segments.len());
    let Some(victim) = segments.first() else {
        card.violations
            .push("no raw segment found to damage (layout changed?)".into());
        return card.finish();
    };
    let len = std::fs::metadata(victim)?.len();
    fault::flip_bytes(victim, len / 2, 16)?;
    card.faults = 1;
    card.note("damaged", victim.display().to_string());
    if let Err(e) = server.restart() {
        card.violations.push(format!(
            "hole 5: the server did not start with one damaged raw segment: {e:#}"
        ));
        return card.finish();
    }
    let after = workload("cb", 4, Duration::from_secs(30));
    let h = phase(&after, &server.url()).await?;
    harness::drain_and_check(
        &mut card,
        &server.url(),
        &after,
        &h,
        &Sinks::default(),
        Duration::from_secs(60),
    )
    .await?;
    card.finish()
}

/// Hole 6: a lake commit's recorded offset lowered on disk must be refused loudly, not
/// silently re-deliver (duplicate) the events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_corrupt_commit_offset() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let dir = harness::scratch()?;
    let data = dir.path().join("data");
    let mut server = harness::spawn(Path::new(BIN), dir.path(), &data, LAKE)?;
    let w = workload("oa", 20, Duration::from_secs(30));
    let h = phase(&w, &server.url()).await?;
    let mut card = Scorecard::new("hole_corrupt_commit_offset", &["T7", "T9"], profile, 0);
    harness::drain_and_check(
        &mut card,
        &server.url(),
        &w,
        &h,
        &Sinks::default(),
        Duration::from_secs(60),
    )
    .await?;
    server.terminate(Duration::from_secs(60))?;
    // Lower the largest txn version in the newest commit of `events`.
    let log = fault::files_under(&data.join("lake/events/_delta_log"), &|p| {
        p.extension().is_some_and(|e| e == "json")
    });
    let Some(newest) = log.last() else {
        card.violations.push("no events commit found".into());
        return card.finish();
    };
    let text = std::fs::read_to_string(newest)?;
    let re_lowered = lower_txn_version(&text, 500);
    let Some((lowered, from, to)) = re_lowered else {
        card.violations
            .push(format!("no txn version in {}", newest.display()));
        return card.finish();
    };
    std::fs::write(newest, lowered)?;
    card.faults = 1;
    card.note("txn_version", format!("{from} -> {to}"));
    server.restart()?;
    let http = reqwest::Client::new();
    let base = server.url();
    let dup_query =
        "SELECT count(*) - count(DISTINCT event_id) FROM events WHERE event_id LIKE 'oa-%'";
    let healthy = health(&base).await;
    observe::wait_for(Duration::from_secs(20), || async {
        Ok(observe::sql_count(&http, &base, dup_query).await? > 0)
    })
    .await;
    let dups = observe::sql_count(&http, &base, dup_query)
        .await
        .unwrap_or(0);
    card.note("health_after", healthy);
    if dups > 0 {
        card.violations.push(format!(
            "hole 6: lowering a commit's offset from {from} to {to} gave {dups} silent duplicates (health {healthy})"
        ));
    }
    card.finish()
}

/// `text` with the largest `"version":N` inside a `txn` action lowered by `by`.
fn lower_txn_version(text: &str, by: u64) -> Option<(String, u64, u64)> {
    let mut best: Option<(usize, usize, u64)> = None;
    for line in text.lines().filter(|l| l.contains("\"txn\"")) {
        let at = text.find(line)?;
        let key = "\"version\":";
        let v = line.find(key)? + key.len();
        let digits: String = line[v..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let n: u64 = digits.parse().ok()?;
        if best.is_none_or(|(_, _, b)| n > b) {
            best = Some((at + v, digits.len(), n));
        }
    }
    let (pos, len, n) = best?;
    let to = n.saturating_sub(by);
    let mut out = text.to_string();
    out.replace_range(pos..pos + len, &to.to_string());
    Some((out, n, to))
}

#[test]
fn txn_versions_are_found_and_lowered() {
    let text = "{\"commitInfo\":{}}\n{\"txn\":{\"appId\":\"events/0\",\"version\":900,\"lastUpdated\":1}}\n{\"txn\":{\"appId\":\"events/1\",\"version\":1200}}\n";
    let (out, from, to) = lower_txn_version(text, 500).unwrap();
    assert_eq!((from, to), (1200, 700));
    assert!(out.contains("\"version\":700") && out.contains("\"version\":900"));
}
