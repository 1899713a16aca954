//! [`Runner`]: one task per `raw` partition, raw → canonical → good/bad, exactly once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use sluice_event::{Position, topic};
use sluice_journal::{Journal, JournalError};
use tokio_util::sync::CancellationToken;

use crate::enrich::{Sessions, load_sessions, save_sessions};
use crate::{Chain, FunctionsError, RunnerSettings};

/// How often a partition's session state is saved (it is also saved when the runner drains).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);

/// The consumer group under which the runner records its `raw` progress. The collector reads it
/// to measure the backlog; the exactly-once resume point comes from `good`/`bad`, not from here.
pub const GROUP: &str = "functions";

/// How often the runner records its progress in the consumer group.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Per-partition progress: the next raw offset to process.
#[derive(Debug)]
pub struct Progress {
    next: Vec<AtomicU64>,
}

impl Progress {
    /// The next raw offset partition `p` will process.
    pub fn next(&self, p: u32) -> u64 {
        self.next
            .get(p as usize)
            .map_or(0, |n| n.load(Ordering::Acquire))
    }
}

/// Drives every raw partition through the function chain.
pub struct Runner {
    journal: Arc<dyn Journal>,
    settings: RunnerSettings,
    chain: Arc<Chain>,
    state_dir: Option<PathBuf>,
    partitions: u32,
    progress: Arc<Progress>,
}

impl Runner {
    /// Checks the topics and builds the runner. Each raw record goes through `chain`;
    /// `state_dir`, when given, keeps the session snapshots (without it the sessions are
    /// rebuilt from nothing on every start).
    pub fn new(
        journal: Arc<dyn Journal>,
        settings: RunnerSettings,
        chain: Arc<Chain>,
        state_dir: Option<PathBuf>,
    ) -> Result<Self, FunctionsError> {
        let counts = [
            journal.partitions(topic::RAW)?,
            journal.partitions(topic::GOOD)?,
            journal.partitions(topic::BAD)?,
        ];
        if counts[0] != counts[1] || counts[0] != counts[2] {
            return Err(FunctionsError::PartitionMismatch(counts));
        }
        let progress = Arc::new(Progress {
            next: (0..counts[0]).map(|_| AtomicU64::new(0)).collect(),
        });
        Ok(Self {
            journal,
            settings,
            chain,
            state_dir,
            partitions: counts[0],
            progress,
        })
    }

    /// Progress, for metrics and drain checks.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Runs until `shutdown`, then processes everything appended to `raw` before the shutdown and
    /// returns. Returns early with an error only when the journal fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), FunctionsError> {
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..self.partitions {
            let worker = PartitionWorker {
                journal: self.journal.clone(),
                partition: p,
                batch_size: self.settings.batch_size,
                progress: self.progress.clone(),
                chain: self.chain.clone(),
                snapshot: self
                    .state_dir
                    .as_ref()
                    .map(|d| d.join("sessions").join(format!("{p}.json"))),
            };
            let shutdown = shutdown.clone();
            tasks.spawn(async move { worker.run(shutdown).await });
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "runner partition stopped");
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "runner partition task panicked");
                    if result.is_ok() {
                        result = Err(FunctionsError::Journal(JournalError::Failed(e.to_string())));
                    }
                }
            }
        }
        result
    }
}

struct PartitionWorker {
    journal: Arc<dyn Journal>,
    partition: u32,
    batch_size: usize,
    progress: Arc<Progress>,
    chain: Arc<Chain>,
    snapshot: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawOf {
    raw: Position,
}

impl PartitionWorker {
    async fn run(self, shutdown: CancellationToken) -> Result<(), FunctionsError> {
        let p = self.partition;
        let last_good = self.last_raw_offset(topic::GOOD)?;
        let last_bad = self.last_raw_offset(topic::BAD)?;
        let mut next = last_good.map_or(0, |o| o + 1);
        let raw_start = self.journal.start(topic::RAW, p)?;
        next = next.max(raw_start);
        let mut sessions = self.restore_sessions(next, raw_start)?;
        let mut last_snapshot = Instant::now();
        tracing::info!(partition = p, next, ?last_good, ?last_bad, "runner resumes");
        self.progress.next[p as usize].store(next, Ordering::Release);
        let mut last_commit = Instant::now();
        let mut committed = self.journal.committed(GROUP, topic::RAW, p)?;
        let mut drain_to: Option<u64> = None;
        loop {
            if drain_to.is_none() && shutdown.is_cancelled() {
                drain_to = Some(self.journal.end(topic::RAW, p)?);
            }
            if let Some(target) = drain_to
                && next >= target
            {
                break;
            }
            // The end is read before the records: an empty read then proves that nothing exists
            // in [next, end) (a gap a crash left behind, or retention), so `next` may move there.
            let end = self.journal.end(topic::RAW, p)?;
            let records = self
                .journal
                .read(topic::RAW, p, next, self.batch_size, 16 << 20)?;
            let Some(last) = records.last() else {
                if end > next {
                    next = end;
                    self.progress.next[p as usize].store(next, Ordering::Release);
                }
                // Caught up: record the position now, so the collector's backlog measure
                // (end − committed) is zero rather than stale.
                if committed != Some(next) {
                    self.journal.commit(GROUP, topic::RAW, p, next)?;
                    committed = Some(next);
                    last_commit = Instant::now();
                }
                if drain_to.is_some() {
                    break;
                }
                tokio::select! {
                    _ = self.journal.wait_for(topic::RAW, p, next, Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            };
            let last_offset = last.offset;
            let mut good = Vec::with_capacity(records.len());
            let mut bad = Vec::new();
            for r in &records {
                let pos = Position {
                    partition: p,
                    offset: r.offset,
                };
                match self.chain.process(&r.value, pos, &mut sessions) {
                    Ok(bytes) => good.push(bytes),
                    Err(row) => {
                        if last_bad.is_none_or(|b| r.offset > b) {
                            bad.push(row);
                        }
                    }
                }
            }
            crate::metrics::processed(good.len(), bad.len());
            // Bad first: once a good record with a higher raw offset is durable, the resume
            // point moves past these events, so their bad rows must already be durable.
            self.append_retrying(topic::BAD, bad).await?;
            self.append_retrying(topic::GOOD, good).await?;
            next = last_offset + 1;
            self.progress.next[p as usize].store(next, Ordering::Release);
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.journal.commit(GROUP, topic::RAW, p, next)?;
                committed = Some(next);
                last_commit = Instant::now();
            }
            if last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                self.save_sessions(next, &sessions).await;
                last_snapshot = Instant::now();
            }
        }
        if committed != Some(next) {
            self.journal.commit(GROUP, topic::RAW, p, next)?;
        }
        self.save_sessions(next, &sessions).await;
        tracing::info!(partition = p, next, "runner drained");
        Ok(())
    }

    /// The session state as of raw offset `next`: the last snapshot, brought forward by running
    /// the raw records after it through the chain again (outputs discarded; they are already in
    /// `good`/`bad`). The chain is deterministic for sessions, so this gives the state the
    /// runner had.
    fn restore_sessions(&self, next: u64, raw_start: u64) -> Result<Sessions, FunctionsError> {
        let p = self.partition;
        if !self.chain.uses_sessions() {
            return Ok(Sessions::default());
        }
        let (mut from, mut sessions) = match self.snapshot.as_deref().and_then(load_sessions) {
            Some(s) if s.next <= next => (s.next, s.sessions),
            Some(s) => {
                tracing::warn!(
                    partition = p,
                    snapshot = s.next,
                    next,
                    "session snapshot is ahead of the output; rebuilding"
                );
                (raw_start, Sessions::default())
            }
            None => (raw_start, Sessions::default()),
        };
        from = from.max(raw_start);
        let started = Instant::now();
        let mut replayed = 0usize;
        while from < next {
            let records = self
                .journal
                .read(topic::RAW, p, from, self.batch_size, 16 << 20)?;
            let Some(last) = records.last() else {
                break;
            };
            let last = last.offset;
            for r in records.iter().filter(|r| r.offset < next) {
                let pos = Position {
                    partition: p,
                    offset: r.offset,
                };
                let _ = self.chain.process_uncounted(&r.value, pos, &mut sessions);
                replayed += 1;
            }
            from = last + 1;
        }
        if replayed > 0 {
            tracing::info!(partition = p, replayed, elapsed = ?started.elapsed(), "session state rebuilt");
        }
        Ok(sessions)
    }

    async fn save_sessions(&self, next: u64, sessions: &Sessions) {
        let Some(path) = &self.snapshot else {
            return;
        };
        if !self.chain.uses_sessions() {
            return;
        }
        // Serialising a large map is CPU work: keep it off the async workers.
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => save_sessions(path, next, sessions),
            _ => tokio::task::block_in_place(|| save_sessions(path, next, sessions)),
        };
        if let Err(e) = result {
            tracing::warn!(partition = self.partition, error = %e, "cannot save the session snapshot");
        }
    }

    /// The highest raw offset recorded in the tail of an output topic's partition.
    fn last_raw_offset(&self, out: &str) -> Result<Option<u64>, FunctionsError> {
        let p = self.partition;
        let start = self.journal.start(out, p)?;
        let mut end = self.journal.end(out, p)?;
        while end > start {
            let from = end.saturating_sub(64).max(start);
            let records = self.journal.read(out, p, from, 64, 1 << 20)?;
            let found = records.iter().rev().find_map(|r| {
                serde_json::from_slice::<RawOf>(&r.value)
                    .ok()
                    .map(|x| x.raw.offset)
            });
            if found.is_some() {
                return Ok(found);
            }
            end = from;
        }
        Ok(None)
    }

    async fn append_retrying(&self, out: &str, records: Vec<Bytes>) -> Result<(), FunctionsError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match self
                .journal
                .append(out, self.partition, records.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind().is_retryable() && !self.journal.is_failed() => {
                    tracing::warn!(topic = out, partition = self.partition, error = %e, "append failed; retrying");
                    crate::metrics::retried();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
