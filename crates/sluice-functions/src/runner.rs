//! [`Runner`]: one task per `raw` partition, raw → canonical → good/bad, exactly once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use sluice_event::{Position, topic};
use sluice_journal::{
    Backoff, ConsumerProgress, ConsumerStatus, Cursor, Journal, JournalError, Record, StageHealth,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::chain::Outcome;
use crate::enrich::{Sessions, load_sessions, save_sessions};
use crate::udf::Live;
use crate::{Chain, FunctionsError, RunnerSettings};

/// How often a partition's session state is saved (it is also saved when the runner drains).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);

/// The consumer group under which the runner records its `raw` progress. The collector reads it
/// to measure the backlog; the exactly-once resume point comes from `good`/`bad`, not from here.
pub const GROUP: &str = "functions";

/// How often the runner records its progress in the consumer group.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Bytes read from `raw` at a time, about.
const READ_BYTES: usize = 16 << 20;

/// Retries of a failed append to `good`/`bad`: first wait and cap.
const APPEND_RETRY_INITIAL: Duration = Duration::from_millis(50);
const APPEND_RETRY_MAX: Duration = Duration::from_secs(5);
/// Failed attempts after which a retry loop gives up once shutdown began (the process then
/// exits; the next start resumes from what is durable).
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// The runner's position: per partition, the next raw offset to process (every raw record
/// below it has its outputs durable in `good`/`bad`). It starts at 0 and each partition
/// publishes its resume point when it starts, so it is a lower bound from the first moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerStatus {
    /// Per partition: the next raw offset to process.
    pub next_offsets: Vec<u64>,
}

impl ConsumerStatus for RunnerStatus {
    fn started(&self) -> bool {
        true
    }
    /// The runner's end shows as its channel closing (the runner and its partitions dropped).
    fn stopped(&self) -> bool {
        false
    }
    fn next_offsets(&self) -> &[u64] {
        &self.next_offsets
    }
}

/// A handle on the runner's progress through `raw`.
pub type RunnerProgress = ConsumerProgress<RunnerStatus>;

/// Where the runner's partitions publish their positions.
type Positions = Arc<watch::Sender<RunnerStatus>>;

/// Drives every raw partition through the function chain.
pub struct Runner {
    journal: Arc<dyn Journal>,
    settings: RunnerSettings,
    chain: Arc<Chain>,
    state_dir: Option<PathBuf>,
    partitions: u32,
    positions: Positions,
    health: StageHealth,
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
        let positions = Arc::new(watch::Sender::new(RunnerStatus {
            next_offsets: vec![0; counts[0] as usize],
        }));
        Ok(Self {
            journal,
            settings,
            chain,
            state_dir,
            partitions: counts[0],
            positions,
            health: StageHealth::detached(),
        })
    }

    /// Reports each partition's failures (and recoveries) to `health` (`/health`).
    pub fn with_health(mut self, health: StageHealth) -> Self {
        self.health = health;
        self
    }

    /// Progress, for metrics and drain checks.
    pub fn progress(&self) -> RunnerProgress {
        ConsumerProgress::new(GROUP, topic::RAW, self.positions.subscribe())
    }

    /// Takes `committed` as partition `p`'s position where another node runs it (its committed
    /// offset, which the journal shares): the position never goes back.
    pub fn observe(&self, p: u32, committed: u64) {
        self.positions
            .send_if_modified(|s| match s.next_offsets.get_mut(p as usize) {
                Some(next) if *next < committed => {
                    *next = committed;
                    true
                }
                _ => false,
            });
    }

    /// How many raw partitions there are.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Runs partition `p` alone, as [`Runner::run`] runs each (where partitions are shared out
    /// between nodes, each runs those it holds a lease on). Two runs of one partition at once
    /// are refused by the journal's fence on `good` and `bad`, never written twice.
    pub fn partition(
        &self,
        p: u32,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), FunctionsError>> + Send + 'static {
        assert!(p < self.partitions, "partition {p} of {}", self.partitions);
        let worker = PartitionWorker {
            journal: self.journal.clone(),
            partition: p,
            batch_size: self.settings.batch_size,
            positions: self.positions.clone(),
            chain: self.chain.clone(),
            health: self.health.part(p),
            snapshot: self
                .state_dir
                .as_ref()
                .map(|d| d.join("sessions").join(format!("{p}.json"))),
        };
        worker.run(shutdown)
    }

    /// Runs until `shutdown`, then processes everything appended to `raw` before the shutdown and
    /// returns. A partition whose read, append or commit fails (a full disk, an I/O error) waits
    /// with [`Backoff`] and resumes from its exactly-once resume point, by itself. Returns early
    /// with an error only when the journal fails, a partition is quarantined, or a partition
    /// keeps failing after shutdown began.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), FunctionsError> {
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..self.partitions {
            tasks.spawn(self.partition(p, shutdown.clone()));
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
    positions: Positions,
    chain: Arc<Chain>,
    health: StageHealth,
    snapshot: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawOf {
    raw: Position,
    /// `[k, n]` on the events of a raw record a user function split into `n` events.
    #[serde(default)]
    part: Option<[u32; 2]>,
}

/// Where a partition stands while it runs: the read cursor and the exactly-once bookkeeping
/// taken from `good`/`bad` on start.
struct Resumed {
    cursor: Cursor,
    /// The consumer group's last committed offset.
    committed: Option<u64>,
    last_commit: Instant,
    /// Resuming inside a split record: `(offset, k)`, its first `k` events are written.
    skip_parts: Option<(u64, usize)>,
    /// Bad rows at or below this raw offset are already in `bad`.
    last_bad: Option<u64>,
    sessions: Sessions,
    last_snapshot: Instant,
}

impl PartitionWorker {
    /// Runs the partition; after a failure that retrying can fix, waits and resumes from the
    /// output topics (exactly once: `resume` reads where `good`/`bad` stand).
    async fn run(self, shutdown: CancellationToken) -> Result<(), FunctionsError> {
        let mut backoff = Backoff::new(APPEND_RETRY_INITIAL, APPEND_RETRY_MAX);
        loop {
            let error = match self.run_once(&shutdown, &mut backoff).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if self.is_fatal(&error) {
                return Err(error);
            }
            self.health.failing(&error);
            let stopping = shutdown.is_cancelled();
            if stopping && backoff.attempts() + 1 >= SHUTDOWN_ATTEMPTS {
                return Err(error);
            }
            let wait = backoff.next_delay();
            tracing::warn!(partition = self.partition, error = %error, retry_in = ?wait,
                "runner partition failed; it resumes from its committed position");
            tokio::select! {
                _ = shutdown.cancelled(), if !stopping => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Errors that retrying cannot fix: the journal failed (the process exits), the partition
    /// is quarantined, or the topics do not match.
    fn is_fatal(&self, error: &FunctionsError) -> bool {
        self.journal.is_failed()
            || matches!(
                error,
                FunctionsError::PartitionMismatch(_)
                    | FunctionsError::Journal(
                        JournalError::Quarantined { .. } | JournalError::Failed(_)
                    )
            )
    }

    /// One run from the resume point to the end of the drain, or to the first error.
    async fn run_once(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), FunctionsError> {
        let mut at = self.resume().await?;
        let mut drain_to: Option<u64> = None;
        // When the first record of a batch still waiting for its batching window was seen.
        let mut waiting_since: Option<Instant> = None;
        loop {
            if drain_to.is_none() && shutdown.is_cancelled() {
                drain_to = Some(at.cursor.end()?);
            }
            if drain_to.is_some_and(|target| at.cursor.next() >= target) {
                break;
            }
            // The functions running now; the whole batch runs on this set, so a deploy or a
            // rollback takes effect between batches.
            let live = self.chain.live();
            if let Some(why) = live.blocked() {
                // Never past a function that should run: retried from the committed position.
                return Err(FunctionsError::FunctionsBlocked(why.to_string()));
            }
            let limit = self.batch_size.max(live.max_batch_size());
            // Read ahead on a copy: a batch that waits for its window is read again.
            let mut ahead = at.cursor.clone();
            let records = ahead.read(limit, READ_BYTES, None)?;
            if records.is_empty() {
                // Caught up (perhaps past a crash gap): record the position now, so the
                // collector's backlog measure (end − committed) is zero rather than stale.
                at.cursor = ahead;
                self.advance(&mut at, true)?;
                backoff.reset();
                self.health.ok();
                if drain_to.is_some() {
                    break;
                }
                tokio::select! {
                    _ = at.cursor.wait(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            // The batching window: wait (up to the window) for a full batch, unless more is
            // already there (the read was cut short by the byte limit).
            let window = live.batch_window();
            if !window.is_zero()
                && drain_to.is_none()
                && records.len() < live.windowed_batch_size()
                && ahead.caught_up()
            {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                let left = window.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    tokio::select! {
                        _ = ahead.wait(left) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            }
            waiting_since = None;
            self.process(&mut at, &records, &live, shutdown).await?;
            at.cursor = ahead;
            self.advance(&mut at, false)?;
            backoff.reset();
            self.health.ok();
        }
        let next = at.cursor.next();
        if at.committed != Some(next) {
            self.commit(&mut at)?;
        }
        self.save_sessions(next, &at.sessions);
        tracing::info!(partition = self.partition, next, "runner drained");
        Ok(())
    }

    /// Where to resume: after the last raw position in `good` (or the consumer group's
    /// committed offset when further), with the session state as of there.
    async fn resume(&self) -> Result<Resumed, FunctionsError> {
        let p = self.partition;
        // What the outputs hold, all of it: an append whose outcome was unknown (a lost ack on
        // a remote journal) may have stored its records after all.
        self.journal.sync(topic::BAD, p).await?;
        self.journal.sync(topic::GOOD, p).await?;
        let last_good = self.last_raw_of(topic::GOOD)?;
        let last_bad = self.last_raw_of(topic::BAD)?.map(|r| r.raw.offset);
        let committed = self.journal.committed(GROUP, topic::RAW, p)?;
        let raw_start = self.journal.start(topic::RAW, p)?;
        // A retry in this process resumes no earlier than the position it published: every raw
        // record below it has its outputs durable (it is published only after they are), also
        // one that gave none (dropped, or a bad row already written) since the last commit.
        let published = Some(self.positions.borrow().next_offset(p));
        let (mut next, mut skip_parts) = resume_point(last_good.as_ref(), committed.max(published));
        if next < raw_start {
            next = raw_start;
            skip_parts = None;
        }
        let sessions = self.restore_sessions(next, raw_start).await?;
        tracing::info!(partition = p, next, ?skip_parts, last_good = ?last_good.map(|r| r.raw.offset), ?last_bad, "runner resumes");
        self.publish(next);
        Ok(Resumed {
            cursor: Cursor::new(self.journal.clone(), topic::RAW, p, next),
            committed,
            last_commit: Instant::now(),
            skip_parts,
            last_bad,
            sessions,
            last_snapshot: Instant::now(),
        })
    }

    /// Runs one batch through the chain and appends its outputs: bad rows first, then good.
    async fn process(
        &self,
        at: &mut Resumed,
        records: &[Record],
        live: &Live,
        shutdown: &CancellationToken,
    ) -> Result<(), FunctionsError> {
        let p = self.partition;
        // Read before this: every deletion answered before these records were appended covers
        // them, whichever node runs the partition.
        self.chain.catch_up_suppression().await?;
        let inputs = with_positions(p, records);
        let outcomes = self
            .chain
            .process_batch(&inputs, &mut at.sessions, live)
            .await;
        drop(inputs);
        let mut good = Vec::with_capacity(records.len());
        let mut bad = Vec::new();
        let mut n_good = 0;
        for (r, outcome) in records.iter().zip(outcomes) {
            match outcome {
                Outcome::Good(mut events) => {
                    n_good += 1;
                    if let Some((offset, k)) = at.skip_parts
                        && offset == r.offset
                    {
                        // Resuming inside a split record: its first `k` events are written.
                        events.drain(..k.min(events.len()));
                    }
                    good.extend(events);
                }
                Outcome::Bad(row) => {
                    if at.last_bad.is_none_or(|b| r.offset > b) {
                        bad.push(row);
                    }
                }
            }
        }
        at.skip_parts = None;
        crate::metrics::processed(n_good, records.len() - n_good);
        // Bad first: once a good record with a higher raw offset is durable, the resume
        // point moves past these events, so their bad rows must already be durable.
        self.append_retrying(topic::BAD, bad, shutdown).await?;
        self.append_retrying(topic::GOOD, good, shutdown).await
    }

    /// After the cursor moved: publish the position, commit it when due (`now`: at once) and
    /// save the session snapshot when due.
    fn advance(&self, at: &mut Resumed, now: bool) -> Result<(), FunctionsError> {
        let next = at.cursor.next();
        self.publish(next);
        if at.committed != Some(next) && (now || at.last_commit.elapsed() >= COMMIT_EVERY) {
            self.commit(at)?;
        }
        if !now && at.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            self.save_sessions(next, &at.sessions);
            at.last_snapshot = Instant::now();
        }
        Ok(())
    }

    fn publish(&self, next: u64) {
        let p = self.partition as usize;
        self.positions.send_if_modified(|s| {
            let Some(slot) = s.next_offsets.get_mut(p) else {
                return false;
            };
            debug_assert!(next >= *slot, "the runner's position only moves forward");
            let changed = *slot != next;
            *slot = next;
            changed
        });
    }

    fn commit(&self, at: &mut Resumed) -> Result<(), FunctionsError> {
        let next = at.cursor.next();
        debug_assert!(
            at.committed.is_none_or(|c| next >= c),
            "the runner's committed offset only moves forward"
        );
        self.journal
            .commit(GROUP, topic::RAW, self.partition, next)?;
        at.committed = Some(next);
        at.last_commit = Instant::now();
        Ok(())
    }

    /// The session state as of raw offset `next`: the last snapshot, brought forward by running
    /// the raw records after it through the chain again (outputs discarded; they are already in
    /// `good`/`bad`). The chain is deterministic for sessions, so this gives the state the
    /// runner had.
    async fn restore_sessions(
        &self,
        next: u64,
        raw_start: u64,
    ) -> Result<Sessions, FunctionsError> {
        let p = self.partition;
        if !self.chain.uses_sessions() {
            return Ok(Sessions::default());
        }
        let (from, mut sessions) = match self.snapshot.as_deref().and_then(load_sessions) {
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
        let started = Instant::now();
        let mut replayed = 0usize;
        // Functions that run before `enrich` shape what the sessions see, so they run again
        // too; those after it do not matter here.
        let live = self.chain.live();
        let mut cursor = Cursor::new(self.journal.clone(), topic::RAW, p, from.max(raw_start));
        loop {
            let records = cursor.read(self.batch_size, READ_BYTES, Some(next))?;
            if records.is_empty() {
                break;
            }
            let inputs = with_positions(p, &records);
            replayed += inputs.len();
            self.chain
                .rebuild_sessions(&inputs, &mut sessions, &live)
                .await;
        }
        if replayed > 0 {
            tracing::info!(partition = p, replayed, elapsed = ?started.elapsed(), "session state rebuilt");
        }
        Ok(sessions)
    }

    fn save_sessions(&self, next: u64, sessions: &Sessions) {
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

    /// The raw position (and part) of the last record of an output topic's partition that
    /// names one.
    fn last_raw_of(&self, out: &str) -> Result<Option<RawOf>, FunctionsError> {
        let p = self.partition;
        let start = self.journal.start(out, p)?;
        let mut end = self.journal.end(out, p)?;
        while end > start {
            let from = end.saturating_sub(64).max(start);
            let records = self.journal.read(out, p, from, 64, 1 << 20)?;
            let found = records
                .iter()
                .rev()
                .find_map(|r| serde_json::from_slice::<RawOf>(&r.value).ok());
            if found.is_some() {
                return Ok(found);
            }
            end = from;
        }
        Ok(None)
    }

    /// Appends `records` to `out`, retrying what may succeed later (a full disk); bounded once
    /// `shutdown` began.
    async fn append_retrying(
        &self,
        out: &str,
        records: Vec<Bytes>,
        shutdown: &CancellationToken,
    ) -> Result<(), FunctionsError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new(APPEND_RETRY_INITIAL, APPEND_RETRY_MAX);
        loop {
            match self
                .journal
                .append(out, self.partition, records.clone())
                .await
            {
                Ok(_) => return Ok(()),
                // Only a full disk is known to have stored nothing (the append was rolled
                // back): the same records go again. After any other failure the records may be
                // stored; the worker resumes from what `good`/`bad` hold instead.
                Err(e @ JournalError::DiskFull(_)) if !self.journal.is_failed() => {
                    self.health.failing(&e);
                    let stopping = shutdown.is_cancelled();
                    if stopping && backoff.attempts() + 1 >= SHUTDOWN_ATTEMPTS {
                        return Err(e.into());
                    }
                    tracing::warn!(topic = out, partition = self.partition, error = %e, "append failed; retrying");
                    crate::metrics::retried();
                    let wait = backoff.next_delay();
                    tokio::select! {
                        _ = shutdown.cancelled(), if !stopping => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The chain's input: each raw record's bytes with its position.
fn with_positions(partition: u32, records: &[Record]) -> Vec<(Position, &[u8])> {
    records
        .iter()
        .map(|r| {
            let position = Position {
                partition,
                offset: r.offset,
            };
            (position, &r.value[..])
        })
        .collect()
}

/// Where a partition resumes: the raw offset to process next, and, when the last good record is
/// one of a split record's events and the rest may be missing, `(offset, k)`: that record's
/// first `k` events are already written.
///
/// The consumer group's committed offset is written only after a batch's outputs are durable,
/// so it is a safe resume point too; it matters when a function dropped the last events (they
/// leave nothing in `good`).
fn resume_point(last_good: Option<&RawOf>, committed: Option<u64>) -> (u64, Option<(u64, usize)>) {
    let (next, skip) = match last_good {
        Some(RawOf {
            raw,
            part: Some([k, n]),
        }) if k + 1 < *n => (raw.offset, Some((raw.offset, *k as usize + 1))),
        Some(r) => (r.raw.offset + 1, None),
        None => (0, None),
    };
    match committed {
        Some(c) if c > next => (c, None),
        _ => (next, skip),
    }
}
