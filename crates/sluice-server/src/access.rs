//! Who may do what: the three roles and the one decision every read and admin request goes
//! through.
//!
//! - **Write keys** ([`crate::auth`]) ingest into their source, and nothing else.
//! - **Reader tokens** read: SQL over HTTP and the Postgres wire port, profiles, counters,
//!   predictions, schemas, Kinesis reads of `good`, `bad` and user streams, and `/metrics`.
//! - **Admin tokens** administer: schemas, user functions, replay, Kinesis stream management
//!   and reads of `raw`, and everything a reader may. The config's `admin_token` is one.
//!
//! Reader and admin tokens live in `<data_dir>/tokens.json` (`sluice tokens create|list|revoke`),
//! stored as SHA-256 hashes in a file only its owner may read, re-read when it changes, exactly
//! like the key file. A request presents a token as `Authorization: Bearer <token>`; the Kinesis
//! API takes it as the SigV4 access key id, the Postgres wire port as the password.
//!
//! With no token anywhere (no `admin_token`, an empty token file), a [`Locality::Local`] client
//! may do everything without a credential (a laptop setup), unless the request is a cross-site
//! browser request, or an admin `POST` a browser could send cross-site (a simple content type
//! and no bearer token). `/metrics` stays open to local clients always, so a scraper on the same
//! machine needs nothing.
//!
//! Every refusal is a [`Refusal`]: 401 when no usable credential came, 403 when a valid one may
//! not do this (or the request is cross-site); each with one fixed message, whatever the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, Method, header};
use serde::{Deserialize, Serialize};

use crate::auth::{
    Auth, Locality, Revocable, Watched, key_hash, load_json, new_secret, revoke_in, store_private,
};

/// The answer to a valid credential that may not make the request.
pub const FORBIDDEN: &str = "this credential may not make this request";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Reader,
    /// Reads and administration.
    Admin,
}

impl Role {
    /// Parses `reader` or `admin`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "reader" => Ok(Self::Reader),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (reader or admin)")),
        }
    }

    /// `reader` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Admin => "admin",
        }
    }
}

/// Who a credential belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A write key of this source.
    Writer(Arc<str>),
    /// A reader or admin token.
    Token(Role),
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `/metrics`: a reader, or a local client.
    Metrics,
    /// A reader (or an admin).
    Read,
    /// An admin.
    Admin,
}

impl Need {
    fn role(self) -> Role {
        match self {
            Self::Metrics | Self::Read => Role::Reader,
            Self::Admin => Role::Admin,
        }
    }
}

/// What a request's origin says about who could have made it send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Same site, or not from a browser: open access covers it where it covers the client.
    Trusted,
    /// A request a page on another site could make a browser send without asking first (a
    /// simple-content-type POST to an admin route without a credential): open access does not
    /// cover it; a credential does.
    Forgeable,
    /// A state-changing request a browser sent from another site: refused whatever its
    /// credential.
    CrossSite,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credential, an unknown or revoked one, or one a local client would not need but
    /// this client is not local.
    Unauthorized,
    /// 403: a valid credential that may not do this, or a cross-site request.
    Forbidden,
}

/// The token file (`tokens.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenFile {
    /// Every token ever created, revoked ones included.
    pub tokens: Vec<TokenEntry>,
}

/// One created token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Public id (shown by `sluice tokens list`, used by `revoke`).
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 revocation time; a revoked token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl Revocable for TokenEntry {
    fn id(&self) -> &str {
        &self.id
    }

    fn revoked_at(&mut self) -> &mut Option<String> {
        &mut self.revoked_at
    }
}

impl TokenFile {
    /// The token file's path under a data directory.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("tokens.json")
    }

    /// Reads the token file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, String> {
        load_json(path)
    }

    /// Writes the token file (mode 0600, atomically and durably).
    pub fn store(&self, path: &Path) -> Result<(), String> {
        store_private(path, self)
    }

    /// Creates a token with `role`; returns the token (shown once) and its entry.
    pub fn create(&mut self, role: Role) -> (String, TokenEntry) {
        let (token, sha256, id, created_at) = new_secret(&format!("st_{}", role.as_str()));
        let entry = TokenEntry {
            id,
            role,
            sha256,
            created_at,
            revoked_at: None,
        };
        self.tokens.push(entry.clone());
        (token, entry)
    }

    /// Revokes the token with this id; `Err` if there is none.
    pub fn revoke(&mut self, id: &str) -> Result<TokenEntry, String> {
        revoke_in(&mut self.tokens, id, "token")
    }
}

/// The tokens in force at one moment.
#[derive(Debug, Default)]
struct TokenSet {
    /// SHA-256 hex of a live token → its role and who it is (the token's id, or `admin_token`
    /// for the one in the configuration).
    by_hash: HashMap<String, (Role, Arc<str>)>,
    /// Whether any token was ever configured (revoking the last one must not reopen reads).
    configured: bool,
}

impl TokenSet {
    fn build(admin_token: Option<&str>, file: &TokenFile) -> Self {
        let mut by_hash: HashMap<String, (Role, Arc<str>)> = file
            .tokens
            .iter()
            .filter(|t| t.revoked_at.is_none())
            .map(|t| (t.sha256.clone(), (t.role, Arc::from(t.id.as_str()))))
            .collect();
        if let Some(t) = admin_token {
            by_hash.insert(key_hash(t), (Role::Admin, Arc::from("admin_token")));
        }
        Self {
            by_hash,
            configured: admin_token.is_some() || !file.tokens.is_empty(),
        }
    }
}

/// Write keys and tokens: the one place that says who a credential is and what it may do.
#[derive(Debug)]
pub struct Access {
    keys: Arc<Auth>,
    admin_token: Option<String>,
    tokens: Watched<TokenSet>,
}

impl Access {
    /// Write keys from `keys`, tokens from the config's `admin_token` and the token file.
    pub fn new(
        keys: Arc<Auth>,
        admin_token: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let tokens = Watched::new(file, |p| {
            let file = p.map_or_else(|| Ok(TokenFile::default()), TokenFile::load)?;
            Ok(TokenSet::build(admin_token.as_deref(), &file))
        })?;
        Ok(Self {
            keys,
            admin_token,
            tokens,
        })
    }

    /// Open access with no key and no token (tests).
    pub fn open() -> Self {
        Self::new(Arc::new(Auth::open()), None, None).expect("an empty token set is valid")
    }

    /// The write keys.
    pub fn keys(&self) -> &Arc<Auth> {
        &self.keys
    }

    fn current(&self) -> Arc<TokenSet> {
        self.tokens.get(|p| {
            Ok(TokenSet::build(
                self.admin_token.as_deref(),
                &TokenFile::load(p)?,
            ))
        })
    }

    /// Whether reads and administration need a token (one was ever configured).
    pub fn closed(&self) -> bool {
        self.current().configured
    }

    /// Who `credential` belongs to, if anyone.
    pub fn identify(&self, credential: &str) -> Option<Identity> {
        if credential.is_empty() {
            return None;
        }
        let role = self
            .current()
            .by_hash
            .get(&key_hash(credential))
            .map(|t| t.0);
        role.map(Identity::Token)
            .or_else(|| self.keys.source_of(credential).map(Identity::Writer))
    }

    /// The refusal of an ingest request that presented `credential` and got no source: 403
    /// for a reader or admin token (valid, but it does not ingest), else 401.
    pub fn ingest_refusal(&self, credential: Option<&str>) -> Refusal {
        match credential.and_then(|c| self.identify(c)) {
            Some(_) => Refusal::Forbidden,
            None => Refusal::Unauthorized,
        }
    }

    /// Whether a client at `from` may do what needs `need` without a credential.
    pub fn open_to(&self, from: Locality, need: Need) -> bool {
        from == Locality::Local && (need == Need::Metrics || !self.closed())
    }

    /// What `credential` (or none) may do where `need` is needed, from `from`, for a request
    /// of `origin`.
    pub fn decide(
        &self,
        need: Need,
        credential: Option<&str>,
        from: Locality,
        origin: Origin,
    ) -> Result<(), Refusal> {
        if origin == Origin::Trusted && self.open_to(from, need) {
            return Ok(());
        }
        match credential.and_then(|c| self.identify(c)) {
            None => Err(Refusal::Unauthorized),
            Some(Identity::Token(role)) if role >= need.role() && origin != Origin::CrossSite => {
                Ok(())
            }
            Some(_) => Err(Refusal::Forbidden),
        }
    }

    /// Who made a request, for audit records: `token <id>` (or `token admin_token`) for a
    /// token, else `open access (local)` / `open access (remote)`. Call it after
    /// [`Access::authorize`] said yes.
    pub fn principal(&self, headers: &HeaderMap, from: Locality) -> String {
        let token = bearer(headers).and_then(|b| {
            self.current()
                .by_hash
                .get(&key_hash(b))
                .map(|t| t.1.clone())
        });
        match (token, from) {
            (Some(id), _) => format!("token {id}"),
            (None, Locality::Local) => "open access (local)".to_string(),
            (None, Locality::Remote) => "open access (remote)".to_string(),
        }
    }

    /// [`Access::decide`] for an HTTP request.
    pub fn authorize(
        &self,
        need: Need,
        method: &Method,
        headers: &HeaderMap,
        from: Locality,
    ) -> Result<(), Refusal> {
        let bearer = bearer(headers);
        let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let cross = changes && cross_site(headers);
        // A browser sends a cross-site POST with a simple content type without asking first;
        // anything else (another content type, an Authorization header) it asks about first,
        // and sluice never says yes.
        let forgeable = need == Need::Admin
            && *method == Method::POST
            && bearer.is_none()
            && simple_content_type(headers);
        let origin = match (cross, forgeable) {
            (true, _) => Origin::CrossSite,
            (false, true) => Origin::Forgeable,
            (false, false) => Origin::Trusted,
        };
        let answer = self.decide(need, bearer, from, origin);
        if let Err(r) = answer {
            tracing::debug!(?need, ?from, ?origin, refusal = ?r, "request refused");
        }
        answer
    }
}

/// The Postgres wire port takes reader and admin tokens as passwords, and needs one as soon as
/// reads are closed.
impl sluice_warehouse::PgTokens for Access {
    fn required(&self) -> bool {
        self.closed()
    }

    fn accepts(&self, password: &str) -> bool {
        matches!(self.identify(password), Some(Identity::Token(_)))
    }
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty()).then_some(rest)
}

/// Whether a browser says the request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none`, or an `Origin` (`null` included) whose host is not the `Host`.
pub fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let fetch_site = text("sec-fetch-site")
        .is_some_and(|s| !s.eq_ignore_ascii_case("same-origin") && !s.eq_ignore_ascii_case("none"));
    let foreign_origin = text(header::ORIGIN.as_str()).is_some_and(|origin| {
        let authority = origin.split_once("://").map(|(_, a)| a);
        let host = text(header::HOST.as_str());
        match (authority, host) {
            (Some(a), Some(h)) => !a.eq_ignore_ascii_case(h),
            _ => true,
        }
    });
    fetch_site || foreign_origin
}

/// Whether the content type is one a browser form (or a no-preflight `fetch`) can send:
/// missing, `application/x-www-form-urlencoded`, `multipart/form-data` or `text/plain`.
fn simple_content_type(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = v
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "" | "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SourceConfig;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn with_tokens() -> (tempfile::TempDir, Access, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = TokenFile::path(dir.path());
        let mut file = TokenFile::default();
        let (reader, _) = file.create(Role::Reader);
        let (admin, _) = file.create(Role::Admin);
        file.store(&path).unwrap();
        let keys = Auth::new(
            vec![SourceConfig {
                name: "web".into(),
                write_keys: vec!["wk".into()],
                snowplow_app_ids: vec![],
            }],
            None,
        )
        .unwrap();
        let access = Access::new(Arc::new(keys), Some("cfg-admin".into()), Some(path)).unwrap();
        (dir, access, reader, admin)
    }

    #[test]
    fn roles_grant_what_they_name_and_nothing_more() {
        let (_dir, a, reader, admin) = with_tokens();
        let r = Locality::Remote;
        let d = |need, cred: Option<&str>| a.decide(need, cred, r, Origin::Trusted);
        assert!(reader.starts_with("st_reader_") && admin.starts_with("st_admin_"));
        for need in [Need::Metrics, Need::Read] {
            assert_eq!(d(need, Some(&reader)), Ok(()));
            assert_eq!(d(need, Some(&admin)), Ok(()));
            assert_eq!(d(need, Some("cfg-admin")), Ok(()));
            assert_eq!(d(need, Some("wk")), Err(Refusal::Forbidden));
            assert_eq!(d(need, Some("nope")), Err(Refusal::Unauthorized));
            assert_eq!(d(need, None), Err(Refusal::Unauthorized));
        }
        assert_eq!(d(Need::Admin, Some(&reader)), Err(Refusal::Forbidden));
        assert_eq!(d(Need::Admin, Some(&admin)), Ok(()));
        // Tokens configured: local clients need one too, except for metrics.
        let local = |need| a.decide(need, None, Locality::Local, Origin::Trusted);
        assert_eq!(local(Need::Read), Err(Refusal::Unauthorized));
        assert_eq!(local(Need::Metrics), Ok(()));
        // A cross-site request is refused whatever its credential.
        assert_eq!(
            a.decide(Need::Admin, Some(&admin), r, Origin::CrossSite),
            Err(Refusal::Forbidden)
        );
        // One a form on another site could send is fine with a credential, not without.
        let forgeable = |cred| a.decide(Need::Admin, cred, Locality::Local, Origin::Forgeable);
        assert_eq!(forgeable(Some(admin.as_str())), Ok(()));
        assert_eq!(forgeable(None), Err(Refusal::Unauthorized));
        assert_eq!(a.identify("wk"), Some(Identity::Writer(Arc::from("web"))));
    }

    #[test]
    fn revoking_a_token_refuses_it_and_keeps_reads_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = TokenFile::path(dir.path());
        let mut file = TokenFile::default();
        let (reader, entry) = file.create(Role::Reader);
        file.store(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&reader));
        let a = Access::new(Arc::new(Auth::open()), None, Some(path.clone())).unwrap();
        assert_eq!(a.identify(&reader), Some(Identity::Token(Role::Reader)));
        file.revoke(&entry.id).unwrap();
        file.store(&path).unwrap();
        a.tokens.expire();
        assert_eq!(a.identify(&reader), None);
        assert!(a.closed());
        assert_eq!(
            a.decide(Need::Read, None, Locality::Local, Origin::Trusted),
            Err(Refusal::Unauthorized)
        );
    }

    #[test]
    fn open_access_is_local_and_same_site_only() {
        let a = Access::open();
        let get = Method::GET;
        let post = Method::POST;
        let local = Locality::Local;
        let ok = |m: &Method, h: &HeaderMap| a.authorize(Need::Admin, m, h, local);
        let json = [("content-type", "application/json")];
        assert_eq!(ok(&get, &HeaderMap::new()), Ok(()));
        assert_eq!(ok(&post, &headers(&json)), Ok(()));
        assert_eq!(
            a.authorize(Need::Admin, &post, &headers(&json), Locality::Remote),
            Err(Refusal::Unauthorized)
        );
        // A POST a form could send needs a non-simple content type or a bearer token.
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded; charset=utf-8",
        ] {
            assert_eq!(
                ok(&post, &headers(&[("content-type", ct)])),
                Err(Refusal::Unauthorized)
            );
        }
        assert_eq!(ok(&post, &HeaderMap::new()), Err(Refusal::Unauthorized));
        // Reads are not state changes: a text/plain SQL POST is fine.
        assert_eq!(
            a.authorize(Need::Read, &post, &HeaderMap::new(), local),
            Ok(())
        );
        // Cross-site browsers are refused.
        for h in [
            headers(&[("sec-fetch-site", "cross-site"), json[0]]),
            headers(&[("sec-fetch-site", "same-site"), json[0]]),
            headers(&[
                ("origin", "http://evil.example"),
                ("host", "localhost:8080"),
                json[0],
            ]),
            headers(&[("origin", "null"), json[0]]),
        ] {
            assert_eq!(ok(&post, &h), Err(Refusal::Unauthorized), "{h:?}");
        }
        let same = headers(&[
            ("origin", "http://localhost:8080"),
            ("host", "localhost:8080"),
            ("sec-fetch-site", "same-origin"),
            json[0],
        ]);
        assert_eq!(ok(&post, &same), Ok(()));
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer  t1 ")])),
            Some("t1")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer t2")])),
            Some("t2")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic dDo=")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
