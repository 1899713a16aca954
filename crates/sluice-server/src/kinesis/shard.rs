//! Shards as journal partitions: shard ids, hash key ranges over the 128-bit MD5 space,
//! sequence numbers as fixed-width decimal offsets, and the frame that stores a user stream
//! record's partition key next to its bytes.

use md5::{Digest, Md5};

/// The sequence number of a journal offset: `1` followed by the offset as 20 decimal digits.
///
/// Fixed width, so string order is numeric order; the leading `1` keeps it within the AWS
/// pattern `0|([1-9]\d{0,128})` (no leading zero) for SDKs that check it.
pub(crate) fn sequence_number(offset: u64) -> String {
    format!("1{offset:020}")
}

/// The journal offset of a sequence number made by [`sequence_number`].
pub(crate) fn parse_sequence_number(s: &str) -> Option<u64> {
    let digits = s.strip_prefix('1')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `shardId-000000000003` for partition 3.
pub(crate) fn shard_id(partition: u32) -> String {
    format!("shardId-{partition:012}")
}

/// The partition of a shard id (`shardId-` and up to 12 digits).
pub(crate) fn parse_shard_id(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("shardId-")?;
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The width of every shard's hash key range but the last (which also takes the remainder):
/// `floor(2^128 / shards)`. `None` for one shard (its range is the whole space).
fn range_width(shards: u32) -> Option<u128> {
    if shards <= 1 {
        return None;
    }
    let n = u128::from(shards);
    // 2^128 / n without overflowing: (MAX + 1) / n = MAX / n, plus one when MAX % n == n - 1.
    Some(u128::MAX / n + (u128::MAX % n + 1) / n)
}

/// The inclusive hash key range of a shard: the 128-bit space split evenly, the last shard
/// taking the remainder.
pub(crate) fn hash_key_range(partition: u32, shards: u32) -> (u128, u128) {
    let Some(width) = range_width(shards) else {
        return (0, u128::MAX);
    };
    let start = width * u128::from(partition);
    let end = if partition + 1 >= shards {
        u128::MAX
    } else {
        start + width - 1
    };
    (start, end)
}

/// The shard whose hash key range holds `hash`.
pub(crate) fn shard_for_hash(hash: u128, shards: u32) -> u32 {
    match range_width(shards) {
        None => 0,
        // The quotient is below `shards` except in the last shard's remainder.
        Some(width) => u32::try_from(hash / width).map_or(shards - 1, |s| s.min(shards - 1)),
    }
}

/// A partition key's hash: MD5 of its UTF-8 bytes read as a big-endian 128-bit integer.
pub(crate) fn hash_partition_key(key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(key.as_bytes()).into())
}

/// An `ExplicitHashKey`: a decimal in `0..2^128` (no sign, no leading zero).
pub(crate) fn parse_hash_key(s: &str) -> Option<u128> {
    let ok = !s.is_empty()
        && s.len() <= 39
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if ok { s.parse().ok() } else { None }
}

/// First byte of a user stream record frame (a format version).
const FRAME_V1: u8 = 1;

/// A user stream record as stored in the journal: `[1][key length: u16 BE][key][data]`.
pub(crate) fn encode_frame(partition_key: &str, data: &[u8]) -> Vec<u8> {
    let key = partition_key.as_bytes();
    // Partition keys are at most 256 characters (1 KiB of UTF-8), checked before this.
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    let key = key.get(..usize::from(len)).unwrap_or(key);
    let mut out = Vec::with_capacity(3 + key.len() + data.len());
    out.push(FRAME_V1);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(data);
    out
}

/// The partition key and data of a frame; `None` when the bytes are not a frame.
pub(crate) fn decode_frame(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&version, rest) = bytes.split_first()?;
    if version != FRAME_V1 {
        return None;
    }
    let len_bytes: [u8; 2] = rest.get(..2)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes(len_bytes));
    let key = rest.get(2..2 + len)?;
    let data = rest.get(2 + len..)?;
    Some((std::str::from_utf8(key).ok()?, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_fixed_width_and_order_like_offsets() {
        assert_eq!(sequence_number(0), "100000000000000000000");
        assert_eq!(sequence_number(u64::MAX).len(), 21);
        let offsets = [0u64, 1, 9, 10, 99, 100, 123_456_789, u64::MAX - 1, u64::MAX];
        for w in offsets.windows(2) {
            assert!(sequence_number(w[0]) < sequence_number(w[1]));
        }
        for o in offsets {
            assert_eq!(parse_sequence_number(&sequence_number(o)), Some(o));
        }
        for bad in [
            "",
            "1",
            "0",
            "2000",
            "100000000000000000000x",
            "1-0000000000000000000",
        ] {
            assert_eq!(parse_sequence_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn shard_ids_round_trip() {
        assert_eq!(shard_id(0), "shardId-000000000000");
        assert_eq!(shard_id(17), "shardId-000000000017");
        assert_eq!(parse_shard_id("shardId-000000000017"), Some(17));
        assert_eq!(parse_shard_id("shardId-3"), Some(3));
        for bad in [
            "",
            "shardId-",
            "shard-1",
            "shardId-x",
            "shardId-0000000000001",
        ] {
            assert_eq!(parse_shard_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn hash_ranges_cover_the_space_evenly_without_gaps() {
        assert_eq!(hash_key_range(0, 1), (0, u128::MAX));
        for shards in [2u32, 3, 4, 7, 64, 1024] {
            let mut next = 0u128;
            for p in 0..shards {
                let (start, end) = hash_key_range(p, shards);
                assert_eq!(start, next, "shards {shards} p {p}");
                assert!(end >= start);
                assert_eq!(shard_for_hash(start, shards), p);
                assert_eq!(shard_for_hash(end, shards), p);
                next = end.wrapping_add(1);
            }
            assert_eq!(hash_key_range(shards - 1, shards).1, u128::MAX);
        }
        // Two shards split at 2^127, as AWS does.
        assert_eq!(hash_key_range(1, 2).0, 1u128 << 127);
        assert_eq!(
            hash_key_range(0, 2).1.to_string(),
            "170141183460469231731687303715884105727"
        );
    }

    #[test]
    fn partition_keys_hash_with_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            hash_partition_key(""),
            0xd41d8cd98f00b204e9800998ecf8427e_u128
        );
        let h = hash_partition_key("user-1");
        assert_eq!(shard_for_hash(h, 2), u32::from(h >= 1u128 << 127));
    }

    #[test]
    fn explicit_hash_keys_are_plain_decimals_below_2_pow_128() {
        assert_eq!(parse_hash_key("0"), Some(0));
        assert_eq!(
            parse_hash_key("340282366920938463463374607431768211455"),
            Some(u128::MAX)
        );
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            "340282366920938463463374607431768211456",
            "1e3",
        ] {
            assert_eq!(parse_hash_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn frames_keep_key_and_bytes() {
        let f = encode_frame("user-ü", b"\x00\xffdata");
        assert_eq!(decode_frame(&f), Some(("user-ü", &b"\x00\xffdata"[..])));
        let empty = encode_frame("k", b"");
        assert_eq!(decode_frame(&empty), Some(("k", &b""[..])));
        assert_eq!(decode_frame(b""), None);
        assert_eq!(decode_frame(b"\x01\x00"), None);
        assert_eq!(decode_frame(b"\x01\x00\x09ab"), None);
        assert_eq!(decode_frame(b"{\"json\":1}"), None);
    }
}
