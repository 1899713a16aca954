//! The lake's two sinks of `good`, each measured alone: `good` (4 partitions, by user) filled
//! beforehand with the hot projection benchmark's events (`sluice_predict::bench::fill_good`:
//! canonical events carrying a tracker's context and the enrichers' fields, as the runner
//! writes them), then the `events` sink, then the typed-table sink, each into a fresh local
//! lake with the default settings. Each sink starts already told to stop, so it delivers
//! everything in `good` in batches of `flush_max_events` and returns; its time is from its
//! start to its return.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sluice_journal::{Journal, JournalConfig, LocalJournal};
use sluice_lake::{LakeConfig, LakeRoot, LakeSink, TypedSink};
use sluice_predict::bench::{BenchError, Filled, fill_good};
use tokio_util::sync::CancellationToken;

/// A sink of `good` into the lake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// `events`: every event as it is, one row each.
    Events,
    /// The typed tables: one table per event name, one column per property.
    Typed,
}

impl Sink {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Typed => "typed tables",
        }
    }

    /// Delivers all of `good` into a lake at `root`; the seconds that took.
    async fn drain(self, journal: Arc<dyn Journal>, root: LakeRoot) -> Result<f64, BenchError> {
        let settings = LakeConfig::default().validate()?;
        let stop = CancellationToken::new();
        stop.cancel();
        let t = Instant::now();
        match self {
            Self::Events => LakeSink::new(journal, root, settings).run(stop).await?,
            Self::Typed => TypedSink::new(journal, root, settings).run(stop).await?,
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// One sink's run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Which sink.
    pub sink: Sink,
    /// Events delivered.
    pub events: usize,
    /// Their encoded bytes in `good`.
    pub bytes: usize,
    /// Seconds until it had delivered them all.
    pub secs: f64,
}

impl Run {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, events, secs, rate) = (self.sink.name(), self.events, self.secs, self.rate());
        let size = self.bytes / events.max(1);
        write!(
            f,
            "lake sink alone, {name:<12}: {events} events ({size} B each on average) in {secs:.2} s = {rate:.0} events/s (local lake, default settings)"
        )
    }
}

/// Fills `good` under `root` with the synthetic stream of `users` users once, then drains it
/// with each sink in turn.
pub async fn sinks_alone(root: &Path, users: usize) -> Result<Vec<Run>, BenchError> {
    let journal = LocalJournal::open(JournalConfig {
        dir: root.join("journal"),
        ..JournalConfig::default()
    })?;
    let Filled { events, bytes, .. } = fill_good(journal.as_ref(), users).await?;
    let mut runs = Vec::new();
    for sink in [Sink::Events, Sink::Typed] {
        let dir = root.join(sink.name().replace(' ', "-"));
        std::fs::create_dir_all(&dir)?;
        let secs = sink
            .drain(journal.clone(), LakeRoot::from_path(&dir)?)
            .await?;
        runs.push(Run {
            sink,
            events,
            bytes,
            secs,
        });
    }
    Ok(runs)
}
