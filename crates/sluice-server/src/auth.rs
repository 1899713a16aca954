//! Write keys and sources: which source an ingest request belongs to, or why it is refused.
//!
//! A *source* is a named stream of events (a website, an app, a backend); its *write keys* are
//! the credentials its trackers send (Segment: Basic auth user, `writeKey` in the body, or a
//! bearer token; native: the same; Kinesis: the SigV4 access key id). Snowplow trackers carry no
//! credential, so a source lists the Snowplow app ids (`aid`) it takes.
//!
//! Keys come from two places: `[[sources]]` in the config file (plaintext or `sha256:<hex>`) and
//! the key file `<data_dir>/keys.json` that `sluice keys create|list|revoke` edits. The key file
//! stores only key ids and SHA-256 hashes, never a key. The server re-reads it when its
//! modification time changes (checked at most every [`RELOAD_EVERY`]), so a revocation takes
//! effect within about a second without a restart.
//!
//! With no key configured anywhere, ingest is open to loopback clients (a laptop setup) under
//! source `default`; other clients get 401. With keys, an unknown or revoked key gets 401, and
//! every refusal has the same body whatever the reason, so answers do not reveal which keys
//! exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_event::DEFAULT_SOURCE;

/// How often the key file's modification time is checked.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The one answer to every refused credential.
pub const UNAUTHORIZED: &str = "missing, unknown or revoked write key";

/// The answer to a non-loopback client when no key is configured.
pub const OPEN_LOOPBACK_ONLY: &str =
    "no write keys are configured: ingest is open to loopback clients only";

/// One `[[sources]]` entry of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name: lowercase letters, digits, `_` and `-`.
    pub name: String,
    /// Its write keys: the key itself, or `sha256:<hex of the key's SHA-256>`.
    pub write_keys: Vec<String>,
    /// Snowplow app ids (`aid`) whose events belong to this source; `*` takes any.
    pub snowplow_app_ids: Vec<String>,
}

/// The key file (`keys.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyFile {
    /// Every key ever created, revoked ones included.
    pub keys: Vec<KeyEntry>,
}

/// One created key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Public id (shown by `sluice keys list`, used by `revoke`).
    pub id: String,
    /// The source it writes to.
    pub source: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 revocation time; a revoked key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// Why a request has no source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Missing, unknown or revoked key (one message for all, see [`UNAUTHORIZED`]).
    #[error("{UNAUTHORIZED}")]
    Unauthorized,
    /// No key is configured and the client is not on loopback.
    #[error("{OPEN_LOOPBACK_ONLY}")]
    LoopbackOnly,
}

/// Hex SHA-256 of a key.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Checks a source name.
pub fn check_source_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid source name {name:?}: use 1-64 lowercase letters, digits, '_' or '-'"
        ))
    }
}

impl KeyFile {
    /// The key file's path under a data directory.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("keys.json")
    }

    /// Reads the key file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a valid key file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the key file atomically (temp file, fsync, rename, fsync of the directory).
    pub fn store(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        sluice_journal::durable_fs::write_atomic(path, &text)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Creates a key for `source`; returns the key (shown once) and its entry.
    pub fn create(&mut self, source: &str) -> Result<(String, KeyEntry), String> {
        check_source_name(source)?;
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let key = format!("sk_{source}_{}", &secret[..40]);
        let sha256 = key_hash(&key);
        let entry = KeyEntry {
            id: sha256[..12].to_string(),
            source: source.to_string(),
            sha256,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            revoked_at: None,
        };
        self.keys.push(entry.clone());
        Ok((key, entry))
    }

    /// Revokes the key with this id; `Err` if there is none.
    pub fn revoke(&mut self, id: &str) -> Result<KeyEntry, String> {
        let entry = self
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| format!("no key with id {id:?}"))?;
        if entry.revoked_at.is_none() {
            entry.revoked_at =
                Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        Ok(entry.clone())
    }
}

/// The keys in force at one moment.
#[derive(Debug, Default)]
struct KeySet {
    /// SHA-256 hex of a live key → its source.
    by_hash: HashMap<String, Arc<str>>,
    /// Snowplow app id → source; `*` for any.
    by_app_id: HashMap<String, Arc<str>>,
    /// Whether any key was ever configured (a revoked one counts: revoking the last key must
    /// not reopen ingest).
    configured: bool,
}

impl KeySet {
    fn build(sources: &[SourceConfig], file: &KeyFile) -> Self {
        let mut set = KeySet::default();
        for s in sources {
            let name: Arc<str> = Arc::from(s.name.as_str());
            for k in &s.write_keys {
                let hash = match k.strip_prefix("sha256:") {
                    Some(h) => h.to_ascii_lowercase(),
                    None => key_hash(k),
                };
                set.by_hash.insert(hash, name.clone());
            }
            for a in &s.snowplow_app_ids {
                set.by_app_id.insert(a.clone(), name.clone());
            }
        }
        set.configured = !set.by_hash.is_empty() || !file.keys.is_empty();
        for k in file.keys.iter().filter(|k| k.revoked_at.is_none()) {
            set.by_hash
                .insert(k.sha256.clone(), Arc::from(k.source.as_str()));
        }
        set
    }
}

/// Source lookup for ingest requests, reloading the key file when it changes.
#[derive(Debug)]
pub struct Auth {
    sources: Vec<SourceConfig>,
    file: Option<PathBuf>,
    set: RwLock<Arc<KeySet>>,
    /// (last check, modification time seen then).
    checked: Mutex<(Instant, Option<SystemTime>)>,
    default_source: Arc<str>,
}

impl Auth {
    /// Builds the lookup from the config's sources and the key file (if any).
    pub fn new(sources: Vec<SourceConfig>, file: Option<PathBuf>) -> Result<Self, String> {
        for s in &sources {
            check_source_name(&s.name)?;
            for k in &s.write_keys {
                if let Some(h) = k.strip_prefix("sha256:")
                    && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(format!(
                        "source {:?}: a sha256: write key needs 64 hex digits",
                        s.name
                    ));
                }
                if k.is_empty() {
                    return Err(format!("source {:?}: empty write key", s.name));
                }
            }
        }
        let (keys, mtime) = match &file {
            Some(p) => (KeyFile::load(p)?, mtime(p)),
            None => (KeyFile::default(), None),
        };
        let set = KeySet::build(&sources, &keys);
        Ok(Self {
            sources,
            file,
            set: RwLock::new(Arc::new(set)),
            checked: Mutex::new((Instant::now(), mtime)),
            default_source: Arc::from(DEFAULT_SOURCE),
        })
    }

    /// An open lookup with no keys (tests, tools).
    pub fn open() -> Self {
        Self::new(Vec::new(), None).expect("an empty key set is valid")
    }

    fn current(&self) -> Arc<KeySet> {
        self.reload_if_changed();
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.file else { return };
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.0.elapsed() < RELOAD_EVERY {
            return;
        }
        let now = mtime(path);
        checked.0 = Instant::now();
        if now == checked.1 {
            return;
        }
        match KeyFile::load(path) {
            Ok(file) => {
                let set = KeySet::build(&self.sources, &file);
                *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                checked.1 = now;
                tracing::info!(path = %path.display(), "write keys reloaded");
            }
            // Keep the keys in force; a half-edited file must not open or close ingest.
            Err(e) => tracing::warn!(error = %e, "key file not reloaded"),
        }
    }

    /// Whether any write key is configured (in the config or the key file).
    pub fn has_keys(&self) -> bool {
        self.current().configured
    }

    /// The source of a request that presented `key` (or none) from `peer`.
    pub fn source_for_key(&self, key: Option<&str>, peer: IpAddr) -> Result<Arc<str>, AuthError> {
        let set = self.current();
        if !set.configured {
            return self.open_source(peer);
        }
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Unauthorized)?;
        set.by_hash
            .get(&key_hash(key))
            .cloned()
            .ok_or(AuthError::Unauthorized)
    }

    /// The source of a Snowplow event with app id `app_id` from `peer`.
    pub fn source_for_app(
        &self,
        app_id: Option<&str>,
        peer: IpAddr,
    ) -> Result<Arc<str>, AuthError> {
        let set = self.current();
        if !set.configured && set.by_app_id.is_empty() {
            return self.open_source(peer);
        }
        app_id
            .and_then(|a| set.by_app_id.get(a))
            .or_else(|| set.by_app_id.get("*"))
            .cloned()
            .ok_or(AuthError::Unauthorized)
    }

    fn open_source(&self, peer: IpAddr) -> Result<Arc<str>, AuthError> {
        let loopback = match peer {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback())
            }
        };
        if loopback {
            Ok(self.default_source.clone())
        } else {
            Err(AuthError::LoopbackOnly)
        }
    }
}

/// The write key a request presents in its headers: HTTP Basic (the key is the user name, the
/// password is ignored), `Authorization: Bearer <key>`, or `X-Write-Key`. Body fields
/// (`writeKey`) and SigV4 access key ids are read by their protocols.
pub fn header_key(headers: &axum::http::HeaderMap) -> Option<String> {
    use base64::Engine;
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())?;
            let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
            return Some(user.to_string()).filter(|u| !u.is_empty());
        }
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Some(rest.to_string());
        }
    }
    headers
        .get("x-write-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

    #[test]
    fn keys_from_headers() {
        use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
        let with = |name: &str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
            header_key(&h)
        };
        // "abc123:" in base64, as Segment documents it, and without the colon.
        assert_eq!(
            with(AUTHORIZATION.as_str(), "Basic YWJjMTIzOg=="),
            Some("abc123".into())
        );
        assert_eq!(
            with(AUTHORIZATION.as_str(), "basic YWJjMTIz"),
            Some("abc123".into())
        );
        assert_eq!(
            with(AUTHORIZATION.as_str(), "Bearer tok"),
            Some("tok".into())
        );
        assert_eq!(with("x-write-key", " k "), Some("k".into()));
        assert_eq!(with(AUTHORIZATION.as_str(), "Basic !!!"), None);
        assert_eq!(with(AUTHORIZATION.as_str(), "Basic Og=="), None);
        assert_eq!(header_key(&HeaderMap::new()), None);
    }

    #[test]
    fn open_only_on_loopback_without_keys() {
        let auth = Auth::open();
        assert_eq!(&*auth.source_for_key(None, LOCAL).unwrap(), "default");
        assert_eq!(&*auth.source_for_key(Some("x"), LOCAL).unwrap(), "default");
        assert_eq!(
            auth.source_for_key(None, REMOTE),
            Err(AuthError::LoopbackOnly)
        );
        assert_eq!(
            &*auth.source_for_app(Some("shop"), LOCAL).unwrap(),
            "default"
        );
    }

    #[test]
    fn config_keys_plain_and_hashed() {
        let auth = Auth::new(
            vec![
                SourceConfig {
                    name: "web".into(),
                    write_keys: vec!["k-web".into()],
                    snowplow_app_ids: vec!["shop".into()],
                },
                SourceConfig {
                    name: "app".into(),
                    write_keys: vec![format!("sha256:{}", key_hash("k-app"))],
                    snowplow_app_ids: vec![],
                },
            ],
            None,
        )
        .unwrap();
        assert_eq!(&*auth.source_for_key(Some("k-web"), REMOTE).unwrap(), "web");
        assert_eq!(&*auth.source_for_key(Some("k-app"), REMOTE).unwrap(), "app");
        for bad in [None, Some(""), Some("nope"), Some("K-WEB")] {
            assert_eq!(
                auth.source_for_key(bad, LOCAL),
                Err(AuthError::Unauthorized)
            );
        }
        assert_eq!(&*auth.source_for_app(Some("shop"), REMOTE).unwrap(), "web");
        assert_eq!(
            auth.source_for_app(Some("other"), REMOTE),
            Err(AuthError::Unauthorized)
        );
        assert!(
            Auth::new(
                vec![SourceConfig {
                    name: "Bad Name".into(),
                    ..Default::default()
                }],
                None
            )
            .is_err_and(|e| e.contains("Bad Name"))
        );
    }

    #[test]
    fn key_file_create_revoke_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = KeyFile::path(dir.path());
        let mut file = KeyFile::default();
        let (key, entry) = file.create("web").unwrap();
        assert!(key.starts_with("sk_web_"));
        file.store(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "the key file must not hold keys");
        let auth = Auth::new(Vec::new(), Some(path.clone())).unwrap();
        assert_eq!(&*auth.source_for_key(Some(&key), REMOTE).unwrap(), "web");

        let mut file = KeyFile::load(&path).unwrap();
        file.revoke(&entry.id).unwrap();
        assert_eq!(file.revoke("nope").unwrap_err(), "no key with id \"nope\"");
        file.store(&path).unwrap();
        // Force the next lookup to stat the file, and make the change visible even on file
        // systems with coarse modification times.
        {
            let mut c = auth.checked.lock().unwrap();
            c.0 = Instant::now() - RELOAD_EVERY * 2;
            c.1 = None;
        }
        // Revoking the only key does not reopen ingest, not even on loopback.
        for peer in [REMOTE, LOCAL] {
            assert_eq!(
                auth.source_for_key(Some(&key), peer),
                Err(AuthError::Unauthorized)
            );
        }
        assert!(auth.has_keys());
    }
}
