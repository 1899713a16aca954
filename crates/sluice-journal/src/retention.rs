//! Retention: deleting whole sealed segments from the front of each partition, by age (newest
//! record older than `retention_age`) or size (partition over `retention_bytes`), never past
//! what a registered consumer has read, and the [`RetentionReport`] saying what went and what
//! was held.
//!
//! Only a prefix of sealed segments is ever deleted, never the active segment, so `start()`
//! moves up and the remaining offsets stay contiguous. A segment leaves the in-memory list before
//! its file is unlinked: new reads no longer find it, while reads already holding it finish on
//! the open (unlinked) file. Deleting records does not lower the durable floor, so their offsets
//! are never handed out again. Empty sealed segments (left by a crash-time offset gap) hold
//! nothing and go first.
//!
//! Consumers: every file in `<p>/consumers/` is a registered consumer of the partition and its
//! committed next offset; a segment holding any record at or past the smallest of them is
//! *held*: age and `retention_bytes` never delete it. Held data shows in
//! `sluice_journal_retention_held_bytes` / `_held_segments` (per topic) and in a warning naming
//! the consumer, at most once a minute per partition. The one exception is the safety valve
//! `max_unread_bytes`: while a partition is larger than that, its oldest sealed segments go
//! even unread, with an error log naming the consumers and
//! `sluice_journal_retention_unread_deleted_total` counting the records they never read. An
//! unreadable consumer file holds everything (it is rewritten on that consumer's next commit).
//! Who registers which consumer is the server's business (`LocalJournal::register_consumer`,
//! `unregister_consumer`); the journal only honours the files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::format::{COMMIT_MAGIC, decode_small};
use crate::local::Shared;
use crate::partition::{CONSUMERS_DIR, Partition};
use crate::segment::Segment;
use crate::sync::{read_lock, write_lock};
use crate::{JournalError, metrics};

/// Least time between two "retention is held" warnings for one partition.
const HELD_WARN_EVERY_MS: u64 = 60_000;

/// Retention's own state between passes.
#[derive(Debug, Default)]
pub(crate) struct RetentionState {
    /// When (journal clock, ms) each partition last warned that retention is held.
    warned: BTreeMap<(String, u32), u64>,
}

/// What one retention pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted across all partitions.
    pub deleted_segments: u64,
    /// Bytes deleted across all partitions.
    pub deleted_bytes: u64,
    /// Partitions where something was deleted.
    pub partitions: Vec<PartitionRetention>,
    /// Partitions where age or size would have deleted segments a consumer has not read.
    pub held: Vec<HeldRetention>,
    /// Records deleted before every registered consumer read them (the `max_unread_bytes`
    /// safety valve).
    pub unread_deleted_records: u64,
}

/// Segments retention keeps in one partition because a consumer has not read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRetention {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The slowest consumer: its name and its next offset.
    pub consumer: String,
    /// Its next offset.
    pub next: u64,
    /// Segments kept past retention.
    pub segments: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What retention deleted in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRetention {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Segments deleted.
    pub deleted_segments: u64,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// The partition's first stored offset afterwards.
    pub start: u64,
}

/// A registered consumer of a partition and its committed next offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConsumerPosition {
    pub name: String,
    pub next: u64,
}

/// Every consumer registered in a partition directory (`consumers/<group>` files); an
/// unreadable file counts as a consumer at offset 0.
pub(crate) fn consumer_positions(dir: &Path) -> Vec<ConsumerPosition> {
    let Ok(entries) = std::fs::read_dir(dir.join(CONSUMERS_DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<ConsumerPosition> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.ends_with(".tmp") {
                return None;
            }
            let next = std::fs::read(e.path())
                .map_err(|e| e.to_string())
                .and_then(|b| decode_small(COMMIT_MAGIC, &b).map_err(|e| e.to_string()))
                .unwrap_or(0);
            Some(ConsumerPosition {
                name: crate::local::unescape_group(&file),
                next,
            })
        })
        .collect();
    out.sort_by(|a, b| a.next.cmp(&b.next).then_with(|| a.name.cmp(&b.name)));
    out
}

/// What one pass decides for one partition.
#[derive(Debug, Default)]
struct Plan {
    victims: Vec<Arc<Segment>>,
    /// Records among the victims the slowest consumer has not read.
    unread_records: u64,
    held_segments: u64,
    held_bytes: u64,
}

/// The rules of one pass.
struct Rules {
    cutoff_ms: i64,
    retention_bytes: Option<u64>,
    max_unread_bytes: Option<u64>,
    /// The slowest registered consumer's next offset (none registered: no hold).
    hold: Option<u64>,
}

/// Which sealed prefix goes, and what is held (see the module docs).
fn plan(segments: &[Arc<Segment>], rules: &Rules) -> Plan {
    let mut total: u64 = segments.iter().map(|s| s.len()).sum();
    let sealed = segments.len().saturating_sub(1);
    let mut plan = Plan::default();
    for segment in &segments[..sealed] {
        let over = |limit: Option<u64>| limit.is_some_and(|max| total > max);
        let due = segment.is_empty()
            || segment.max_timestamp_ms() < rules.cutoff_ms
            || over(rules.retention_bytes);
        let forced = over(rules.max_unread_bytes);
        let unread = match rules.hold {
            Some(hold) if !segment.is_empty() => {
                segment.records_end().saturating_sub(hold.max(segment.base))
            }
            _ => 0,
        };
        let deletable = plan.held_segments == 0 && (unread == 0 || forced);
        if !(due || forced) {
            break;
        }
        if deletable {
            total -= segment.len();
            plan.unread_records += unread;
            plan.victims.push(segment.clone());
        } else {
            plan.held_segments += 1;
            plan.held_bytes += segment.len();
        }
    }
    debug_assert!(
        plan.victims
            .iter()
            .zip(segments)
            .all(|(v, s)| Arc::ptr_eq(v, s))
    );
    plan
}

/// One retention pass at wall-clock time `now_ms`.
pub(crate) fn enforce(shared: &Shared, now_ms: i64) -> Result<RetentionReport, JournalError> {
    let mut state = crate::sync::lock(&shared.retention);
    let mut report = RetentionReport::default();
    let mut held_by_topic: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for part in shared.all_partitions() {
        let held = held_by_topic.entry(part.topic.clone()).or_default();
        if part.quarantine_reason().is_some() {
            continue;
        }
        let consumers = consumer_positions(&part.dir);
        let rules = Rules {
            cutoff_ms: now_ms.saturating_sub(shared.settings.retention_age_ms),
            retention_bytes: shared.settings.retention_bytes,
            max_unread_bytes: shared.settings.max_unread_bytes,
            hold: consumers.first().map(|c| c.next),
        };
        let plan = plan(&read_lock(&part.segments), &rules);
        held.0 += plan.held_bytes;
        held.1 += plan.held_segments;
        if plan.held_segments > 0 {
            note_held(shared, &mut state, &part, &consumers, &plan, &mut report);
        }
        if plan.victims.is_empty() {
            continue;
        }
        if plan.unread_records > 0 {
            note_unread_deleted(&part, &consumers, &plan);
            report.unread_deleted_records += plan.unread_records;
        }
        report
            .partitions
            .push(delete(shared, &part, &plan.victims)?);
    }
    for (topic, (bytes, segments)) in held_by_topic {
        metrics::retention_held(&topic, bytes, segments);
    }
    for p in &report.partitions {
        report.deleted_segments += p.deleted_segments;
        report.deleted_bytes += p.deleted_bytes;
    }
    Ok(report)
}

/// Reports segments held for a consumer: in the report always, in the log at most once a minute
/// per partition.
fn note_held(
    shared: &Shared,
    state: &mut RetentionState,
    part: &Partition,
    consumers: &[ConsumerPosition],
    plan: &Plan,
    report: &mut RetentionReport,
) {
    let Some(slowest) = consumers.first() else {
        return;
    };
    let now = shared.clock_ms();
    let last = state
        .warned
        .entry((part.topic.clone(), part.id))
        .or_insert(0);
    if *last == 0 || now.saturating_sub(*last) >= HELD_WARN_EVERY_MS {
        *last = now.max(1);
        tracing::warn!(
            topic = %part.topic,
            partition = part.id,
            consumer = %slowest.name,
            consumer_next = slowest.next,
            held_segments = plan.held_segments,
            held_bytes = plan.held_bytes,
            "retention is keeping segments past retention_age/retention_bytes: consumer {} has \
             not read them yet",
            slowest.name
        );
    }
    report.held.push(HeldRetention {
        topic: part.topic.clone(),
        partition: part.id,
        consumer: slowest.name.clone(),
        next: slowest.next,
        segments: plan.held_segments,
        bytes: plan.held_bytes,
    });
}

/// The safety valve fired: say loudly who loses what.
fn note_unread_deleted(part: &Partition, consumers: &[ConsumerPosition], plan: &Plan) {
    let end = plan.victims.last().map_or(0, |s| s.records_end());
    let behind: Vec<String> = consumers
        .iter()
        .filter(|c| c.next < end)
        .map(|c| format!("{} at {}", c.name, c.next))
        .collect();
    tracing::error!(
        topic = %part.topic,
        partition = part.id,
        unread_records = plan.unread_records,
        deleted_up_to = end,
        consumers = ?behind,
        "retention deleted records consumers have not read: the partition is over \
         max_unread_bytes; those consumers skip to the new start"
    );
    metrics::retention_unread_deleted(&part.topic, plan.unread_records);
}

/// Removes `victims` (a prefix of the partition's segments) from the list, then from disk.
fn delete(
    shared: &Shared,
    part: &Partition,
    victims: &[Arc<Segment>],
) -> Result<PartitionRetention, JournalError> {
    // Drop them from the list first (they are its prefix: only this pass removes segments, and
    // the writer only appends), then unlink.
    write_lock(&part.segments).drain(..victims.len());
    let mut deleted_bytes = 0;
    for segment in victims {
        if let Err(source) = std::fs::remove_file(&segment.path)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(JournalError::Io {
                context: format!("deleting {}", segment.path.display()),
                source,
            });
        }
        deleted_bytes += segment.len();
    }
    if let Err(error) = shared.disk.sync_dir(&part.dir) {
        return Err(shared.storage_error(error, "syncing after retention"));
    }
    let deleted = victims.len() as u64;
    tracing::info!(
        topic = %part.topic,
        partition = part.id,
        segments = deleted,
        bytes = deleted_bytes,
        "retention deleted segments"
    );
    metrics::retention(&part.topic, deleted, deleted_bytes);
    Ok(PartitionRetention {
        topic: part.topic.clone(),
        partition: part.id,
        deleted_segments: deleted,
        deleted_bytes,
        start: part.start(),
    })
}
