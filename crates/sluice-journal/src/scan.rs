//! Recovery-time verification of one segment file: check the header, walk and CRC-check every
//! frame, build the sparse index, and classify any damage.
//!
//! The classification is the heart of "truncate a torn tail, quarantine corruption":
//! - A **sealed** segment (not the last of its partition) was fully fsynced before the next
//!   segment was created, so any invalid byte in it is corruption.
//! - In the **last** (active) segment, everything past the last complete append batch is dropped
//!   if it can be an unsynced write torn by a crash. It cannot be if a *later* valid frame says
//!   (through its `unsynced` field) that the dropped offsets were already durable when it was
//!   written: then durable data is damaged and the partition is quarantined instead. This also
//!   catches a flipped bit in the middle of the active segment, while pages of one unsynced write
//!   persisted out of order (a valid frame after an invalid one, both unsynced) still count as a
//!   torn tail.
//! - A last segment no longer than its header whose header is invalid was being created when the
//!   process stopped; no record was ever acknowledged in it, so it is removed.
//!
//! The file is read through a window of at most 1 MiB (or one frame), never whole, and every
//! length is checked against the file size before anything is allocated: no input makes this
//! panic or allocate more than the format's frame limit.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

use crate::format::{FRAME_HEADER_LEN, FrameHeader, MAX_OFFSET, SEGMENT_HEADER_LEN, SegmentHeader};
use crate::segment::{IndexBuilder, IndexEntry};

const WINDOW: u64 = 1 << 20;

/// A segment that verified (after dropping a torn tail, if it is the last one).
#[derive(Debug)]
pub(crate) struct Verified {
    pub header: SegmentHeader,
    pub file_len: u64,
    /// Bytes to keep: the header and every complete batch before the first defect.
    pub keep_len: u64,
    /// One past the last kept record (`base` if none).
    pub records_end: u64,
    pub records: u64,
    pub max_timestamp_ms: i64,
    pub index: Vec<IndexEntry>,
    /// Index builder state after the last kept record, so the writer continues the same index.
    pub index_state: IndexBuilder,
    /// Why bytes past `keep_len` are dropped.
    pub tail: Option<String>,
}

/// What a segment file turned out to be.
#[derive(Debug)]
pub(crate) enum Scan {
    Verified(Verified),
    /// The last segment's header never became durable; nothing in it was ever acknowledged.
    TornCreation {
        reason: String,
    },
    /// Corruption that must not be truncated silently.
    Corrupt(String),
}

/// Verifies the segment in `file`, named for `expected_base`. `sealed` is false for the last
/// segment of the partition only.
pub(crate) fn scan_segment(file: &File, expected_base: u64, sealed: bool) -> io::Result<Scan> {
    if expected_base >= MAX_OFFSET {
        return Ok(Scan::Corrupt(format!(
            "base offset {expected_base} is beyond the offset space"
        )));
    }
    let file_len = file.metadata()?.len();
    let mut window = Window::new(file, file_len);
    let header = match read_header(&mut window, file_len, expected_base, sealed)? {
        Ok(header) => header,
        Err(scan) => return Ok(scan),
    };
    let mut walk = walk_frames(&mut window, header.base_offset, file_len)?;
    let tail = match (&walk.defect, walk.kept.len == walk.pos) {
        (None, true) => None,
        (None, false) => Some("the file ends inside an append batch".to_string()),
        (Some(why), _) => Some(why.clone()),
    };
    if let Some(tail) = &tail
        && let Some(corrupt) = judge_tail(&mut window, &walk, tail, sealed)?
    {
        return Ok(corrupt);
    }
    let kept = walk.kept;
    walk.index.retain(|e| e.pos < kept.len);
    Ok(Scan::Verified(Verified {
        header,
        file_len,
        keep_len: kept.len,
        records_end: kept.records_end,
        records: kept.records,
        max_timestamp_ms: kept.max_timestamp_ms,
        index: walk.index,
        index_state: kept.index_state,
        tail,
    }))
}

/// Reads the segment header and checks it names `expected_base`; a header that does not
/// verify is a torn creation (a last segment no longer than its header) or corruption.
fn read_header(
    window: &mut Window<'_>,
    file_len: u64,
    expected_base: u64,
    sealed: bool,
) -> io::Result<Result<SegmentHeader, Scan>> {
    let header_bytes = window.get(0, SEGMENT_HEADER_LEN as u64)?;
    let header = match header_bytes.map(SegmentHeader::decode) {
        Some(Ok(header)) => header,
        Some(Err(reason)) if sealed || file_len > SEGMENT_HEADER_LEN as u64 => {
            return Ok(Err(Scan::Corrupt(reason.to_string())));
        }
        Some(Err(reason)) => {
            return Ok(Err(Scan::TornCreation {
                reason: reason.to_string(),
            }));
        }
        None if sealed => {
            return Ok(Err(Scan::Corrupt(format!(
                "sealed segment is only {file_len} bytes long"
            ))));
        }
        None => {
            return Ok(Err(Scan::TornCreation {
                reason: format!("segment header truncated to {file_len} bytes"),
            }));
        }
    };
    if header.base_offset != expected_base {
        return Ok(Err(Scan::Corrupt(format!(
            "header says base offset {} but the file is named for {expected_base}",
            header.base_offset
        ))));
    }
    Ok(Ok(header))
}

/// Where the walk over the frames stopped.
struct Walk {
    /// The position of the first defect, or the file's end.
    pos: u64,
    /// The state at the end of the last complete batch.
    kept: Kept,
    index: Vec<IndexEntry>,
    /// Why the walk stopped before the file's end.
    defect: Option<String>,
}

/// Walks the valid frames from the header on, remembering the end of the last complete batch.
fn walk_frames(window: &mut Window<'_>, base: u64, file_len: u64) -> io::Result<Walk> {
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut expected = base;
    let mut index = Vec::new();
    let mut builder = IndexBuilder::default();
    let mut kept = Kept {
        len: pos,
        records_end: expected,
        records: 0,
        max_timestamp_ms: i64::MIN,
        index_state: builder,
    };
    let mut batch_records = 0u64;
    let mut batch_max_ts = i64::MIN;
    let defect: Option<String> = loop {
        if pos == file_len {
            break None;
        }
        let h = match read_frame(window, pos, file_len)? {
            Ok(h) => h,
            Err(why) => break Some(format!("{why} at position {pos}")),
        };
        if h.offset != expected {
            break Some(format!(
                "frame at position {pos} has offset {} where {expected} was expected",
                h.offset
            ));
        }
        if let Some(entry) = builder.observe(h.offset, pos, h.frame_len()) {
            index.push(entry);
        }
        pos += h.frame_len();
        expected += 1;
        batch_records += 1;
        batch_max_ts = batch_max_ts.max(h.timestamp_ms);
        if h.ends_batch() {
            kept = Kept {
                len: pos,
                records_end: expected,
                records: kept.records + batch_records,
                max_timestamp_ms: kept.max_timestamp_ms.max(batch_max_ts),
                index_state: builder,
            };
            batch_records = 0;
            batch_max_ts = i64::MIN;
        }
    };
    Ok(Walk {
        pos,
        kept,
        index,
        defect,
    })
}

/// Whether the bytes past the last complete batch (`tail` says why they are dropped) are
/// corruption rather than a torn tail: always in a sealed segment, and in the last one when a
/// later frame says they were durable.
fn judge_tail(
    window: &mut Window<'_>,
    walk: &Walk,
    tail: &str,
    sealed: bool,
) -> io::Result<Option<Scan>> {
    if sealed {
        return Ok(Some(Scan::Corrupt(format!(
            "sealed segment damaged: {tail}"
        ))));
    }
    if let Some(defect_pos) = walk.defect.as_ref().map(|_| walk.pos)
        && let Some(evidence) =
            durable_frame_after(window, defect_pos + 1, walk.kept.len, walk.kept.records_end)?
    {
        return Ok(Some(Scan::Corrupt(format!(
            "{tail}, but {evidence}: damage before durable data"
        ))));
    }
    Ok(None)
}

/// A stretch of consecutive valid frames in a damaged segment, found by [`find_runs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// Offset of its first record.
    pub first: u64,
    /// One past the offset of its last record.
    pub end: u64,
    /// File position of its first frame.
    pub start_pos: u64,
    /// File position of its last frame.
    pub last_pos: u64,
    /// File position one past its last frame.
    pub end_pos: u64,
}

/// Every run of valid frames in the segment file named for `base`, for salvage: frames are
/// walked from the header on; after an invalid one the walk resynchronises on the next position
/// holding a frame whose checksum matches and whose offset is plausible (at least the next
/// expected offset, and at most one more per frame header's worth of skipped bytes). The
/// segment header itself is not trusted (it may be the damaged part).
pub(crate) fn find_runs(file: &File, base: u64) -> io::Result<Vec<Run>> {
    let file_len = file.metadata()?.len();
    let mut window = Window::new(file, file_len);
    let mut runs = Vec::new();
    let mut current: Option<Run> = None;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut expected = base;
    let mut lost_from = pos;
    while pos < file_len {
        let frame = read_frame(&mut window, pos, file_len)?;
        match (&mut current, frame) {
            (Some(run), Ok(h)) if h.offset == expected => {
                run.last_pos = pos;
                run.end_pos = pos + h.frame_len();
                run.end = expected + 1;
            }
            (Some(run), _) => {
                runs.push(*run);
                current = None;
                lost_from = pos;
                pos += 1;
                continue;
            }
            (None, Ok(h))
                if h.offset >= expected
                    && h.offset < MAX_OFFSET
                    && h.offset
                        <= expected.saturating_add((pos - lost_from) / FRAME_HEADER_LEN as u64) =>
            {
                current = Some(Run {
                    first: h.offset,
                    end: h.offset + 1,
                    start_pos: pos,
                    last_pos: pos,
                    end_pos: pos + h.frame_len(),
                });
            }
            (None, _) => {
                pos += 1;
                continue;
            }
        }
        let Some(run) = &current else { break };
        pos = run.end_pos;
        expected = run.end;
    }
    runs.extend(current);
    debug_assert!(runs.windows(2).all(|w| w[0].end <= w[1].first));
    Ok(runs)
}

/// The state at the end of the last complete batch.
#[derive(Clone, Copy)]
struct Kept {
    len: u64,
    records_end: u64,
    records: u64,
    max_timestamp_ms: i64,
    index_state: IndexBuilder,
}

/// Reads and verifies the frame at `pos` (shape and CRC, not the offset).
fn read_frame(
    window: &mut Window<'_>,
    pos: u64,
    file_len: u64,
) -> io::Result<Result<FrameHeader, &'static str>> {
    let Some(raw) = window.get(pos, FRAME_HEADER_LEN as u64)? else {
        return Ok(Err("truncated frame header"));
    };
    let mut header = [0u8; FRAME_HEADER_LEN];
    header.copy_from_slice(raw);
    let h = FrameHeader::parse(&header);
    let available = file_len - pos - FRAME_HEADER_LEN as u64;
    if let Err(why) = h.check_shape(available) {
        return Ok(Err(why.what()));
    }
    let Some(frame) = window.get(pos, h.frame_len())? else {
        return Ok(Err("frame extends past the end of the file"));
    };
    if !h.crc_matches(frame) {
        return Ok(Err("checksum mismatch"));
    }
    Ok(Ok(h))
}

/// Looks past a defect for a valid frame written after `first_dropped` was already durable.
/// Candidates are filtered cheaply first: a real frame at `q` cannot carry an offset below
/// `first_dropped`, nor more than one per frame header's worth of bytes above it.
fn durable_frame_after(
    window: &mut Window<'_>,
    from: u64,
    kept_len: u64,
    first_dropped: u64,
) -> io::Result<Option<String>> {
    let file_len = window.file_len;
    let mut q = from;
    while q + FRAME_HEADER_LEN as u64 <= file_len {
        let Some(raw) = window.get(q, FRAME_HEADER_LEN as u64)? else {
            break;
        };
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(raw);
        let h = FrameHeader::parse(&header);
        let most = first_dropped.saturating_add((q - kept_len) / FRAME_HEADER_LEN as u64 + 1);
        let plausible = h.offset >= first_dropped
            && h.offset <= most
            && h.check_shape(file_len - q - FRAME_HEADER_LEN as u64)
                .is_ok();
        if plausible && let Ok(h) = read_frame(window, q, file_len)? {
            if h.synced_before() > first_dropped {
                return Ok(Some(format!(
                    "the frame at position {q} (offset {}) was written after offset \
                     {first_dropped} was durable",
                    h.offset
                )));
            }
            q += h.frame_len();
            continue;
        }
        q += 1;
    }
    Ok(None)
}

/// A sliding window over the file: sequential access costs one pread per MiB.
struct Window<'f> {
    file: &'f File,
    file_len: u64,
    pos: u64,
    buf: Vec<u8>,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            pos: 0,
            buf: Vec::new(),
        }
    }

    /// Bytes `pos..pos + n`, or `None` if they run past the end of the file.
    fn get(&mut self, pos: u64, n: u64) -> io::Result<Option<&[u8]>> {
        let Some(end) = pos.checked_add(n) else {
            return Ok(None);
        };
        if end > self.file_len {
            return Ok(None);
        }
        if pos < self.pos || end > self.pos + self.buf.len() as u64 {
            let want = n.max(WINDOW).min(self.file_len - pos);
            self.buf.resize(want as usize, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.pos = pos;
        }
        let at = (pos - self.pos) as usize;
        Ok(Some(&self.buf[at..at + n as usize]))
    }
}
