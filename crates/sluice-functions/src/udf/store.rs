//! [`Store`]: deployed function versions on disk.
//!
//! Layout under `<data_dir>/functions/deployed/<name>/`:
//! - `v<N>.js`: the code of version N (immutable);
//! - `v<N>.json`: its [`Version`] record, settings and secrets included (mode 0600);
//! - `active.json`: the activation history, a stack of version numbers whose top runs. A
//!   deploy pushes, `rollback` pops (or pushes the version asked for).
//!
//! Every file is written to a temporary name, synced, then renamed, so a crash leaves the old or
//! the new state, never half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use sluice_journal::durable_fs;

use super::engine::Mode;
use super::{FunctionSpec, UdfError};

/// One deployed version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Version number, from 1.
    pub version: u32,
    /// Entry point the code exports.
    pub mode: Mode,
    /// The settings it was deployed with.
    pub spec: FunctionSpec,
    /// SHA-256 of the code, hex.
    pub code_sha256: String,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Active {
    stack: Vec<u32>,
}

/// A function's versions and which one runs.
#[derive(Clone, Debug)]
pub struct Deployed {
    /// Function name.
    pub name: String,
    /// Every version, oldest first.
    pub versions: Vec<Version>,
    /// The running version.
    pub active: u32,
    /// Activation history (the last entry is `active`).
    pub history: Vec<u32>,
}

impl Deployed {
    /// The running version's record.
    pub fn active_version(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == self.active)
    }
}

/// A function whole, as nodes share it: every version with its code, and the activation
/// history (`Functions::export`, `Functions::import`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    /// Every version, oldest first.
    pub versions: Vec<BundledVersion>,
    /// The activation history; the last runs.
    pub stack: Vec<u32>,
}

/// One version in a [`Bundle`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundledVersion {
    /// Its record.
    pub record: Version,
    /// Its code.
    pub code: String,
}

/// The deployed functions of one data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// What a deploy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployOutcome {
    /// A new version was stored and activated.
    Created,
    /// The code and settings equal the running version's: nothing changed.
    Unchanged,
}

/// Whether `name` may name a function.
pub fn check_name(name: &str) -> Result<(), UdfError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(UdfError::Invalid(format!(
            "function name {name:?} must be 1-64 characters of a-z, 0-9, - and _, starting with a letter"
        )));
    }
    if name == "stats" || super::Stage::ALL.iter().any(|s| s.as_str() == name) {
        return Err(UdfError::Invalid(format!(
            "{name:?} is reserved; pick another function name"
        )));
    }
    Ok(())
}

impl Store {
    /// Opens (creating) the store at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, UdfError> {
        let dir = dir.into();
        durable_fs::create_dir_all_durable(&dir).map_err(|e| io(&dir, e))?;
        Ok(Self { dir })
    }

    /// Every deployed function, by name.
    pub fn load_all(&self) -> Result<BTreeMap<String, Deployed>, UdfError> {
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            if let Some(d) = self.load(&name)? {
                out.insert(name, d);
            }
        }
        Ok(out)
    }

    /// One function, if deployed.
    pub fn load(&self, name: &str) -> Result<Option<Deployed>, UdfError> {
        let dir = self.dir.join(name);
        let active_path = dir.join("active.json");
        let Some(active) = read_json::<Active>(&active_path)? else {
            return Ok(None);
        };
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let file = entry.file_name();
            let Some(n) = file
                .to_str()
                .and_then(|f| f.strip_prefix('v'))
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(v) = read_json::<Version>(&entry.path())?
                && v.version == n
            {
                versions.push(v);
            }
        }
        versions.sort_by_key(|v| v.version);
        let Some(&current) = active.stack.last() else {
            return Ok(None);
        };
        Ok(Some(Deployed {
            name: name.to_string(),
            versions,
            active: current,
            history: active.stack,
        }))
    }

    /// The code of one version.
    pub fn code(&self, name: &str, version: u32) -> Result<String, UdfError> {
        let path = self.dir.join(name).join(format!("v{version}.js"));
        std::fs::read_to_string(&path).map_err(|e| io(&path, e))
    }

    /// Stores `code` with `spec` as the next version and activates it, unless it equals the
    /// running version (then nothing changes).
    pub fn deploy(
        &self,
        name: &str,
        code: &str,
        mode: Mode,
        spec: &FunctionSpec,
    ) -> Result<(u32, DeployOutcome), UdfError> {
        check_name(name)?;
        let sha = hex::encode(sha2::Sha256::digest(code.as_bytes()));
        let existing = self.load(name)?;
        if let Some(d) = &existing
            && let Some(v) = d.active_version()
            && v.code_sha256 == sha
            && &v.spec == spec
        {
            return Ok((v.version, DeployOutcome::Unchanged));
        }
        let dir = self.dir.join(name);
        durable_fs::create_dir_all_durable(&dir).map_err(|e| io(&dir, e))?;
        let next = existing
            .as_ref()
            .and_then(|d| d.versions.last().map(|v| v.version))
            .unwrap_or(0)
            .max(highest_on_disk(&dir))
            + 1;
        let record = Version {
            version: next,
            mode,
            spec: spec.clone(),
            code_sha256: sha,
            deployed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        write_atomic(&dir.join(format!("v{next}.js")), code.as_bytes(), false)?;
        let body = serde_json::to_vec_pretty(&record).map_err(|e| UdfError::Io(e.to_string()))?;
        write_atomic(&dir.join(format!("v{next}.json")), &body, true)?;
        let mut stack = existing.map(|d| d.history).unwrap_or_default();
        stack.push(next);
        self.write_active(name, stack)?;
        Ok((next, DeployOutcome::Created))
    }

    /// Makes `to` (or the version that ran before the current one) run. Returns it.
    pub fn rollback(&self, name: &str, to: Option<u32>) -> Result<u32, UdfError> {
        let d = self
            .load(name)?
            .ok_or_else(|| UdfError::NotFound(format!("no function named {name:?}")))?;
        let mut stack = d.history;
        let target = match to {
            Some(v) => {
                if !d.versions.iter().any(|x| x.version == v) {
                    return Err(UdfError::NotFound(format!("{name} has no version {v}")));
                }
                stack.push(v);
                v
            }
            None => {
                if stack.len() < 2 {
                    return Err(UdfError::Conflict(format!(
                        "{name} v{} is the first version it ran; there is nothing to roll back to",
                        d.active
                    )));
                }
                stack.pop();
                *stack.last().unwrap_or(&d.active)
            }
        };
        if stack.len() > 1000 {
            stack.drain(..stack.len() - 1000);
        }
        self.write_active(name, stack)?;
        Ok(target)
    }

    /// Removes a function and all its versions.
    pub fn delete(&self, name: &str) -> Result<(), UdfError> {
        check_name(name)?;
        let dir = self.dir.join(name);
        if !dir.join("active.json").exists() {
            return Err(UdfError::NotFound(format!("no function named {name:?}")));
        }
        // Deactivate first, so a crash part-way leaves the function not running.
        std::fs::remove_file(dir.join("active.json")).map_err(|e| io(&dir, e))?;
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))
    }

    /// One function whole, if deployed.
    pub fn export(&self, name: &str) -> Result<Option<Bundle>, UdfError> {
        let Some(d) = self.load(name)? else {
            return Ok(None);
        };
        let mut versions = Vec::with_capacity(d.versions.len());
        for record in d.versions {
            let code = self.code(name, record.version)?;
            versions.push(BundledVersion { record, code });
        }
        Ok(Some(Bundle {
            versions,
            stack: d.history,
        }))
    }

    /// Makes function `name` what `bundle` holds (`None`: not deployed), as another node stored
    /// it: versions missing here are written, versions it no longer has are removed, then the
    /// activation history is replaced. Whether anything changed.
    pub fn import(&self, name: &str, bundle: Option<&Bundle>) -> Result<bool, UdfError> {
        check_name(name)?;
        let Some(bundle) = bundle else {
            return match self.load(name)? {
                Some(_) => self.delete(name).map(|()| true),
                None => Ok(false),
            };
        };
        if self.export(name)?.as_ref() == Some(bundle) {
            return Ok(false);
        }
        let dir = self.dir.join(name);
        durable_fs::create_dir_all_durable(&dir).map_err(|e| io(&dir, e))?;
        for v in &bundle.versions {
            let n = v.record.version;
            write_atomic(&dir.join(format!("v{n}.js")), v.code.as_bytes(), false)?;
            let body =
                serde_json::to_vec_pretty(&v.record).map_err(|e| UdfError::Io(e.to_string()))?;
            write_atomic(&dir.join(format!("v{n}.json")), &body, true)?;
        }
        self.write_active(name, bundle.stack.clone())?;
        let kept: Vec<u32> = bundle.versions.iter().map(|v| v.record.version).collect();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            let version = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_prefix('v'))
                .and_then(|f| f.split('.').next())
                .and_then(|n| n.parse::<u32>().ok());
            if version.is_some_and(|n| !kept.contains(&n)) {
                std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
            }
        }
        Ok(true)
    }

    /// Writes `records` over the records of function `name`'s versions of the same numbers
    /// (their secrets resealed), each as a deploy writes it; the code and the activation
    /// history stay as they are.
    pub fn rewrite_records(&self, name: &str, records: &[Version]) -> Result<(), UdfError> {
        check_name(name)?;
        let dir = self.dir.join(name);
        for record in records {
            let path = dir.join(format!("v{}.json", record.version));
            if read_json::<Version>(&path)?.is_none() {
                return Err(UdfError::NotFound(format!(
                    "{name} has no version {}",
                    record.version
                )));
            }
            let body =
                serde_json::to_vec_pretty(record).map_err(|e| UdfError::Io(e.to_string()))?;
            write_atomic(&path, &body, true)?;
        }
        Ok(())
    }

    /// Puts back the activation history `load` gave (a change that could not run, undone).
    pub fn restore_history(&self, name: &str, history: Vec<u32>) -> Result<(), UdfError> {
        self.write_active(name, history)
    }

    fn write_active(&self, name: &str, stack: Vec<u32>) -> Result<(), UdfError> {
        let body =
            serde_json::to_vec(&Active { stack }).map_err(|e| UdfError::Io(e.to_string()))?;
        write_atomic(&self.dir.join(name).join("active.json"), &body, false)
    }
}

fn highest_on_disk(dir: &Path) -> u32 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|f| f.strip_prefix('v'))
                .and_then(|f| f.split('.').next())
                .and_then(|n| n.parse::<u32>().ok())
        })
        .max()
        .unwrap_or(0)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, UdfError> {
    match std::fs::read(path) {
        Ok(body) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| UdfError::Io(format!("{} is unreadable: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

fn io(path: &Path, e: std::io::Error) -> UdfError {
    UdfError::Io(format!("{}: {e}", path.display()))
}

fn write_atomic(path: &Path, body: &[u8], private: bool) -> Result<(), UdfError> {
    let written = if private {
        durable_fs::write_atomic_private(path, body)
    } else {
        durable_fs::write_atomic(path, body)
    };
    written.map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_rollback_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let spec = FunctionSpec::default();
        assert_eq!(
            s.deploy("f", "a", Mode::Batch, &spec).unwrap(),
            (1, DeployOutcome::Created)
        );
        assert_eq!(
            s.deploy("f", "a", Mode::Batch, &spec).unwrap(),
            (1, DeployOutcome::Unchanged)
        );
        assert_eq!(s.deploy("f", "b", Mode::Batch, &spec).unwrap().0, 2);
        let spec3 = FunctionSpec {
            batch_size: 7,
            ..spec.clone()
        };
        assert_eq!(s.deploy("f", "b", Mode::Batch, &spec3).unwrap().0, 3);
        assert_eq!(s.load("f").unwrap().unwrap().active, 3);
        assert_eq!(s.rollback("f", None).unwrap(), 2);
        assert_eq!(s.rollback("f", None).unwrap(), 1);
        assert!(matches!(s.rollback("f", None), Err(UdfError::Conflict(_))));
        assert_eq!(s.rollback("f", Some(3)).unwrap(), 3);
        assert!(matches!(
            s.rollback("f", Some(9)),
            Err(UdfError::NotFound(_))
        ));
        assert_eq!(s.code("f", 1).unwrap(), "a");
        let all = Store::open(dir.path()).unwrap().load_all().unwrap();
        assert_eq!(all["f"].versions.len(), 3);
        assert_eq!(all["f"].active, 3);
        s.delete("f").unwrap();
        assert!(s.load_all().unwrap().is_empty());
        assert!(matches!(s.delete("f"), Err(UdfError::NotFound(_))));
        assert!(matches!(check_name("Bad"), Err(UdfError::Invalid(_))));
        assert!(matches!(check_name("stats"), Err(UdfError::Invalid(_))));
        assert!(check_name("ok-name_2").is_ok());
    }
}
