//! A deterministic fuzzer of request bodies for every ingest route, seeded from the corpus kept
//! in `crates/sluice-chaos/corpus/`. Each case is a corpus file replayed as is, or mutated by a
//! seeded generator (byte flips, inserts, cuts, repeats, splices, JSON-aware replacements, and
//! for Kinesis/Firehose mutations of the base64 record data inside a valid envelope), so a
//! failing case is named by (seed, index) and replays exactly.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Where the corpus lives.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// An ingest route and how a body is sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/events`.
    Native,
    /// `POST /v1/batch`.
    SegmentBatch,
    /// `POST /v1/track`.
    SegmentTrack,
    /// `POST /com.snowplowanalytics.snowplow/tp2`.
    SnowplowTp2,
    /// `GET /i?<body>`.
    SnowplowPixel,
    /// Kinesis `PutRecords`.
    KinesisPutRecords,
    /// Firehose `PutRecordBatch`.
    FirehosePutRecordBatch,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 7] = [
        Route::Native,
        Route::SegmentBatch,
        Route::SegmentTrack,
        Route::SnowplowTp2,
        Route::SnowplowPixel,
        Route::KinesisPutRecords,
        Route::FirehosePutRecordBatch,
    ];

    /// The route of a corpus file, from its name.
    pub fn of_file(name: &str) -> Option<Self> {
        [
            ("native-", Route::Native),
            ("segment-batch", Route::SegmentBatch),
            ("segment-track", Route::SegmentTrack),
            ("snowplow-tp2", Route::SnowplowTp2),
            ("snowplow-pixel", Route::SnowplowPixel),
            ("kinesis-putrecords", Route::KinesisPutRecords),
            ("firehose-putrecordbatch", Route::FirehosePutRecordBatch),
        ]
        .into_iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, r)| r)
    }

    /// The request for `body` against `base`.
    pub fn request(
        self,
        http: &reqwest::Client,
        base: &str,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let json = "application/json";
        let amz = "application/x-amz-json-1.1";
        match self {
            Route::Native => http
                .post(format!("{base}/v1/events"))
                .header("content-type", json)
                .body(body),
            Route::SegmentBatch => http
                .post(format!("{base}/v1/batch"))
                .header("content-type", json)
                .body(body),
            Route::SegmentTrack => http
                .post(format!("{base}/v1/track"))
                .header("content-type", json)
                .body(body),
            Route::SnowplowTp2 => http
                .post(format!("{base}/com.snowplowanalytics.snowplow/tp2"))
                .header("content-type", json)
                .body(body),
            Route::SnowplowPixel => {
                // A query string must be one line of visible ASCII to be sent at all; escape
                // the rest the way a browser would.
                let q: String = body
                    .iter()
                    .map(|b| match b {
                        0x21..=0x7e if *b != b'#' => (*b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                http.get(format!("{base}/i?{q}"))
            }
            Route::KinesisPutRecords => http
                .post(format!("{base}/"))
                .header("content-type", amz)
                .header("x-amz-target", "Kinesis_20131202.PutRecords")
                .body(body),
            Route::FirehosePutRecordBatch => http
                .post(format!("{base}/"))
                .header("content-type", amz)
                .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
                .body(body),
        }
    }
}

/// One corpus file.
#[derive(Clone, Debug)]
pub struct Seed {
    /// File name.
    pub name: String,
    /// Its route.
    pub route: Route,
    /// Its bytes.
    pub body: Vec<u8>,
}

/// Every corpus file whose name names a route, sorted by name.
pub fn load_corpus(dir: &Path) -> anyhow::Result<Vec<Seed>> {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(route) = Route::of_file(&name) {
            seeds.push(Seed {
                name,
                route,
                body: std::fs::read(entry.path())?,
            });
        }
    }
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(seeds)
}

/// splitmix64: small, fast, and the same everywhere, so a (seed, case) pair replays exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Values that break parsers and type inference.
const INTERESTING: &[&str] = &[
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "-0.0",
    "18446744073709551616",
    "\"\"",
    "[]",
    "{}",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"../../etc/passwd\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"-6000-01-01T00:00:00Z\"",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{}}}}}}}}",
    "\"\u{202e}\u{0301}\u{fffd}\"",
];

/// One mutation of `body` (never the identity unless `body` is empty).
pub fn mutate(rng: &mut Rng, body: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut out = body.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                out.insert(i, rng.next_u64() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                out.drain(i..i + n);
            }
            3 if len > 0 => out.truncate(rng.below(len)),
            4 if len > 0 => {
                // Repeat a range: long strings, repeated keys, many events.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let piece = out[i..i + n].to_vec();
                for _ in 0..1 + rng.below(32) {
                    out.splice(i..i, piece.iter().copied());
                }
            }
            5 => {
                // Replace a JSON value (the text after a ':' up to the next ',' or '}').
                let colons: Vec<usize> = (0..len).filter(|&i| out[i] == b':').collect();
                if !colons.is_empty() {
                    let start = colons[rng.below(colons.len())] + 1;
                    let end = (start..len)
                        .find(|&i| matches!(out[i], b',' | b'}' | b']'))
                        .unwrap_or(len);
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    out.splice(start..end, v.bytes());
                }
            }
            6 if !others.is_empty() => {
                // Splice the head of this body with the tail of another of the same route.
                let other = others[rng.below(others.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 => {
                let i = rng.below(len + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(i..i, v.bytes());
            }
            _ if len > 0 => {
                // Overwrite with a byte that matters to JSON or URLs.
                let i = rng.below(len);
                const SPECIAL: &[u8] = b"\"\\{}[],:%&=\x00\xff";
                out[i] = SPECIAL[rng.below(SPECIAL.len())];
            }
            _ => {}
        }
    }
    out
}

/// A Kinesis/Firehose body with one record's decoded `Data` mutated and re-encoded, so the
/// mutation reaches the event decoders behind a valid envelope. `None` when `body` is not such
/// an envelope.
pub fn mutate_record_data(rng: &mut Rng, body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let records = v.get_mut("Records")?.as_array_mut()?;
    if records.is_empty() {
        return None;
    }
    let i = rng.below(records.len());
    let data = STANDARD.decode(records[i].get("Data")?.as_str()?).ok()?;
    let mutated = mutate(rng, &data, &[]);
    records[i]["Data"] = serde_json::Value::String(STANDARD.encode(mutated));
    serde_json::to_vec(&v).ok()
}

/// Case `index` of a run seeded with `seed` over `corpus`: the first `corpus.len()` cases are
/// the files themselves, the rest mutations of them.
pub fn case(seed: u64, index: usize, corpus: &[Seed]) -> (Route, Vec<u8>) {
    let s = &corpus[index % corpus.len()];
    if index < corpus.len() {
        return (s.route, s.body.clone());
    }
    let mut rng = Rng::new(seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let envelope = matches!(
        s.route,
        Route::KinesisPutRecords | Route::FirehosePutRecordBatch
    );
    if envelope
        && rng.below(2) == 0
        && let Some(body) = mutate_record_data(&mut rng, &s.body)
    {
        return (s.route, body);
    }
    let others: Vec<&[u8]> = corpus
        .iter()
        .filter(|o| o.route == s.route && o.name != s.name)
        .map(|o| o.body.as_slice())
        .collect();
    (s.route, mutate(&mut rng, &s.body, &others))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_covers_every_route() {
        let corpus = load_corpus(&corpus_dir()).unwrap();
        for r in Route::ALL {
            assert!(
                corpus.iter().any(|s| s.route == r),
                "no corpus file for {r:?}"
            );
        }
    }

    #[test]
    fn cases_are_deterministic_and_mutations_change_bodies() {
        let corpus = load_corpus(&corpus_dir()).unwrap();
        let n = corpus.len();
        assert_eq!(
            case(7, 0, &corpus).1,
            corpus[0].body,
            "the files come first, unmutated"
        );
        let mut changed = 0;
        for i in n..n + 200 {
            let (r1, a) = case(7, i, &corpus);
            let (r2, b) = case(7, i, &corpus);
            assert_eq!((r1, &a), (r2, &b), "case {i} replays");
            if a != corpus[i % n].body {
                changed += 1;
            }
        }
        assert!(changed > 190, "only {changed} of 200 mutated");
        assert_ne!(
            case(7, n, &corpus).1,
            case(8, n, &corpus).1,
            "the seed matters"
        );
    }

    #[test]
    fn record_data_mutation_keeps_the_envelope() {
        let body = br#"{"StreamName":"s","Records":[{"Data":"eyJhIjoxfQ==","PartitionKey":"k"}]}"#;
        let mut rng = Rng::new(3);
        let out = mutate_record_data(&mut rng, body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["StreamName"], "s");
        assert!(
            STANDARD
                .decode(v["Records"][0]["Data"].as_str().unwrap())
                .is_ok()
        );
    }
}
