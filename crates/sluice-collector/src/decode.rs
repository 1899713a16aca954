//! Body decoding: decompression with the size limit applied to the decompressed bytes, and
//! splitting a body into events (one object, an array of objects, or NDJSON).

use std::io::Read;

use serde_json::value::RawValue;

use crate::CollectError;

/// A request's `Content-Encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// No encoding (`identity`).
    Identity,
    /// gzip.
    Gzip,
    /// zlib-wrapped deflate.
    Deflate,
}

impl Encoding {
    /// Parses a `Content-Encoding` header value (several header lines are joined with `, `).
    /// One coding at most: a list (`gzip, gzip`) is refused, since every layer multiplies what
    /// a small body can inflate to.
    pub fn parse(header: Option<&str>) -> Result<Self, CollectError> {
        if let Some(h) = header
            && h.split(',').filter(|c| !c.trim().is_empty()).count() > 1
        {
            return Err(CollectError::NestedEncoding(h.trim().to_string()));
        }
        let single = header.map(|h| h.trim().trim_matches(',').trim().to_ascii_lowercase());
        match single.as_deref() {
            None | Some("") | Some("identity") => Ok(Self::Identity),
            Some("gzip") | Some("x-gzip") => Ok(Self::Gzip),
            Some("deflate") => Ok(Self::Deflate),
            Some(other) => Err(CollectError::UnsupportedEncoding(other.to_string())),
        }
    }
}

/// Decompresses `body` into at most `limit` bytes. A body that would be larger is refused
/// without inflating more than `limit + 1` bytes, so a compression bomb costs nothing.
pub fn decompress(
    body: &[u8],
    encoding: Encoding,
    limit: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, CollectError> {
    fn inflate(mut reader: impl Read, limit: usize) -> Result<Vec<u8>, CollectError> {
        let mut out = Vec::new();
        let cap = limit as u64 + 1;
        (&mut reader)
            .take(cap)
            .read_to_end(&mut out)
            .map_err(|e| CollectError::BadCompression(e.to_string().to_lowercase()))?;
        if out.len() > limit {
            return Err(CollectError::BodyTooLarge { limit });
        }
        Ok(out)
    }
    match encoding {
        Encoding::Identity if body.len() > limit => Err(CollectError::BodyTooLarge { limit }),
        Encoding::Identity => Ok(std::borrow::Cow::Borrowed(body)),
        Encoding::Gzip => {
            inflate(flate2::read::MultiGzDecoder::new(body), limit).map(std::borrow::Cow::Owned)
        }
        Encoding::Deflate => {
            inflate(flate2::read::ZlibDecoder::new(body), limit).map(std::borrow::Cow::Owned)
        }
    }
}

/// Splits a body into its events, each still raw JSON text. A body that starts with `[` is one
/// array; otherwise it is a sequence of JSON values separated by whitespace, which covers a single
/// object and NDJSON. Elements are not checked to be objects here (that is a per-event
/// rejection). Stops with [`CollectError::TooManyEvents`] as soon as `max_events` is passed.
pub fn split_events(body: &[u8], max_events: usize) -> Result<Vec<&RawValue>, CollectError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Err(CollectError::Empty);
    };
    let malformed = |e: serde_json::Error| CollectError::Malformed(e.to_string());
    let events: Vec<&RawValue> = if body[start] == b'[' {
        let mut de = serde_json::Deserializer::from_slice(body);
        let seq = LimitedSeq::deserialize_from(&mut de, max_events).map_err(malformed)?;
        de.end().map_err(malformed)?;
        match seq {
            LimitedSeq::Ok(v) => v,
            LimitedSeq::TooMany(count) => {
                return Err(CollectError::TooManyEvents {
                    count,
                    limit: max_events,
                });
            }
        }
    } else {
        let mut out = Vec::new();
        for value in serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>() {
            out.push(value.map_err(malformed)?);
            if out.len() > max_events {
                return Err(CollectError::TooManyEvents {
                    count: out.len(),
                    limit: max_events,
                });
            }
        }
        out
    };
    if events.is_empty() {
        return Err(CollectError::Empty);
    }
    Ok(events)
}

/// A JSON array of raw values that stops collecting past a limit.
enum LimitedSeq<'a> {
    Ok(Vec<&'a RawValue>),
    TooMany(usize),
}

impl<'a> LimitedSeq<'a> {
    fn deserialize_from(
        de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'a>>,
        limit: usize,
    ) -> Result<Self, serde_json::Error> {
        use serde::Deserializer as _;
        struct Visitor(usize);
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LimitedSeq<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<&'de RawValue>()? {
                    out.push(v);
                    if out.len() > self.0 {
                        return Ok(LimitedSeq::TooMany(out.len()));
                    }
                }
                Ok(LimitedSeq::Ok(out))
            }
        }
        de.deserialize_seq(Visitor(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn splits_object_array_and_ndjson() {
        let one = split_events(br#" {"event":"a"} "#, 10).unwrap();
        assert_eq!(one.len(), 1);
        let arr = split_events(br#"[{"event":"a"}, {"event":"b"}, 3]"#, 10).unwrap();
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[2].get(), "3");
        let nd = split_events(b"{\"event\":\"a\"}\n{\"event\":\"b\"}\n\n", 10).unwrap();
        assert_eq!(nd.len(), 2);
    }

    #[test]
    fn refuses_malformed_empty_and_too_many() {
        assert!(matches!(
            split_events(b"{\"event\":", 10),
            Err(CollectError::Malformed(_))
        ));
        assert!(matches!(
            split_events(b"[1,2", 10),
            Err(CollectError::Malformed(_))
        ));
        assert!(matches!(
            split_events(b"[1] x", 10),
            Err(CollectError::Malformed(_))
        ));
        assert!(matches!(
            split_events(b"  \n", 10),
            Err(CollectError::Empty)
        ));
        assert!(matches!(split_events(b"[]", 10), Err(CollectError::Empty)));
        assert!(matches!(
            split_events(b"[1,2,3]", 2),
            Err(CollectError::TooManyEvents { count: 3, limit: 2 })
        ));
        assert!(matches!(
            split_events(b"1\n2\n3", 2),
            Err(CollectError::TooManyEvents { count: 3, limit: 2 })
        ));
        // Deep nesting neither overflows the stack nor passes: unbalanced is malformed, and a
        // balanced deep event is refused per event by `check_native`.
        let unbalanced = "[".repeat(100_000);
        assert!(matches!(
            split_events(unbalanced.as_bytes(), 10),
            Err(CollectError::Malformed(_))
        ));
    }

    #[test]
    fn decompression_limits_apply_after_inflating() {
        let body = vec![b' '; 1 << 20];
        let gz = gzip(&body);
        assert!(
            gz.len() < 20_000,
            "a bomb is small on the wire: {} bytes",
            gz.len()
        );
        assert!(matches!(
            decompress(&gz, Encoding::Gzip, 1000),
            Err(CollectError::BodyTooLarge { limit: 1000 })
        ));
        assert_eq!(
            decompress(&gz, Encoding::Gzip, 1 << 20).unwrap().len(),
            1 << 20
        );
        assert!(matches!(
            decompress(b"not gzip", Encoding::Gzip, 1000),
            Err(CollectError::BadCompression(_))
        ));
        assert!(matches!(
            decompress(&body, Encoding::Identity, 10),
            Err(CollectError::BodyTooLarge { .. })
        ));
        assert!(matches!(
            Encoding::parse(Some("br")),
            Err(CollectError::UnsupportedEncoding(_))
        ));
        assert_eq!(Encoding::parse(Some("GZIP")).unwrap(), Encoding::Gzip);
        for nested in ["gzip, gzip", "gzip,deflate", "identity, gzip"] {
            assert!(matches!(
                Encoding::parse(Some(nested)),
                Err(CollectError::NestedEncoding(_))
            ));
        }
        for unsupported in ["br", "zstd", "lz4", "compress"] {
            let e = Encoding::parse(Some(unsupported)).unwrap_err();
            assert_eq!(e.kind(), sluice_event::ErrorKind::Unsupported);
            assert!(e.to_string().contains(unsupported), "{e}");
        }
        // A broken stream is refused, whether the damage is in the data or at the end.
        let mut corrupt = gzip(br#"{"event":"a"}"#);
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        corrupt[mid + 1] ^= 0xff;
        assert!(matches!(
            decompress(&corrupt, Encoding::Gzip, 1000),
            Err(CollectError::BadCompression(_))
        ));
        let whole = gzip(br#"{"event":"a"}"#);
        assert!(matches!(
            decompress(&whole[..whole.len() - 4], Encoding::Gzip, 1000),
            Err(CollectError::BadCompression(_))
        ));
    }
}
