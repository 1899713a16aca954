//! Finding the first byte of a kind in a slice eight bytes a step, with word arithmetic: the
//! good-record scanner (`skim.rs`) looks for quotes and backslashes with it, the JSON writer
//! (`json.rs`) for bytes to escape. The strings of an event are short, so a search costs
//! little more than its bytes, unlike a vectorised search's setup.
//!
//! A *mark* is a word with the high bit of each byte of the kind set. Only its lowest set bit
//! is exact — a borrow can mark bytes above a true one, never below — and that is all
//! [`first`] reads.

/// `0x01` in every byte of a word.
const LOW_BITS: u64 = u64::from_le_bytes([0x01; 8]);
/// `0x80` in every byte of a word.
const HIGH_BITS: u64 = u64::from_le_bytes([0x80; 8]);

/// The bytes of `word` equal to `c`.
pub(crate) fn equal(word: u64, c: u8) -> u64 {
    let x = word ^ (LOW_BITS * u64::from(c));
    x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS
}

/// The bytes of `word` below `n` (`n` at most 0x80).
pub(crate) fn below(word: u64, n: u8) -> u64 {
    debug_assert!(n <= 0x80, "{n:#x} is above 0x80");
    word.wrapping_sub(LOW_BITS * u64::from(n)) & !word & HIGH_BITS
}

/// The index of the first byte of `hay` that `marks` marks in a word and `is` says of a byte
/// alone (the same kind): eight bytes a step, the last few bytes one at a time.
#[inline(always)]
pub(crate) fn first(
    hay: &[u8],
    marks: impl Fn(u64) -> u64,
    is: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let marked = marks(u64::from_le_bytes(word));
        if marked != 0 {
            return Some(at + (marked.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = words.remainder().iter().position(|&b| is(b));
    rest.map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind of byte: its name, its word marks and its test of one byte.
    type Kind<'a> = (&'a str, &'a dyn Fn(u64) -> u64, &'a dyn Fn(u8) -> bool);

    #[test]
    fn the_first_byte_of_a_kind_is_found_wherever_it_is() {
        let kinds: [Kind<'_>; 3] = [
            ("equal 0x22", &|w| equal(w, b'"'), &|b| b == b'"'),
            ("below 0x20", &|w| below(w, 0x20), &|b| b < 0x20),
            ("below 0x80", &|w| below(w, 0x80), &|b| b < 0x80),
        ];
        for (name, marks, is) in kinds {
            for len in 0..=25 {
                for filler in [b'a', b' ', b'!', b'#', 0x1f, 0x21, 0x7f, 0x80, 0xff] {
                    let mut hay = vec![filler; len];
                    let want = |hay: &[u8]| hay.iter().position(|&b| is(b));
                    assert_eq!(
                        first(&hay, marks, is),
                        want(&hay),
                        "{name} {len} {filler:#x}"
                    );
                    for at in 0..len {
                        for c in [b'"', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'\\'] {
                            let old = hay[at];
                            hay[at] = c;
                            let got = first(&hay, marks, is);
                            assert_eq!(got, want(&hay), "{name} {len} {filler:#x} {c:#x}@{at}");
                            hay[at] = old;
                        }
                    }
                }
            }
        }
    }
}
