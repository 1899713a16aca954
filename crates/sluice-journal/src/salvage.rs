//! Salvage of a damaged segment at recovery: keep every record that still verifies, set the
//! damaged file aside, and report exactly which offsets were lost.
//!
//! A segment whose damage lies before durable data (any damage in a sealed segment; damage in
//! the active one followed by frames written after it was durable) used to quarantine its whole
//! partition, which stopped every stage reading it. Now:
//!
//! 1. the valid runs of frames are found (`scan::find_runs`, which resynchronises after a bad
//!    frame on the next frame whose checksum and offset fit);
//! 2. the original file is copied into `<p>/quarantine/` (fsynced) for an operator to inspect;
//! 3. each run is written as a segment of its own (tmp, fsync, rename, directory fsync), later
//!    runs first, so that a crash part-way leaves the original in place and the next open
//!    salvages it again; the first run replaces the original under its name, or the original is
//!    removed when no run starts at its base. A run's last frame gets the end-of-batch flag (and
//!    a new checksum) when damage follows it, since a sealed segment must end on a batch;
//! 4. the offsets before and between runs are [`LostRange`]s: logged as errors, counted in
//!    `sluice_journal_recovery_lost_records_total`, listed in the recovery report. What is lost
//!    after the last run (and a segment missing altogether) shows as the next segment's
//!    `prev_end` being past the end of the records before it; recovery reports that range the
//!    same way. Consumers step over lost ranges like a crash gap.
//!
//! A segment of an unsupported format version is never touched (the partition is quarantined).

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::durable::{Disk, StorageError};
use crate::format::{
    FLAG_END_OF_BATCH, FRAME_HEADER_LEN, FrameHeader, HeaderError, SEGMENT_HEADER_LEN,
    SegmentHeader, encode_frame, segment_file_name,
};
use crate::scan::{Run, find_runs};

/// Where damaged segment files are kept, inside the partition directory.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// Offsets `from..to` of a partition whose records were damaged and are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostRange {
    /// First lost offset.
    pub from: u64,
    /// One past the last lost offset.
    pub to: u64,
}

impl LostRange {
    /// How many offsets the range covers.
    pub fn records(&self) -> u64 {
        self.to - self.from
    }
}

/// What salvaging one segment did.
#[derive(Debug)]
pub(crate) struct Salvaged {
    /// Bases of the segment files that now replace the damaged one, in order.
    pub bases: Vec<u64>,
    /// Offsets lost before and between the kept runs.
    pub lost: Vec<LostRange>,
    /// Where the damaged original was copied.
    pub kept_at: PathBuf,
}

/// The segment `base` in `dir` and what is known around it.
pub(crate) struct Damaged<'a> {
    pub dir: &'a Path,
    pub base: u64,
    pub file: &'a File,
    /// The `prev_end` its replacement's first segment gets (where the previous segment ended).
    pub prev_end: u64,
    /// Whether it is sealed (a later segment exists).
    pub sealed: bool,
}

/// Whether the segment header in `file` is intact but of another format version: such a file is
/// never rewritten.
pub(crate) fn is_other_version(file: &File) -> bool {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    if file.read_exact_at(&mut b, 0).is_err() {
        return false;
    }
    matches!(SegmentHeader::decode(&b), Err(HeaderError::Version(_)))
}

/// Salvages `d` (see the module docs).
pub(crate) fn salvage(disk: &Disk, d: &Damaged<'_>) -> Result<Salvaged, StorageError> {
    let runs = find_runs(d.file, d.base).map_err(StorageError::Other)?;
    let kept_at = keep_original(disk, d)?;
    let last = runs.len().saturating_sub(1);
    let mut prev_ends: Vec<u64> = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        prev_ends.push(if i == 0 {
            d.prev_end.min(run.first)
        } else {
            runs[i - 1].end
        });
    }
    for (i, run) in runs.iter().enumerate().rev() {
        // A run that damage cuts short must end on a batch; the active segment's last run keeps
        // its flags so that recovery still treats an incomplete batch at its end as torn.
        let seal = d.sealed || i < last;
        let bytes = run_bytes(d.file, run, prev_ends[i], seal)?;
        disk.write_atomic(d.dir, &segment_file_name(run.first), &bytes)?;
    }
    if runs.first().is_none_or(|r| r.first != d.base) {
        std::fs::remove_file(d.dir.join(segment_file_name(d.base))).map_err(StorageError::Other)?;
        disk.sync_dir(d.dir)?;
    }
    let lost = lost_ranges(d, &runs);
    Ok(Salvaged {
        bases: runs.iter().map(|r| r.first).collect(),
        lost,
        kept_at,
    })
}

/// Copies the damaged file into the quarantine directory (once: an earlier copy of the same
/// segment, from a salvage a crash interrupted, is the original and is kept).
fn keep_original(disk: &Disk, d: &Damaged<'_>) -> Result<PathBuf, StorageError> {
    let qdir = d.dir.join(QUARANTINE_DIR);
    if !qdir.is_dir() {
        std::fs::create_dir_all(&qdir).map_err(StorageError::from_write)?;
        disk.sync_dir(d.dir)?;
    }
    let name = segment_file_name(d.base);
    let kept = qdir.join(&name);
    if !kept.exists() {
        let tmp = qdir.join(format!("{name}.tmp"));
        std::fs::copy(d.dir.join(&name), &tmp).map_err(StorageError::from_write)?;
        let copy = File::open(&tmp).map_err(StorageError::Other)?;
        disk.sync_all(&copy)?;
        std::fs::rename(&tmp, &kept).map_err(StorageError::from_write)?;
        disk.sync_dir(&qdir)?;
    }
    Ok(kept)
}

/// A new segment file holding `run`: a fresh header, the frames as stored, the last one marked
/// as ending its batch when `seal` is set.
fn run_bytes(file: &File, run: &Run, prev_end: u64, seal: bool) -> Result<Vec<u8>, StorageError> {
    let header = SegmentHeader {
        base_offset: run.first,
        prev_end,
    };
    let mut out = header.encode().to_vec();
    let body = usize::try_from(run.end_pos - run.start_pos)
        .map_err(|_| StorageError::Other(std::io::Error::other("run too large")))?;
    let at = out.len();
    out.resize(at + body, 0);
    file.read_exact_at(&mut out[at..], run.start_pos)
        .map_err(StorageError::Other)?;
    let last_at = at + (run.last_pos - run.start_pos) as usize;
    let mut raw = [0u8; FRAME_HEADER_LEN];
    raw.copy_from_slice(&out[last_at..last_at + FRAME_HEADER_LEN]);
    let h = FrameHeader::parse(&raw);
    if seal && !h.ends_batch() {
        let value = out[last_at + FRAME_HEADER_LEN..].to_vec();
        out.truncate(last_at);
        encode_frame(
            &mut out,
            h.offset,
            h.timestamp_ms,
            h.unsynced,
            h.flags | FLAG_END_OF_BATCH,
            &value,
        );
    }
    Ok(out)
}

/// The offsets no run holds before the first run and between runs. (What is lost after the last
/// run shows in the next segment's `prev_end`; recovery's chain check reports it.)
fn lost_ranges(d: &Damaged<'_>, runs: &[Run]) -> Vec<LostRange> {
    let mut lost = Vec::new();
    let mut at = d.base;
    for run in runs {
        if run.first > at {
            lost.push(LostRange {
                from: at,
                to: run.first,
            });
        }
        at = run.end;
    }
    lost
}
