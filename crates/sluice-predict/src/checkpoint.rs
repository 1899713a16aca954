//! Model checkpoints: one file per model, `<model>.ftrl`, in a [`CheckpointStore`]: on local
//! disk `<dir>/<model>.ftrl` ([`LocalCheckpoints`]), written atomically (a temporary file, fsync,
//! rename, directory fsync), so a crash leaves the previous checkpoint or the new one, never a
//! mix; with the lake on an object store, objects under `<lake root>/_models/` (a put is whole
//! or absent, so the same holds).
//!
//! Format (all integers little endian):
//! ```text
//! magic  "SLFTRL02"                      8 bytes
//! header length                          u64
//! header                                 JSON: name, outcome, horizon, FTRL parameters,
//!                                        positions, event-time watermarks, progressive
//!                                        figures
//! pending examples                       count u64, then each: seq u64, partition u32,
//!                                        deadline i64, score f64, user (length u32, UTF-8),
//!                                        features (count u32, then index u32 and value f32
//!                                        each)
//! z                                      f32 × 2^bits
//! n                                      f32 × 2^bits
//! checksum                               u64, xxh3 of everything before it
//! ```
//! Version 1 (`SLFTRL01`, still read) kept the pending examples in the JSON header. A model
//! holds up to `max_pending` of them (hundreds of megabytes at the default), and writing them
//! as JSON numbers was most of a checkpoint's cost, which the hot projection paid in its loop
//! once a minute; now they are copied as they are, and the bytes are checksummed and written on
//! a thread of their own ([`crate::Models`]).
//!
//! A checkpoint whose model definition (outcome, horizon, parameters, example events) differs
//! from the configuration is not used: the model starts afresh and learns from the start of the
//! retained journal.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_hot::Positions;
use sluice_journal::durable_fs;
use xxhash_rust::xxh3::xxh3_64;

use crate::PredictError;
use crate::config::ModelSpec;
use crate::ftrl::{Ftrl, FtrlParams};
use crate::model::{OnlineModel, Pending, Progressive};

/// The magic of the format written.
const MAGIC: &[u8; 8] = b"SLFTRL02";
/// The magic of version 1, still read: the pending examples in the header.
const MAGIC_V1: &[u8; 8] = b"SLFTRL01";
/// A pending example's fixed part: seq, partition, deadline, score, user length, feature count.
const PENDING_FIXED: usize = 8 + 4 + 8 + 8 + 4 + 4;

#[derive(Serialize, Deserialize)]
struct Header {
    name: String,
    outcome: String,
    horizon_us: i64,
    examples: BTreeSet<String>,
    params: FtrlParams,
    positions: Positions,
    watermarks: std::collections::BTreeMap<u32, i64>,
    next_seq: u64,
    stats: Progressive,
    /// Version 1 only; version 2 keeps them after the header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Examples,
}

/// The checkpoint file of `model` in `dir`.
pub fn path_of(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.ftrl"))
}

/// `model`'s header, with `pending` in it (version 1) or none (version 2).
fn header(model: &OnlineModel, pending: Examples) -> Header {
    Header {
        name: model.spec.name.clone(),
        outcome: model.spec.outcome.clone(),
        horizon_us: model.spec.horizon_us,
        examples: model.spec.examples.clone(),
        params: model.spec.params,
        positions: model.positions.clone(),
        watermarks: model.watermarks.clone(),
        next_seq: model.next_seq,
        stats: model.stats.clone(),
        pending,
    }
}

/// Encodes a model, without the checksum that [`seal`] appends.
pub(crate) fn encode(model: &OnlineModel) -> Result<Vec<u8>, serde_json::Error> {
    let header = serde_json::to_vec(&header(model, Vec::new()))?;
    let pending: usize = model
        .pending
        .values()
        .map(|p| PENDING_FIXED + p.user.len() + p.features.len() * 8)
        .sum();
    let weights = model.ftrl.z.len() * 8;
    let mut out = Vec::with_capacity(24 + header.len() + 8 + pending + weights + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(model.pending.len() as u64).to_le_bytes());
    for (seq, p) in &model.pending {
        write_pending(&mut out, *seq, p);
    }
    for x in model.ftrl.z.iter().chain(&model.ftrl.n) {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

fn write_pending(out: &mut Vec<u8>, seq: u64, p: &Pending) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&p.partition.to_le_bytes());
    out.extend_from_slice(&p.deadline.to_le_bytes());
    out.extend_from_slice(&p.score.to_le_bytes());
    // A user id is at most `sluice_hot::MAX_KEY_BYTES`, a model's features a few dozen.
    out.extend_from_slice(&(p.user.len() as u32).to_le_bytes());
    out.extend_from_slice(p.user.as_bytes());
    out.extend_from_slice(&(p.features.len() as u32).to_le_bytes());
    for (index, value) in &p.features {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// Appends the checksum of everything [`encode`] wrote.
pub(crate) fn seal(encoded: &mut Vec<u8>) {
    let sum = xxh3_64(encoded);
    encoded.extend_from_slice(&sum.to_le_bytes());
}

/// Reads a checkpoint's fields in order, refusing to read past its end.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("pending examples cut short".into());
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let taken = self.take(N)?;
        taken
            .try_into()
            .map_err(|_| "pending examples cut short".into())
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn pending(&mut self) -> Result<(u64, Pending), String> {
        let seq = self.u64()?;
        let partition = self.u32()?;
        let deadline = i64::from_le_bytes(self.array()?);
        let score = f64::from_le_bytes(self.array()?);
        let user_len = self.u32()? as usize;
        let user = std::str::from_utf8(self.take(user_len)?)
            .map_err(|e| format!("a pending example's user is not UTF-8: {e}"))?
            .to_string();
        let count = self.u32()? as usize;
        let features = self.take(count.checked_mul(8).ok_or("too many features")?)?;
        let features = features
            .chunks_exact(8)
            .map(|f| {
                let index = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
                (index, f32::from_le_bytes([f[4], f[5], f[6], f[7]]))
            })
            .collect();
        let example = Pending {
            partition,
            user,
            deadline,
            score,
            features,
        };
        Ok((seq, example))
    }
}

/// Pending examples with their sequence numbers, as a checkpoint holds them.
type Examples = Vec<(u64, Pending)>;

/// Version 2's pending examples at the start of `bytes`, and what follows them.
fn read_pending(bytes: &[u8]) -> Result<(Examples, &[u8]), String> {
    let mut fields = Fields { bytes };
    let count = fields.u64()?;
    // Each takes at least its fixed part: a count beyond that is damage, not a reason to
    // allocate.
    if count > (bytes.len() / PENDING_FIXED) as u64 {
        return Err(format!("{count} pending examples cannot fit in the file"));
    }
    let mut pending = Vec::with_capacity(count as usize);
    for _ in 0..count {
        pending.push(fields.pending()?);
    }
    Ok((pending, fields.bytes))
}

/// Decodes a checkpoint for `spec`: `Ok(None)` when it belongs to another model definition.
pub(crate) fn decode(spec: &ModelSpec, bytes: &[u8]) -> Result<Option<OnlineModel>, String> {
    if bytes.len() < 24 {
        return Err("not a model checkpoint".into());
    }
    let v1 = match &bytes[..8] {
        m if m == MAGIC => false,
        m if m == MAGIC_V1 => true,
        _ => return Err("not a model checkpoint".into()),
    };
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let sum = u64::from_le_bytes(sum.try_into().map_err(|_| "short file")?);
    if xxh3_64(body) != sum {
        return Err("checksum mismatch".into());
    }
    let header_len = u64::from_le_bytes(body[8..16].try_into().map_err(|_| "short file")?);
    let header_end = usize::try_from(header_len)
        .ok()
        .and_then(|l| l.checked_add(16))
        .filter(|e| *e <= body.len())
        .ok_or("header length out of range")?;
    let mut header: Header =
        serde_json::from_slice(&body[16..header_end]).map_err(|e| e.to_string())?;
    if header.name != spec.name
        || header.outcome != spec.outcome
        || header.horizon_us != spec.horizon_us
        || header.examples != spec.examples
        || header.params != spec.params
    {
        return Ok(None);
    }
    let (pending, weights) = match v1 {
        true => (std::mem::take(&mut header.pending), &body[header_end..]),
        false => read_pending(&body[header_end..])?,
    };
    let size = 1usize << spec.params.bits;
    if weights.len() != size * 8 {
        return Err(format!(
            "weights are {} bytes, expected {}",
            weights.len(),
            size * 8
        ));
    }
    let floats: Vec<f32> = weights
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (z, n) = floats.split_at(size);
    let mut model = OnlineModel::new(spec.clone());
    model.ftrl = Ftrl {
        params: spec.params,
        z: z.to_vec(),
        n: n.to_vec(),
    };
    model.positions = header.positions;
    model.watermarks = header.watermarks;
    model.next_seq = header.next_seq;
    model.stats = header.stats;
    for (seq, p) in pending {
        model.insert_pending(seq, p);
    }
    Ok(Some(model))
}

/// Where checkpoints are kept: whole files by name, each replaced atomically.
pub trait CheckpointStore: Send + Sync {
    /// Where `name` lives, for messages.
    fn location(&self, name: &str) -> String;
    /// The content of `name`, or `None` if there is none.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, String>;
    /// Replaces `name` with `bytes`, atomically.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String>;
    /// Renames `from` to `to` (setting a damaged checkpoint aside).
    fn rename(&self, from: &str, to: &str) -> Result<(), String>;
}

/// Checkpoints in a local directory, durably.
#[derive(Clone, Debug)]
pub struct LocalCheckpoints {
    dir: PathBuf,
}

impl LocalCheckpoints {
    /// Checkpoints in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
}

impl CheckpointStore for LocalCheckpoints {
    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match std::fs::read(self.dir.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        durable_fs::write_atomic(&self.dir.join(name), bytes).map_err(|e| e.to_string())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        durable_fs::rename_durable(&self.dir.join(from), &self.dir.join(to))
            .map_err(|e| e.to_string())
    }
}

/// The name of `model`'s checkpoint in a [`CheckpointStore`].
pub(crate) fn file_name(model: &str) -> String {
    format!("{model}.ftrl")
}

/// Writes `model`'s checkpoint into `dir` atomically.
pub fn write(model: &OnlineModel, dir: &Path) -> Result<(), PredictError> {
    write_to(model, &LocalCheckpoints::new(dir))
}

/// Writes `model`'s checkpoint into `store` atomically.
pub fn write_to(model: &OnlineModel, store: &dyn CheckpointStore) -> Result<(), PredictError> {
    let (name, encoded) = encode_named(model, store)?;
    put_encoded(&name, encoded, store)
}

/// What [`encode`] makes of `model`, and the name it is written under in `store`; an error
/// names the file.
pub(crate) fn encode_named(
    model: &OnlineModel,
    store: &dyn CheckpointStore,
) -> Result<(String, Vec<u8>), PredictError> {
    let name = file_name(&model.spec.name);
    match encode(model) {
        Ok(encoded) => Ok((name, encoded)),
        Err(e) => Err(PredictError::Checkpoint {
            path: store.location(&name),
            reason: e.to_string(),
        }),
    }
}

/// Seals what [`encode`] made of a model and writes it as `name` into `store`, atomically.
pub(crate) fn put_encoded(
    name: &str,
    mut encoded: Vec<u8>,
    store: &dyn CheckpointStore,
) -> Result<(), PredictError> {
    seal(&mut encoded);
    store
        .put(name, &encoded)
        .map_err(|reason| PredictError::Checkpoint {
            path: store.location(name),
            reason,
        })
}

/// Reads `spec`'s checkpoint from `dir`. A missing file or one for another model definition
/// gives a fresh model; an unreadable or damaged one is renamed `*.corrupt` (kept for
/// inspection) and also gives a fresh model, with an error logged.
pub fn read(spec: &ModelSpec, dir: &Path) -> Result<OnlineModel, PredictError> {
    read_from(spec, &LocalCheckpoints::new(dir))
}

/// [`read`] from `store`.
pub fn read_from(
    spec: &ModelSpec,
    store: &dyn CheckpointStore,
) -> Result<OnlineModel, PredictError> {
    let name = file_name(&spec.name);
    let path = store.location(&name);
    let fail = |reason: String| PredictError::Checkpoint {
        path: path.clone(),
        reason,
    };
    let Some(bytes) = store.get(&name).map_err(fail)? else {
        return Ok(OnlineModel::new(spec.clone()));
    };
    match decode(spec, &bytes) {
        Ok(Some(model)) => {
            tracing::info!(model = %spec.name, examples = model.stats.examples, pending = model.pending.len(), "model restored from its checkpoint");
            Ok(model)
        }
        Ok(None) => {
            tracing::warn!(model = %spec.name, path = %path, "the checkpoint is for another model definition; starting afresh");
            Ok(OnlineModel::new(spec.clone()))
        }
        Err(reason) => {
            tracing::error!(model = %spec.name, path = %path, %reason, "model checkpoint is damaged; kept as *.corrupt, starting afresh");
            store
                .rename(&name, &format!("{name}.corrupt"))
                .map_err(fail)?;
            Ok(OnlineModel::new(spec.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelConfig, run_offline, synthetic};

    fn spec() -> ModelSpec {
        let c: ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "purchase_30m",
            "outcome": "Order Completed",
            "horizon": "30m",
            "bits": 12,
            "examples": ["Product Viewed"],
        }))
        .unwrap();
        c.validate().unwrap()
    }

    /// A model part way through a stream: pending examples, positions and figures.
    fn trained() -> OnlineModel {
        let stream = synthetic::generate(9, 1000, 6);
        // Stopped in the middle of the day, where views still wait for their horizon.
        let half = &stream.events[..stream.events.len() / 2];
        let mut model = OnlineModel::new(spec());
        let hot = sluice_hot::HotConfig::default().validate().unwrap();
        run_offline(&mut model, half, &hot);
        model.advance(&Positions::from([(0, half.len() as u64)]));
        assert!(model.pending_len() > 10, "{} pending", model.pending_len());
        model
    }

    fn sealed(model: &OnlineModel) -> Vec<u8> {
        let mut bytes = encode(model).unwrap();
        seal(&mut bytes);
        bytes
    }

    fn assert_same(a: &OnlineModel, b: &OnlineModel) {
        assert_eq!(a.pending, b.pending);
        assert_eq!(a.expiry, b.expiry);
        assert_eq!(a.by_user, b.by_user);
        assert_eq!(a.positions, b.positions);
        assert_eq!(a.watermarks, b.watermarks);
        assert_eq!(a.next_seq, b.next_seq);
        assert_eq!(a.stats, b.stats);
        assert_eq!(a.ftrl, b.ftrl);
        assert_eq!(a.pending_bytes(), b.pending_bytes());
    }

    #[test]
    fn pending_examples_come_back_exactly_from_their_binary_form() {
        let model = trained();
        let bytes = sealed(&model);
        assert_eq!(&bytes[..8], MAGIC);
        let back = decode(&spec(), &bytes)
            .unwrap()
            .expect("the same definition");
        assert_same(&model, &back);
    }

    /// Version 1, as it was written: the pending examples in the JSON header.
    fn version_1(model: &OnlineModel) -> Vec<u8> {
        let pending = model.pending.iter().map(|(s, p)| (*s, p.clone())).collect();
        let header = serde_json::to_vec(&header(model, pending)).unwrap();
        let mut out = MAGIC_V1.to_vec();
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for x in model.ftrl.z.iter().chain(&model.ftrl.n) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        seal(&mut out);
        out
    }

    #[test]
    fn a_version_1_checkpoint_still_restores_its_model() {
        let model = trained();
        let old = version_1(&model);
        let mut back = decode(&spec(), &old).unwrap().expect("the same definition");
        // JSON read a score back to within a rounding of it, not always to the same bits.
        assert_eq!(back.pending.len(), model.pending.len());
        for (p, q) in back.pending.values_mut().zip(model.pending.values()) {
            assert!((p.score - q.score).abs() <= 1e-15 * q.score.abs(), "{p:?}");
            p.score = q.score;
        }
        assert_same(&model, &back);
        assert!(
            old.len() > sealed(&model).len(),
            "the binary form is smaller"
        );
    }

    #[test]
    fn damaged_pending_examples_are_an_error_never_a_panic() {
        let model = trained();
        let bytes = sealed(&model);
        let header_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let pending_at = 16 + header_len;
        let body = &bytes[..bytes.len() - 8];
        // Cut anywhere in the pending examples or the weights, the checksum made to match.
        for cut in (pending_at..body.len()).step_by(97) {
            let mut damaged = body[..cut].to_vec();
            seal(&mut damaged);
            assert!(decode(&spec(), &damaged).is_err(), "cut at {cut}");
        }
        // A count of examples far beyond the file, and a user that is not UTF-8.
        let mut huge = body.to_vec();
        huge[pending_at..pending_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        seal(&mut huge);
        let error = decode(&spec(), &huge).err().expect("refused");
        assert!(error.contains("cannot fit"), "{error}");
        let user_at = pending_at + 8 + 8 + 4 + 8 + 8 + 4;
        let mut not_utf8 = body.to_vec();
        not_utf8[user_at] = 0xff;
        seal(&mut not_utf8);
        let error = decode(&spec(), &not_utf8).err().expect("refused");
        assert!(error.contains("UTF-8"), "{error}");
    }
}
