//! Replay (`POST /v1/replay`): re-drive bad rows (`{"bad": true}`) or a range of raw records (`{"raw":
//! true}`) through today's function chain, without duplicating what is already good.
//!
//! How it stays idempotent:
//! 1. replays are serialised (one at a time per node);
//! 2. it first waits until the runner has processed everything in `raw` and the lake holds
//!    everything in `good` (as of the request), so every earlier replay's outcome is visible;
//! 3. it keeps one candidate per `(source, event_id)` and drops those the `events` table already
//!    holds;
//! 4. it appends the rest to `raw`, in the partition each came from (so a user's events stay in
//!    order), marked with `replay_of` (the original raw position).
//!
//! A record that fails again becomes a new bad row; replaying again re-drives it again, and never
//! produces a second good copy. Bad rows whose raw record was unreadable cannot be replayed and
//! are counted as such. Needs the runner, lake and warehouse roles on this node. The route is in
//! `ops.rs`; this module has no HTTP types.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_event::{BadKind, BadRow, ErrorKind, Position, RawEvent, parse_timestamp, topic};
use sluice_functions::RunnerProgress;
use sluice_journal::Journal;
use sluice_lake::DeliveryProgress;
use sluice_warehouse::Warehouse;

/// How long a replay waits for the pipeline to catch up before it gives up (503).
const CATCH_UP: Duration = Duration::from_secs(120);
/// Records per append.
const APPEND_CHUNK: usize = 1000;

/// What a replay needs from the running pipeline.
pub(crate) struct Replayer {
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) runner: RunnerProgress,
    pub(crate) events: DeliveryProgress,
    pub(crate) warehouse: Arc<Warehouse>,
    pub(crate) lock: tokio::sync::Mutex<()>,
}

/// The request body.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    /// Re-drive the bad rows of the `bad` topic.
    bad: bool,
    /// Re-drive raw records.
    raw: bool,
    /// Only bad rows of this kind (`schema_violation`...).
    kind: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    from: Option<String>,
    /// Only events received before this time (RFC 3339).
    to: Option<String>,
    /// Count, append nothing.
    dry_run: bool,
}

/// The answer.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read.
    pub scanned: u64,
    /// Records that matched the filters (one per event).
    pub candidates: u64,
    /// Candidates already in `events`, skipped.
    pub already_good: u64,
    /// Bad rows whose raw record was unreadable.
    pub unreplayable: u64,
    /// Records appended to `raw`.
    pub replayed: u64,
    /// Nothing was appended.
    pub dry_run: bool,
}

struct Filter {
    kind: Option<BadKind>,
    from: i64,
    to: i64,
}

impl Replayer {
    pub(crate) async fn run(
        &self,
        req: ReplayRequest,
    ) -> Result<ReplayReport, (ErrorKind, String)> {
        let invalid = |m: String| (ErrorKind::Invalid, m);
        if req.bad == req.raw {
            return Err(invalid(
                "say what to replay: {\"bad\": true} or {\"raw\": true}".into(),
            ));
        }
        let time = |s: &Option<String>, default: i64| -> Result<i64, (ErrorKind, String)> {
            match s {
                None => Ok(default),
                Some(t) => parse_timestamp(&serde_json::Value::String(t.clone()))
                    .ok_or_else(|| invalid(format!("{t:?} is not an RFC 3339 time"))),
            }
        };
        let kind = match req.kind.as_deref() {
            None => None,
            Some(k) => Some(
                BadKind::ALL
                    .into_iter()
                    .find(|b| b.as_str() == k)
                    .ok_or_else(|| invalid(format!("unknown bad row kind {k:?}")))?,
            ),
        };
        if req.raw && kind.is_some() {
            return Err(invalid(
                "kind filters bad rows; it does not apply to raw".into(),
            ));
        }
        let filter = Filter {
            kind,
            from: time(&req.from, i64::MIN)?,
            to: time(&req.to, i64::MAX)?,
        };
        let _guard = self.lock.lock().await;
        self.catch_up().await?;

        let journal = self.journal.clone();
        let bad = req.bad;
        let scanned = tokio::task::spawn_blocking(move || scan(&*journal, bad, &filter))
            .await
            .map_err(|e| (ErrorKind::Internal, e.to_string()))?
            .map_err(|e| (e.kind(), e.to_string()))?;
        let mut report = ReplayReport {
            scanned: scanned.scanned,
            unreplayable: scanned.unreplayable,
            candidates: scanned.candidates.len() as u64,
            dry_run: req.dry_run,
            ..Default::default()
        };
        let keys: Vec<(String, String)> = scanned
            .candidates
            .iter()
            .map(|(_, r)| (r.source.clone(), r.event_id.clone()))
            .collect();
        let known = self
            .warehouse
            .known_events(&keys)
            .await
            .map_err(|e| (e.kind(), format!("checking the events table: {e}")))?;
        let mut per_partition: BTreeMap<u32, Vec<Bytes>> = BTreeMap::new();
        for (pos, mut raw) in scanned.candidates {
            if known.contains(&(raw.source.clone(), raw.event_id.clone())) {
                report.already_good += 1;
                continue;
            }
            raw.replay_of = Some(raw.replay_of.unwrap_or(pos));
            let bytes =
                serde_json::to_vec(&raw).map_err(|e| (ErrorKind::Internal, e.to_string()))?;
            per_partition
                .entry(pos.partition)
                .or_default()
                .push(Bytes::from(bytes));
        }
        if !req.dry_run {
            for (p, records) in per_partition {
                for chunk in records.chunks(APPEND_CHUNK) {
                    self.journal
                        .append_shared(topic::RAW, p, chunk.to_vec(), None)
                        .await
                        .map_err(|e| (e.kind(), format!("appending to raw: {e}")))?;
                    report.replayed += chunk.len() as u64;
                }
            }
        } else {
            report.replayed = 0;
        }
        tracing::info!(?report, "replay");
        Ok(report)
    }

    /// Waits until the runner has processed `raw` and the lake holds `good`, as of now.
    async fn catch_up(&self) -> Result<(), (ErrorKind, String)> {
        let deadline = Instant::now() + CATCH_UP;
        let left = || deadline.saturating_duration_since(Instant::now());
        let runner = self.runner.wait_caught_up(&*self.journal);
        match tokio::time::timeout(left(), runner).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err((ErrorKind::Unavailable, format!("the runner: {e}"))),
            Err(_) => {
                return Err((
                    ErrorKind::Unavailable,
                    "the runner has not caught up with raw; try again later".into(),
                ));
            }
        }
        let events = self.events.wait_caught_up(&*self.journal);
        match tokio::time::timeout(left(), events).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err((ErrorKind::Unavailable, format!("the lake sink: {e}"))),
            Err(_) => Err((
                ErrorKind::Unavailable,
                "the lake has not caught up with good; try again later".into(),
            )),
        }
    }
}

struct Scanned {
    scanned: u64,
    unreplayable: u64,
    candidates: Vec<(Position, RawEvent)>,
}

fn scan(
    journal: &dyn Journal,
    bad: bool,
    filter: &Filter,
) -> Result<Scanned, sluice_journal::JournalError> {
    let t = if bad { topic::BAD } else { topic::RAW };
    let mut out = Scanned {
        scanned: 0,
        unreplayable: 0,
        candidates: Vec::new(),
    };
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for p in 0..journal.partitions(t)? {
        let end = journal.end(t, p)?;
        let mut next = journal.start(t, p)?;
        while next < end {
            let records = journal.read(t, p, next, 10_000, 64 << 20)?;
            let Some(last) = records.last() else {
                break;
            };
            next = last.offset + 1;
            for r in records {
                out.scanned += 1;
                let candidate = if bad {
                    let Ok(row) = serde_json::from_slice::<BadRow>(&r.value) else {
                        out.unreplayable += 1;
                        continue;
                    };
                    if filter.kind.is_some_and(|k| k != row.kind) {
                        continue;
                    }
                    match serde_json::from_str::<RawEvent>(row.payload.get()) {
                        Ok(raw) => (row.raw, raw),
                        Err(_) => {
                            out.unreplayable += 1;
                            continue;
                        }
                    }
                } else {
                    match serde_json::from_slice::<RawEvent>(&r.value) {
                        Ok(raw) => (
                            Position {
                                partition: p,
                                offset: r.offset,
                            },
                            raw,
                        ),
                        Err(_) => continue,
                    }
                };
                let raw = &candidate.1;
                if raw.received_at < filter.from || raw.received_at >= filter.to {
                    continue;
                }
                if seen.insert((raw.source.clone(), raw.event_id.clone())) {
                    out.candidates.push(candidate);
                }
            }
        }
    }
    Ok(out)
}
