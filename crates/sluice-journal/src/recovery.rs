//! Opening one partition directory: verify its segments (`scan.rs`), truncate a torn tail of the
//! active segment, salvage damage before durable data (`salvage.rs`), apply the durable offset
//! floor, and report each step in a [`PartitionRecovery`].
//!
//! Recovery never loses a record that still verifies: it truncates only the active segment's
//! torn tail, removes only a last segment whose header never became durable, and salvages
//! anything else that is damaged (the file is copied into `<p>/quarantine/` first; the records
//! that verify are kept; the offsets that do not are reported as lost ranges, as is a segment
//! missing from the chain). Only what salvage cannot explain (an unknown format version,
//! overlapping segments, a salvage that failed) quarantines the partition (reads and appends
//! return `Quarantined`) while the other partitions keep serving. After verification it fsyncs
//! the active segment and the directory, because records a crashed process wrote but never
//! synced may have survived in the page cache: they become readable now, so they must first
//! become durable.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::durable::{Disk, StorageError};
use crate::format::{
    COMMIT_MAGIC, FLOOR_MAGIC, decode_small, parse_segment_file_name, segment_file_name,
};
use crate::partition::{CONSUMERS_DIR, FLOOR_FILE, Partition};
use crate::salvage::{LostRange, Salvaged};
use crate::scan::{Scan, Verified, scan_segment};
use crate::segment::{IndexBuilder, Segment};
use crate::writer::WriterStart;
use crate::{JournalError, metrics};

/// What recovery did to one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionRecovery {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Segment files kept.
    pub segments: usize,
    /// Records found in them.
    pub records: u64,
    /// First offset stored.
    pub start: u64,
    /// The next offset (the durable watermark) after recovery.
    pub end: u64,
    /// Bytes truncated from a torn tail of the active segment, plus the size of any
    /// half-created segment removed.
    pub truncated_bytes: u64,
    /// Half-created segments (header never durable, no records) removed.
    pub removed_segments: usize,
    /// Set when the partition is quarantined: what was found.
    pub quarantined: Option<String>,
    /// Offsets whose records were damaged and are gone (see `salvage.rs`); consumers step over
    /// them like a crash gap.
    pub lost: Vec<LostRange>,
    /// Damaged segment files, copied aside into `<p>/quarantine/` before what still verified
    /// in them was kept.
    pub damaged_files: Vec<PathBuf>,
    /// Set when the next offset was moved up to the durable floor, leaving a gap.
    pub floor_gap: Option<FloorGap>,
    /// Anything else worth an operator's attention (missing floor file, unexpected files,
    /// consumer offsets past the end).
    pub warnings: Vec<String>,
}

/// The next offset continues at the floor rather than right after the last record, so offsets
/// `recovered_end..floor` are never used: some may have been handed out before the crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloorGap {
    /// One past the last record found on disk.
    pub recovered_end: u64,
    /// Where offsets continue.
    pub floor: u64,
}

/// Everything a journal-wide open found, partition by partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// One entry per partition of every topic found, sorted by topic and partition.
    pub partitions: Vec<PartitionRecovery>,
    /// Problems outside any partition (unreadable topic directories and the like).
    pub warnings: Vec<String>,
}

impl RecoveryReport {
    /// Records lost to damage, over every partition.
    pub fn lost_records(&self) -> u64 {
        self.partitions
            .iter()
            .flat_map(|p| &p.lost)
            .map(LostRange::records)
            .sum()
    }

    /// The partitions that are quarantined.
    pub fn quarantined(&self) -> impl Iterator<Item = &PartitionRecovery> {
        self.partitions.iter().filter(|p| p.quarantined.is_some())
    }

    /// The entry of one partition.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionRecovery> {
        self.partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
    }
}

/// A recovered partition and how its writer starts (none if quarantined).
pub(crate) struct Recovered {
    pub partition: Partition,
    pub writer: Option<WriterStart>,
    pub report: PartitionRecovery,
}

/// Recovers the partition in `dir`. Errors only when an fsync fails (the device cannot be
/// trusted, so the whole open fails); everything else ends in a healthy or quarantined partition.
pub(crate) fn recover_partition(
    disk: &Disk,
    topic: &str,
    id: u32,
    dir: PathBuf,
) -> Result<Recovered, JournalError> {
    let mut report = PartitionRecovery {
        topic: topic.to_string(),
        partition: id,
        ..PartitionRecovery::default()
    };
    match recover_inner(disk, &dir, &mut report) {
        Ok(Outcome::Healthy {
            segments,
            next,
            floor,
            writer,
        }) => Ok(Recovered {
            partition: Partition::healthy(topic, id, dir, segments, next, floor),
            writer: Some(writer),
            report,
        }),
        Ok(Outcome::Quarantined(reason)) => Ok(quarantine(topic, id, dir, reason, report)),
        Err(StorageError::Sync(error)) => Err(JournalError::Failed(format!(
            "fsync failed while recovering {}: {error}",
            dir.display()
        ))),
        Err(StorageError::Space(error) | StorageError::Other(error)) => {
            let reason = format!("cannot recover: {error}");
            Ok(quarantine(topic, id, dir, reason, report))
        }
    }
}

/// A quarantined partition (recovery found damage or could not read it).
pub(crate) fn quarantine(
    topic: &str,
    id: u32,
    dir: PathBuf,
    reason: String,
    mut report: PartitionRecovery,
) -> Recovered {
    tracing::error!(
        topic,
        partition = id,
        reason = %reason,
        "journal partition quarantined: data before the durable point is damaged or unreadable; \
         it is neither read nor written until an operator repairs it"
    );
    metrics::quarantine(topic);
    report.quarantined = Some(reason.clone());
    report.segments = 0;
    report.records = 0;
    Recovered {
        partition: Partition::quarantined(topic, id, dir, reason),
        writer: None,
        report,
    }
}

enum Outcome {
    Healthy {
        segments: Vec<Arc<Segment>>,
        next: u64,
        floor: u64,
        writer: WriterStart,
    },
    Quarantined(String),
}

/// Recovery in phases: list the segment files, verify them in order (cutting a torn tail),
/// make what survived durable, then place the next offset at `max(data end, floor)`. A phase
/// that finds damage answers `Err(reason)` inside `Ok`: the partition is quarantined.
fn recover_inner(
    disk: &Disk,
    dir: &Path,
    report: &mut PartitionRecovery,
) -> Result<Outcome, StorageError> {
    let bases = match list_segments(dir, report)? {
        Ok(bases) => bases,
        Err(reason) => return Ok(Outcome::Quarantined(reason)),
    };
    let (segments, mut writer, data_end) = match verify_segments(disk, dir, &bases, report)? {
        Ok(verified) => verified,
        Err(reason) => return Ok(Outcome::Quarantined(reason)),
    };
    make_durable(disk, dir, writer.active.as_deref(), report)?;
    let floor = read_floor(dir, report)?;
    let next = match next_offset(data_end, floor, report) {
        Ok(next) => next,
        Err(reason) => return Ok(Outcome::Quarantined(reason)),
    };
    if report.truncated_bytes > 0 {
        metrics::recovery_truncation(&report.topic, report.truncated_bytes);
    }
    check_consumers(dir, next, report);
    report.start = segments.first().map_or(next, |s| s.base.min(next));
    report.end = next;
    writer.next = next;
    Ok(Outcome::Healthy {
        segments,
        next,
        floor,
        writer,
    })
}

/// The base offsets of the segment files, sorted; removes leftover temporary files.
fn list_segments(
    dir: &Path,
    report: &mut PartitionRecovery,
) -> Result<Result<Vec<u64>, String>, StorageError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StorageError::Other)? {
        let entry = entry.map_err(StorageError::Other)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            report.warnings.push(format!(
                "ignored a file with a non-UTF-8 name in {}",
                dir.display()
            ));
            continue;
        };
        if name.ends_with(".tmp") {
            // An atomic replacement that never got renamed into place.
            std::fs::remove_file(entry.path()).map_err(StorageError::Other)?;
        } else if let Some(base) = parse_segment_file_name(name) {
            bases.push(base);
        } else if name.ends_with(crate::format::SEGMENT_SUFFIX) {
            return Ok(Err(format!("unexpected segment file name {name}")));
        } else if name != FLOOR_FILE
            && name != CONSUMERS_DIR
            && name != crate::salvage::QUARANTINE_DIR
        {
            report
                .warnings
                .push(format!("ignored unexpected file {name}"));
        }
    }
    bases.sort_unstable();
    Ok(Ok(bases))
}

/// The kept segments, the writer's start, and the data end, as [`verify_segments`] finds them.
type VerifiedSegments = (Vec<Arc<Segment>>, WriterStart, u64);

/// Scans every segment in order: sealed ones must verify whole and continue each other; a
/// half-created last one is removed; a torn tail of the active one is cut. Returns the kept
/// segments, the writer's start, and the data end (one past the last record, or past a
/// removed segment's base: offsets below it may have been used).
fn verify_segments(
    disk: &Disk,
    dir: &Path,
    bases: &[u64],
    report: &mut PartitionRecovery,
) -> Result<Result<VerifiedSegments, String>, StorageError> {
    let mut verify = Verify {
        disk,
        dir,
        bases,
        report,
        segments: Vec::new(),
        writer: WriterStart {
            active: None,
            active_records: 0,
            index_state: IndexBuilder::default(),
            next: 0,
        },
        records_end: None,
        min_next: 0,
        work: bases
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, i + 1 < bases.len()))
            .collect(),
        salvaged: 0,
    };
    while let Some((base, sealed)) = verify.work.pop_front() {
        if let Err(reason) = verify.segment(base, sealed)? {
            return Ok(Err(reason));
        }
    }
    verify.finish().map(Ok)
}

/// The walk of [`verify_segments`] over a partition's segments.
struct Verify<'a> {
    disk: &'a Disk,
    dir: &'a Path,
    bases: &'a [u64],
    report: &'a mut PartitionRecovery,
    segments: Vec<Arc<Segment>>,
    writer: WriterStart,
    /// One past the last record of the segments kept so far.
    records_end: Option<u64>,
    /// The base of a removed segment: offsets below it may have been used.
    min_next: u64,
    /// (base, sealed) still to verify; a salvaged segment puts its replacements in front.
    work: std::collections::VecDeque<(u64, bool)>,
    /// Salvages so far.
    salvaged: usize,
}

/// The segment file being verified.
struct SegmentFile {
    base: u64,
    sealed: bool,
    name: String,
    path: PathBuf,
    file: File,
}

impl Verify<'_> {
    /// Verifies the segment named for `base`: salvaged when damaged, removed when its creation
    /// never completed, else checked against the chain and kept.
    fn segment(&mut self, base: u64, sealed: bool) -> Result<Result<(), String>, StorageError> {
        let name = segment_file_name(base);
        let path = self.dir.join(&name);
        let file = open_segment(&path, sealed).map_err(StorageError::Other)?;
        let segment = SegmentFile {
            base,
            sealed,
            name,
            path,
            file,
        };
        let verified =
            match scan_segment(&segment.file, base, sealed).map_err(StorageError::Other)? {
                Scan::Corrupt(reason) => return self.salvage(segment, reason),
                Scan::TornCreation { reason } => {
                    self.remove_torn(segment, &reason)?;
                    return Ok(Ok(()));
                }
                Scan::Verified(verified) => verified,
            };
        if let Err(reason) = self.check_chain(&segment, verified.header.prev_end)? {
            return Ok(Err(reason));
        }
        self.keep(segment, verified)?;
        Ok(Ok(()))
    }

    /// Salvages a damaged segment (`reason` says what was found): its replacements go to the
    /// front of the work, to be verified next.
    fn salvage(
        &mut self,
        segment: SegmentFile,
        reason: String,
    ) -> Result<Result<(), String>, StorageError> {
        let SegmentFile {
            base,
            sealed,
            name,
            path,
            file,
        } = segment;
        // Each salvage writes only segments that verify; the bound is a safety net.
        if self.salvaged > self.bases.len()
            || base >= crate::format::MAX_OFFSET
            || crate::salvage::is_other_version(&file)
        {
            return Ok(Err(format!("segment {name}: {reason}")));
        }
        self.salvaged += 1;
        let prev_end = self.records_end.unwrap_or(base);
        let damaged = crate::salvage::Damaged {
            dir: self.dir,
            base,
            file: &file,
            prev_end,
            sealed,
        };
        let done = match crate::salvage::salvage(self.disk, &damaged) {
            Ok(done) => done,
            Err(StorageError::Sync(e)) => return Err(StorageError::Sync(e)),
            Err(StorageError::Space(e) | StorageError::Other(e)) => {
                return Ok(Err(format!(
                    "segment {name}: {reason}; salvage failed: {e}"
                )));
            }
        };
        drop(file);
        note_salvage(self.report, &path, &reason, &done);
        let last = done.bases.len().saturating_sub(1);
        for (i, b) in done.bases.iter().enumerate().rev() {
            self.work.push_front((*b, sealed || i < last));
        }
        // What the segment lost at its end shows in the next one's `prev_end`: the
        // chain check reports it, from here on.
        self.records_end.get_or_insert(prev_end);
        Ok(Ok(()))
    }

    /// Removes a last segment whose creation never completed (`reason` says why it is taken
    /// for one).
    fn remove_torn(&mut self, segment: SegmentFile, reason: &str) -> Result<(), StorageError> {
        let SegmentFile {
            base, path, file, ..
        } = segment;
        let len = file.metadata().map_err(StorageError::Other)?.len();
        drop(file);
        std::fs::remove_file(&path).map_err(StorageError::Other)?;
        self.disk.sync_dir(self.dir)?;
        tracing::warn!(
            segment = %path.display(),
            reason = %reason,
            "removed a segment whose creation never completed"
        );
        self.report.truncated_bytes += len;
        self.report.removed_segments += 1;
        self.min_next = self.min_next.max(base);
        Ok(())
    }

    /// Checks that the segment, created after `prev_end`, continues the previous one; records
    /// missing between them are reported as lost once, and the chain continues across them.
    fn check_chain(
        &mut self,
        segment: &SegmentFile,
        prev_end: u64,
    ) -> Result<Result<(), String>, StorageError> {
        let (base, name) = (segment.base, &segment.name);
        match self.records_end {
            Some(prev) if prev_end > prev && base >= prev_end => {
                // The records between were durable and are gone: damaged at the end of the
                // previous segment (salvaged), or a whole segment is missing.
                note_lost(
                    self.report,
                    name,
                    LostRange {
                        from: prev,
                        to: prev_end,
                    },
                );
                // Reported once: the chain now continues across the lost range, as after a
                // crash gap. (A torn header write is salvaged like any other damage.)
                rewrite_prev_end(self.disk, &segment.path, base, prev)?;
            }
            Some(prev) if prev_end != prev || base < prev => {
                return Ok(Err(format!(
                    "segment {name} does not continue the previous segment: it was created \
                     after offset {prev_end} but the previous segment ends at {prev} (a segment \
                     is missing or was cut)"
                )));
            }
            _ => {}
        }
        Ok(Ok(()))
    }

    /// Cuts a torn tail of the verified segment, counts it, and keeps it as the writer's
    /// latest.
    fn keep(&mut self, segment: SegmentFile, verified: Verified) -> Result<(), StorageError> {
        let SegmentFile {
            base,
            sealed,
            path,
            file,
            ..
        } = segment;
        if let Some(tail) = &verified.tail {
            let cut = verified.file_len - verified.keep_len;
            file.set_len(verified.keep_len)
                .map_err(StorageError::Other)?;
            tracing::warn!(
                segment = %path.display(),
                bytes = cut,
                reason = %tail,
                "truncated a torn tail past the last complete append"
            );
            self.report.truncated_bytes += cut;
        }
        self.report.segments += 1;
        self.report.records += verified.records;
        self.records_end = Some(verified.records_end);
        let segment = Arc::new(Segment::new(
            base,
            path,
            // Sealed segments reopen lazily on first read.
            (!sealed).then_some(file),
            verified.keep_len,
            verified.records_end,
            verified.max_timestamp_ms,
            verified.index,
        ));
        self.writer.active_records = verified.records;
        self.writer.index_state = verified.index_state;
        self.segments.push(segment);
        Ok(())
    }

    /// The segments kept, the writer's start on the last of them, and the data end.
    fn finish(mut self) -> Result<VerifiedSegments, StorageError> {
        // The last segment kept is the active one. If it was scanned as sealed (a half-created
        // segment after it was removed), it needs a writable handle.
        if let Some(last) = self.segments.last_mut() {
            if last.base != self.bases.last().copied().unwrap_or(last.base) {
                *last = Arc::new(last.reopen_writable().map_err(StorageError::Other)?);
            }
            self.writer.active = Some(last.clone());
        }
        let data_end = self.records_end.unwrap_or(0).max(self.min_next);
        Ok((self.segments, self.writer, data_end))
    }
}

/// Rewrites the header of the segment at `path` so that it says the records before it end at
/// `prev_end`.
fn rewrite_prev_end(
    disk: &Disk,
    path: &Path,
    base: u64,
    prev_end: u64,
) -> Result<(), StorageError> {
    use std::os::unix::fs::FileExt as _;
    let header = crate::format::SegmentHeader {
        base_offset: base,
        prev_end,
    };
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(StorageError::Other)?;
    file.write_all_at(&header.encode(), 0)
        .map_err(StorageError::from_write)?;
    disk.sync_data(&file)
}

/// Logs, counts and reports offsets whose records are missing before segment `name`.
fn note_lost(report: &mut PartitionRecovery, name: &str, lost: LostRange) {
    tracing::error!(
        topic = %report.topic,
        partition = report.partition,
        segment = name,
        from = lost.from,
        to = lost.to,
        "journal records are missing before a segment (the previous segment was damaged or \
         removed); consumers skip the lost range"
    );
    metrics::recovery_lost(&report.topic, lost.records());
    report.lost.push(lost);
}

/// Logs, counts and reports a salvaged segment.
fn note_salvage(report: &mut PartitionRecovery, path: &Path, reason: &str, done: &Salvaged) {
    let lost: u64 = done.lost.iter().map(LostRange::records).sum();
    tracing::error!(
        topic = %report.topic,
        partition = report.partition,
        segment = %path.display(),
        reason,
        lost_records = lost,
        lost_ranges = ?done.lost,
        kept_at = %done.kept_at.display(),
        "journal segment damaged: kept every record that verifies, set the file aside; the \
         records in the lost ranges are gone"
    );
    metrics::recovery_lost(&report.topic, lost);
    report.lost.extend(done.lost.iter().copied());
    report.damaged_files.push(done.kept_at.clone());
}

/// What survived the crash in the page cache becomes readable: make it durable first (with the
/// file size, if a torn tail was cut off).
fn make_durable(
    disk: &Disk,
    dir: &Path,
    active: Option<&Segment>,
    report: &PartitionRecovery,
) -> Result<(), StorageError> {
    if let Some(active) = active {
        let file = active.file().map_err(StorageError::Other)?;
        if report.truncated_bytes > 0 {
            disk.sync_all(file)?;
        } else {
            disk.sync_data(file)?;
        }
    }
    disk.sync_dir(dir)
}

/// The durable floor for the next offset; 0 (with a warning) when its file is missing or
/// unreadable.
fn read_floor(dir: &Path, report: &mut PartitionRecovery) -> Result<u64, StorageError> {
    match std::fs::read(dir.join(FLOOR_FILE)) {
        Ok(bytes) => match decode_small(FLOOR_MAGIC, &bytes) {
            Ok(floor) => Ok(floor),
            Err(why) => {
                report.warnings.push(format!(
                    "offset floor file is unreadable ({why}); offsets continue after the last \
                     record found"
                ));
                Ok(0)
            }
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            report.warnings.push(
                "offset floor file is missing; offsets continue after the last record found".into(),
            );
            Ok(0)
        }
        Err(error) => Err(StorageError::Other(error)),
    }
}

/// The next offset, `max(data end, floor)`; a jump to the floor is the crash gap consumers
/// step over, reported here.
fn next_offset(data_end: u64, floor: u64, report: &mut PartitionRecovery) -> Result<u64, String> {
    let next = data_end.max(floor);
    if next >= crate::format::MAX_OFFSET {
        return Err(format!(
            "next offset {next} (floor {floor}) is beyond the offset space"
        ));
    }
    if next > data_end {
        tracing::warn!(
            topic = %report.topic,
            partition = report.partition,
            recovered_end = data_end,
            floor = next,
            "offsets continue at the durable floor, leaving a gap (the process did not shut \
             down cleanly, or records at the end were lost)"
        );
        report.floor_gap = Some(FloorGap {
            recovered_end: data_end,
            floor: next,
        });
        metrics::floor_gap(&report.topic);
    }
    Ok(next)
}

fn open_segment(path: &Path, sealed: bool) -> io::Result<File> {
    if sealed {
        File::open(path)
    } else {
        OpenOptions::new().read(true).write(true).open(path)
    }
}

/// Warns about consumer offsets past the recovered end: with the floor in place this means a
/// consumer committed records that are gone, which an operator should know about.
fn check_consumers(dir: &Path, next: u64, report: &mut PartitionRecovery) {
    let consumers = dir.join(CONSUMERS_DIR);
    let Ok(entries) = std::fs::read_dir(&consumers) else {
        if let Err(error) = crate::durable_fs::create_dir_all_durable(&consumers) {
            report
                .warnings
                .push(format!("cannot create the consumers directory: {error}"));
        }
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        match std::fs::read(entry.path())
            .map_err(|e| e.to_string())
            .and_then(|b| decode_small(COMMIT_MAGIC, &b).map_err(|e| e.to_string()))
        {
            Ok(committed) if committed > next => report.warnings.push(format!(
                "consumer group {} committed offset {committed}, past the recovered end {next}",
                crate::local::unescape_group(&name)
            )),
            Ok(_) => {}
            Err(why) => report
                .warnings
                .push(format!("consumer offsets file {name} is unreadable: {why}")),
        }
    }
}
