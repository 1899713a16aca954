//! Model checkpoints: one file per model, `<model>.ftrl`, in a [`CheckpointStore`]: on local
//! disk `<dir>/<model>.ftrl` ([`LocalCheckpoints`]), written atomically (a temporary file, fsync,
//! rename, directory fsync), so a crash leaves the previous checkpoint or the new one, never a
//! mix; with the lake on an object store, objects under `<lake root>/_models/` (a put is whole
//! or absent, so the same holds).
//!
//! Format (all integers little endian):
//! ```text
//! magic  "SLFTRL01"                      8 bytes
//! header length                          u64
//! header                                 JSON: name, outcome, horizon, FTRL parameters,
//!                                        positions, event-time watermarks, progressive
//!                                        figures, pending examples
//! z                                      f32 × 2^bits
//! n                                      f32 × 2^bits
//! checksum                               u64, xxh3 of everything before it
//! ```
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

const MAGIC: &[u8; 8] = b"SLFTRL01";

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
    pending: Vec<(u64, Pending)>,
}

/// The checkpoint file of `model` in `dir`.
pub fn path_of(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.ftrl"))
}

/// Encodes a model.
pub(crate) fn encode(model: &OnlineModel) -> Result<Vec<u8>, serde_json::Error> {
    let header = Header {
        name: model.spec.name.clone(),
        outcome: model.spec.outcome.clone(),
        horizon_us: model.spec.horizon_us,
        examples: model.spec.examples.clone(),
        params: model.spec.params,
        positions: model.positions.clone(),
        watermarks: model.watermarks.clone(),
        next_seq: model.next_seq,
        stats: model.stats.clone(),
        pending: model.pending.iter().map(|(s, p)| (*s, p.clone())).collect(),
    };
    let header = serde_json::to_vec(&header)?;
    let mut out = Vec::with_capacity(24 + header.len() + model.ftrl.z.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for x in model.ftrl.z.iter().chain(&model.ftrl.n) {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Decodes a checkpoint for `spec`: `Ok(None)` when it belongs to another model definition.
pub(crate) fn decode(spec: &ModelSpec, bytes: &[u8]) -> Result<Option<OnlineModel>, String> {
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err("not a model checkpoint".into());
    }
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
    let header: Header =
        serde_json::from_slice(&body[16..header_end]).map_err(|e| e.to_string())?;
    if header.name != spec.name
        || header.outcome != spec.outcome
        || header.horizon_us != spec.horizon_us
        || header.examples != spec.examples
        || header.params != spec.params
    {
        return Ok(None);
    }
    let size = 1usize << spec.params.bits;
    let weights = &body[header_end..];
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
    for (seq, p) in header.pending {
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

fn file_name(model: &str) -> String {
    format!("{model}.ftrl")
}

/// Writes `model`'s checkpoint into `dir` atomically.
pub fn write(model: &OnlineModel, dir: &Path) -> Result<(), PredictError> {
    write_to(model, &LocalCheckpoints::new(dir))
}

/// Writes `model`'s checkpoint into `store` atomically.
pub fn write_to(model: &OnlineModel, store: &dyn CheckpointStore) -> Result<(), PredictError> {
    let name = file_name(&model.spec.name);
    let fail = |reason: String| PredictError::Checkpoint {
        path: store.location(&name),
        reason,
    };
    let bytes = encode(model).map_err(|e| fail(e.to_string()))?;
    store.put(&name, &bytes).map_err(fail)
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
