//! Plumbing every scenario shares: starting the binary with a config file, a nemesis that
//! kills the server whenever another share of the events has been acked (running a fault
//! between the kill and the restart), and the final drain-and-check over every sink.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_testkit::SluiceProcess;

use crate::checker::{History, Outcome, Sent, check_counts, check_ids};
use crate::observe;
use crate::scorecard::Scorecard;
use crate::workload::{Progress, Target, Workload};

/// Writes `toml` to `dir/sluice.toml` and starts `bin serve --config … --data-dir data`.
pub fn spawn(bin: &Path, dir: &Path, data: &Path, toml: &str) -> anyhow::Result<SluiceProcess> {
    let config = dir.join("sluice.toml");
    std::fs::write(&config, toml)?;
    let config = config.to_string_lossy().to_string();
    SluiceProcess::spawn(bin, data, &["--config", &config])
}

/// What the nemesis did.
#[derive(Clone, Debug, Default)]
pub struct Storm {
    /// Kills done.
    pub kills: usize,
    /// Milliseconds from each restart's spawn to its listening address.
    pub ready_ms: Vec<u64>,
}

impl Storm {
    /// Records p50 and max ready times on `card`.
    pub fn note(&self, card: &mut Scorecard) {
        let mut r = self.ready_ms.clone();
        r.sort_unstable();
        card.faults += self.kills;
        card.note("restarts", self.kills);
        if !r.is_empty() {
            card.note("ready_ms_p50", r[r.len() / 2]);
            card.note("ready_ms_max", r[r.len() - 1]);
        }
    }
}

/// Kills the server `kills` times, each once another `1/(kills+1)` of `total` events has been
/// acked; `between` runs while it is down (a power cut, a corruption, nothing). Stops early
/// when the workload finishes.
pub fn nemesis(
    server: Arc<Mutex<SluiceProcess>>,
    target: Arc<Target>,
    progress: Arc<Progress>,
    total: usize,
    kills: usize,
    mut between: impl FnMut(usize) -> anyhow::Result<()> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<Storm>> {
    tokio::task::spawn_blocking(move || {
        let mut storm = Storm::default();
        for k in 0..kills {
            if !await_acked(&progress, (k + 1) * total / (kills + 1)) {
                return Ok(storm);
            }
            let mut s = server.lock().expect("server lock");
            s.kill9()?;
            between(k)?;
            let t = Instant::now();
            s.restart()?;
            storm.ready_ms.push(t.elapsed().as_millis() as u64);
            target.set(s.url());
            storm.kills += 1;
        }
        Ok(storm)
    })
}

/// Blocks until `threshold` events are acked (true) or the workload has finished first (false).
pub fn await_acked(progress: &Progress, threshold: usize) -> bool {
    while progress.acked.load(Ordering::SeqCst) < threshold {
        if progress.done.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Runs `fault` `count` times, each once another `1/(count+1)` of `total` events has been
/// acked (a dependency killed and restarted, say); answers how many ran before the workload
/// finished.
pub fn faults_at_thresholds(
    progress: Arc<Progress>,
    total: usize,
    count: usize,
    mut fault: impl FnMut(usize) -> anyhow::Result<()> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    tokio::task::spawn_blocking(move || {
        for k in 0..count {
            if !await_acked(&progress, (k + 1) * total / (count + 1)) {
                return Ok(k);
            }
            fault(k)?;
        }
        Ok(count)
    })
}

/// Which sinks the final check reads besides `events`.
#[derive(Clone, Debug, Default)]
pub struct Sinks {
    /// The typed tables (one per event name of the workload).
    pub typed: bool,
    /// The hot tier's profiles (`events_total` per user against the lake).
    pub hot: bool,
    /// The loader's `events` table: (connection string, schema).
    pub postgres: Option<(String, String)>,
}

/// Waits until every sink holds at least the acked events (or `deadline` passes), then
/// checks each one and records the result on `card`.
pub async fn drain_and_check(
    card: &mut Scorecard,
    base: &str,
    w: &Workload,
    history: &History,
    sinks: &Sinks,
    deadline: Duration,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let sent = tally(card, w, history);
    let drain = Drain {
        http,
        base,
        w,
        acked: card.acked as u64,
        sent,
        deadline,
    };
    let ids = drain.events(card).await?;
    if sinks.typed {
        drain.typed(card).await;
    }
    if sinks.hot {
        drain.hot(card, &ids).await;
    }
    if let Some((conn, schema)) = &sinks.postgres {
        drain.postgres(card, conn, schema).await?;
    }
    Ok(())
}

/// Records on `card` what was sent and how it was answered; returns the outcome of every
/// event.
fn tally(card: &mut Scorecard, w: &Workload, history: &History) -> Sent {
    let sent = history.fold();
    card.events_sent = w.total();
    card.acked = sent.count(Outcome::Ok);
    card.failed = sent.count(Outcome::Failed);
    card.indeterminate = sent.count(Outcome::Unknown);
    let (ok, failed, unknown) = history.request_counts();
    card.note("requests_ok", ok);
    card.note("requests_failed", failed);
    card.note("requests_unknown", unknown);
    sent
}

/// What the final checks read the sinks with.
struct Drain<'a> {
    http: reqwest::Client,
    base: &'a str,
    w: &'a Workload,
    /// Events acked.
    acked: u64,
    sent: Sent,
    /// How long each sink may take to hold what it should.
    deadline: Duration,
}

impl Drain<'_> {
    /// Counts the distinct events of this run in the lake table `table`.
    fn count(&self, table: &str) -> impl Future<Output = anyhow::Result<u64>> + use<> {
        let (http, base) = (self.http.clone(), self.base.to_string());
        let query = format!(
            "SELECT count(DISTINCT event_id) FROM {table} WHERE event_id LIKE '{}-%'",
            self.w.run
        );
        async move { observe::sql_count(&http, &base, &query).await }
    }

    /// Waits for the lake's `events` to hold every acked event and checks them, and that no
    /// valid event became a bad row; returns the ids in `events`.
    async fn events(&self, card: &mut Scorecard) -> anyhow::Result<Vec<String>> {
        let (http, base, run, acked) = (&self.http, self.base, &self.w.run, self.acked);
        let t = Instant::now();
        let drained = observe::wait_for(self.deadline, || {
            let c = self.count("events");
            async move { Ok(c.await? >= acked) }
        })
        .await;
        card.note("lake_drain_ms", t.elapsed().as_millis() as u64);
        if !drained {
            card.violations.push(format!(
                "events: acked events still missing after {:?}",
                self.deadline
            ));
        }
        let ids = observe::ids_in(http, base, "events", run).await?;
        card.sink(check_ids("events", &self.sent, &ids, None));
        let bad = observe::ids_in(http, base, "bad_rows", run)
            .await
            .unwrap_or_default();
        if !bad.is_empty() {
            card.violations.push(format!(
                "bad_rows: {} valid events became bad rows (e.g. {:?})",
                bad.len(),
                &bad[..bad.len().min(3)]
            ));
        }
        Ok(ids)
    }

    /// Waits for each typed table to hold its acked events and checks it.
    async fn typed(&self, card: &mut Scorecard) {
        let (w, sent) = (self.w, &self.sent);
        for name in &w.names {
            let want = sent
                .with(Outcome::Ok)
                .filter(|id| w.name_of(id) == Some(name.as_str()))
                .count() as u64;
            observe::wait_for(self.deadline, || {
                let c = self.count(name);
                async move { Ok(c.await? >= want) }
            })
            .await;
            let ids = observe::ids_in(&self.http, self.base, name, &w.run)
                .await
                .unwrap_or_default();
            let only = |id: &str| w.name_of(id) == Some(name.as_str());
            card.sink(check_ids(name, sent, &ids, Some(&only)));
        }
    }

    /// Checks that the hot tier equals a fold over the lake's events `ids` (I9), once it does
    /// or the deadline passes.
    async fn hot(&self, card: &mut Scorecard, ids: &[String]) {
        // Count the lake's distinct events per user, including unknown-outcome ones that
        // landed.
        let mut want = std::collections::BTreeMap::new();
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for id in &distinct {
            if let Some(u) = self.w.user_of(id) {
                *want.entry(u).or_insert(0u64) += 1;
            }
        }
        let users = self.w.all_users();
        let end = Instant::now() + self.deadline;
        let got = loop {
            let got = observe::profile_totals(&self.http, self.base, &users)
                .await
                .unwrap_or_default();
            if got == want || Instant::now() > end {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        card.sink(check_counts("hot", &want, &got));
    }

    /// Waits for the loader's `events` table in `conn`'s `schema` to hold every acked event
    /// and checks it.
    async fn postgres(&self, card: &mut Scorecard, conn: &str, schema: &str) -> anyhow::Result<()> {
        let (run, acked) = (&self.w.run, self.acked);
        observe::wait_for(self.deadline, || async {
            let mut ids = observe::pg_ids(conn, schema, "events", run).await?;
            ids.sort_unstable();
            ids.dedup();
            Ok(ids.len() as u64 >= acked)
        })
        .await;
        let ids = observe::pg_ids(conn, schema, "events", run).await?;
        card.sink(check_ids("postgres.events", &self.sent, &ids, None));
        Ok(())
    }
}

/// A scratch directory under the system temp dir.
pub fn scratch() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("sluice-chaos-").tempdir()?)
}

/// The path of the `sluice` binary given by a test's `env!("CARGO_BIN_EXE_sluice")`.
pub fn bin(path: &str) -> PathBuf {
    PathBuf::from(path)
}
