//! The Segment HTTP Tracking API through a running server: every route, the three ways to
//! present a write key (none of them kept), gzip, limits, per-source dedupe and clock-skew
//! correction, checked against what lands in the `events` table.

use std::collections::BTreeSet;
use std::io::Write;

use serde_json::{Value, json};
use sluice_testkit::http::sql_rows;
use sluice_testkit::server::TestServer;

const WEB_KEY: &str = "wk-web-0123456789";
const APP_KEY: &str = "wk-app-0123456789";

fn config() -> String {
    format!(
        r#"
[lake]
flush_interval = "100ms"
[[sources]]
name = "web"
write_keys = ["{WEB_KEY}"]
[[sources]]
name = "app"
write_keys = ["{APP_KEY}"]
"#
    )
}

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// Basic auth on /v1/batch, with shared context and sentAt (analytics-node's shape): `seg-1`
/// and `seg-2` accepted under `web`, `seg-bad` (a track without an event) refused.
async fn post_batch_with_basic_auth(server: &TestServer) {
    let batch = json!({
        "batch": [
            {"type":"identify","messageId":"seg-1","userId":"u1","traits":{"plan":"pro"},
             "timestamp":"2026-11-01T10:00:00.000Z"},
            {"type":"track","messageId":"seg-2","anonymousId":"a1","event":"Added To Cart",
             "properties":{"sku":"P-42","qty":2},"timestamp":"2026-11-01T10:00:01.000Z"},
            {"type":"track","messageId":"seg-bad","userId":"u1"}
        ],
        "context": {"library": {"name": "analytics-node", "version": "3.1.0"}},
        "sentAt": "2026-11-01T10:00:02.000Z"
    });
    let r = server
        .client
        .post(server.url("/v1/batch"))
        .header("authorization", basic(WEB_KEY))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["success"], true);
    assert_eq!(a["accepted"], 2);
    assert_eq!(a["rejected"][0]["index"], 2);
}

/// writeKey in a text/plain body (analytics.js, analytics-python), on each short route, from
/// a page on another origin: `seg-3` to `seg-7` under `app`.
async fn post_short_routes_with_the_key_in_the_body(server: &TestServer) {
    for (path, body) in [
        (
            "/v1/t",
            json!({"writeKey":APP_KEY,"messageId":"seg-3","userId":"u2","event":"Signed Up"}),
        ),
        (
            "/v1/p",
            json!({"writeKey":APP_KEY,"messageId":"seg-4","anonymousId":"a2","name":"Pricing"}),
        ),
        (
            "/v1/screen",
            json!({"writeKey":APP_KEY,"messageId":"seg-5","userId":"u2","name":"Home"}),
        ),
        (
            "/v1/group",
            json!({"writeKey":APP_KEY,"messageId":"seg-6","userId":"u2","groupId":"g1"}),
        ),
        (
            "/v1/alias",
            json!({"writeKey":APP_KEY,"messageId":"seg-7","userId":"u2","previousId":"a2"}),
        ),
    ] {
        let r = server
            .client
            .post(server.url(path))
            .header("content-type", "text/plain")
            .header("origin", "https://shop.example.com")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://shop.example.com"
        );
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    }
}

/// A bearer token and a gzip body on /v1/import: `seg-3` under `web`; its answer's
/// `(accepted, duplicates)`.
async fn import_gzip_with_a_bearer_token(server: &TestServer) -> (Option<u64>, Option<u64>) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(
        json!({"batch":[{"type":"track","messageId":"seg-3","userId":"u3","event":"Signed Up"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let r = server
        .client
        .post(server.url("/v1/import"))
        .header("authorization", format!("Bearer {WEB_KEY}"))
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    (a["accepted"].as_u64(), a["duplicates"].as_u64())
}

/// Waits for `want.len()` rows in `events`, then asserts they are exactly `want` as
/// `(source, event_id, event_type, event)`, ordered by source and id; the rows.
async fn events_exactly(server: &TestServer, want: &[(&str, &str, &str, &str)]) -> Vec<Value> {
    let rows = sql_rows(
        &server.client,
        &server.base,
        "SELECT event_id, source, event_type, event, user_id, anonymous_id, properties, context, \
         CAST(timestamp AS BIGINT) AS ts, CAST(received_at AS BIGINT) AS rx \
         FROM events ORDER BY source, event_id",
        want.len(),
    )
    .await;
    let got: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| ["source", "event_id", "event_type", "event"].map(|c| r[c].as_str().unwrap()))
        .collect();
    let want: Vec<[&str; 4]> = want.iter().map(|&(a, b, c, d)| [a, b, c, d]).collect();
    assert_eq!(got, want);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_basic_auth_lands_with_its_context_and_the_clock_skew_corrected() {
    let server = TestServer::start(&config()).await;
    post_batch_with_basic_auth(&server).await;
    let rows = events_exactly(
        &server,
        &[
            ("web", "seg-1", "identify", "identify"),
            ("web", "seg-2", "track", "Added To Cart"),
        ],
    )
    .await;
    let cart = &rows[1];
    let props: Value = serde_json::from_str(cart["properties"].as_str().unwrap()).unwrap();
    assert_eq!(props, json!({"sku":"P-42","qty":2}));
    let ctx: Value = serde_json::from_str(cart["context"].as_str().unwrap()).unwrap();
    assert_eq!(ctx["library"]["name"], "analytics-node");
    assert_eq!(ctx["ip"], "127.0.0.1");
    // Sent 1 s after it happened by the client's clock: 1 s before it was received.
    let skew = cart["rx"].as_i64().unwrap() - cart["ts"].as_i64().unwrap();
    assert_eq!(skew, 1_000_000);
    server.shutdown().await;
}

/// (source, event id, type, name) of what `post_short_routes_with_the_key_in_the_body` sends.
const SHORT_ROUTE_EVENTS: [(&str, &str, &str, &str); 5] = [
    ("app", "seg-3", "track", "Signed Up"),
    ("app", "seg-4", "page", "Pricing"),
    ("app", "seg-5", "screen", "Home"),
    ("app", "seg-6", "group", "group"),
    ("app", "seg-7", "alias", "alias"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_short_route_takes_the_key_in_a_text_plain_body() {
    let server = TestServer::start(&config()).await;
    post_short_routes_with_the_key_in_the_body(&server).await;
    let rows = events_exactly(&server, &SHORT_ROUTE_EVENTS).await;
    let group = &rows[3];
    assert!(group["properties"].as_str().unwrap().contains("g1"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_is_a_duplicate_under_the_same_source_only() {
    let server = TestServer::start(&config()).await;
    post_short_routes_with_the_key_in_the_body(&server).await;
    // `seg-3` again, under `web`: not a duplicate.
    assert_eq!(
        import_gzip_with_a_bearer_token(&server).await,
        (Some(1), Some(0))
    );
    // Under `app` again: a duplicate.
    let r = server
        .client
        .post(server.url("/v1/track"))
        .json(&json!({"writeKey":APP_KEY,"messageId":"seg-3","userId":"u2","event":"Signed Up"}))
        .send()
        .await
        .unwrap();
    let a: Value = r.json().await.unwrap();
    assert_eq!(
        (a["accepted"].as_u64(), a["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
    let seg3 = server
        .sql_rows(
            "SELECT source FROM events WHERE event_id = 'seg-3' ORDER BY source",
            2,
        )
        .await;
    assert_eq!(seg3, [json!({"source": "app"}), json!({"source": "web"})]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_key_is_kept_in_the_lake_or_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), &config()).await;
    // Each way to present a key: basic auth, the body, a bearer token.
    post_batch_with_basic_auth(&server).await;
    post_short_routes_with_the_key_in_the_body(&server).await;
    import_gzip_with_a_bearer_token(&server).await;
    let web = [
        ("web", "seg-1", "identify", "identify"),
        ("web", "seg-2", "track", "Added To Cart"),
        ("web", "seg-3", "track", "Signed Up"),
    ];
    events_exactly(&server, &[&SHORT_ROUTE_EVENTS[..], &web[..]].concat()).await;
    let all = server.sql("SELECT * FROM events").await;
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(WEB_KEY) && !text.contains(APP_KEY));
    server.shutdown().await;
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for key in [WEB_KEY, APP_KEY] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{} holds a write key",
                entry.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keys_and_bad_bodies_get_their_status_and_a_reason() {
    let server = TestServer::start(&config()).await;
    let (c, base) = (&server.client, &server.base);
    let post = |path: &str| c.post(format!("{base}{path}"));
    // Refusals: the same 401 body whatever is wrong with the key.
    let mut bodies = BTreeSet::new();
    for req in [
        post("/v1/track").json(&json!({"userId":"u","event":"x"})),
        post("/v1/track").json(&json!({"writeKey":"nope","userId":"u","event":"x"})),
        post("/v1/track")
            .header("authorization", basic("nope"))
            .json(&json!({"userId":"u","event":"x"})),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        bodies.insert(r.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    // A bad header key is refused before the body is even read as gzip.
    let r = post("/v1/batch")
        .header("authorization", basic("nope"))
        .header("content-encoding", "gzip")
        .body("not gzip at all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Bad bodies: 400 with a reason; an unknown route 404; the preflight answers.
    let r = post("/v1/batch")
        .header("authorization", basic(WEB_KEY))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("malformed json"));
    let r = post("/v1/batch")
        .header("authorization", basic(WEB_KEY))
        .json(&json!({"batch":[{"type":"track","userId":"u"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["success"], false);
    let r = post("/v1/nope")
        .header("authorization", basic(WEB_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/t"))
        .header("origin", "https://shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Content-Type")
    );
    // Over Segment's 500 KB request limit.
    let big = json!({"writeKey":APP_KEY,"userId":"u","event":"x","properties":{"p":"x".repeat(600 << 10)}});
    let r = post("/v1/track").json(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);

    server.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
