//! [`Segment`]: one segment file in memory — its cached file handle, its sparse index and the
//! published (readable) length — and the read path over it.
//!
//! Readers and the partition's writer share a `Segment` without locking the file: the writer
//! appends with pwrite beyond the published length and publishes a new length only after the
//! bytes are durable (or written, under the interval policy), so a reader that stays below the
//! published length never sees a partial or unsynced frame. Every frame a reader returns is
//! checked again (offset and CRC), so bit rot after open yields an error, never corrupt bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use bytes::Bytes;

use crate::Record;
use crate::format::{FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN};
use crate::sync::{read_lock, write_lock};

/// An index entry is added for the first record of a segment, then once this many records…
const INDEX_EVERY_RECORDS: u32 = 64;
/// …or this many bytes have passed since the last entry, whichever comes first, so a lookup
/// skips at most 63 records and at most about 64 KiB (plus one record).
const INDEX_EVERY_BYTES: u64 = 64 << 10;
/// Reads fetch at least this much per pread, so skipping and small records cost few syscalls…
const READ_BLOCK: u64 = 64 << 10;
/// …and at most this much beyond the frame they need, however large `max_bytes` is.
const MAX_READ_BLOCK: u64 = 4 << 20;

/// A sparse index entry: the record `offset` starts at byte `pos` of the segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    pub pos: u64,
}

/// Decides which records get an index entry; shared by the writer and recovery so both build
/// the same index.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IndexBuilder {
    records_since: u32,
    bytes_since: u64,
    started: bool,
}

impl IndexBuilder {
    /// Called for every record in file order; returns the entry to add, if any.
    pub(crate) fn observe(&mut self, offset: u64, pos: u64, frame_len: u64) -> Option<IndexEntry> {
        let due = !self.started
            || self.records_since >= INDEX_EVERY_RECORDS
            || self.bytes_since >= INDEX_EVERY_BYTES;
        let entry = due.then(|| {
            self.started = true;
            self.records_since = 0;
            self.bytes_since = 0;
            IndexEntry { offset, pos }
        });
        self.records_since += 1;
        self.bytes_since += frame_len;
        entry
    }
}

/// Where a segment's readable data ends and what it holds; published together by the writer.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of the first record (also in the file name).
    pub base: u64,
    /// The file.
    pub path: PathBuf,
    file: OnceLock<File>,
    index: RwLock<Vec<IndexEntry>>,
    /// Bytes readers may read: the header plus every published frame.
    len: AtomicU64,
    /// One past the last published record's offset (`base` while empty).
    records_end: AtomicU64,
    /// Newest published record's timestamp (`i64::MIN` while empty), for retention.
    max_timestamp_ms: AtomicI64,
}

/// Why a read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    /// A published frame no longer verifies: the file was damaged after it was written.
    Corrupt(String),
}

/// What a segment read stopped at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadStop {
    /// The segment has nothing more below the limits: go on with the next segment.
    SegmentEnd,
    /// `max_records` or `max_bytes` reached: the read is complete.
    Full,
}

impl Segment {
    /// A segment found on disk (or just created), with `file` already open.
    pub(crate) fn new(
        base: u64,
        path: PathBuf,
        file: Option<File>,
        len: u64,
        records_end: u64,
        max_timestamp_ms: i64,
        index: Vec<IndexEntry>,
    ) -> Self {
        let cell = OnceLock::new();
        if let Some(file) = file {
            let _ = cell.set(file);
        }
        Self {
            base,
            path,
            file: cell,
            index: RwLock::new(index),
            len: AtomicU64::new(len),
            records_end: AtomicU64::new(records_end),
            max_timestamp_ms: AtomicI64::new(max_timestamp_ms),
        }
    }

    /// A copy of this segment holding a read-write handle, to become the active segment again
    /// (recovery removed a half-created segment after it).
    pub(crate) fn reopen_writable(&self) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)?;
        Ok(Self::new(
            self.base,
            self.path.clone(),
            Some(file),
            self.len(),
            self.records_end(),
            self.max_timestamp_ms(),
            read_lock(&self.index).clone(),
        ))
    }

    /// The file handle, opened read-only on first use for sealed segments (so a partition with
    /// many old segments does not hold a descriptor per segment until someone reads them).
    pub(crate) fn file(&self) -> io::Result<&File> {
        if let Some(file) = self.file.get() {
            return Ok(file);
        }
        let file = File::open(&self.path)?;
        // Another reader may have won the race; either handle reads the same file.
        let _ = self.file.set(file);
        self.file
            .get()
            .ok_or_else(|| io::Error::other("segment file handle vanished"))
    }

    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn records_end(&self) -> u64 {
        self.records_end.load(Ordering::Acquire)
    }

    pub(crate) fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records_end() == self.base
    }

    /// Makes newly written frames readable. Called by the writer only, after the bytes are
    /// durable (policy `always`) or written (policy `interval`).
    pub(crate) fn publish(
        &self,
        len: u64,
        records_end: u64,
        timestamp_ms: i64,
        entries: &[IndexEntry],
    ) {
        if !entries.is_empty() {
            write_lock(&self.index).extend_from_slice(entries);
        }
        self.max_timestamp_ms
            .fetch_max(timestamp_ms, Ordering::AcqRel);
        self.len.store(len, Ordering::Release);
        self.records_end.store(records_end, Ordering::Release);
    }

    /// The indexed position to start scanning from for `from`.
    fn seek(&self, from: u64) -> IndexEntry {
        let index = read_lock(&self.index);
        let i = index.partition_point(|e| e.offset <= from);
        match i {
            0 => IndexEntry {
                offset: self.base,
                pos: SEGMENT_HEADER_LEN as u64,
            },
            _ => index[i - 1],
        }
    }

    /// Appends to `out` the records of this segment with offsets in `from..end_limit`, until
    /// `out` holds `max_records` or the values would pass `max_bytes` (counted in `*bytes`; the
    /// first record of the whole read is always taken).
    pub(crate) fn read(
        &self,
        from: u64,
        end_limit: u64,
        max_records: usize,
        max_bytes: usize,
        bytes: &mut usize,
        out: &mut Vec<Record>,
    ) -> Result<ReadStop, ReadError> {
        let len = self.len();
        if from >= self.records_end() {
            return Ok(ReadStop::SegmentEnd);
        }
        let start = self.seek(from);
        let (mut offset, mut pos) = (start.offset, start.pos);
        let file = self.file().map_err(ReadError::Io)?;
        // One pread should usually cover the whole answer.
        let want = (max_bytes as u64).saturating_add(READ_BLOCK);
        let mut block = Block {
            size: want.clamp(READ_BLOCK, MAX_READ_BLOCK),
            ..Block::default()
        };
        while pos < len && offset < end_limit {
            if out.len() >= max_records {
                return Ok(ReadStop::Full);
            }
            let header = block.get(file, pos, FRAME_HEADER_LEN as u64, len)?;
            let mut raw = [0u8; FRAME_HEADER_LEN];
            raw.copy_from_slice(&header);
            let h = FrameHeader::parse(&raw);
            let available = len - pos - FRAME_HEADER_LEN as u64;
            if h.offset != offset || h.check_shape(available).is_err() {
                return Err(self.corrupt(pos, offset, "frame header does not verify"));
            }
            let frame_len = h.frame_len();
            if offset < from {
                pos += frame_len;
                offset += 1;
                continue;
            }
            let value_len = h.value_len as usize;
            if !out.is_empty() && bytes.saturating_add(value_len) > max_bytes {
                return Ok(ReadStop::Full);
            }
            let frame = block.get(file, pos, frame_len, len)?;
            if !h.crc_matches(&frame) {
                return Err(self.corrupt(pos, offset, "checksum mismatch"));
            }
            out.push(Record {
                offset,
                timestamp_ms: h.timestamp_ms,
                value: frame.slice(FRAME_HEADER_LEN..),
            });
            *bytes = bytes.saturating_add(value_len);
            pos += frame_len;
            offset += 1;
        }
        if out.len() >= max_records {
            return Ok(ReadStop::Full);
        }
        Ok(ReadStop::SegmentEnd)
    }

    fn corrupt(&self, pos: u64, offset: u64, what: &str) -> ReadError {
        ReadError::Corrupt(format!(
            "{what} at position {pos} (offset {offset}) of {}",
            self.path.display()
        ))
    }
}

/// The bytes of one pread, reused while later frames fall inside it.
#[derive(Default)]
struct Block {
    /// Bytes to fetch per pread (more if one frame needs more).
    size: u64,
    pos: u64,
    bytes: Bytes,
}

impl Block {
    /// Bytes `pos..pos + n` of the file, which must lie below `limit` (the published length).
    fn get(&mut self, file: &File, pos: u64, n: u64, limit: u64) -> Result<Bytes, ReadError> {
        let end = pos + n;
        if end > limit {
            return Err(ReadError::Corrupt(format!(
                "frame at position {pos} extends past the published end {limit}"
            )));
        }
        let cached_end = self.pos + self.bytes.len() as u64;
        if pos < self.pos || end > cached_end {
            let want = n.max(self.size).min(limit - pos);
            let mut buf = vec![0u8; want as usize];
            file.read_exact_at(&mut buf, pos).map_err(ReadError::Io)?;
            self.pos = pos;
            self.bytes = Bytes::from(buf);
        }
        let at = (pos - self.pos) as usize;
        Ok(self.bytes.slice(at..at + n as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_builder_marks_first_record_then_every_64_or_64kib() {
        let mut b = IndexBuilder::default();
        let mut entries = Vec::new();
        let mut pos = 40;
        for offset in 0..200u64 {
            let frame = if offset == 100 { 100_000 } else { 100 };
            if let Some(e) = b.observe(offset, pos, frame) {
                entries.push(e.offset);
            }
            pos += frame;
        }
        // 0, 64, then 100 is large so 101 gets one, then 165.
        assert_eq!(entries, vec![0, 64, 101, 165]);
    }
}
