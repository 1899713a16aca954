//! Write keys and sources: which source an ingest request belongs to, or why it is refused.
//!
//! A *source* is a named stream of events (a website, an app, a backend); its *write keys* are
//! the credentials its trackers send (Segment: Basic auth user, `writeKey` in the body, or a
//! bearer token; native: the same; Kinesis: the SigV4 access key id). Snowplow trackers carry no
//! credential, so a source lists the Snowplow app ids (`aid`) it takes.
//!
//! Keys come from two places: `[[sources]]` in the config file (plaintext or `sha256:<hex>`) and
//! the key file `<data_dir>/keys.json` that `sluice keys create|list|revoke` edits. The key file
//! stores only key ids and SHA-256 hashes, never a key, and only its owner may read it (mode
//! 0600). The server re-reads it when its modification time changes (checked at most every
//! [`RELOAD_EVERY`]), so a revocation takes effect within about a second without a restart.
//! Reader and admin tokens (`tokens.json`, `access.rs`) are kept the same way, with the
//! helpers of this module ([`Watched`], [`load_json`], [`store_private`], [`new_secret`]).
//!
//! With no key configured anywhere, ingest is open to loopback clients (a laptop setup) under
//! source `default`; other clients get 401. "Loopback" is [`Locality::Local`]: a loopback peer
//! whose request carries no proxy header and names a loopback `Host`. With keys, an unknown or
//! revoked key gets 401, and every refusal has the same body whatever the reason, so answers
//! do not reveal which keys exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_event::DEFAULT_SOURCE;

/// How often the key file's modification time is checked.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The one answer to every refused credential (write key or token), whatever the reason.
pub const UNAUTHORIZED: &str = "missing, unknown or revoked credential (write key or token)";

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
    /// Missing, unknown or revoked key, or no key configured and the client is not local (one
    /// message for all, see [`UNAUTHORIZED`]).
    #[error("{UNAUTHORIZED}")]
    Unauthorized,
}

/// Whether a request may be trusted as coming from this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locality {
    /// A loopback peer, no proxy header, and a `Host` naming a loopback address.
    Local,
    /// Anything else.
    Remote,
}

/// Headers that say a proxy forwarded the request: its real client is elsewhere.
const PROXY_HEADERS: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-host",
];

impl Locality {
    /// The locality of a request from `peer` with `headers`. A proxy on this machine forwards
    /// other machines' requests from a loopback address, and a page under DNS rebinding sends
    /// the browser's requests to 127.0.0.1 with its own `Host`: neither is local.
    pub fn of(peer: IpAddr, headers: &axum::http::HeaderMap) -> Self {
        let loopback = match peer {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback())
            }
        };
        let proxied = PROXY_HEADERS.iter().any(|h| headers.contains_key(*h));
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok());
        if loopback && !proxied && host.is_some_and(is_loopback_host) {
            Self::Local
        } else {
            Self::Remote
        }
    }
}

/// Whether a `Host` header names a loopback address: `localhost`, `127.0.0.1` or `[::1]`, with
/// or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, port)) => (name, port),
            None => return false,
        },
        None => match host.find(':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && (name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "::1")
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

/// A new secret `<prefix>_<40 random hex digits>`, with its SHA-256, its public id (the first
/// 12 hex digits of the hash) and the creation time: `(secret, sha256, id, created_at)`.
pub fn new_secret(prefix: &str) -> (String, String, String, String) {
    let random = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let secret = format!("{prefix}_{}", &random[..40]);
    let sha256 = key_hash(&secret);
    let id = sha256[..12].to_string();
    (secret, sha256, id, now_rfc3339())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Reads a JSON secrets file; a missing file is an empty one.
pub fn load_json<T: Default + DeserializeOwned>(path: &Path) -> Result<T, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a valid {}: {e}", path.display(), file_kind(path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn file_kind(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    format!("{} file", stem.trim_end_matches('s'))
}

/// Writes a JSON secrets file atomically and durably (temp file, fsync, rename, fsync of the
/// directory), readable by its owner only (mode 0600); a missing data directory is created
/// with [`create_private_dir`].
pub fn store_private<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    sluice_journal::durable_fs::write_atomic_private(path, &text)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The data directory's credentials lock, held until the file is dropped: an advisory lock on
/// `<data_dir>/credentials.lock`, taken by `sluice keys`, `sluice tokens` and a node's merge of
/// keys and tokens with the other nodes (`shared_credentials`), so that none of them writes
/// `keys.json` or `tokens.json` over another's change. `None` when the directory does not
/// exist yet (nothing to share it with).
pub fn lock_credentials(data_dir: &Path) -> Result<Option<std::fs::File>, String> {
    if !data_dir.is_dir() {
        return Ok(None);
    }
    let path = data_dir.join("credentials.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(Some(file))
}

/// Creates `dir` (and its missing parents) durably, `dir` itself with mode 0700 so that only
/// its owner can reach what is inside. An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use sluice_journal::durable_fs::{create_dir_all_durable, fsync_dir};
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_all_durable(parent)?;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// An entry of a secrets file that can be revoked.
pub trait Revocable: Clone {
    /// Its public id.
    fn id(&self) -> &str;
    /// Its revocation time.
    fn revoked_at(&mut self) -> &mut Option<String>;
}

/// Revokes the entry with this id (a second revocation keeps the first time); `Err` naming
/// `what` if there is none.
pub fn revoke_in<E: Revocable>(entries: &mut [E], id: &str, what: &str) -> Result<E, String> {
    let entry = entries
        .iter_mut()
        .find(|e| e.id() == id)
        .ok_or_else(|| format!("no {what} with id {id:?}"))?;
    entry.revoked_at().get_or_insert_with(now_rfc3339);
    Ok(entry.clone())
}

impl Revocable for KeyEntry {
    fn id(&self) -> &str {
        &self.id
    }

    fn revoked_at(&mut self) -> &mut Option<String> {
        &mut self.revoked_at
    }
}

impl KeyFile {
    /// The key file's path under a data directory.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("keys.json")
    }

    /// Reads the key file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, String> {
        load_json(path)
    }

    /// Writes the key file (see [`store_private`]).
    pub fn store(&self, path: &Path) -> Result<(), String> {
        store_private(path, self)
    }

    /// Creates a key for `source`; returns the key (shown once) and its entry.
    pub fn create(&mut self, source: &str) -> Result<(String, KeyEntry), String> {
        check_source_name(source)?;
        let (key, sha256, id, created_at) = new_secret(&format!("sk_{source}"));
        let entry = KeyEntry {
            id,
            source: source.to_string(),
            sha256,
            created_at,
            revoked_at: None,
        };
        self.keys.push(entry.clone());
        Ok((key, entry))
    }

    /// Revokes the key with this id; `Err` if there is none.
    pub fn revoke(&mut self, id: &str) -> Result<KeyEntry, String> {
        revoke_in(&mut self.keys, id, "key")
    }
}

/// A value built from a file, rebuilt when the file's modification time changes (looked at
/// most every [`RELOAD_EVERY`]). A file that does not load keeps the value in force: a
/// half-edited file must not open or close anything.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    path: Option<PathBuf>,
    value: RwLock<Arc<T>>,
    /// (last check, modification time of the file the value was built from).
    checked: Mutex<(Instant, Option<SystemTime>)>,
}

impl<T> Watched<T> {
    /// Builds the value from the file at `path` (or from nothing).
    pub(crate) fn new(
        path: Option<PathBuf>,
        build: impl FnOnce(Option<&Path>) -> Result<T, String>,
    ) -> Result<Self, String> {
        let seen = path.as_deref().and_then(mtime);
        let value = build(path.as_deref())?;
        Ok(Self {
            path,
            value: RwLock::new(Arc::new(value)),
            checked: Mutex::new((Instant::now(), seen)),
        })
    }

    /// The value in force, rebuilt first with `build` if the file changed.
    pub(crate) fn get(&self, build: impl FnOnce(&Path) -> Result<T, String>) -> Arc<T> {
        if let Some(path) = &self.path {
            self.reload_if_changed(path, build);
        }
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reload_if_changed(&self, path: &Path, build: impl FnOnce(&Path) -> Result<T, String>) {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.0.elapsed() < RELOAD_EVERY {
            return;
        }
        let now = mtime(path);
        checked.0 = Instant::now();
        if now == checked.1 {
            return;
        }
        match build(path) {
            Ok(value) => {
                *self.value.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
                checked.1 = now;
                tracing::info!(path = %path.display(), "credentials reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "credentials file not reloaded"),
        }
    }

    /// Makes the next [`Watched::get`] look at the file and rebuild (tests: file systems with
    /// coarse modification times).
    #[cfg(test)]
    pub(crate) fn expire(&self) {
        let mut c = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        c.0 = Instant::now() - RELOAD_EVERY * 2;
        c.1 = None;
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
    set: Watched<KeySet>,
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
        let set = Watched::new(file, |p| {
            let keys = p.map_or_else(|| Ok(KeyFile::default()), KeyFile::load)?;
            Ok(KeySet::build(&sources, &keys))
        })?;
        Ok(Self {
            sources,
            set,
            default_source: Arc::from(DEFAULT_SOURCE),
        })
    }

    /// An open lookup with no keys (tests, tools).
    pub fn open() -> Self {
        Self::new(Vec::new(), None).expect("an empty key set is valid")
    }

    fn current(&self) -> Arc<KeySet> {
        self.set
            .get(|p| Ok(KeySet::build(&self.sources, &KeyFile::load(p)?)))
    }

    /// Whether any write key is configured (in the config or the key file).
    pub fn has_keys(&self) -> bool {
        self.current().configured
    }

    /// The source of a live write key, if `key` is one.
    pub fn source_of(&self, key: &str) -> Option<Arc<str>> {
        self.current().by_hash.get(&key_hash(key)).cloned()
    }

    /// The source of a request that presented `key` (or none) from `from`.
    pub fn source_for_key(&self, key: Option<&str>, from: Locality) -> Result<Arc<str>, AuthError> {
        let set = self.current();
        if !set.configured {
            return self.open_source(from);
        }
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Unauthorized)?;
        set.by_hash
            .get(&key_hash(key))
            .cloned()
            .ok_or(AuthError::Unauthorized)
    }

    /// The source of a Snowplow event with app id `app_id` from `from`.
    pub fn source_for_app(
        &self,
        app_id: Option<&str>,
        from: Locality,
    ) -> Result<Arc<str>, AuthError> {
        let set = self.current();
        if !set.configured && set.by_app_id.is_empty() {
            return self.open_source(from);
        }
        app_id
            .and_then(|a| set.by_app_id.get(a))
            .or_else(|| set.by_app_id.get("*"))
            .cloned()
            .ok_or(AuthError::Unauthorized)
    }

    fn open_source(&self, from: Locality) -> Result<Arc<str>, AuthError> {
        match from {
            Locality::Local => Ok(self.default_source.clone()),
            Locality::Remote => {
                tracing::debug!(
                    "no write keys are configured: ingest is open to local clients only"
                );
                Err(AuthError::Unauthorized)
            }
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

    const LOCAL: Locality = Locality::Local;
    const REMOTE: Locality = Locality::Remote;

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
            Err(AuthError::Unauthorized)
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
        auth.set.expire();
        // Revoking the only key does not reopen ingest, not even on loopback.
        for peer in [REMOTE, LOCAL] {
            assert_eq!(
                auth.source_for_key(Some(&key), peer),
                Err(AuthError::Unauthorized)
            );
        }
        assert!(auth.has_keys());
    }

    #[test]
    fn secret_files_are_private_in_a_private_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new").join("data");
        let path = KeyFile::path(&data);
        let mut file = KeyFile::default();
        file.create("web").unwrap();
        file.store(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&data), 0o700);
        // An existing directory is left as it is.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o750);
    }

    #[test]
    fn locality_needs_loopback_no_proxy_and_a_loopback_host() {
        use axum::http::{HeaderMap, HeaderValue};
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "203.0.113.9".parse().unwrap();
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:5",
        ] {
            let h = with(&[("host", host)]);
            assert_eq!(Locality::of(v4, &h), Locality::Local, "{host}");
            assert_eq!(Locality::of(mapped, &h), Locality::Local, "{host}");
            assert_eq!(Locality::of(remote, &h), Locality::Remote, "{host}");
        }
        for host in [
            "evil.example",
            "127.0.0.2",
            "localhost:",
            "localhost:x",
            "[::1",
            "localhost.evil",
        ] {
            assert_eq!(
                Locality::of(v4, &with(&[("host", host)])),
                Locality::Remote,
                "{host}"
            );
        }
        assert_eq!(Locality::of(v4, &HeaderMap::new()), Locality::Remote);
        for proxy in PROXY_HEADERS {
            let h = with(&[("host", "localhost"), (proxy, "203.0.113.9")]);
            assert_eq!(Locality::of(v4, &h), Locality::Remote, "{proxy}");
        }
    }
}
