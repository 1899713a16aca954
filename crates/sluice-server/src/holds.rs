//! Retention holds: which consumers of `raw`, `good` and `bad` journal retention must wait for,
//! and keeping their positions in the journal so it can.
//!
//! The journal keeps every record at or past the slowest registered consumer's committed
//! position (`sluice-journal/src/retention.rs`); here the server decides who is registered:
//!
//! | consumer (group) | topic | registered |
//! |---|---|---|
//! | `functions` (the runner) | raw | always; it commits its own position |
//! | `lake-events`, `lake-bad_rows` | good, bad | always: the lake is the system of record |
//! | `lake-typed` | good | while `[lake] typed_tables` is on |
//! | `loader` | good | while `[loader]` is configured |
//! | `hot` | good | from the first start with the hot role |
//!
//! Registration depends on the configuration, not on the roles this process runs: a node
//! started with `--role collector,runner` still keeps `good` for the lake that runs later on
//! the same data directory. A consumer registers at the partition's start, so nothing it has not
//! read can go before its first position arrives. While a consumer runs in this process its
//! position (the next offset its table or store holds) is written every second and once more at
//! shutdown; the position only ever trails what the consumer made durable, so retention errs on
//! the side of keeping. Only the delivery bookkeeping (Delta txns, hot-store positions,
//! `_sluice_positions`) decides where a consumer resumes; these files are never read for that.
//!
//! A consumer removed from the configuration (`typed_tables = false`, `[loader]` gone) is
//! unregistered at the next start, with a warning: the configuration is the list of consumers
//! (one process owns a data directory). The hot projection has no switch in the configuration;
//! once it has run, it holds `good` until its files (`<journal>/good/<p>/consumers/hot`) are
//! removed by hand, or until `max_unread_bytes` applies.
//!
//! On the JetStream journal nothing is registered (the streams' own limits decide retention),
//! but the positions are still kept, in the journal's positions bucket: they are what the
//! journal compares with each stream's first offset to report records removed unread.

use std::sync::Arc;
use std::time::Duration;

use sluice_event::topic;
use sluice_journal::{ConsumerProgress, ConsumerStatus, Journal, LocalJournal};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::ServerError;

/// How often the positions of running consumers are written.
const KEEP_EVERY: Duration = Duration::from_secs(1);

/// The runner's consumer group on `raw` (it commits its position itself).
pub(crate) const RUNNER: &str = sluice_collector::RUNNER_GROUP;
/// The `events` table's sink.
pub(crate) const LAKE_EVENTS: &str = "lake-events";
/// The `bad_rows` table's sink.
pub(crate) const LAKE_BAD_ROWS: &str = "lake-bad_rows";
/// The typed tables' sink.
pub(crate) const LAKE_TYPED: &str = "lake-typed";
/// The Postgres/Redshift loader.
pub(crate) const LOADER: &str = "loader";
/// The hot projection.
pub(crate) const HOT: &str = "hot";

/// Every consumer group with the topic it reads, in pipeline order (`/v1/cluster`).
pub(crate) const GROUPS: [(&str, &str); 6] = [
    (RUNNER, topic::RAW),
    (LAKE_EVENTS, topic::GOOD),
    (LAKE_TYPED, topic::GOOD),
    (LOADER, topic::GOOD),
    (HOT, topic::GOOD),
    (LAKE_BAD_ROWS, topic::BAD),
];

/// Registers the configured consumers (and the hot projection when this process runs it) and
/// unregisters those the configuration no longer has. Blocking file IO.
pub(crate) fn register(journal: &LocalJournal, settings: &Settings) -> Result<(), ServerError> {
    let err = |e| ServerError::stage("journal", e);
    let mut wanted = vec![
        (RUNNER, topic::RAW),
        (LAKE_EVENTS, topic::GOOD),
        (LAKE_BAD_ROWS, topic::BAD),
    ];
    let optional = [
        (LAKE_TYPED, topic::GOOD, settings.lake.typed_tables),
        (LOADER, topic::GOOD, settings.loader.is_some()),
    ];
    for (group, topic, on) in optional {
        if on {
            wanted.push((group, topic));
        } else if journal.unregister_consumer(group, topic).map_err(err)? > 0 {
            tracing::warn!(
                consumer = group,
                topic,
                "consumer is no longer configured: retention stops keeping {topic} for it"
            );
        }
    }
    if settings.roles.hot {
        wanted.push((HOT, topic::GOOD));
    }
    for (group, topic) in wanted {
        let added = journal.register_consumer(group, topic).map_err(err)?;
        if added > 0 {
            tracing::info!(
                consumer = group,
                topic,
                partitions = added,
                "registered a consumer: retention keeps what it has not read"
            );
        }
    }
    Ok(())
}

/// A running consumer whose position is kept in the journal.
pub(crate) struct Watched {
    group: &'static str,
    topic: &'static str,
    /// The next offset per partition, once the consumer knows them.
    read: Box<dyn Fn() -> Option<Vec<u64>> + Send + Sync>,
    written: Vec<u64>,
}

/// Watches `progress` as consumer `group` of `topic`.
pub(crate) fn watch<S: ConsumerStatus>(
    group: &'static str,
    topic: &'static str,
    progress: ConsumerProgress<S>,
) -> Watched {
    Watched {
        group,
        topic,
        read: Box::new(move || {
            let status = progress.status();
            status.started().then(|| status.next_offsets().to_vec())
        }),
        written: Vec::new(),
    }
}

/// Writes the positions of `watched` every second until `stop`, then once more (the stages have
/// drained by then).
pub(crate) async fn keep(
    journal: Arc<dyn Journal>,
    watched: Vec<Watched>,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    let mut watched = watched;
    let mut every = tokio::time::interval(KEEP_EVERY);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = every.tick() => false,
        };
        let j = journal.clone();
        watched = tokio::task::spawn_blocking(move || {
            for w in &mut watched {
                write_positions(j.as_ref(), w);
            }
            watched
        })
        .await
        .map_err(|e| ServerError::stage("retention", e))?;
        if stopping {
            return Ok(());
        }
    }
}

/// Commits the positions of `w` that changed since the last write.
fn write_positions(journal: &dyn Journal, w: &mut Watched) {
    let Some(next) = (w.read)() else {
        return;
    };
    w.written.resize(next.len(), u64::MAX);
    for (p, (&n, done)) in next.iter().zip(w.written.iter_mut()).enumerate() {
        if n == *done {
            continue;
        }
        match journal.commit(w.group, w.topic, p as u32, n) {
            Ok(()) => *done = n,
            // A quarantined or failed journal says so elsewhere; try again next time.
            Err(e) => {
                tracing::debug!(consumer = w.group, topic = w.topic, partition = p, error = %e, "cannot write a consumer position")
            }
        }
    }
}

/// How often retention runs: often enough for a short `retention_age` to act in time, at most
/// once a second and at least once a minute.
pub(crate) fn retention_every(retention_age: Duration) -> Duration {
    (retention_age / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
