//! The known holes (issue 16, items 1–3, 7, 8): scenarios for faults Sluice does not survive yet.
//! Each asserts what Sluice should do, so each fails today and says what it found; once a
//! hole is fixed its scenario moves into `chaos.rs` and the normal suite. Built only with the
//! `chaos-holes` feature (`cargo xtask chaos --holes`), so the normal suite stays green.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_chaos::checker::{History, Outcome};
use sluice_chaos::fault::{RedisServer, Tmpfs};
use sluice_chaos::harness::{self, Sinks};
use sluice_chaos::observe;
use sluice_chaos::powercut::{Mode, PowerCutFs};
use sluice_chaos::workload::{self, Progress, Target, Workload};
use sluice_chaos::{Profile, Scorecard};

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

/// Holes 1, 2 and 8: the data disk fills up while events arrive, then space comes back. Expected:
/// `/health` says so while full; afterwards every acked event reaches the lake and the hot tier
/// without a restart; SIGTERM finishes within its drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_full_disk_then_space_returns() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let dir = harness::scratch()?;
    let disk = Tmpfs::mount(&dir.path().join("disk"), 96 << 20)?;
    let toml = format!("{LAKE}[journal]\nsegment_bytes = 1048576\n");
    let mut server = harness::spawn(Path::new(BIN), dir.path(), &disk.path().join("data"), &toml)?;
    let base = server.url();
    let mut card = Scorecard::new("hole_full_disk", &["T5"], profile, 0);

    let before = workload("fa", 20, Duration::from_secs(30));
    let h_before = phase(&before, &base).await?;
    let filled = disk.fill("filler")?;
    card.note("filler_bytes", filled);
    let during = workload("fb", 20, Duration::from_secs(3));
    let h_during = phase(&during, &base).await?;
    let full_health = health(&base).await;
    card.note("health_while_full", full_health);
    let (ok, _, unknown) = h_during.request_counts();
    card.note("requests_while_full_ok", ok);
    card.note("requests_while_full_unknown", unknown);
    std::fs::remove_file(disk.path().join("filler"))?;
    let after = workload("fc", 20, Duration::from_secs(30));
    let h_after = phase(&after, &base).await?;
    card.faults = 1;

    if full_health == 200 {
        card.violations
            .push("hole 8: /health answered 200 while the disk was full".into());
    }
    for (w, h, name) in [
        (&before, &h_before, "before"),
        (&during, &h_during, "during"),
        (&after, &h_after, "after"),
    ] {
        let mut part = Scorecard::new(&format!("hole_full_disk_{name}"), &["T5"], profile, 0);
        let sinks = Sinks {
            typed: false,
            hot: true,
            postgres: None,
        };
        harness::drain_and_check(&mut part, &base, w, h, &sinks, Duration::from_secs(60)).await?;
        part.emit();
        card.acked += part.acked;
        for v in part.violations {
            card.violations.push(format!("{name} the full disk: {v}"));
        }
    }
    let t = Instant::now();
    match server.terminate(Duration::from_secs(60)) {
        Ok(s) => card.note("sigterm_exit", format!("{s:?} after {:?}", t.elapsed())),
        Err(e) => card
            .violations
            .push(format!("hole 1: SIGTERM did not finish: {e}")),
    }
    card.finish()
}

/// Hole 3: lake files are never fsynced. A power cut (names kept, unsynced bytes dropped, as
/// LazyFS does) soon after the first commit must leave the lake readable, with every acked
/// event delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_power_cut_after_table_creation() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let dir = harness::scratch()?;
    let mut fs = PowerCutFs::mount(
        &dir.path().join("backing"),
        &dir.path().join("mnt"),
        Mode::DataOnly,
    )?;
    let data = fs.path().join("data");
    let mut server = harness::spawn(Path::new(BIN), dir.path(), &data, LAKE)?;
    let http = reqwest::Client::new();
    let first = workload("pa", 4, Duration::from_secs(30));
    let h_first = phase(&first, &server.url()).await?;
    let acked = h_first.fold().count(Outcome::Ok) as u64;
    let base = server.url();
    observe::wait_for(Duration::from_secs(60), || async {
        Ok(observe::sql_count(
            &http,
            &base,
            "SELECT count(*) FROM events WHERE event_id LIKE 'pa-%'",
        )
        .await?
            >= acked)
    })
    .await;
    server.kill9()?;
    let stats = fs.power_cut()?;
    let mut card = Scorecard::new("hole_power_cut_new_table", &["T2"], profile, 0);
    card.faults = 1;
    card.note("bytes_dropped", stats.bytes_dropped);
    if let Err(e) = server.restart() {
        card.violations
            .push(format!("hole 3: no restart after the power cut: {e}"));
        return card.finish();
    }
    let second = workload("pb", 4, Duration::from_secs(30));
    let h_second = phase(&second, &server.url()).await?;
    for (w, h) in [(&first, &h_first), (&second, &h_second)] {
        let mut part = Scorecard::new("hole_power_cut_new_table", &["T2"], profile, 0);
        let sinks = Sinks::default();
        let r = harness::drain_and_check(
            &mut part,
            &server.url(),
            w,
            h,
            &sinks,
            Duration::from_secs(60),
        )
        .await;
        card.acked += part.acked;
        if let Err(e) = r {
            card.violations.push(format!(
                "hole 3: the lake is unreadable after the cut: {e:#}"
            ));
            break;
        }
        card.violations.extend(part.violations);
    }
    card.finish()
}

/// A new hole: power cuts on a file system that keeps only fsynced bytes and fsynced directory
/// entries (each cut SIGKILLs the server and drops the rest). Every acked event must still be
/// in `events` and the hot tier exactly once. Today each cut loses what came before it: the
/// directories created on first start are never fsynced into their parents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_power_cuts_keep_every_acked_event() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let (clients, batches, cuts) = profile.pick((2, 30, 3), (4, 200, 20));
    let w = workload("p", batches * clients / 2, Duration::from_secs(120));
    let dir = harness::scratch()?;
    let fs = PowerCutFs::mount(
        &dir.path().join("backing"),
        &dir.path().join("mnt"),
        Mode::Strict,
    )?;
    let data = fs.path().join("data");
    let fs = Arc::new(Mutex::new(fs));
    let server = harness::spawn(Path::new(BIN), dir.path(), &data, LAKE)?;
    let dropped = Arc::new(Mutex::new((0u64, 0usize)));
    let between = {
        let (fs, dropped) = (fs.clone(), dropped.clone());
        move |_| {
            let stats = fs.lock().expect("fs lock").power_cut()?;
            let mut d = dropped.lock().expect("lock");
            d.0 += stats.bytes_dropped;
            d.1 += stats.names_undone;
            Ok(())
        }
    };
    let target = Target::new(server.url());
    let server = Arc::new(Mutex::new(server));
    let history = Arc::new(History::default());
    let progress = Arc::new(Progress::default());
    let killer = harness::nemesis(
        server.clone(),
        target.clone(),
        progress.clone(),
        w.total(),
        cuts,
        between,
    );
    workload::run(w.clone(), target, history.clone(), progress).await?;
    let storm = killer.await??;
    let mut card = Scorecard::new("power_cut", &["T2", "T4"], profile, 0);
    storm.note(&mut card);
    let (bytes, names) = *dropped.lock().expect("lock");
    card.note("bytes_dropped", bytes);
    card.note("names_undone", names);
    if storm.kills != cuts {
        card.violations.push(format!(
            "only {} of {cuts} power cuts happened",
            storm.kills
        ));
    }
    let sinks = Sinks {
        typed: false,
        hot: true,
        postgres: None,
    };
    let base = server.lock().expect("server lock").url();
    harness::drain_and_check(
        &mut card,
        &base,
        &w,
        &history,
        &sinks,
        Duration::from_secs(120),
    )
    .await?;
    server
        .lock()
        .expect("server lock")
        .terminate(Duration::from_secs(60))?;
    card.finish()
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

/// Hole 7: the query memory limit must hold for every function, and a user's oversized
/// request is a 4xx, not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_query_memory_limit() -> anyhow::Result<()> {
    let profile = Profile::from_env();
    let dir = harness::scratch()?;
    let server = harness::spawn(Path::new(BIN), dir.path(), &dir.path().join("data"), LAKE)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut card = Scorecard::new("hole_query_memory", &["T19"], profile, 0);
    for (n, limit_mib) in [(1_500_000_000u64, 1536u64), (3_000_000_000, 1536)] {
        let q = format!("SELECT length(repeat('x', {n}))");
        let status = match http
            .post(format!("{}/v1/sql?format=json", server.url()))
            .body(q.clone())
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        let hwm = peak_rss_mib(server.pid());
        card.note(&format!("status_{n}"), status);
        card.note(&format!("peak_rss_mib_after_{n}"), hwm);
        if !(400..500).contains(&status) {
            card.violations
                .push(format!("hole 7: {q} answered {status}, not a 4xx"));
        }
        if hwm > limit_mib {
            card.violations.push(format!(
                "hole 7: {q} took the server to {hwm} MiB against the 1 GiB query limit"
            ));
        }
    }
    card.finish()
}

fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}
