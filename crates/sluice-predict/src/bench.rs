//! The hot projection measured alone, as the server runs it but with nothing else on the cores:
//! `good` (4 partitions, by user) filled beforehand with the synthetic stream as canonical
//! events carrying a tracker's context and the enrichers' fields, then a [`Projector`] with README's counters and
//! model into an embedded store, timed from its start until its positions reach the end.
//!
//! Shared by `sluice bench --projection` (the release binary) and
//! `cargo bench -p sluice-predict --bench projection`, which builds only the crates the stage
//! needs and so is the quick loop for profiling it.

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use sluice_event::{Enrichment, Event, topic};
use sluice_hot::{HotConfig, HotSettings, Projector};
use sluice_journal::{Journal, JournalConfig, LocalJournal, partition_for};

use crate::{Models, PredictConfig, PredictSettings, synthetic};

/// What the functions here fail with: any of the stage's own errors, as they are.
pub type BenchError = Box<dyn Error + Send + Sync>;

/// README's example hot tier and model: the work the projection does per event.
pub const HOT_AND_MODEL: &str = r#"
[hot]
recent_events = 10
session_timeout = "30m"

[[hot.counters]]
name = "views_1h"
events = ["Product Viewed"]
key = "user"
aggregate = "count"
window = "1h"

[[hot.counters]]
name = "spend_24h"
events = ["Order Completed"]
aggregate = "sum"
property = "revenue"
window = "24h"
kind = "sliding"
step = "1h"

[[hot.counters]]
name = "top_categories_24h"
aggregate = "top_k"
property = "category"
k = 5
window = "24h"
kind = "sliding"

[[predict.models]]
name = "purchase_30m"
outcome = "Order Completed"
horizon = "30m"
examples = ["Product Viewed"]
"#;

/// Partitions of the `good` topic the benchmark fills.
const PARTITIONS: u32 = 4;
/// Records per append.
const APPEND_CHUNK: usize = 2000;

/// What [`fill_good`] wrote.
#[derive(Clone, Debug)]
pub struct Filled {
    /// Each partition's end.
    pub ends: Vec<u64>,
    /// Events written.
    pub events: usize,
    /// Their encoded bytes.
    pub bytes: usize,
}

/// [`HOT_AND_MODEL`] as settings, with the store and the models under `dir`.
pub fn readme_settings(dir: &Path) -> Result<(HotSettings, PredictSettings), BenchError> {
    #[derive(Deserialize)]
    struct Sections {
        hot: HotConfig,
        predict: PredictConfig,
    }
    let mut sections: Sections = toml::from_str(HOT_AND_MODEL)?;
    sections.hot.dir = dir.join("hot");
    sections.predict.dir = dir.join("models");
    Ok((sections.hot.validate()?, sections.predict.validate()?))
}

/// One run of [`projection_alone`].
#[derive(Clone, Debug)]
pub struct Run {
    /// `cache off` or `default cache`.
    pub name: &'static str,
    /// Events projected.
    pub events: usize,
    /// Their encoded bytes.
    pub bytes: usize,
    /// Seconds until the projection reached the end.
    pub secs: f64,
    /// The first run's rate, when this is not the first.
    pub baseline: Option<f64>,
}

impl Run {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, events, secs, rate) = (self.name, self.events, self.secs, self.rate());
        let size = self.bytes / events.max(1);
        write!(
            f,
            "hot projection alone, {name:<13}: {events} events ({size} B each on average) in {secs:.2} s = {rate:.0} events/s"
        )?;
        if let Some(b) = self.baseline {
            write!(f, ", {:.2}x the cache off", rate / b)?;
        }
        f.write_str(" (profile, README's three counters and model, embedded store, one atomic write per batch)")
    }
}

/// A stage benchmark's one argument: the first that is not a flag (`cargo bench` passes
/// `--bench`) as a number of `what` (`USERS`, `EVENTS`), else `default`.
pub fn number_argument(what: &str, default: usize) -> Result<usize, BenchError> {
    match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(arg) => Ok(arg
            .parse()
            .map_err(|e| format!("{what} must be a number, not {arg:?}: {e}"))?),
        None => Ok(default),
    }
}

/// The body of a stage benchmark's `main`: the number of users from [`number_argument`], a
/// temporary directory, the runs `measure` makes there, printed one per line.
pub fn bench_main<R, F>(
    default_users: usize,
    measure: impl FnOnce(std::path::PathBuf, usize) -> F,
) -> Result<(), BenchError>
where
    R: std::fmt::Display,
    F: std::future::Future<Output = Result<Vec<R>, BenchError>>,
{
    let users = number_argument("USERS", default_users)?;
    let root = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let runs = runtime.block_on(measure(root.path().to_path_buf(), users))?;
    #[allow(clippy::print_stdout)] // A benchmark's report is its output.
    for run in runs {
        println!("{run}");
    }
    Ok(())
}

/// Fills `good` under `root` once, then projects it twice, each into a fresh store with fresh
/// models: first with the value cache off (the baseline), then with the default cache.
pub async fn projection_alone(root: &Path, users: usize) -> Result<Vec<Run>, BenchError> {
    let dir = root.join("projection");
    let journal = LocalJournal::open(JournalConfig {
        dir: dir.join("journal"),
        ..JournalConfig::default()
    })?;
    let filled = fill_good(journal.as_ref(), users).await?;
    let mut runs: Vec<Run> = Vec::new();
    for (name, cache) in [("cache off", Some(0)), ("default cache", None)] {
        let (mut hot, predict) = readme_settings(&dir.join(name.replace(' ', "-")))?;
        if let Some(bytes) = cache {
            hot.cache_bytes = bytes;
        }
        let secs = project_to(journal.clone(), &filled.ends, hot, &predict).await?;
        runs.push(Run {
            name,
            events: filled.events,
            bytes: filled.bytes,
            secs,
            baseline: runs.first().map(Run::rate),
        });
    }
    Ok(runs)
}

/// Fills `good` (created here) with the synthetic stream of `users` users, by user.
pub async fn fill_good(journal: &dyn Journal, users: usize) -> Result<Filled, BenchError> {
    journal.create_topic(topic::GOOD, PARTITIONS)?;
    let stream = synthetic::generate(44, users, 10);
    let mut by_partition: Vec<Vec<bytes::Bytes>> = vec![Vec::new(); PARTITIONS as usize];
    let mut bytes = 0usize;
    for event in &stream.events {
        let encoded = bytes::Bytes::from(serde_json::to_vec(&with_context(event.clone())?)?);
        bytes += encoded.len();
        let user = event.user_id.as_deref().unwrap_or_default();
        by_partition[partition_for(user, PARTITIONS) as usize].push(encoded);
    }
    let mut ends = Vec::new();
    for (p, records) in by_partition.into_iter().enumerate() {
        ends.push(records.len() as u64);
        for chunk in records.chunks(APPEND_CHUNK) {
            journal
                .append(topic::GOOD, p as u32, chunk.to_vec())
                .await?;
        }
    }
    Ok(Filled {
        ends,
        events: stream.events.len(),
        bytes,
    })
}

/// Runs a projector (with the models as its hook) from the start of `good` until it reaches
/// `ends`; the seconds that took.
pub async fn project_to(
    journal: Arc<dyn Journal>,
    ends: &[u64],
    hot: HotSettings,
    predict: &PredictSettings,
) -> Result<f64, BenchError> {
    let store = sluice_hot::open_store(&hot).await?;
    let models = Models::open(predict)?;
    let projector = Projector::new(journal, store, Arc::new(hot)).with_hook(Box::new(models));
    let progress = projector.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = Instant::now();
    let task = tokio::spawn(projector.run(async move {
        let _ = stopped.await;
    }));
    progress.wait_for_offsets(ends).await?;
    let secs = t.elapsed().as_secs_f64();
    let _ = stop.send(());
    task.await??;
    Ok(secs)
}

/// `event` with the context an analytics.js page view carries and what the default enrichers
/// derive from it, as the runner writes it to `good`.
fn with_context(mut event: Event) -> Result<Event, BenchError> {
    let context = serde_json::json!({
        "ip": "203.0.113.0",
        "locale": "en-US",
        "library": {"name": "analytics.js", "version": "4.1.0"},
        "page": {
            "url": "https://shop.example.com/products/widget?utm_source=news",
            "path": "/products/widget",
            "referrer": "https://www.google.com/",
            "title": "Widget | Example Shop"
        },
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "campaign": {"source": "news"},
        "ua": {"browser": "Chrome", "browser_version": "120.0.0.0", "os": "Windows", "device": "desktop"},
        "geo": {"country": "DE", "city": "Berlin"},
        "session": {"id": "s-1", "index": 3}
    });
    event.context = serde_json::value::to_raw_value(&context)?;
    let text = |s: &str| Some(s.to_string());
    event.enriched = Enrichment {
        ip: text("203.0.113.0"),
        ua_browser: text("Chrome"),
        ua_browser_version: text("120.0.0.0"),
        ua_os: text("Windows"),
        ua_os_version: text("10"),
        ua_device_class: text("desktop"),
        ua_vendor: text("Google"),
        is_bot: Some(false),
        geo_country: text("DE"),
        geo_region: text("BE"),
        geo_city: text("Berlin"),
        geo_latitude: Some(52.52),
        geo_longitude: Some(13.405),
        geo_timezone: text("Europe/Berlin"),
        page_url: text("https://shop.example.com/products/widget?utm_source=news"),
        page_host: text("shop.example.com"),
        page_path: text("/products/widget"),
        mkt_source: text("news"),
        refr_medium: text("search"),
        refr_source: text("Google"),
        refr_host: text("www.google.com"),
        session_id: text("s-1"),
        session_index: Some(3),
        event_fingerprint: text("9f2c4e7a1b3d5f60"),
        ..Enrichment::default()
    };
    Ok(event)
}
