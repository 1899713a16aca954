//! `sluice bench`: durable HTTP ingest throughput and ack → SQL latency, next to the baselines
//! that bound them on this machine, all measured in the same run (shared machines are noisy, so
//! only same-run ratios mean much):
//! - the raw fdatasync rate of the data directory's disk;
//! - an HTTP no-op: the same client load against a server that reads the body and answers at
//!   once, which bounds what any HTTP ingest could do here;
//! - durable ingest: the same load against `POST /v1/events` of a real server with every role
//!   on (the runner and the lake sink compete for the same two cores);
//! - every stage: when every stage after the journal (the typed tables and the hot tier too)
//!   has caught up with that load, from `/health`;
//! - ack → visible in SQL: one event posted, then polled for through the warehouse.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_server::{Config, Server};
use sluice_warehouse::Warehouse;

/// Arguments of `sluice bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Events to send in the ingest runs.
    #[arg(long, default_value_t = 300_000)]
    pub(crate) events: usize,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub(crate) batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    pub(crate) connections: usize,
    /// Approximate size of one event in bytes.
    #[arg(long, default_value_t = 500)]
    pub(crate) event_bytes: usize,
    /// Directory for the benchmark's data (a fresh temporary one under it is used).
    #[arg(long, default_value = ".")]
    pub(crate) dir: PathBuf,
    /// Run only the collector role (no runner, no lake): the intake path alone. Skips the
    /// end-to-end and visibility figures.
    #[arg(long)]
    pub(crate) ingest_only: bool,
    /// Instead of the pipeline figures, measure durable intake through every protocol's
    /// endpoint (native, Segment, Snowplow, Kinesis, Firehose), each against a fresh
    /// collector-only server, in one run.
    #[arg(long)]
    pub(crate) protocols: bool,
    /// Instead of the pipeline figures, measure the function chain in process on one thread:
    /// canonicalisation alone next to validation plus every built-in enricher.
    #[arg(long)]
    pub(crate) chain: bool,
    /// Instead of the pipeline figures, measure the hot tier and the online model: the model
    /// next to Vowpal Wabbit on the same examples, hot-store writes and reads, and profile
    /// reads through a server.
    #[arg(long)]
    pub(crate) hot: bool,
    /// Instead of the pipeline figures, only the hot projection alone (also part of `--hot`):
    /// `good` filled beforehand, then a projector with README's counters and model, timed
    /// until it reaches the end.
    #[arg(long)]
    pub(crate) projection: bool,
    /// `--hot`, `--projection`: synthetic users (10 product views each).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) hot_users: usize,
    /// `--hot`: the Python that has the `vowpalwabbit` package.
    #[arg(long, default_value = "python3")]
    pub(crate) python: String,
    /// Instead of the burst figures, offer a default server (every role on, README's example
    /// counters and model) a ramp of rates and find the highest it keeps up with: bounded lag
    /// in every stage, flat memory, every request acked. Prints which stage limits.
    #[arg(long)]
    pub(crate) sustained: bool,
    /// `--sustained`: the offered rates in events/s, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,20000,40000,60000,80000,100000"
    )]
    pub(crate) rates: Vec<u64>,
    /// `--sustained`: seconds each rate is offered for.
    #[arg(long, default_value_t = 120)]
    pub(crate) step_secs: u64,
    /// `--sustained`: a user function (ES module) to deploy before the ramp.
    #[arg(long)]
    pub(crate) function: Option<PathBuf>,
    /// Also run the pipeline figures on a JetStream journal at this URL (a server that fsyncs
    /// before it acks, `sync_interval: always`), after the file journal, in the same run: the
    /// cluster mode's journal next to the embedded one. Streams under a fresh prefix, one
    /// replica (use a cluster's URLs and `--jetstream-replicas` for more).
    #[arg(long)]
    pub(crate) jetstream: Option<String>,
    /// `--jetstream`: its monitoring URL (`http://host:8222`), to check fsync before ack.
    #[arg(long)]
    pub(crate) jetstream_monitor: Option<String>,
    /// `--jetstream`: replicas of every stream.
    #[arg(long, default_value_t = 1)]
    pub(crate) jetstream_replicas: usize,
    /// `--jetstream`: a server config file whose shared stores that run uses, as a cluster node
    /// would: its `[lake]` when `root` is an object store (`s3://…`), its `[hot]` when the
    /// backend is Redis. The run writes below a prefix of its own in each and deletes it at the
    /// end.
    #[arg(long, requires = "jetstream")]
    pub(crate) jetstream_config: Option<PathBuf>,
}

/// Runs the benchmark and prints a report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let root = args
        .dir
        .join(format!("sluice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let result = run_in(&args, &root).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn run_in(args: &BenchArgs, root: &std::path::Path) -> anyhow::Result<()> {
    if args.chain {
        let (events, bytes, root) = (args.events, args.event_bytes, root.to_path_buf());
        return tokio::task::spawn_blocking(move || sluice_bench::chain::run(events, bytes, &root))
            .await?;
    }
    if args.projection {
        return crate::bench_hot::projection_alone(root, args.hot_users).await;
    }
    if args.hot {
        return crate::bench_hot::run(root, args.hot_users, &args.python).await;
    }
    if args.sustained {
        let ramp = crate::bench_sustained::Ramp {
            rates: args.rates.clone(),
            step: Duration::from_secs(args.step_secs.max(1)),
            batch: args.batch,
            event_bytes: args.event_bytes,
            function: args.function.clone(),
        };
        return crate::bench_sustained::run(&ramp, root).await;
    }
    println!(
        "sluice bench: {} events of ~{} B, batches of {}, {} connections, {} cores",
        args.events,
        args.event_bytes,
        args.batch,
        args.connections,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let fsync = fdatasync_rate(root, Duration::from_secs(2))?;
    println!(
        "fdatasync baseline:   {:>10.0} fsyncs/s   (p50 {:.2} ms, p99 {:.2} ms)",
        fsync.per_sec, fsync.p50_ms, fsync.p99_ms
    );

    let bodies = Arc::new(make_bodies(args, "noop"));
    let noop_addr = start_noop().await?;
    let noop = drive(
        &Load::plain(format!("http://{noop_addr}/"), args.batch),
        bodies,
        args.connections,
    )
    .await?;
    println!(
        "http no-op baseline:  {:>10.0} events/s   ({:.0} req/s, p50 {:.1} ms, p99 {:.1} ms)",
        noop.events_per_sec, noop.requests_per_sec, noop.p50_ms, noop.p99_ms
    );

    if args.protocols {
        return crate::bench_protocols::run(args, root, noop.events_per_sec).await;
    }
    // Read once; a config that cannot be used fails now, not after the file journal's run.
    let stores = match &args.jetstream_config {
        Some(path) => Some(Box::new(SharedStores::read(path)?)),
        None => None,
    };
    let file = pipeline(args, root, &Journal::File, (&noop, &fsync)).await?;
    let Some(url) = &args.jetstream else {
        return Ok(());
    };
    let jetstream = Journal::JetStream {
        url: url.clone(),
        monitor: args.jetstream_monitor.clone(),
        replicas: args.jetstream_replicas,
        stores,
    };
    let js = pipeline(args, root, &jetstream, (&noop, &fsync)).await;
    // Streams and buckets under the run's own prefix: nothing of the run stays on the server.
    let cleaned = match sluice_journal::JetStreamJournal::open(jetstream.config()).await {
        Ok(j) => tokio::task::spawn_blocking(move || j.delete_everything()).await?,
        Err(e) => Err(e),
    };
    if let Err(e) = cleaned {
        eprintln!(
            "warning: cannot delete the run's streams (prefix {}): {e}",
            bench_prefix()
        );
    }
    if let Journal::JetStream {
        stores: Some(stores),
        ..
    } = &jetstream
        && let Err(e) = stores.delete_run().await
    {
        eprintln!(
            "warning: cannot delete what the run wrote below {}: {e:#}",
            bench_prefix()
        );
    }
    let js = js?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0}%", 100.0 * a / b.max(1.0)),
        _ => "-".into(),
    };
    println!(
        "jetstream / file journal, same run: durable ingest {} ({:.0} vs {:.0} events/s per core), end to end {}, every stage {}",
        ratio(Some(js.ingest), Some(file.ingest)),
        js.ingest / cores,
        file.ingest / cores,
        ratio(js.end_to_end, file.end_to_end),
        ratio(js.every_stage, file.every_stage),
    );
    Ok(())
}

/// The journal a pipeline run uses.
enum Journal {
    /// The embedded file journal (the default).
    File,
    /// NATS JetStream at `url`, as in cluster mode, with `--jetstream-config`'s shared stores.
    JetStream {
        url: String,
        monitor: Option<String>,
        replicas: usize,
        stores: Option<Box<SharedStores>>,
    },
}

/// The prefix of the JetStream run's streams and buckets.
fn bench_prefix() -> String {
    format!("bench{}", std::process::id())
}

impl Journal {
    /// The journal configuration of a run on this journal.
    fn config(&self) -> sluice_journal::JournalConfig {
        let mut config = sluice_journal::JournalConfig::default();
        if let Journal::JetStream {
            url,
            monitor,
            replicas,
            ..
        } = self
        {
            config.backend = sluice_journal::JournalBackend::Jetstream;
            let js = &mut config.jetstream;
            js.urls = vec![url.clone()];
            js.monitor_urls = monitor.iter().cloned().collect();
            js.replicas = *replicas;
            js.prefix = bench_prefix();
            js.node = "bench".into();
        }
        config
    }
}

/// The shared stores of `--jetstream-config` that a cluster node would use: an object-store
/// lake and a Redis hot tier, each where that file puts it.
struct SharedStores {
    /// `[lake]`, when its root is an object store.
    lake: Option<sluice_lake::LakeConfig>,
    /// `[hot]`, when its backend is Redis.
    hot: Option<sluice_hot::HotConfig>,
}

impl SharedStores {
    fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = Config::from_file(path)?;
        let object_store = file
            .lake
            .root
            .as_deref()
            .is_some_and(|root| root.contains("://"));
        Ok(Self {
            lake: object_store.then_some(file.lake),
            hot: (file.hot.backend == sluice_hot::Backend::Redis).then_some(file.hot),
        })
    }

    /// `config` with these stores, each below the run's own prefix; what it uses, in words
    /// (`, the lake at …` for each).
    fn apply(&self, config: &mut Config) -> String {
        let mut used = Vec::new();
        if let Some(lake) = &self.lake {
            let root = lake.root.as_deref().unwrap_or_default();
            config.lake = sluice_lake::LakeConfig {
                root: Some(format!("{}/{}", root.trim_end_matches('/'), bench_prefix())),
                ..lake.clone()
            };
            used.push(format!(", the lake at {root}"));
        }
        if let Some(hot) = &self.hot {
            config.hot = sluice_hot::HotConfig {
                redis_prefix: self.run_redis_prefix(hot),
                ..hot.clone()
            };
            used.push(format!(", the hot tier in Redis at {}", hot.redis_url));
        }
        used.concat()
    }

    fn run_redis_prefix(&self, hot: &sluice_hot::HotConfig) -> String {
        format!("{}{}:", hot.redis_prefix, bench_prefix())
    }

    /// Deletes what the run wrote below its prefix in each store, and says how much.
    async fn delete_run(&self) -> anyhow::Result<()> {
        if let Some(lake) = &self.lake {
            let root = lake.lake_root(std::path::Path::new("."))?;
            let below = format!("{root}{}/", bench_prefix());
            let deleted = root
                .files(&bench_prefix())?
                .delete_all()
                .map_err(|e| anyhow::anyhow!("{below}: {e}"))?;
            println!("deleted the run's lake: {deleted} objects below {below}");
        }
        if let Some(hot) = &self.hot {
            let prefix = self.run_redis_prefix(hot);
            let deleted = sluice_hot::RedisStore::connect(&hot.redis_url, &prefix)
                .await?
                .delete_everything()
                .await?;
            println!("deleted the run's hot tier: {deleted} Redis keys under {prefix}");
        }
        Ok(())
    }
}

/// What one pipeline run measured, in events/s.
struct Figures {
    ingest: f64,
    /// `None` with `--ingest-only`.
    end_to_end: Option<f64>,
    /// Through every stage after the journal, the hot tier included; `None` with
    /// `--ingest-only`.
    every_stage: Option<f64>,
}

/// Durable ingest, end to end, every stage and ack → visible in SQL of a server on `journal`,
/// printed as they are measured.
async fn pipeline(
    args: &BenchArgs,
    root: &std::path::Path,
    journal: &Journal,
    (noop, fsync): (&LoadResult, &FsyncRate),
) -> anyhow::Result<Figures> {
    let name = match journal {
        Journal::File => "data",
        Journal::JetStream { .. } => "data-jetstream",
    };
    let data_dir = root.join(name);
    let mut config = Config {
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    if let Journal::JetStream { url, stores, .. } = journal {
        config.journal = journal.config();
        let stores = stores
            .as_ref()
            .map_or_else(String::new, |s| s.apply(&mut config));
        println!(
            "on a JetStream journal at {url}{stores} (prefix {}):",
            bench_prefix()
        );
    }
    if args.ingest_only {
        config.roles = vec!["collector".into()];
    }
    config.http = "127.0.0.1:0".parse()?;
    config.pg = "127.0.0.1:0".parse()?;
    let running = Server::start(config.validate()?).await?;
    let addr = running.http_addr.context("server has no http address")?;
    let bodies = Arc::new(make_bodies(args, name));
    let started = Instant::now();
    let ingest = drive(
        &Load::plain(format!("http://{addr}/v1/events"), args.batch),
        bodies,
        args.connections,
    )
    .await?;
    println!(
        "durable ingest:       {:>10.0} events/s   ({:.0} req/s, p50 {:.1} ms, p99 {:.1} ms; {:.0}% of no-op, {:.0} events per baseline fsync)",
        ingest.events_per_sec,
        ingest.requests_per_sec,
        ingest.p50_ms,
        ingest.p99_ms,
        100.0 * ingest.events_per_sec / noop.events_per_sec.max(1.0),
        ingest.events_per_sec / fsync.per_sec.max(1.0)
    );
    let mut figures = Figures {
        ingest: ingest.events_per_sec,
        end_to_end: None,
        every_stage: None,
    };
    if args.ingest_only {
        running.shutdown().await?;
        return Ok(figures);
    }
    let warehouse = Warehouse::open(config.lake_root()?)?;
    // End to end: every event through the runner and the lake sink, visible in SQL.
    let sent = args.events.div_ceil(args.batch) * args.batch;
    let deadline = started + Duration::from_secs(600);
    loop {
        if count(&warehouse, "SELECT count(*) AS n FROM events").await? == Some(sent) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "events not all visible after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e2e = started.elapsed();
    figures.end_to_end = Some(sent as f64 / e2e.as_secs_f64());
    println!(
        "end to end:           {:>10.0} events/s   ({sent} events from first request to all visible in SQL in {:.1} s)",
        sent as f64 / e2e.as_secs_f64(),
        e2e.as_secs_f64()
    );
    let client = reqwest::Client::new();
    let every_stage = caught_up(&client, &format!("http://{addr}"), started).await?;
    figures.every_stage = Some(sent as f64 / every_stage.as_secs_f64());
    println!(
        "every stage:          {:>10.0} events/s   (all {sent} events through every stage after the journal, the hot tier included, in {:.1} s)",
        sent as f64 / every_stage.as_secs_f64(),
        every_stage.as_secs_f64()
    );
    let mut latencies = Vec::new();
    for i in 0..5 {
        let id = format!("bench-visible-{}-{i}", std::process::id());
        let body = format!(r#"{{"event":"bench_marker","event_id":"{id}","user_id":"bench"}}"#);
        let resp = client
            .post(format!("http://{addr}/v1/events"))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "marker post failed: {}",
            resp.status()
        );
        let acked = Instant::now();
        let sql = format!("SELECT count(*) AS n FROM events WHERE event_id = '{id}'");
        let deadline = acked + Duration::from_secs(60);
        loop {
            if count(&warehouse, &sql).await? == Some(1) {
                latencies.push(acked.elapsed());
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "event {id} not visible after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    latencies.sort();
    println!(
        "ack -> visible in SQL: p50 {:.0} ms, max {:.0} ms (lake flush interval 2 s)",
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0
    );
    running.shutdown().await?;
    Ok(figures)
}

/// How long after `started` every stage after the journal had no lag left (from `/health`).
async fn caught_up(
    client: &reqwest::Client,
    base: &str,
    started: Instant,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let lags = crate::bench_sustained::lags(client, base).await?;
        if lags.values().all(|lag| *lag == 0) {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stages did not catch up within 600 s: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every series of metric `name` (all its labels) in a Prometheus text exposition
/// (`/metrics`); 0 when it has none.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The single number a `SELECT count(*)` query answers; `None` while its table does not exist
/// yet (on a shared journal the sinks create their tables once the pipeline lease is taken).
async fn count(warehouse: &Warehouse, sql: &str) -> anyhow::Result<Option<usize>> {
    let answer = match warehouse.query(sql).await {
        Err(sluice_warehouse::WarehouseError::TableNotFound { .. }) => return Ok(None),
        answer => answer?,
    };
    let text = sluice_warehouse::format::to_csv(&answer)?;
    Ok(text.lines().nth(1).and_then(|n| n.trim().parse().ok()))
}

pub(crate) struct FsyncRate {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub(crate) fn fdatasync_rate(dir: &std::path::Path, budget: Duration) -> anyhow::Result<FsyncRate> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![7u8; 4096];
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        f.write_all(&block)?;
        let t = Instant::now();
        // SAFETY: fdatasync on a file descriptor we own and keep open for the call.
        let rc = unsafe { libc::fdatasync(f.as_raw_fd()) };
        anyhow::ensure!(
            rc == 0,
            "fdatasync failed: {}",
            std::io::Error::last_os_error()
        );
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort();
    let pct = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    Ok(FsyncRate {
        per_sec: times.len() as f64 / total.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

/// NDJSON bodies of `batch` events each (as `Bytes`, so that sending one copies nothing), every event with a unique id and ~`event_bytes` bytes.
fn make_bodies(args: &BenchArgs, tag: &str) -> Vec<bytes::Bytes> {
    let run = std::process::id();
    let pad_len = args.event_bytes.saturating_sub(260).max(1);
    let pad: String = "x".repeat(pad_len);
    let n_bodies = args.events.div_ceil(args.batch);
    (0..n_bodies)
        .map(|b| {
            let mut body = Vec::with_capacity(args.batch * args.event_bytes);
            for i in 0..args.batch {
                let seq = b * args.batch + i;
                let line = format!(
                    r#"{{"event":"Page Viewed","event_id":"{tag}-{run}-{seq:09}","user_id":"user-{}","timestamp":"2026-11-27T10:{:02}:{:02}.000Z","properties":{{"path":"/products/{}","referrer":"https://example.com/","value":{},"pad":"{pad}"}},"context":{{"library":{{"name":"bench","version":"1"}}}}}}"#,
                    seq % 10_000,
                    (seq / 60) % 60,
                    seq % 60,
                    seq % 997,
                    seq % 1000
                );
                body.extend_from_slice(line.as_bytes());
                body.push(b'\n');
            }
            bytes::Bytes::from(body)
        })
        .collect()
}

pub(crate) struct LoadResult {
    pub(crate) events_per_sec: f64,
    pub(crate) requests_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Where and how to send a load: every body carries `events_per_body` events.
pub(crate) struct Load {
    pub(crate) url: String,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) events_per_body: usize,
    /// A text every successful answer contains (Kinesis answers 200 with per-record failures).
    pub(crate) must_contain: Option<&'static str>,
}

impl Load {
    pub(crate) fn plain(url: String, events_per_body: usize) -> Self {
        Self {
            url,
            headers: Vec::new(),
            events_per_body,
            must_contain: None,
        }
    }
}

pub(crate) async fn drive(
    load: &Load,
    bodies: Arc<Vec<bytes::Bytes>>,
    connections: usize,
) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let client = client.clone();
        let bodies = bodies.clone();
        let next = next.clone();
        let url = load.url.clone();
        let headers = load.headers.clone();
        let per_body = load.events_per_body;
        let must_contain = load.must_contain;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut events = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let mut req = client.post(&url).body(body.clone());
                for (k, v) in &headers {
                    req = req.header(*k, v);
                }
                let resp = req.send().await?;
                let status = resp.status();
                let text = resp.bytes().await?;
                anyhow::ensure!(
                    status.is_success()
                        && must_contain
                            .is_none_or(|m| { text.windows(m.len()).any(|w| w == m.as_bytes()) }),
                    "{status}: {}",
                    String::from_utf8_lossy(&text)
                );
                lat.push(t.elapsed());
                events += per_body;
            }
            anyhow::Ok((lat, events))
        });
    }
    let mut lat = Vec::new();
    let mut events = 0;
    while let Some(r) = tasks.join_next().await {
        let (l, e) = r??;
        lat.extend(l);
        events += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(LoadResult {
        events_per_sec: events as f64 / secs,
        requests_per_sec: lat.len() as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

pub(crate) async fn start_noop() -> anyhow::Result<std::net::SocketAddr> {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/",
            post(|body: axum::body::Bytes| async move {
                // Read the whole body, as an ingest server must, then answer at once.
                let n = body.iter().filter(|b| **b == b'\n').count();
                format!(r#"{{"accepted":{n},"duplicates":0,"rejected":[]}}"#)
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn a_metric_sums_over_its_labels_and_no_other_metric() {
        let text = "# HELP sluice_x things\n\
                    sluice_x{kind=\"a\"} 2\n\
                    sluice_x{kind=\"b\"} 3.5\n\
                    sluice_x_total 100\n\
                    sluice_y 7\n";
        assert_eq!(metric_sum(text, "sluice_x"), 5.5);
        assert_eq!(metric_sum(text, "sluice_y"), 7.0);
        assert_eq!(metric_sum(text, "sluice_z"), 0.0);
    }
}
