//! [`Registry`]: an Iglu-compatible registry of self-describing JSON schemas.
//!
//! A schema is addressed as `iglu:vendor/name/jsonschema/MODEL-REVISION-ADDITION` and stored,
//! byte for byte as pushed, at `<dir>/<vendor>/<name>/jsonschema/<M-R-A>` — the layout of a
//! static Iglu repository's `schemas/` folder, so the directory can be served or copied as one,
//! and a static repository can be imported as is.
//!
//! Rules a push must pass (the reason is returned otherwise):
//! - at most [`MAX_SCHEMA_BYTES`], a JSON object whose `self` (vendor, name, format, version)
//!   matches its address and whose format is `jsonschema`;
//! - it compiles: `$ref`s resolve only through this registry (`iglu:` URIs and `#` pointers;
//!   no file or network access), `pattern`s compile with the linear-time `regex` engine within a
//!   size limit (no look-around or back-references, so no catastrophic backtracking);
//! - versions are immutable: pushing different content under an existing address is a conflict,
//!   pushing the same content again is a no-op;
//! - an ADDITION (`1-0-1` after `1-0-0`) must be compatible with the previous addition: every
//!   property keeps its definition and `required` does not change (new optional properties only).
//!
//! Compiled validators are cached by URI. Since versions are immutable, a cached validator never
//! goes stale; an address found missing is looked up again after a second, so a schema pushed by
//! another process (`sluice schemas push --data-dir`) is picked up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonschema::{Draft, PatternOptions, Retrieve, Uri, Validator};
use parking_lot::RwLock;
use serde_json::{Map, Value};
use sluice_journal::durable_fs;

/// The largest schema accepted, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;
/// The compiled size limit of one `pattern` regex (and of its lazy DFA).
const MAX_REGEX_BYTES: usize = 1 << 20;
/// How long an address found missing is remembered before the disk is checked again.
const MISS_TTL: Duration = Duration::from_secs(1);
/// The meta-schema URI of Iglu's self-describing schemas.
const IGLU_META: &str =
    "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#";

/// `MODEL-REVISION-ADDITION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaVer {
    /// Breaking change.
    pub model: u32,
    /// A change that may break some data.
    pub revision: u32,
    /// A change compatible with all data.
    pub addition: u32,
}

impl std::fmt::Display for SchemaVer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.model, self.revision, self.addition)
    }
}

/// A schema's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SchemaKey {
    /// Reverse domain of the owner (`com.acme`).
    pub vendor: String,
    /// Schema name (`checkout_started`).
    pub name: String,
    /// Version.
    pub version: SchemaVer,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl SchemaKey {
    /// Parses `iglu:vendor/name/jsonschema/1-0-0`.
    pub fn parse_uri(uri: &str) -> Result<Self, String> {
        let path = uri
            .strip_prefix("iglu:")
            .ok_or_else(|| format!("schema uri {uri:?} does not start with iglu:"))?;
        Self::parse_path(path).map_err(|e| format!("schema uri {uri:?}: {e}"))
    }

    /// Parses `vendor/name/jsonschema/1-0-0`.
    pub fn parse_path(path: &str) -> Result<Self, String> {
        let parts: Vec<&str> = path.split('/').collect();
        let [vendor, name, format, version] = parts[..] else {
            return Err("expected vendor/name/jsonschema/MODEL-REVISION-ADDITION".into());
        };
        Self::from_parts(vendor, name, format, version)
    }

    fn from_parts(vendor: &str, name: &str, format: &str, version: &str) -> Result<Self, String> {
        if !valid_part(vendor) || !valid_part(name) {
            return Err(
                "vendor and name must be 1-128 characters of a-z, 0-9, '.', '_', '-'".into(),
            );
        }
        if format != "jsonschema" {
            return Err(format!(
                "format {format:?} is not supported (only jsonschema)"
            ));
        }
        let nums: Vec<u32> = version
            .split('-')
            .map(|n| {
                if n.is_empty() || n.len() > 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    n.parse().ok()
                }
            })
            .collect::<Option<_>>()
            .ok_or_else(|| format!("version {version:?} is not MODEL-REVISION-ADDITION"))?;
        let [model, revision, addition] = nums[..] else {
            return Err(format!(
                "version {version:?} is not MODEL-REVISION-ADDITION"
            ));
        };
        if model == 0 {
            return Err(format!("version {version:?}: the model starts at 1"));
        }
        Ok(Self {
            vendor: vendor.into(),
            name: name.into(),
            version: SchemaVer {
                model,
                revision,
                addition,
            },
        })
    }

    /// `vendor/name/jsonschema/M-R-A`.
    pub fn path(&self) -> String {
        format!("{}/{}/jsonschema/{}", self.vendor, self.name, self.version)
    }

    /// `iglu:vendor/name/jsonschema/M-R-A`.
    pub fn uri(&self) -> String {
        format!("iglu:{}", self.path())
    }
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// A new schema was stored.
    Created,
    /// The same schema was already stored.
    Unchanged,
}

/// Why a push or a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The schema is not acceptable.
    #[error("invalid schema: {0}")]
    Invalid(String),
    /// A different schema is stored under the address.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The disk failed.
    #[error("schema registry io: {0}")]
    Io(String),
}

impl RegistryError {
    /// Classification.
    pub fn kind(&self) -> sluice_event::ErrorKind {
        match self {
            Self::Invalid(_) => sluice_event::ErrorKind::Invalid,
            Self::Conflict(_) => sluice_event::ErrorKind::Conflict,
            Self::Io(_) => sluice_event::ErrorKind::Unavailable,
        }
    }
}

/// What importing one file did.
pub type ImportResult = Result<(SchemaKey, PushOutcome), RegistryError>;

/// A compiled schema.
pub struct Compiled {
    /// Its URI.
    pub uri: String,
    /// The validator.
    pub validator: Validator,
}

/// The schema registry. Cheap to share (`Arc`).
pub struct Registry {
    dir: PathBuf,
    compiled: RwLock<HashMap<String, Arc<Compiled>>>,
    missing: RwLock<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish()
    }
}

impl Registry {
    /// A registry stored under `dir` (created if absent).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let dir = dir.into();
        durable_fs::create_dir_all_durable(&dir)
            .map_err(|e| RegistryError::Io(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Self {
            dir,
            compiled: RwLock::new(HashMap::new()),
            missing: RwLock::new(HashMap::new()),
        })
    }

    /// The directory the schemas are stored in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, key: &SchemaKey) -> PathBuf {
        self.dir.join(key.path())
    }

    /// The stored text of a schema.
    pub fn get(&self, key: &SchemaKey) -> Result<Option<String>, RegistryError> {
        read_opt(&self.file(key))
    }

    /// Every stored schema's URI, sorted by vendor, name and version.
    pub fn list(&self) -> Result<Vec<String>, RegistryError> {
        let mut keys = Vec::new();
        for vendor in read_dir_names(&self.dir)? {
            for name in read_dir_names(&self.dir.join(&vendor))? {
                let dir = self.dir.join(&vendor).join(&name).join("jsonschema");
                for version in read_dir_names(&dir)? {
                    if let Ok(k) = SchemaKey::from_parts(&vendor, &name, "jsonschema", &version) {
                        keys.push(k);
                    }
                }
            }
        }
        keys.sort_by(|a, b| (&a.vendor, &a.name, a.version).cmp(&(&b.vendor, &b.name, b.version)));
        Ok(keys.iter().map(SchemaKey::uri).collect())
    }

    /// Checks and stores a schema under `key` (when `key` is `None`, under the address its
    /// `self` names).
    pub fn push(
        &self,
        key: Option<&SchemaKey>,
        body: &[u8],
    ) -> Result<(SchemaKey, PushOutcome), RegistryError> {
        if body.len() > MAX_SCHEMA_BYTES {
            return Err(RegistryError::Invalid(format!(
                "{} bytes is over the limit of {MAX_SCHEMA_BYTES}",
                body.len()
            )));
        }
        let schema: Value = serde_json::from_slice(body)
            .map_err(|e| RegistryError::Invalid(format!("not json: {e}")))?;
        let own = self_key(&schema).map_err(RegistryError::Invalid)?;
        if let Some(key) = key
            && key != &own
        {
            return Err(RegistryError::Invalid(format!(
                "its self names {} but it was pushed as {}",
                own.uri(),
                key.uri()
            )));
        }
        let key = own;
        let file = self.file(&key);
        if let Some(existing) = read_opt(&file)? {
            let same = serde_json::from_str::<Value>(&existing).is_ok_and(|v| v == schema);
            return if same {
                Ok((key, PushOutcome::Unchanged))
            } else {
                Err(RegistryError::Conflict(format!(
                    "{} is already stored with different content; versions are immutable, push a new version",
                    key.uri()
                )))
            };
        }
        compile(&self.dir, &key.uri(), &schema).map_err(RegistryError::Invalid)?;
        if key.version.addition > 0 {
            let prev = SchemaKey {
                version: SchemaVer {
                    addition: key.version.addition - 1,
                    ..key.version
                },
                ..key.clone()
            };
            if let Some(text) = read_opt(&self.file(&prev))? {
                let prev_schema: Value = serde_json::from_str(&text)
                    .map_err(|e| RegistryError::Io(format!("{} is unreadable: {e}", prev.uri())))?;
                check_addition(&prev_schema, &schema).map_err(|e| {
                    RegistryError::Invalid(format!(
                        "{} is an addition to {} but {e}; bump the revision or model instead",
                        key.uri(),
                        prev.uri()
                    ))
                })?;
            }
        }
        write_atomic(&file, body)?;
        self.missing.write().remove(&key.uri());
        Ok((key, PushOutcome::Created))
    }

    /// Stores a schema another node's registry holds at `path` ([`SchemaKey::path`]), as it is:
    /// it was checked there. Whether anything changed.
    pub fn adopt(&self, path: &str, body: &[u8]) -> Result<bool, RegistryError> {
        let key = SchemaKey::parse_path(path).map_err(RegistryError::Invalid)?;
        let file = self.file(&key);
        if read_opt(&file)?.is_some_and(|text| text.as_bytes() == body) {
            return Ok(false);
        }
        write_atomic(&file, body)?;
        let uri = key.uri();
        self.compiled.write().remove(&uri);
        self.missing.write().remove(&uri);
        Ok(true)
    }

    /// The compiled schema for `uri`; `Ok(None)` when it is not in the registry.
    pub fn validator(&self, uri: &str) -> Result<Option<Arc<Compiled>>, String> {
        if let Some(c) = self.compiled.read().get(uri) {
            return Ok(Some(c.clone()));
        }
        if let Some(at) = self.missing.read().get(uri)
            && at.elapsed() < MISS_TTL
        {
            return Ok(None);
        }
        let key = SchemaKey::parse_uri(uri)?;
        let Some(text) = read_opt(&self.file(&key)).map_err(|e| e.to_string())? else {
            let mut missing = self.missing.write();
            if missing.len() > 10_000 {
                missing.clear();
            }
            missing.insert(uri.to_string(), Instant::now());
            return Ok(None);
        };
        let schema: Value =
            serde_json::from_str(&text).map_err(|e| format!("{uri} is unreadable: {e}"))?;
        let validator = compile(&self.dir, uri, &schema)?;
        let compiled = Arc::new(Compiled {
            uri: uri.to_string(),
            validator,
        });
        self.compiled
            .write()
            .insert(uri.to_string(), compiled.clone());
        Ok(Some(compiled))
    }

    /// Imports every schema file under `dir`: a static Iglu repository (its `schemas/` folder
    /// is used), or any folder of self-describing schema files. Returns each file's outcome.
    pub fn import_dir(&self, dir: &Path) -> Vec<(PathBuf, ImportResult)> {
        let mut out = Vec::new();
        for file in schema_files(dir) {
            let result = std::fs::read(&file)
                .map_err(|e| RegistryError::Io(format!("cannot read {}: {e}", file.display())))
                .and_then(|body| self.push(None, &body));
            out.push((file, result));
        }
        out
    }
}

/// Every file under `dir` that looks like a schema (no hidden files), sorted so that lower
/// versions come first (an addition is checked against the previous one). For a static Iglu
/// repository, only its `schemas/` folder is walked.
pub fn schema_files(dir: &Path) -> Vec<PathBuf> {
    let root = if dir.join("schemas").is_dir() {
        dir.join("schemas")
    } else {
        dir.to_path_buf()
    };
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files.sort_by_key(|p| {
        let key = std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| self_key(&v).ok());
        match key {
            Some(k) => (k.vendor, k.name, k.version, p.clone()),
            None => (
                String::new(),
                String::new(),
                SchemaVer {
                    model: 0,
                    revision: 0,
                    addition: 0,
                },
                p.clone(),
            ),
        }
    });
    files
}

/// The address a self-describing schema's `self` names.
pub fn self_key(schema: &Value) -> Result<SchemaKey, String> {
    let obj = schema.as_object().ok_or("a schema must be a json object")?;
    let this = obj.get("self").and_then(Value::as_object).ok_or(
        "a self-describing schema needs a \"self\" object (vendor, name, format, version)",
    )?;
    let field = |k: &str| {
        this.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("self.{k} must be a string"))
    };
    SchemaKey::from_parts(
        field("vendor")?,
        field("name")?,
        field("format")?,
        field("version")?,
    )
}

/// The JSON Schema proper: `self` removed, and Iglu's meta-schema URI (which is draft 4 with
/// `self`) replaced by the draft it stands for.
fn strip(schema: &Value) -> (Value, Draft) {
    let mut v = schema.clone();
    let mut draft = Draft::Draft7;
    if let Some(obj) = v.as_object_mut() {
        obj.remove("self");
        match obj.get("$schema").and_then(Value::as_str) {
            Some(s) if s.trim_end_matches('#') == IGLU_META.trim_end_matches('#') => {
                obj.remove("$schema");
                draft = Draft::Draft4;
            }
            Some(s) if s.contains("draft-04") => draft = Draft::Draft4,
            Some(s) if s.contains("draft-06") => draft = Draft::Draft6,
            Some(s) if s.contains("2019-09") => draft = Draft::Draft201909,
            Some(s) if s.contains("2020-12") => draft = Draft::Draft202012,
            Some(s) if s.contains("draft-07") => {}
            Some(_) => {
                // An unknown meta-schema would need fetching: validate as draft 7 instead.
                obj.remove("$schema");
            }
            None => {}
        }
    }
    (v, draft)
}

/// Resolves `$ref`s to `iglu:` URIs from the registry directory, and nothing else.
struct IgluRetriever {
    dir: PathBuf,
}

impl Retrieve for IgluRetriever {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let s = uri.as_str();
        let key = SchemaKey::parse_uri(s.trim_end_matches('#')).map_err(|_| {
            format!(
                "$ref {s:?} is not resolved: only iglu: schemas of this registry can be referenced"
            )
        })?;
        let text = read_opt(&self.dir.join(key.path()))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("$ref {s:?}: no such schema in the registry"))?;
        let schema: Value = serde_json::from_str(&text)?;
        Ok(strip(&schema).0)
    }
}

fn compile(dir: &Path, uri: &str, schema: &Value) -> Result<Validator, String> {
    let (body, draft) = strip(schema);
    jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .with_retriever(IgluRetriever {
            dir: dir.to_path_buf(),
        })
        .with_pattern_options(
            PatternOptions::regex()
                .size_limit(MAX_REGEX_BYTES)
                .dfa_size_limit(MAX_REGEX_BYTES),
        )
        .build(&body)
        .map_err(|e| format!("{uri} does not compile: {e}"))
}

/// An addition may only add optional properties.
fn check_addition(prev: &Value, next: &Value) -> Result<(), String> {
    let empty = Map::new();
    let props = |v: &Value| -> Map<String, Value> {
        v.get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty)
            .clone()
    };
    let (old, new) = (props(prev), props(next));
    for (name, def) in &old {
        match new.get(name) {
            None => return Err(format!("it drops property {name:?}")),
            Some(d) if d != def => return Err(format!("it changes property {name:?}")),
            Some(_) => {}
        }
    }
    if prev.get("required") != next.get("required") {
        return Err("it changes required".into());
    }
    for k in ["additionalProperties", "type"] {
        if prev.get(k) != next.get(k) {
            return Err(format!("it changes {k}"));
        }
    }
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<String>, RegistryError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RegistryError::Io(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, RegistryError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(RegistryError::Io(format!(
            "cannot list {}: {e}",
            dir.display()
        ))),
    }
}

/// Writes a file so that readers see the old content or the new, never part of it, durably.
fn write_atomic(path: &Path, body: &[u8]) -> Result<(), RegistryError> {
    durable_fs::write_atomic(path, body)
        .map_err(|e| RegistryError::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(name: &str, version: &str, props: Value, required: Value) -> Vec<u8> {
        let mut s = json!({
            "$schema": IGLU_META,
            "self": {"vendor": "com.acme", "name": name, "format": "jsonschema", "version": version},
            "type": "object",
            "properties": props,
            "additionalProperties": false
        });
        // Draft 4 wants at least one name in `required`.
        if required.as_array().is_some_and(|r| !r.is_empty()) {
            s["required"] = required;
        }
        serde_json::to_vec(&s).unwrap()
    }

    fn valid(r: &Registry, uri: &str, v: Value) -> bool {
        r.validator(uri).unwrap().unwrap().validator.is_valid(&v)
    }

    #[test]
    fn keys_parse_and_refuse_bad_addresses() {
        let k = SchemaKey::parse_uri("iglu:com.acme/checkout/jsonschema/1-2-3").unwrap();
        assert_eq!(
            k.version,
            SchemaVer {
                model: 1,
                revision: 2,
                addition: 3
            }
        );
        assert_eq!(k.uri(), "iglu:com.acme/checkout/jsonschema/1-2-3");
        for bad in [
            "com.acme/x/jsonschema/1-0-0",
            "iglu:com.acme/x/avro/1-0-0",
            "iglu:com.acme/x/jsonschema/1-0",
            "iglu:com.acme/x/jsonschema/0-0-0",
            "iglu:../x/jsonschema/1-0-0",
            "iglu:com.acme/x y/jsonschema/1-0-0",
            "iglu:com.acme/x/jsonschema/1-0-0/extra",
        ] {
            let err = SchemaKey::parse_uri(bad).unwrap_err();
            assert!(err.starts_with(&format!("schema uri {bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_new_revision_adds_a_field_and_a_new_model_is_a_separate_schema() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let v1 = schema(
            "order",
            "1-0-0",
            json!({"total": {"type": "number"}}),
            json!(["total"]),
        );
        assert_eq!(r.push(None, &v1).unwrap().1, PushOutcome::Created);
        assert_eq!(r.push(None, &v1).unwrap().1, PushOutcome::Unchanged);
        // 1-0-1 adds an optional field.
        let v101 = schema(
            "order",
            "1-0-1",
            json!({"total": {"type": "number"}, "coupon": {"type": "string"}}),
            json!(["total"]),
        );
        r.push(None, &v101).unwrap();
        // 2-0-0 makes a breaking change and is a different schema.
        let v2 = schema(
            "order",
            "2-0-0",
            json!({"total": {"type": "string"}}),
            json!(["total"]),
        );
        r.push(None, &v2).unwrap();
        let (u1, u101, u2) = (
            "iglu:com.acme/order/jsonschema/1-0-0",
            "iglu:com.acme/order/jsonschema/1-0-1",
            "iglu:com.acme/order/jsonschema/2-0-0",
        );
        assert!(valid(&r, u1, json!({"total": 5})));
        assert!(
            !valid(&r, u1, json!({"total": 5, "coupon": "X"})),
            "1-0-0 has no coupon"
        );
        assert!(valid(&r, u101, json!({"total": 5, "coupon": "X"})));
        assert!(valid(&r, u101, json!({"total": 5})), "old data stays valid");
        assert!(!valid(&r, u2, json!({"total": 5})));
        assert!(valid(&r, u2, json!({"total": "5"})));
        assert_eq!(
            r.list().unwrap(),
            vec![u1.to_string(), u101.into(), u2.into()]
        );
        assert!(
            r.validator("iglu:com.acme/order/jsonschema/3-0-0")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn pushes_that_break_the_rules_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.push(
            None,
            &schema("a", "1-0-0", json!({"x": {"type": "number"}}), json!(["x"])),
        )
        .unwrap();
        let err = |body: &[u8]| r.push(None, body).unwrap_err().to_string();
        // Versions are immutable.
        assert!(err(&schema("a", "1-0-0", json!({}), json!([]))).contains("immutable"));
        // An addition may not drop, change or require.
        let e = err(&schema("a", "1-0-1", json!({}), json!(["x"])));
        assert!(e.contains("drops property"), "{e}");
        let e = err(&schema(
            "a",
            "1-0-1",
            json!({"x": {"type": "number"}, "y": {}}),
            json!(["x", "y"]),
        ));
        assert!(e.contains("required"), "{e}");
        // No self, wrong self, not json, too big.
        assert!(err(br#"{"type":"object"}"#).contains("self"));
        assert!(err(b"not json").contains("not json"));
        let big = vec![b' '; MAX_SCHEMA_BYTES + 1];
        assert!(err(&big).contains("limit"));
        let key = SchemaKey::parse_uri("iglu:com.acme/b/jsonschema/1-0-0").unwrap();
        let e = r
            .push(Some(&key), &schema("a", "2-0-0", json!({}), json!([])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pushed as"), "{e}");
        // Back-references and look-around are refused (linear-time regexes only).
        let mut s: Value = serde_json::from_slice(&schema(
            "re",
            "1-0-0",
            json!({"x": {"type": "string", "pattern": "^(a+)+\\1$"}}),
            json!([]),
        ))
        .unwrap();
        assert!(err(&serde_json::to_vec(&s).unwrap()).contains("compile"));
        s["properties"]["x"]["pattern"] = json!("^(?=a)");
        assert!(err(&serde_json::to_vec(&s).unwrap()).contains("compile"));
        // Remote and file $refs are never fetched.
        s["properties"]["x"] = json!({"$ref": "http://127.0.0.1:1/x.json"});
        assert!(err(&serde_json::to_vec(&s).unwrap()).contains("compile"));
        s["properties"]["x"] = json!({"$ref": "file:///etc/passwd"});
        assert!(err(&serde_json::to_vec(&s).unwrap()).contains("compile"));
    }

    #[test]
    fn refs_resolve_through_the_registry_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let address = schema(
            "address",
            "1-0-0",
            json!({"zip": {"type": "string"}}),
            json!(["zip"]),
        );
        let person = serde_json::to_vec(&json!({
            "$schema": IGLU_META,
            "self": {"vendor": "com.acme", "name": "person", "format": "jsonschema", "version": "1-0-0"},
            "type": "object",
            "properties": {"home": {"$ref": "iglu:com.acme/address/jsonschema/1-0-0"}}
        }))
        .unwrap();
        let e = r.push(None, &person).unwrap_err().to_string();
        assert!(e.contains("compile"), "{e}");
        r.push(None, &address).unwrap();
        r.push(None, &person).unwrap();
        let uri = "iglu:com.acme/person/jsonschema/1-0-0";
        assert!(valid(&r, uri, json!({"home": {"zip": "10115"}})));
        assert!(!valid(&r, uri, json!({"home": {}})));
    }

    #[test]
    fn a_static_iglu_repository_imports_as_is() {
        let repo = tempfile::tempdir().unwrap();
        for (name, version) in [("a", "1-0-0"), ("a", "1-0-1"), ("b", "1-0-0")] {
            let dir = repo
                .path()
                .join("schemas/com.acme")
                .join(name)
                .join("jsonschema");
            std::fs::create_dir_all(&dir).unwrap();
            let props = if version == "1-0-1" {
                json!({"x": {"type": "number"}, "y": {"type": "string"}})
            } else {
                json!({"x": {"type": "number"}})
            };
            std::fs::write(dir.join(version), schema(name, version, props, json!([]))).unwrap();
        }
        std::fs::write(repo.path().join("schemas/.DS_Store"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path().join("schemas")).unwrap();
        let results = r.import_dir(repo.path());
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        assert_eq!(r.list().unwrap().len(), 3);
        // The stored registry is itself a static repository, byte for byte.
        let stored = std::fs::read(dir.path().join("schemas/com.acme/a/jsonschema/1-0-1")).unwrap();
        let original =
            std::fs::read(repo.path().join("schemas/com.acme/a/jsonschema/1-0-1")).unwrap();
        assert_eq!(stored, original);
    }
}
