//! The delivery loop: journal topic → Delta table, exactly once. [`LakeSink`] moves `good` into
//! `events`, [`BadRowsSink`] moves `bad` into `bad_rows`; both are [`TableSink`] over a
//! [`TableSpec`].
//!
//! How exactly-once holds:
//! 1. On start the sink loads the table and reads, for every partition `p` of the topic, the txn
//!    version of app id `<table>/<p>`: the last journal offset already in the table. Reading
//!    resumes right after it. No local state is consulted, ever. A log whose versions went
//!    backwards, or that records an offset past the partition's journal end, is refused (it
//!    would deliver twice, or skip); the sink reports it and checks again after each backoff.
//! 2. It reads only durable records (`Journal::read` never returns anything past the durable
//!    end), buffers them, and flushes when the buffer holds `flush_max_events` records or
//!    `flush_max_bytes` bytes, or when its oldest record has waited `flush_interval`.
//! 3. A flush writes Parquet files and then makes one Delta commit holding their `add` actions
//!    and one txn action per partition in the buffer (version = the highest offset included).
//!    Rows and positions become visible atomically, or not at all.
//! 4. If writing or committing fails, or the commit's outcome is unknown (error, timeout), the
//!    sink does not retry blindly: it reloads the table, reads the txn versions back, drops every
//!    buffered row at or below them (the commit did land), and retries only the rest, with
//!    exponential backoff. delta-rs' conflict checker also rejects a commit whose app ids were
//!    committed by anyone since our snapshot, so two sinks on one table cannot both deliver an
//!    offset.
//! 5. A record that does not decode is logged at error level with its position, counted in
//!    `sluice_lake_records_skipped_total`, and skipped; the txn version still moves past it, so it
//!    never stalls the partition and is never re-logged.
//! 6. On shutdown the sink delivers everything below each partition's durable end as of the
//!    moment shutdown began, commits, and returns. If the store keeps failing then, it gives up
//!    after `shutdown_attempts` and returns the error; the journal still holds those records.
//!    A table that cannot be opened is the same failure: once shutdown has begun, opening gets
//!    `shutdown_attempts` too, then the error is returned (the drain failed; nothing is lost).
//!
//! Files written for a commit that never happened are orphans: invisible to readers and removed
//! by `VACUUM`. Parquet encoding and Delta log replay run on the blocking pool.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use deltalake::kernel::Add;
use sluice_journal::{
    Backoff, ConsumerProgress, ConsumerStatus, Cursor, Journal, Record, StageHealth,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::commit::{Committed, DeltaTarget, check_txns_within_journal, run_blocking};
use crate::consume::pause_before_retry;
use crate::schema::{BadRowsTable, EventsTable, TableSpec};
use crate::writer::{Encoded, encode_records, parquet_writer, write_parquet};
use crate::{LakeError, LakeRoot, LakeSettings, metrics};

/// How long an idle sink waits on the journal before looking again (it wakes at once when a
/// record arrives; this only bounds the wait).
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Delivers the `good` topic into the `events` table.
pub type LakeSink = TableSink<EventsTable>;

/// Delivers the `bad` topic into the `bad_rows` table.
pub type BadRowsSink = TableSink<BadRowsTable>;

/// Where a test fault injector is consulted.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// Parquet files are written, the commit has not been attempted.
    FilesWritten,
    /// The commit landed; the sink has not recorded it yet.
    Committed,
}

/// What a test fault injector asks for.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Carry on.
    Proceed,
    /// Behave as if the step failed (at `Committed`: as if the outcome were unknown).
    Fail,
    /// Stop at once, as a crash would: `run` returns [`LakeError::InjectedCrash`].
    Crash,
}

/// A test hook called at each [`FaultPoint`].
#[doc(hidden)]
pub type FaultInjector = Arc<dyn Fn(FaultPoint) -> FaultAction + Send + Sync>;

/// A snapshot of a sink's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStatus {
    /// The sink has loaded the table and knows where every partition stands.
    pub started: bool,
    /// Per journal partition: the next offset not yet in the table (every offset below it is
    /// in the table, or was skipped as undecodable).
    pub next_offsets: Vec<u64>,
    /// The table version after this sink's last commit (or as loaded at start).
    pub table_version: Option<u64>,
    /// Commits made by this sink.
    pub commits: u64,
    /// Rows committed by this sink.
    pub rows: u64,
    /// Records skipped as undecodable by this sink.
    pub skipped: u64,
    /// `run` has returned.
    pub stopped: bool,
    /// Set while the sink refuses to deliver, with the reason (the table's log went backwards,
    /// or records an offset past the journal's end; see `DeltaTarget::check_txn_history` and
    /// `commit::check_txns_within_journal`); cleared once it starts.
    pub refused: Option<String>,
}

impl ConsumerStatus for DeliveryStatus {
    fn started(&self) -> bool {
        self.started
    }
    fn stopped(&self) -> bool {
        self.stopped
    }
    fn next_offsets(&self) -> &[u64] {
        &self.next_offsets
    }
}

/// A handle to watch a sink's progress (its name is the table); cheap to clone, usable after
/// the sink is moved into its task.
pub type DeliveryProgress = ConsumerProgress<DeliveryStatus>;

/// Delivers one journal topic into one lake table, exactly once. See the module docs.
pub struct TableSink<S: TableSpec> {
    journal: Arc<dyn Journal>,
    root: LakeRoot,
    settings: LakeSettings,
    status: watch::Sender<DeliveryStatus>,
    faults: Option<FaultInjector>,
    health: StageHealth,
    _spec: PhantomData<S>,
}

impl<S: TableSpec> TableSink<S> {
    /// A sink reading `S::TOPIC` from `journal` into table `S::TABLE` under `root`. Nothing
    /// happens until [`TableSink::run`].
    pub fn new(journal: Arc<dyn Journal>, root: LakeRoot, settings: LakeSettings) -> Self {
        Self {
            journal,
            root,
            settings,
            status: watch::Sender::new(DeliveryStatus::default()),
            faults: None,
            health: StageHealth::detached(),
            _spec: PhantomData,
        }
    }

    /// Reports each attempt's outcome to `health` (`/health`).
    pub fn with_health(mut self, health: StageHealth) -> Self {
        self.health = health;
        self
    }

    /// A handle on this sink's progress.
    pub fn progress(&self) -> DeliveryProgress {
        ConsumerProgress::new(S::TABLE, S::TOPIC, self.status.subscribe())
    }

    /// Installs a test fault injector.
    #[doc(hidden)]
    pub fn with_fault_injector(mut self, faults: FaultInjector) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Runs the delivery loop until `shutdown` is cancelled, then delivers everything durable at
    /// that moment and returns `Ok`. Returns early only on an error retrying cannot fix (an
    /// incompatible table, a missing topic) or when delivery keeps failing during shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), LakeError> {
        let status = self.status.clone();
        let result = self.run_inner(&shutdown).await;
        if let Err(e) = &result {
            tracing::error!(table = S::TABLE, error = %e, "lake delivery stopped");
        }
        status.send_modify(|s| s.stopped = true);
        result
    }

    async fn run_inner(self, shutdown: &CancellationToken) -> Result<(), LakeError> {
        let partitions = self.journal.partitions(S::TOPIC)?;
        let mut delivery = Delivery::<S>::start(self, partitions, shutdown).await?;
        delivery.deliver(shutdown).await
    }
}

/// Per-partition read position.
struct PartitionState {
    id: u32,
    /// Where the journal is read next (it steps over crash gaps).
    cursor: Cursor,
    /// Next offset not yet in the table.
    delivered_next: u64,
    /// Records of this partition in the buffer.
    buffered: usize,
    /// After a read error: do not read before this instant.
    retry_at: Option<Instant>,
    read_backoff: Backoff,
}

/// Records read but not yet flushed.
#[derive(Default)]
struct Buffer {
    records: Vec<(u32, Record)>,
    bytes: usize,
    since: Option<Instant>,
}

/// One flush in progress: the rows still to commit and the txn versions they carry.
struct Pending {
    encoded: Encoded,
    /// Partition → highest offset in this flush (rows or skipped records).
    last: BTreeMap<u32, u64>,
}

/// The running state of a sink.
struct Delivery<S: TableSpec> {
    settings: LakeSettings,
    status: watch::Sender<DeliveryStatus>,
    faults: Option<FaultInjector>,
    health: StageHealth,
    target: DeltaTarget<S>,
    partitions: Vec<PartitionState>,
    buffer: Buffer,
    /// Partition to read first next time, so that one busy partition cannot starve the others.
    round_robin: usize,
    /// The snapshot moved past commits of other writers and their txn versions could not be
    /// read: the next flush must reload and read them before committing.
    positions_stale: bool,
}

/// Why table `S` gave up after `attempts` once shutdown had begun: `last` went on failing.
fn gave_up<S: TableSpec>(attempts: u32, last: &LakeError) -> LakeError {
    LakeError::GaveUp {
        table: S::TABLE.to_string(),
        attempts,
        last: last.to_string(),
    }
}

impl<S: TableSpec> Delivery<S> {
    /// Opens the table and reads the txn versions, retrying storage errors; once `shutdown` has
    /// begun, `shutdown_attempts` in all, then [`LakeError::GaveUp`]: the stage could not drain.
    async fn start(
        sink: TableSink<S>,
        partitions: u32,
        shutdown: &CancellationToken,
    ) -> Result<Self, LakeError> {
        let TableSink {
            journal,
            root,
            settings,
            status,
            faults,
            health,
            ..
        } = sink;
        let mut backoff = settings.backoff();
        let (target, versions) = loop {
            let attempt = async {
                let target =
                    DeltaTarget::<S>::open(&root, settings.checkpoint_interval.get()).await?;
                target.check_txn_history(S::TABLE).await?;
                let versions = target.txn_versions(0..partitions).await?;
                let recorded = versions.iter().filter_map(|(p, v)| Some((*p, (*v)?)));
                check_txns_within_journal(S::TABLE, S::TABLE, recorded, &*journal, S::TOPIC)?;
                Ok::<_, LakeError>((target, versions))
            };
            match attempt.await {
                Ok(opened) => break opened,
                Err(e)
                    if e.kind().is_retryable()
                        && !matches!(e, LakeError::SchemaMismatch { .. }) =>
                {
                    health.failing(&e);
                    let log = |_, wait| {
                        if matches!(
                            e,
                            LakeError::TxnRegressed { .. } | LakeError::TxnPastJournalEnd { .. }
                        ) {
                            // Logged and counted where it was found. Checked again after each
                            // wait, so a repaired log resumes delivery.
                            status.send_modify(|s| s.refused = Some(e.to_string()));
                        } else {
                            tracing::warn!(table = S::TABLE, error = %e, retry_in = ?wait, "cannot open the lake table yet");
                        }
                    };
                    pause_before_retry(&mut backoff, shutdown, settings.shutdown_attempts, log)
                        .await
                        .map_err(|attempts| gave_up::<S>(attempts, &e))?;
                }
                Err(e) => return Err(e),
            }
        };
        let partitions: Vec<PartitionState> = versions
            .into_iter()
            .map(|(id, version)| {
                let next = version.map_or(0, |v| v.saturating_add(1));
                PartitionState {
                    id,
                    cursor: Cursor::new(journal.clone(), S::TOPIC, id, next),
                    delivered_next: next,
                    buffered: 0,
                    retry_at: None,
                    read_backoff: settings.backoff(),
                }
            })
            .collect();
        for p in &partitions {
            metrics::delivered_offset(S::TABLE, p.id, p.delivered_next);
        }
        tracing::info!(
            table = S::TABLE,
            topic = S::TOPIC,
            version = ?target.version(),
            resume_at = ?partitions.iter().map(|p| p.delivered_next).collect::<Vec<_>>(),
            "lake delivery started"
        );
        status.send_modify(|s| {
            s.started = true;
            s.refused = None;
            s.next_offsets = partitions.iter().map(|p| p.delivered_next).collect();
            s.table_version = target.version();
        });
        Ok(Self {
            settings,
            status,
            faults,
            health,
            target,
            partitions,
            buffer: Buffer::default(),
            round_robin: 0,
            positions_stale: false,
        })
    }

    async fn deliver(&mut self, shutdown: &CancellationToken) -> Result<(), LakeError> {
        loop {
            if shutdown.is_cancelled() {
                return self.drain(shutdown).await;
            }
            self.fill(None);
            let now = Instant::now();
            if self.buffer_full() || self.buffer_due(now) {
                self.flush(shutdown).await?;
                continue;
            }
            // Everything readable is buffered: wait for a record, the flush deadline, or shutdown.
            let timeout = self.wait_timeout(now);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.wait_for_records(timeout) => {}
            }
        }
    }

    /// Delivers everything below each partition's durable end as of now, then returns.
    async fn drain(&mut self, shutdown: &CancellationToken) -> Result<(), LakeError> {
        let targets: Vec<u64> = self
            .partitions
            .iter()
            .map(|p| p.cursor.end().unwrap_or(p.cursor.next()))
            .collect();
        tracing::info!(table = S::TABLE, ends = ?targets, "lake delivery draining for shutdown");
        loop {
            self.fill(Some(&targets));
            if self.buffer.records.is_empty() {
                break;
            }
            self.flush(shutdown).await?;
        }
        tracing::info!(
            table = S::TABLE,
            delivered = ?self.partitions.iter().map(|p| p.delivered_next).collect::<Vec<_>>(),
            "lake delivery drained"
        );
        Ok(())
    }

    fn buffer_full(&self) -> bool {
        self.buffer.records.len() >= self.settings.flush_max_events
            || self.buffer.bytes >= self.settings.flush_max_bytes
    }

    fn buffer_due(&self, now: Instant) -> bool {
        self.buffer
            .since
            .is_some_and(|since| now.duration_since(since) >= self.settings.flush_interval)
    }

    fn wait_timeout(&self, now: Instant) -> Duration {
        let mut timeout = match self.buffer.since {
            Some(since) => since
                .checked_add(self.settings.flush_interval)
                .map_or(IDLE_WAIT, |due| due.saturating_duration_since(now)),
            None => IDLE_WAIT,
        };
        for p in &self.partitions {
            if let Some(at) = p.retry_at {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
        }
        timeout
    }

    /// Resolves when any readable partition has a record past its read position, or after
    /// `timeout`.
    async fn wait_for_records(&self, timeout: Duration) {
        let now = Instant::now();
        let waits: Vec<_> = self
            .partitions
            .iter()
            .filter(|p| p.retry_at.is_none_or(|at| at <= now))
            .map(|p| p.cursor.wait(timeout))
            .collect();
        if waits.is_empty() {
            tokio::time::sleep(timeout).await;
        } else {
            futures::future::select_all(waits).await;
        }
    }

    /// Reads durable records into the buffer until it is full or every partition is at its end
    /// (or at `targets[p]`, when given).
    fn fill(&mut self, targets: Option<&[u64]>) {
        let count = self.partitions.len();
        if count == 0 {
            return;
        }
        let start = self.round_robin % count;
        self.round_robin = self.round_robin.wrapping_add(1);
        for i in 0..count {
            let index = (start + i) % count;
            let target = targets.and_then(|t| t.get(index).copied());
            self.fill_partition(index, target);
            if self.buffer_full() {
                return;
            }
        }
    }

    fn fill_partition(&mut self, index: usize, target: Option<u64>) {
        let now = Instant::now();
        loop {
            if self.buffer_full() {
                return;
            }
            let max_events = self.settings.flush_max_events;
            let max_bytes = self.settings.flush_max_bytes;
            let read_batch = self.settings.read_batch_records;
            let buffered = self.buffer.records.len();
            let buffered_bytes = self.buffer.bytes;
            let p = &mut self.partitions[index];
            if p.retry_at.is_some_and(|at| at > now) {
                return;
            }
            let max_records = read_batch.min(max_events.saturating_sub(buffered));
            let max_bytes = max_bytes.saturating_sub(buffered_bytes);
            let records = match p.cursor.read(max_records, max_bytes, target) {
                Ok(records) => records,
                Err(e) => {
                    self.health.failing(&e);
                    metrics::read_error(S::TABLE);
                    let wait = p.read_backoff.next_delay();
                    tracing::warn!(
                        table = S::TABLE,
                        topic = S::TOPIC,
                        partition = p.id,
                        offset = p.cursor.next(),
                        retry_in = ?wait,
                        error = %e,
                        "journal read failed"
                    );
                    p.retry_at = Some(now.checked_add(wait).unwrap_or(now));
                    return;
                }
            };
            if p.retry_at.take().is_some() {
                self.health.ok();
            }
            p.read_backoff.reset();
            if records.is_empty() {
                if p.buffered == 0 && p.cursor.next() > p.delivered_next {
                    // Nothing of this partition is buffered or in flight, so everything below
                    // the cursor is in the table or never existed (a crash gap it stepped over).
                    p.delivered_next = p.cursor.next();
                    metrics::delivered_offset(S::TABLE, p.id, p.delivered_next);
                    let next_offsets = self.partitions.iter().map(|p| p.delivered_next).collect();
                    self.status.send_modify(|s| s.next_offsets = next_offsets);
                }
                return;
            }
            let id = p.id;
            p.buffered += records.len();
            for record in records {
                self.buffer.bytes += record.value.len();
                self.buffer.records.push((id, record));
            }
            if self.buffer.since.is_none() && !self.buffer.records.is_empty() {
                self.buffer.since = Some(now);
            }
            metrics::buffered(S::TABLE, self.buffer.records.len());
        }
    }

    fn fault(&self, point: FaultPoint) -> FaultAction {
        self.faults
            .as_ref()
            .map_or(FaultAction::Proceed, |f| f(point))
    }

    /// Writes and commits the buffer; see the module docs for the retry rules.
    async fn flush(&mut self, shutdown: &CancellationToken) -> Result<(), LakeError> {
        let started = Instant::now();
        let records = std::mem::take(&mut self.buffer).records;
        metrics::buffered(S::TABLE, 0);
        for p in &mut self.partitions {
            p.buffered = 0;
        }
        let mut last = BTreeMap::new();
        for (p, record) in &records {
            let entry = last.entry(*p).or_insert(record.offset);
            *entry = (*entry).max(record.offset);
        }
        let encoded = tokio::task::spawn_blocking(move || encode_records::<S>(&records))
            .await
            .map_err(|e| LakeError::Task {
                table: S::TABLE.to_string(),
                reason: e.to_string(),
            })?
            .map_err(|e| LakeError::Encode {
                table: S::TABLE.to_string(),
                reason: e.to_string(),
            })?;
        for skipped in &encoded.skipped {
            tracing::error!(
                table = S::TABLE,
                topic = S::TOPIC,
                partition = skipped.partition,
                offset = skipped.offset,
                reason = %skipped.reason,
                "skipping a journal record that does not decode"
            );
        }
        let skipped = encoded.skipped.len();
        metrics::records_skipped(S::TABLE, skipped);
        let mut pending = Pending { encoded, last };

        let mut staged: Option<Vec<Add>> = None;
        let mut needs_resync = self.positions_stale;
        let mut backoff = self.settings.backoff();
        loop {
            let step = self
                .try_commit(&mut pending, &mut staged, &mut needs_resync)
                .await;
            let error = match step {
                Ok(Some(commit)) => {
                    self.health.ok();
                    self.committed(commit, &pending, skipped, started).await;
                    return Ok(());
                }
                Ok(None) => {
                    // Everything in this flush was already in the table.
                    self.health.ok();
                    self.publish(None, 0, skipped, &pending.last);
                    return Ok(());
                }
                Err(e @ LakeError::InjectedCrash(_)) => return Err(e),
                Err(e) => e,
            };
            self.health.failing(&error);
            metrics::commit_failed(S::TABLE);
            let log = |attempts, wait| {
                tracing::warn!(
                    table = S::TABLE,
                    attempt = attempts,
                    retry_in = ?wait,
                    error = %error,
                    "lake flush failed; will read the table back and retry"
                );
            };
            let limit = self.settings.shutdown_attempts;
            pause_before_retry(&mut backoff, shutdown, limit, log)
                .await
                .map_err(|attempts| gave_up::<S>(attempts, &error))?;
        }
    }

    /// One attempt: resync if the previous attempt failed, write files if needed, commit.
    /// `Ok(None)` when nothing is left to commit.
    async fn try_commit(
        &mut self,
        pending: &mut Pending,
        staged: &mut Option<Vec<Add>>,
        needs_resync: &mut bool,
    ) -> Result<Option<Committed>, LakeError> {
        if *needs_resync {
            if self.resync(pending).await? {
                // The rows to commit changed; the files written for the old set are orphans.
                *staged = None;
            }
            *needs_resync = false;
            self.positions_stale = false;
        }
        if pending.last.is_empty() {
            return Ok(None);
        }
        let adds = match staged {
            Some(adds) => adds.clone(),
            None => {
                let adds = match &pending.encoded.batch {
                    None => Vec::new(),
                    Some(batch) => {
                        let writer = parquet_writer(self.target.table(), self.settings.zstd_level)
                            .map_err(|e| LakeError::delta(S::TABLE, "writing parquet", e))?;
                        let batch = batch.clone();
                        run_blocking(S::TABLE, write_parquet(writer, batch))
                            .await?
                            .map_err(|e| LakeError::delta(S::TABLE, "writing parquet", e))?
                    }
                };
                *staged = Some(adds.clone());
                adds
            }
        };
        match self.fault(FaultPoint::FilesWritten) {
            FaultAction::Proceed => {}
            FaultAction::Fail => return Err(injected_failure(S::TABLE, "before commit")),
            FaultAction::Crash => return Err(LakeError::InjectedCrash("files written")),
        }
        let delivered: Vec<(u32, u64)> = pending.last.iter().map(|(p, o)| (*p, *o)).collect();
        debug_assert!(
            delivered.iter().all(|(p, offset)| self
                .partitions
                .get(*p as usize)
                .is_none_or(|state| *offset >= state.delivered_next)),
            "Delta txn versions only grow"
        );
        // From here on the outcome may be unknown, so any failure means reading the table back.
        *needs_resync = true;
        let commit = match tokio::time::timeout(
            self.settings.commit_timeout,
            self.target.commit(adds, &delivered),
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                return Err(LakeError::delta(
                    S::TABLE,
                    "committing",
                    deltalake::DeltaTableError::Generic(format!(
                        "commit timed out after {:?}; outcome unknown",
                        self.settings.commit_timeout
                    )),
                ));
            }
        };
        match self.fault(FaultPoint::Committed) {
            FaultAction::Proceed => {}
            FaultAction::Fail => return Err(injected_failure(S::TABLE, "after commit")),
            FaultAction::Crash => return Err(LakeError::InjectedCrash("committed")),
        }
        *needs_resync = false;
        Ok(Some(commit))
    }

    /// Reloads the table, reads the txn versions back and drops from `pending` everything they
    /// cover. Returns whether anything was dropped.
    async fn resync(&mut self, pending: &mut Pending) -> Result<bool, LakeError> {
        self.target.reload().await?;
        let ids: Vec<u32> = self.partitions.iter().map(|p| p.id).collect();
        let versions = self.target.txn_versions(ids).await?;
        let mut in_table: BTreeMap<u32, u64> = BTreeMap::new();
        for (id, version) in versions {
            if let Some(v) = version {
                in_table.insert(id, v);
                if let Some(p) = self.partitions.get_mut(id as usize) {
                    p.delivered_next = p.delivered_next.max(v.saturating_add(1));
                    // Another writer may have gone further than we have read.
                    p.cursor.advance_to(p.delivered_next);
                }
            }
        }
        let covered = |p: u32, offset: u64| in_table.get(&p).is_some_and(|v| offset <= *v);
        let rows_before = pending.encoded.rows();
        let parts_before = pending.last.len();
        pending
            .encoded
            .retain(|p, offset| !covered(p, offset))
            .map_err(|e| LakeError::Encode {
                table: S::TABLE.to_string(),
                reason: e.to_string(),
            })?;
        pending.last.retain(|p, last| !covered(*p, *last));
        let changed = pending.encoded.rows() != rows_before || pending.last.len() != parts_before;
        if changed {
            metrics::commit_resolved(S::TABLE);
            tracing::info!(
                table = S::TABLE,
                version = ?self.target.version(),
                rows_already_in_table = rows_before - pending.encoded.rows(),
                "read back the table: part of the flush was already committed"
            );
        }
        self.status.send_modify(|s| {
            s.next_offsets = self.partitions.iter().map(|p| p.delivered_next).collect();
            s.table_version = self.target.version();
        });
        Ok(changed)
    }

    async fn committed(
        &mut self,
        commit: Committed,
        pending: &Pending,
        skipped: usize,
        started: Instant,
    ) {
        let version = commit.version;
        let rows = pending.encoded.rows();
        metrics::rows_written(S::TABLE, rows);
        metrics::commit_succeeded(S::TABLE, started.elapsed().as_secs_f64());
        tracing::debug!(table = S::TABLE, version, rows, skipped, "lake commit");
        self.publish(Some(version), rows, skipped, &pending.last);
        if commit.others_committed {
            // Another writer may have delivered some of our partitions meanwhile: learn how far,
            // so that we neither read those records again nor trust stale positions.
            if let Err(e) = self.refresh_positions().await {
                tracing::warn!(table = S::TABLE, error = %e, "could not read the txn versions after a concurrent commit; will reload before the next commit");
                self.positions_stale = true;
            }
        }
        if version > 0 && version.is_multiple_of(self.settings.checkpoint_interval.get()) {
            match self.target.checkpoint().await {
                Ok(()) => {
                    metrics::checkpoint(S::TABLE, true);
                    tracing::debug!(table = S::TABLE, version, "lake checkpoint");
                }
                Err(e) => {
                    metrics::checkpoint(S::TABLE, false);
                    tracing::warn!(table = S::TABLE, version, error = %e, "lake checkpoint failed");
                }
            }
        }
    }

    /// Reads the txn versions of every partition from the loaded snapshot and moves the
    /// positions forward to them.
    async fn refresh_positions(&mut self) -> Result<(), LakeError> {
        let ids: Vec<u32> = self.partitions.iter().map(|p| p.id).collect();
        for (id, version) in self.target.txn_versions(ids).await? {
            if let (Some(v), Some(p)) = (version, self.partitions.get_mut(id as usize)) {
                p.delivered_next = p.delivered_next.max(v.saturating_add(1));
                p.cursor.advance_to(p.delivered_next);
                metrics::delivered_offset(S::TABLE, p.id, p.delivered_next);
            }
        }
        self.status.send_modify(|s| {
            s.next_offsets = self.partitions.iter().map(|p| p.delivered_next).collect();
        });
        Ok(())
    }

    /// Records that every offset up to `last[p]` is in the table and tells the watchers.
    fn publish(
        &mut self,
        version: Option<u64>,
        rows: usize,
        skipped: usize,
        last: &BTreeMap<u32, u64>,
    ) {
        for (id, offset) in last {
            if let Some(p) = self.partitions.get_mut(*id as usize) {
                p.delivered_next = p.delivered_next.max(offset.saturating_add(1));
                metrics::delivered_offset(S::TABLE, p.id, p.delivered_next);
            }
        }
        let committed = version.is_some();
        self.status.send_modify(|s| {
            s.next_offsets = self.partitions.iter().map(|p| p.delivered_next).collect();
            if let Some(v) = version {
                s.table_version = Some(v);
            }
            s.commits += u64::from(committed);
            s.rows += rows as u64;
            s.skipped += skipped as u64;
        });
    }
}

/// The error a [`FaultAction::Fail`] stands for: a storage failure of unknown outcome.
fn injected_failure(table: &str, at: &'static str) -> LakeError {
    LakeError::delta(
        table,
        at,
        deltalake::DeltaTableError::Generic(format!("injected failure {at}")),
    )
}
