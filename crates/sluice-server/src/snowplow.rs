//! The Snowplow collector routes and their `[snowplow]` config section.
//!
//! - `POST /com.snowplowanalytics.snowplow/tp2`: a `payload_data` body (JSON, sent as
//!   `application/json` or `text/plain`, gzip allowed) → `200 text/plain ok` once every accepted
//!   event is durable; 503 + `Retry-After` on backlog or journal trouble; 400/413 (with a reason)
//!   only when nothing in the request was usable; 401 when every event's app id was refused.
//! - `GET`/`HEAD` `/i` and `/ice.png`: one event in the query string → the 43-byte transparent
//!   GIF. A pixel with no query string stores nothing and still gets the GIF.
//! - `OPTIONS` on those paths: the CORS preflight (`Origin` echoed, credentials allowed,
//!   `Content-Type, SP-Anonymous` headers, `Access-Control-Max-Age`). Every answer of these
//!   routes carries `Access-Control-Allow-Origin` and `Access-Control-Allow-Credentials`.
//! - The network user id: the `sp` cookie (name configurable), else the `nuid` query parameter,
//!   else a new UUIDv4; it is sent back in `Set-Cookie` with a fresh expiry. With the
//!   `SP-Anonymous` header no IP is recorded, the network user id is all zeros, no cookie is set
//!   and an existing one is expired.
//! - `paths` maps custom paths onto the two canonical ones (ad-blocker evasion).
//! - `GET /robots.txt` disallows everything.
//!
//! The source of each event is picked from its app id (`aid`) through
//! [`crate::auth::Auth::source_for_app`]; a refused event is a per-slot rejection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sluice_collector::snowplow::{SlotError, SnowplowEvent};
use sluice_collector::{
    CollectError, Collector, Encoding, Item, Origin, decode_snowplow_post, decode_snowplow_query,
    decompress,
};
use sluice_event::ErrorKind;

use crate::auth::{Auth, Locality};
use crate::http::{AppState, collect_error, collector_of, error_response, header_str, label};

/// The tracker POST path.
pub const TP2_PATH: &str = "/com.snowplowanalytics.snowplow/tp2";
/// The pixel paths.
pub const PIXEL_PATHS: &[&str] = &["/i", "/ice.png"];
/// The network user id recorded for `SP-Anonymous` requests.
pub const ANONYMOUS_NUID: &str = "00000000-0000-0000-0000-000000000000";
/// The 1×1 transparent GIF answered to pixel requests.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0xf0, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];
/// How long browsers may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "3600";
/// Paths an alias may not take (other routes own them).
const RESERVED_PATHS: &[&str] = &[
    "/",
    "/health",
    "/readyz",
    "/livez",
    "/metrics",
    "/robots.txt",
    "/sink-health",
];
/// The longest cookie or `nuid` value taken as a network user id.
const MAX_NUID_BYTES: usize = 128;

/// The `[snowplow]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnowplowConfig {
    /// Name of the network-user-id cookie. Default `sp`.
    pub cookie_name: String,
    /// How long the cookie lives; renewed on every request. Default 365 days.
    #[serde(with = "humantime_serde")]
    pub cookie_expiry: Duration,
    /// The cookie's `Domain` attribute (e.g. `.example.com`); none by default (host only).
    pub cookie_domain: Option<String>,
    /// Custom paths, each mapped onto `/com.snowplowanalytics.snowplow/tp2`, `/i` or
    /// `/ice.png`, e.g. `{ "/com.acme/track" = "/com.snowplowanalytics.snowplow/tp2" }`.
    pub paths: BTreeMap<String, String>,
}

impl Default for SnowplowConfig {
    fn default() -> Self {
        Self {
            cookie_name: "sp".into(),
            cookie_expiry: Duration::from_secs(365 * 24 * 3600),
            cookie_domain: None,
            paths: BTreeMap::new(),
        }
    }
}

/// Validated Snowplow settings.
#[derive(Clone, Debug)]
pub struct SnowplowSettings {
    cookie_name: String,
    cookie_expiry: chrono::Duration,
    cookie_domain: Option<String>,
    post_paths: Vec<String>,
    pixel_paths: Vec<String>,
}

impl SnowplowConfig {
    /// Checks the values and turns them into settings.
    pub fn validate(&self) -> Result<SnowplowSettings, String> {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(&self.cookie_name) {
            return Err(format!(
                "snowplow.cookie_name {:?} is not a valid cookie name",
                self.cookie_name
            ));
        }
        if self.cookie_expiry.is_zero()
            || self.cookie_expiry > Duration::from_secs(10 * 366 * 86400)
        {
            return Err("snowplow.cookie_expiry must be between 1s and 10 years".into());
        }
        let cookie_expiry = chrono::Duration::from_std(self.cookie_expiry)
            .map_err(|_| "snowplow.cookie_expiry is too long".to_string())?;
        if let Some(d) = &self.cookie_domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(format!(
                "snowplow.cookie_domain {d:?} must be a domain name"
            ));
        }
        let mut post_paths = vec![TP2_PATH.to_string()];
        let mut pixel_paths: Vec<String> = PIXEL_PATHS.iter().map(|p| p.to_string()).collect();
        for (alias, target) in &self.paths {
            let ok_chars = alias
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
            if !alias.starts_with('/') || !ok_chars || alias.contains("//") || alias.ends_with('/')
            {
                return Err(format!(
                    "snowplow.paths: {alias:?} must be a path like /com.acme/track (letters, digits, - . _ ~ /)"
                ));
            }
            if RESERVED_PATHS.contains(&alias.as_str())
                || alias.starts_with("/v1/")
                || alias == TP2_PATH
                || PIXEL_PATHS.contains(&alias.as_str())
            {
                return Err(format!(
                    "snowplow.paths: {alias:?} is a path of another route"
                ));
            }
            if target == TP2_PATH {
                post_paths.push(alias.clone());
            } else if PIXEL_PATHS.contains(&target.as_str()) {
                pixel_paths.push(alias.clone());
            } else {
                return Err(format!(
                    "snowplow.paths: {alias:?} maps to {target:?}; expected {TP2_PATH}, /i or /ice.png"
                ));
            }
        }
        Ok(SnowplowSettings {
            cookie_name: self.cookie_name.clone(),
            cookie_expiry,
            cookie_domain: self.cookie_domain.clone(),
            post_paths,
            pixel_paths,
        })
    }
}

impl Default for SnowplowSettings {
    fn default() -> Self {
        SnowplowConfig::default()
            .validate()
            .expect("the default snowplow config is valid")
    }
}

/// The Snowplow routes, to be merged into the main router.
pub(crate) fn routes(settings: &SnowplowSettings) -> Router<AppState> {
    let mut router = Router::new();
    for p in &settings.post_paths {
        let post_route =
            post(tp2).route_layer(middleware::from_fn_with_state("snowplow_post", label));
        router = router.route(p, post_route.options(preflight_post));
    }
    for p in &settings.pixel_paths {
        let pixel_route =
            get(pixel).route_layer(middleware::from_fn_with_state("snowplow_pixel", label));
        router = router.route(p, pixel_route.options(preflight_pixel));
    }
    router
        .route_layer(middleware::from_fn_with_state(
            Arc::new(settings.clone()),
            edge,
        ))
        .route("/robots.txt", get(robots))
}

/// Who the browser is, as decided at the edge.
#[derive(Clone, Debug)]
struct NetworkUser {
    /// The network user id to record.
    id: String,
    /// `SP-Anonymous` was sent.
    anonymous: bool,
}

/// Runs around every Snowplow route: picks the network user id, then adds the CORS headers and
/// the cookie to the answer.
async fn edge(State(cfg): State<Arc<SnowplowSettings>>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let origin = headers.get(header::ORIGIN).cloned();
    let anonymous = headers.contains_key("sp-anonymous");
    let preflight = req.method() == Method::OPTIONS;
    let cookie = read_cookie(headers, &cfg.cookie_name);
    let from_query = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "nuid")
            .map(|(_, v)| v.into_owned())
            .filter(|v| valid_nuid(v))
    });
    let id = if anonymous {
        ANONYMOUS_NUID.to_string()
    } else {
        cookie
            .clone()
            .or(from_query)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    };
    req.extensions_mut().insert(NetworkUser {
        id: id.clone(),
        anonymous,
    });
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.unwrap_or(HeaderValue::from_static("*")),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if !preflight {
        let set = if !anonymous {
            Some(cfg.set_cookie(&id, chrono::Utc::now() + cfg.cookie_expiry))
        } else if cookie.is_some() {
            Some(cfg.set_cookie("", chrono::DateTime::UNIX_EPOCH))
        } else {
            None
        };
        if let Some(v) = set.and_then(|s| HeaderValue::from_str(&s).ok()) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

impl SnowplowSettings {
    fn set_cookie(&self, value: &str, expires: chrono::DateTime<chrono::Utc>) -> String {
        let mut s = format!(
            "{}={value}; Expires={}; Path=/; SameSite=None; Secure; HttpOnly",
            self.cookie_name,
            expires.format("%a, %d %b %Y %H:%M:%S GMT")
        );
        if let Some(d) = &self.cookie_domain {
            s.push_str("; Domain=");
            s.push_str(d);
        }
        s
    }
}

/// The value of cookie `name`, when it is a usable id.
fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|v| valid_nuid(v))
}

fn valid_nuid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_NUID_BYTES
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

async fn preflight_post() -> Response {
    preflight("POST, OPTIONS")
}

async fn preflight_pixel() -> Response {
    preflight("GET, HEAD, OPTIONS")
}

fn preflight(methods: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Content-Type, SP-Anonymous",
            ),
            (header::ACCESS_CONTROL_ALLOW_METHODS, methods),
            (header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE),
        ],
    )
        .into_response()
}

async fn robots() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "User-agent: *\nDisallow: /\n",
    )
        .into_response()
}

fn gif() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        ],
        Bytes::from_static(&PIXEL_GIF),
    )
        .into_response()
}

/// How a request's events fared.
enum Answer {
    /// At least one event is durable (or was already).
    Stored,
    /// No event in the request.
    Nothing,
    /// Nothing usable: the status and reason to answer.
    Refused(ErrorKind, String),
}

async fn tp2(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(user): Extension<NetworkUser>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let collector = match collector_of(&state) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if let Err(e) = collector.check_capacity() {
        return error_response(e.kind(), e.to_string());
    }
    let encoding = match Encoding::parse(header_str(&headers, header::CONTENT_ENCODING)) {
        Ok(e) => e,
        Err(e) => return error_response(e.kind(), e.to_string()),
    };
    let origin = origin_of(&headers, peer, &user);
    let from = Locality::of(peer.ip(), &headers);
    let auth = state.auth.clone();
    // The append runs in its own task so a client that hangs up cannot cancel it halfway.
    let task = tokio::spawn(async move {
        let settings = collector.settings();
        let plain = decompress(&body, encoding, settings.max_body_bytes())?;
        let slots = decode_snowplow_post(&plain, settings.max_events())?;
        store(&collector, &auth, from, &origin, slots, user.id).await
    });
    match task.await {
        Ok(Ok(Answer::Stored | Answer::Nothing)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "ok",
        )
            .into_response(),
        Ok(Ok(Answer::Refused(kind, reason))) => error_response(kind, reason),
        Ok(Err(e)) => collect_error(&e),
        Err(e) => error_response(ErrorKind::Internal, format!("ingest task failed: {e}")),
    }
}

async fn pixel(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(user): Extension<NetworkUser>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let collector = match collector_of(&state) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return gif();
    };
    if let Err(e) = collector.check_capacity() {
        return error_response(e.kind(), e.to_string());
    }
    let origin = origin_of(&headers, peer, &user);
    let from = Locality::of(peer.ip(), &headers);
    let auth = state.auth.clone();
    let task = tokio::spawn(async move {
        let slots: Vec<_> = decode_snowplow_query(&query).into_iter().collect();
        store(&collector, &auth, from, &origin, slots, user.id).await
    });
    match task.await {
        Ok(Ok(Answer::Stored | Answer::Nothing)) => gif(),
        Ok(Ok(Answer::Refused(kind, reason))) => error_response(kind, reason),
        Ok(Err(e)) => collect_error(&e),
        Err(e) => error_response(ErrorKind::Internal, format!("ingest task failed: {e}")),
    }
}

fn origin_of(headers: &HeaderMap, peer: SocketAddr, user: &NetworkUser) -> Origin {
    Origin {
        ip: (!user.anonymous).then(|| peer.ip().to_string()),
        user_agent: header_str(headers, header::USER_AGENT).map(str::to_string),
    }
}

/// Resolves each event's source, appends the usable ones and says how the request fared.
async fn store(
    collector: &Collector,
    auth: &Auth,
    from: Locality,
    origin: &Origin,
    slots: Vec<Result<SnowplowEvent<'_>, SlotError>>,
    nuid: String,
) -> Result<Answer, CollectError> {
    if slots.is_empty() {
        return Ok(Answer::Nothing);
    }
    let total = slots.len();
    let mut refused = 0usize;
    let items: Vec<Result<Item<'_>, SlotError>> = slots
        .into_iter()
        .map(|slot| {
            let event = slot?;
            match auth.source_for_app(event.app_id(), from) {
                Ok(source) => Ok(event.into_item(source, Some(nuid.clone()))),
                Err(e) => {
                    refused += 1;
                    Err((ErrorKind::Unauthorized, e.to_string()))
                }
            }
        })
        .collect();
    if refused == total {
        let reason = items
            .iter()
            .find_map(|i| i.as_ref().err().map(|(_, r)| r.clone()))
            .unwrap_or_default();
        return Ok(Answer::Refused(ErrorKind::Unauthorized, reason));
    }
    if items.iter().all(Result::is_err) {
        return Ok(first_rejection(items.iter().enumerate().filter_map(
            |(i, r)| r.as_ref().err().map(|(k, reason)| (i, *k, reason.as_str())),
        )));
    }
    let submitted = collector.submit(origin, items).await?;
    let o = &submitted.outcome;
    if !o.rejected.is_empty() {
        tracing::debug!(
            rejected = o.rejected.len(),
            accepted = o.accepted,
            "snowplow events rejected"
        );
    }
    if o.accepted == 0 && o.duplicates == 0 {
        return Ok(first_rejection(
            o.rejected
                .iter()
                .map(|r| (r.index, r.kind, r.reason.as_str())),
        ));
    }
    Ok(Answer::Stored)
}

/// The answer for a request none of whose events was usable: the first rejection that is not
/// an authorization refusal decides the status (400 or 413).
fn first_rejection<'a>(rejections: impl Iterator<Item = (usize, ErrorKind, &'a str)>) -> Answer {
    let mut fallback = None;
    for (i, kind, reason) in rejections {
        let answer = Answer::Refused(kind, format!("event {i}: {reason}"));
        if kind != ErrorKind::Unauthorized {
            return answer;
        }
        fallback.get_or_insert(answer);
    }
    fallback.unwrap_or(Answer::Refused(
        ErrorKind::Invalid,
        "no usable event".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_aliases() {
        let s = SnowplowConfig::default().validate().unwrap();
        assert_eq!(s.post_paths, vec![TP2_PATH]);
        assert_eq!(s.pixel_paths, vec!["/i", "/ice.png"]);
        let cfg = SnowplowConfig {
            paths: [
                ("/com.acme/track".to_string(), TP2_PATH.to_string()),
                ("/acme/p.gif".to_string(), "/i".to_string()),
            ]
            .into(),
            cookie_domain: Some(".acme.com".into()),
            ..Default::default()
        };
        let s = cfg.validate().unwrap();
        assert_eq!(s.post_paths, vec![TP2_PATH, "/com.acme/track"]);
        assert_eq!(s.pixel_paths, vec!["/i", "/ice.png", "/acme/p.gif"]);
        let c = s.set_cookie("abc", chrono::DateTime::UNIX_EPOCH);
        assert_eq!(
            c,
            "sp=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; SameSite=None; Secure; HttpOnly; Domain=.acme.com"
        );
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        for (cfg, needle) in [
            (
                SnowplowConfig {
                    cookie_name: "s p".into(),
                    ..Default::default()
                },
                "cookie_name",
            ),
            (
                SnowplowConfig {
                    cookie_expiry: Duration::ZERO,
                    ..Default::default()
                },
                "cookie_expiry",
            ),
            (
                SnowplowConfig {
                    cookie_domain: Some("a.com; x".into()),
                    ..Default::default()
                },
                "cookie_domain",
            ),
        ] {
            assert!(cfg.validate().unwrap_err().contains(needle), "{needle}");
        }
        for (alias, target, needle) in [
            ("/x", "/nowhere", "expected"),
            ("x", TP2_PATH, "must be a path"),
            ("/a/{id}", TP2_PATH, "must be a path"),
            ("/a/*x", TP2_PATH, "must be a path"),
            ("/v1/events", TP2_PATH, "another route"),
            ("/health", "/i", "another route"),
            ("/i", TP2_PATH, "another route"),
            ("/", TP2_PATH, "must be a path"),
        ] {
            let cfg = SnowplowConfig {
                paths: [(alias.to_string(), target.to_string())].into(),
                ..Default::default()
            };
            let err = cfg.validate().unwrap_err();
            assert!(err.contains(needle), "{alias}: {err}");
        }
    }

    #[test]
    fn config_section_parses_and_refuses_unknown_fields() {
        let c = crate::Config::from_toml(
            "[snowplow]\ncookie_name = \"nuid\"\ncookie_expiry = \"30days\"\npaths = { \"/t\" = \"/ice.png\" }",
        )
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.snowplow.cookie_name, "nuid");
        assert_eq!(s.snowplow.cookie_expiry, chrono::Duration::days(30));
        assert_eq!(
            s.snowplow.pixel_paths.last().map(String::as_str),
            Some("/t")
        );
        let err = crate::Config::from_toml("[snowplow]\ncookie = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let c = crate::Config::from_toml("[snowplow]\npaths = { \"/t\" = \"/r/tp2\" }").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("snowplow.paths")
        );
    }

    #[test]
    fn cookies_are_read_by_name_and_checked() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sp=3d6f0c9e-4b1a-4f2e-9a77-1c2b3d4e5f60; b=2"),
        );
        assert_eq!(
            read_cookie(&h, "sp").as_deref(),
            Some("3d6f0c9e-4b1a-4f2e-9a77-1c2b3d4e5f60")
        );
        assert_eq!(read_cookie(&h, "zz"), None);
        h.insert(header::COOKIE, HeaderValue::from_static("sp=<script>"));
        assert_eq!(read_cookie(&h, "sp"), None);
        assert_eq!(PIXEL_GIF.len(), 43);
    }
}
