//! The on-disk format, version 1: segment headers, record frames, segment file names and the
//! small fixed-size files (offset floor, consumer offsets). Pure encoding and decoding, no IO.
//!
//! `docs/formats/journal.md` describes the same layout for people, and the golden file
//! `tests/golden/segment-v1.bin` pins it for machines: a change here that alters bytes is a new
//! format version, never an edit of version 1.
//!
//! ```text
//! segment file <base:020>.seg = header (40 bytes) + frame*
//!   header: magic "SLUICEJS" | version u16 = 1 | header_len u16 = 40 | flags u32 = 0
//!           | base_offset u64 | prev_end u64 | reserved u32 = 0 | crc32c u32 (of bytes 0..36)
//!   frame:  crc32c u32 (of bytes 4..32 and the value) | value_len u32 | offset u64
//!           | timestamp_ms i64 | unsynced u32 | flags u16 (bit 0: last record of its append)
//!           | reserved u16 = 0 | value
//! small file (floor, consumer offset) = magic [8] | version u16 = 1 | reserved u16 = 0
//!           | value u64 | crc32c u32 (of bytes 0..20)
//! ```
//! Integers are little-endian. `prev_end` is where the previous segment's records ended, which is
//! how recovery tells a deliberate offset gap (after a crash, the floor) from a lost segment.
//! `unsynced` is how many offsets below this record were not yet known durable when it was
//! written (`offset - synced watermark`); recovery uses it to tell a torn unsynced tail (truncate)
//! from corruption of data that was already durable (quarantine).

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SLUICEJS";
/// The segment format version this code writes and reads.
pub(crate) const FORMAT_VERSION: u16 = 1;
/// Bytes of the segment header.
pub(crate) const SEGMENT_HEADER_LEN: usize = 40;
/// Bytes of a record frame's header (the value follows).
pub(crate) const FRAME_HEADER_LEN: usize = 32;
/// Hard format limit on one value, whatever the configuration says: it bounds what recovery will
/// ever try to read for one frame, so a corrupt length cannot make it allocate gigabytes.
pub(crate) const MAX_VALUE_LEN: u32 = 256 << 20;
/// Offsets stay below this. Far beyond any real partition (2^62 records), it leaves room for
/// every sum of an offset, a batch and the floor reserve, so no crafted file name or floor value
/// can make offset arithmetic overflow.
pub(crate) const MAX_OFFSET: u64 = 1 << 62;
/// Frame flag: this record is the last of the records one `append` call wrote. Recovery drops a
/// trailing batch that lacks it, so an append is all-or-nothing across a crash.
pub(crate) const FLAG_END_OF_BATCH: u16 = 1;
const KNOWN_FLAGS: u16 = FLAG_END_OF_BATCH;
/// Suffix of segment file names.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Magic of the offset floor file.
pub(crate) const FLOOR_MAGIC: [u8; 8] = *b"SLUICEJF";
/// Magic of a consumer group's committed-offset file.
pub(crate) const COMMIT_MAGIC: [u8; 8] = *b"SLUICEJC";
/// Bytes of a small file.
pub(crate) const SMALL_FILE_LEN: usize = 24;
/// Version of the topic metadata file (`topic.json`).
pub(crate) const TOPIC_META_VERSION: u32 = 1;

/// The fixed header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Offset of the first record this segment holds (also in the file name).
    pub base_offset: u64,
    /// Where the records of the previous segment ended when this one was created; equal to
    /// `base_offset` unless the segment starts after an offset gap.
    pub prev_end: u64,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        // 12..16: flags, none defined.
        b[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_end.to_le_bytes());
        // 32..36: reserved.
        let crc = crc32c::crc32c(&b[0..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header. The error says what is wrong, for the recovery report.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Truncated(b.len()));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32c::crc32c(&b[0..36]) != le_u32(&b[36..40]) {
            return Err(HeaderError::Checksum);
        }
        let version = le_u16(&b[8..10]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if usize::from(le_u16(&b[10..12])) != SEGMENT_HEADER_LEN
            || le_u32(&b[12..16]) != 0
            || le_u32(&b[32..36]) != 0
        {
            return Err(HeaderError::UnknownFields);
        }
        let header = Self {
            base_offset: le_u64(&b[16..24]),
            prev_end: le_u64(&b[24..32]),
        };
        if header.prev_end > header.base_offset {
            return Err(HeaderError::PrevEndPastBase {
                prev_end: header.prev_end,
                base: header.base_offset,
            });
        }
        Ok(header)
    }
}

/// What is wrong with a segment header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("segment header truncated to {0} bytes")]
    Truncated(usize),
    #[error("not a segment file (bad magic)")]
    BadMagic,
    #[error("segment header checksum mismatch")]
    Checksum,
    #[error("unsupported segment format version {0}")]
    Version(u16),
    #[error("segment header has unknown flags or fields")]
    UnknownFields,
    #[error("segment header previous end {prev_end} is past its base offset {base}")]
    PrevEndPastBase { prev_end: u64, base: u64 },
}

/// What is wrong with a frame's fixed part, before its value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShapeError {
    UnknownFlags,
    TooLong,
    PastEnd,
}

impl ShapeError {
    /// The reason, for the recovery report.
    pub(crate) fn what(self) -> &'static str {
        match self {
            Self::UnknownFlags => "frame has unknown flags",
            Self::TooLong => "frame length exceeds the format limit",
            Self::PastEnd => "frame extends past the end of the file",
        }
    }
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what())
    }
}

impl std::error::Error for ShapeError {}

/// What is wrong with a small file (a commit or an offset floor).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SmallFileError {
    #[error("expected {SMALL_FILE_LEN} bytes, found {0}")]
    Length(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("checksum mismatch")]
    Checksum,
    #[error("unsupported version {0}")]
    Version(u16),
}

/// The fixed part of a record frame, as stored (not yet checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub crc: u32,
    pub value_len: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub unsynced: u32,
    pub flags: u16,
    pub reserved: u16,
}

impl FrameHeader {
    pub(crate) fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            crc: le_u32(&b[0..4]),
            value_len: le_u32(&b[4..8]),
            offset: le_u64(&b[8..16]),
            timestamp_ms: le_u64(&b[16..24]) as i64,
            unsynced: le_u32(&b[24..28]),
            flags: le_u16(&b[28..30]),
            reserved: le_u16(&b[30..32]),
        }
    }

    /// Whole frame length (header and value).
    pub(crate) fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.value_len)
    }

    /// Checks what can be checked before reading the value: known flags, a value length within
    /// the format limit and within the `available` bytes after the header.
    pub(crate) fn check_shape(&self, available: u64) -> Result<(), ShapeError> {
        if self.flags & !KNOWN_FLAGS != 0 || self.reserved != 0 {
            return Err(ShapeError::UnknownFlags);
        }
        if self.value_len > MAX_VALUE_LEN {
            return Err(ShapeError::TooLong);
        }
        if u64::from(self.value_len) > available {
            return Err(ShapeError::PastEnd);
        }
        Ok(())
    }

    /// Whether the checksum matches `frame`, the whole frame (header and value).
    pub(crate) fn crc_matches(&self, frame: &[u8]) -> bool {
        frame.len() >= FRAME_HEADER_LEN && frame_crc(frame) == self.crc
    }

    /// The offset below which everything was known durable when this frame was written.
    pub(crate) fn synced_before(&self) -> u64 {
        self.offset.saturating_sub(u64::from(self.unsynced))
    }

    /// Whether this record closes its append batch.
    pub(crate) fn ends_batch(&self) -> bool {
        self.flags & FLAG_END_OF_BATCH != 0
    }
}

fn frame_crc(frame: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c(&frame[4..FRAME_HEADER_LEN]),
        &frame[FRAME_HEADER_LEN..],
    )
}

/// Appends one frame to `buf`. `value.len()` must be at most [`MAX_VALUE_LEN`] (the caller
/// checked it against the configured, smaller, record limit).
pub(crate) fn encode_frame(
    buf: &mut Vec<u8>,
    offset: u64,
    timestamp_ms: i64,
    unsynced: u32,
    flags: u16,
    value: &[u8],
) {
    debug_assert!(value.len() <= MAX_VALUE_LEN as usize);
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&unsynced.to_le_bytes());
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(value);
    let crc = frame_crc(&buf[start..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Encoded size of a frame holding `value_len` bytes.
pub(crate) fn frame_len(value_len: usize) -> u64 {
    FRAME_HEADER_LEN as u64 + value_len as u64
}

/// Why [`decode_segment`] refused a segment.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SegmentError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("truncated frame header at position {pos}")]
    TruncatedFrame { pos: usize },
    #[error("{why} at position {pos}")]
    Shape { pos: usize, why: ShapeError },
    #[error("checksum mismatch at position {pos}")]
    Checksum { pos: usize },
    #[error("frame at position {pos} has offset {found} where {expected} was expected")]
    Offset {
        pos: usize,
        found: u64,
        expected: u64,
    },
}

/// One decoded frame of a whole segment (see [`decode_segment`]).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DecodedFrame {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub unsynced: u32,
    pub flags: u16,
    pub value: Vec<u8>,
}

/// Strictly decodes a complete segment held in memory: every byte must belong to the header or
/// to a valid frame with the expected offset. Used by the golden-file tests; recovery streams the file
/// with `scan.rs` instead, since it must also classify damage.
#[cfg(test)]
pub(crate) fn decode_segment(
    bytes: &[u8],
) -> Result<(SegmentHeader, Vec<DecodedFrame>), SegmentError> {
    let header = SegmentHeader::decode(bytes)?;
    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected = header.base_offset;
    while pos < bytes.len() {
        let Some(h) = bytes.get(pos..pos + FRAME_HEADER_LEN) else {
            return Err(SegmentError::TruncatedFrame { pos });
        };
        let h = FrameHeader::parse(
            h.try_into()
                .map_err(|_| SegmentError::TruncatedFrame { pos })?,
        );
        let available = (bytes.len() - pos - FRAME_HEADER_LEN) as u64;
        h.check_shape(available)
            .map_err(|why| SegmentError::Shape { pos, why })?;
        let end = pos + h.frame_len() as usize;
        let frame = &bytes[pos..end];
        if !h.crc_matches(frame) {
            return Err(SegmentError::Checksum { pos });
        }
        if h.offset != expected {
            return Err(SegmentError::Offset {
                pos,
                found: h.offset,
                expected,
            });
        }
        frames.push(DecodedFrame {
            offset: h.offset,
            timestamp_ms: h.timestamp_ms,
            unsynced: h.unsynced,
            flags: h.flags,
            value: frame[FRAME_HEADER_LEN..].to_vec(),
        });
        expected += 1;
        pos = end;
    }
    Ok((header, frames))
}

/// Encodes a whole segment (the inverse of [`decode_segment`]).
#[cfg(test)]
pub(crate) fn encode_segment(header: &SegmentHeader, frames: &[DecodedFrame]) -> Vec<u8> {
    let mut out = header.encode().to_vec();
    for f in frames {
        encode_frame(
            &mut out,
            f.offset,
            f.timestamp_ms,
            f.unsynced,
            f.flags,
            &f.value,
        );
    }
    out
}

/// The file name of the segment whose first offset is `base`: zero-padded so that names sort
/// like offsets.
pub(crate) fn segment_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// The base offset in a segment file name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a small file holding one `u64`.
pub(crate) fn encode_small(magic: [u8; 8], value: u64) -> [u8; SMALL_FILE_LEN] {
    let mut b = [0u8; SMALL_FILE_LEN];
    b[0..8].copy_from_slice(&magic);
    b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a small file; the error says what is wrong.
pub(crate) fn decode_small(magic: [u8; 8], b: &[u8]) -> Result<u64, SmallFileError> {
    if b.len() != SMALL_FILE_LEN {
        return Err(SmallFileError::Length(b.len()));
    }
    if b[0..8] != magic {
        return Err(SmallFileError::BadMagic);
    }
    if crc32c::crc32c(&b[0..20]) != le_u32(&b[20..24]) {
        return Err(SmallFileError::Checksum);
    }
    let version = le_u16(&b[8..10]);
    if version != FORMAT_VERSION || le_u16(&b[10..12]) != 0 {
        return Err(SmallFileError::Version(version));
    }
    Ok(le_u64(&b[12..20]))
}

/// The topic metadata file, `<dir>/<topic>/topic.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicMeta {
    /// [`TOPIC_META_VERSION`].
    pub format_version: u32,
    /// Partition count, fixed at creation.
    pub partitions: u32,
}

fn le_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = SegmentHeader {
            base_offset: 1234,
            prev_end: 1000,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        for byte in 0..SEGMENT_HEADER_LEN {
            let mut bad = b;
            bad[byte] ^= 0x10;
            let expected = if byte < 8 {
                HeaderError::BadMagic
            } else {
                HeaderError::Checksum
            };
            assert_eq!(
                SegmentHeader::decode(&bad),
                Err(expected),
                "flip in byte {byte}"
            );
        }
        assert_eq!(
            SegmentHeader::decode(&b[..39]),
            Err(HeaderError::Truncated(39))
        );
        assert_eq!(
            SegmentHeader::decode(&[0u8; 40]),
            Err(HeaderError::BadMagic)
        );
    }

    #[test]
    fn frame_round_trips_and_zeros_are_never_a_valid_frame() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, -5, 3, FLAG_END_OF_BATCH, b"hello");
        assert_eq!(buf.len() as u64, frame_len(5));
        let h = FrameHeader::parse(buf[..FRAME_HEADER_LEN].try_into().unwrap());
        assert_eq!((h.offset, h.timestamp_ms, h.unsynced), (7, -5, 3));
        assert!(h.ends_batch());
        assert_eq!(h.synced_before(), 4);
        assert!(h.check_shape(5).is_ok());
        assert_eq!(h.check_shape(4), Err(ShapeError::PastEnd));
        assert!(h.crc_matches(&buf));
        let zeros = [0u8; FRAME_HEADER_LEN];
        let z = FrameHeader::parse(&zeros);
        assert!(!z.crc_matches(&zeros), "an all-zero frame must not verify");
        for byte in 0..buf.len() {
            let mut bad = buf.clone();
            bad[byte] ^= 0x01;
            let h = FrameHeader::parse(bad[..FRAME_HEADER_LEN].try_into().unwrap());
            let ok = h.check_shape((bad.len() - FRAME_HEADER_LEN) as u64).is_ok()
                && h.crc_matches(&bad[..(h.frame_len() as usize).min(bad.len())]);
            assert!(!ok, "flip in byte {byte} went unnoticed");
        }
    }

    #[test]
    fn segment_names_sort_like_offsets() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn small_files_round_trip_and_detect_damage() {
        let b = encode_small(FLOOR_MAGIC, 99);
        assert_eq!(decode_small(FLOOR_MAGIC, &b), Ok(99));
        assert_eq!(
            decode_small(COMMIT_MAGIC, &b),
            Err(SmallFileError::BadMagic)
        );
        for byte in 0..SMALL_FILE_LEN {
            let mut bad = b;
            bad[byte] ^= 0x80;
            let expected = if byte < 8 {
                SmallFileError::BadMagic
            } else {
                SmallFileError::Checksum
            };
            assert_eq!(
                decode_small(FLOOR_MAGIC, &bad),
                Err(expected),
                "flip in byte {byte}"
            );
        }
        assert_eq!(
            decode_small(FLOOR_MAGIC, &b[..10]),
            Err(SmallFileError::Length(10))
        );
    }

    #[test]
    fn decode_segment_is_strict() {
        let header = SegmentHeader {
            base_offset: 5,
            prev_end: 5,
        };
        let frames = vec![
            DecodedFrame {
                offset: 5,
                timestamp_ms: 1,
                unsynced: 0,
                flags: 0,
                value: b"a".to_vec(),
            },
            DecodedFrame {
                offset: 6,
                timestamp_ms: 1,
                unsynced: 1,
                flags: FLAG_END_OF_BATCH,
                value: Vec::new(),
            },
        ];
        let bytes = encode_segment(&header, &frames);
        assert_eq!(decode_segment(&bytes).unwrap(), (header, frames));
        let last = SEGMENT_HEADER_LEN + frame_len(1) as usize;
        assert_eq!(
            decode_segment(&bytes[..bytes.len() - 1]),
            Err(SegmentError::TruncatedFrame { pos: last })
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode_segment(&extra),
            Err(SegmentError::TruncatedFrame { pos: bytes.len() })
        );
        let mut renumbered = bytes.clone();
        renumbered[SEGMENT_HEADER_LEN + 8] = 9;
        assert_eq!(
            decode_segment(&renumbered),
            Err(SegmentError::Checksum {
                pos: SEGMENT_HEADER_LEN
            })
        );
    }
}
