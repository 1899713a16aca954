//! The Snowplow tracker protocol end to end in one process, one route or rule per test: a POST
//! batch, GET pixels (through a path alias too), `SP-Anonymous`, app ids, the CORS preflight and
//! the `sp` cookie, each checked by its answers and by exactly the expected rows in `events` and
//! `bad_rows` through `POST /v1/sql`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use sluice_testkit::server::TestServer;
use sluice_testkit::wait_until;

const TP2: &str = "/com.snowplowanalytics.snowplow/tp2";
const ORIGIN: &str = "https://shop.example.com";
const COOKIE_ID: &str = "3d6f0c9e-4b1a-4f2e-9a77-1c2b3d4e5f60";
const GIF_HEX: &str =
    "47494638396101000100f00000ffffff00000021f90405000000002c00000000010001000002024401003b";
const UE_PR: &str = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{"schema":"iglu:com.acme/add_to_cart/jsonschema/1-0-0","data":{"sku":"P-42","qty":2}}}"#;
const UE_PX: &str = "eyJzY2hlbWEiOiJpZ2x1OmNvbS5zbm93cGxvd2FuYWx5dGljcy5zbm93cGxvdy91bnN0cnVjdF9ldmVudC9qc29uc2NoZW1hLzEtMC0wIiwiZGF0YSI6eyJzY2hlbWEiOiJpZ2x1OmNvbS5hY21lL2FkZF90b19jYXJ0L2pzb25zY2hlbWEvMS0wLTAiLCJkYXRhIjp7InNrdSI6IlAtNDIiLCJxdHkiOjJ9fX0";
const CO: &str = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1","data":[{"schema":"iglu:com.acme/user/jsonschema/1-0-0","data":{"tier":"gold"}}]}"#;

fn payload(events: Value) -> String {
    json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": events,
    })
    .to_string()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The id in the `sp` Set-Cookie of an answer.
fn sp_cookie(resp: &reqwest::Response) -> Option<String> {
    let c = header(resp, "set-cookie");
    let rest = c.strip_prefix("sp=")?;
    Some(rest.split(';').next().unwrap_or("").to_string())
}

async fn sql(client: &reqwest::Client, base: &str, query: &str) -> Result<Vec<Value>, String> {
    let resp = client
        .post(format!("{base}/v1/sql?format=json"))
        .body(query.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
        .collect()
}

/// Polls `query` until `done` accepts its rows (deadline 60 s).
async fn wait_rows(
    client: &reqwest::Client,
    base: &str,
    query: &'static str,
    done: impl Fn(&[Value]) -> bool + Send + 'static,
) -> Vec<Value> {
    let (client, base) = (client.clone(), base.to_string());
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), query, || {
            match rt.block_on(sql(&client, &base, query)) {
                Ok(rows) if done(&rows) => Ok(Some(rows)),
                Ok(_) => Ok(None),
                Err(e) => Err(std::io::Error::other(e).into()),
            }
        })
    })
    .await
    .expect("wait task")
    .expect("rows in time")
}

/// A server with an alias for each route and the source `web` for the app id `shop`.
async fn start() -> TestServer {
    TestServer::start(&format!(
        r#"
[lake]
flush_interval = "100ms"

[snowplow]
paths = {{ "/com.acme/track" = "{TP2}", "/acme/p.gif" = "/i" }}

[[sources]]
name = "web"
snowplow_app_ids = ["shop"]
"#
    ))
    .await
}

/// An `events` row with its `properties` and `context` parsed.
struct Row {
    row: Value,
    props: Value,
    ctx: Value,
}

/// Waits until `events` holds `ids.len()` rows, then asserts they are exactly `ids` (sorted),
/// all from the source `web`; the rows by event id.
async fn events_exactly(server: &TestServer, ids: &[&str]) -> BTreeMap<String, Row> {
    let n = ids.len() as u64;
    wait_rows(
        &server.client,
        &server.base,
        "SELECT count(*) AS n FROM events",
        move |rows| rows.first().and_then(|r| r["n"].as_u64()) >= Some(n),
    )
    .await;
    let rows = sql(
        &server.client,
        &server.base,
        "SELECT event_id, event_type, event, source, user_id, anonymous_id, timestamp, sent_at, \
         properties, context FROM events ORDER BY event_id",
    )
    .await
    .unwrap();
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    rows.into_iter()
        .map(|row| {
            assert_eq!(row["source"], "web", "{row}");
            let props = serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
            let ctx = serde_json::from_str(row["context"].as_str().unwrap()).unwrap();
            let id = row["event_id"].as_str().unwrap().to_string();
            (id, Row { row, props, ctx })
        })
        .collect()
}

/// Waits until `bad_rows` holds `expected.len()` rows, then asserts they are exactly these
/// `(event id, words of the reason)`, each a `parse` bad row.
async fn bad_rows_exactly(server: &TestServer, expected: &[(&str, &str)]) {
    let n = expected.len();
    let bad = wait_rows(
        &server.client,
        &server.base,
        "SELECT event_id, kind, reason, source FROM bad_rows ORDER BY event_id",
        move |rows| rows.len() >= n,
    )
    .await;
    assert_eq!(bad.len(), n, "{bad:?}");
    for (row, (id, needle)) in bad.iter().zip(expected) {
        assert_eq!(row["event_id"], *id);
        assert_eq!(row["kind"], "parse");
        assert!(row["reason"].as_str().unwrap().contains(needle), "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_allows_the_tracker_on_the_canonical_path_and_an_alias() {
    let server = start().await;
    for path in [TP2, "/com.acme/track"] {
        let resp = server
            .client
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,sp-anonymous",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(header(&resp, "access-control-allow-origin"), ORIGIN);
        assert_eq!(header(&resp, "access-control-allow-credentials"), "true");
        assert_eq!(
            header(&resp, "access-control-allow-headers"),
            "Content-Type, SP-Anonymous"
        );
        assert!(header(&resp, "access-control-allow-methods").contains("POST"));
        assert!(!header(&resp, "access-control-max-age").is_empty());
        assert!(resp.headers().get("set-cookie").is_none());
    }
    server.shutdown().await;
}

/// A POST batch of every event type, one event the collector refuses (no `e`), and one it
/// accepts that the runner cannot read (a structured event without an action).
fn every_event_type() -> String {
    payload(json!([
        {"e":"pv","eid":"sp-pv","url":"https://shop.example.com/p/42?color=red","page":"Product 42",
         "refr":"https://www.google.com/search?q=shoes","aid":"shop","p":"web","tv":"js-4.1.0",
         "tna":"sp1","dtm":"1731000000000","stm":"1731000000123","duid":"d-1","sid":"s-1","vid":"3",
         "uid":"customer-981","res":"1920x1080","vp":"1280x720","lang":"en-US","tz":"Asia/Kolkata",
         "co":CO},
        {"e":"ue","eid":"sp-ue","aid":"shop","ttm":"1731000000000","ue_pr":UE_PR},
        {"e":"se","eid":"sp-se","aid":"shop","se_ca":"shop","se_ac":"add-to-basket","se_va":"2.5"},
        {"e":"pp","eid":"sp-pp","aid":"shop","pp_mix":"0","pp_max":"1280","pp_miy":"10","pp_may":"2400"},
        {"e":"tr","eid":"sp-tr","aid":"shop","tr_id":"o-1","tr_tt":"99.5","tr_cu":"INR"},
        {"e":"ti","eid":"sp-ti","aid":"shop","ti_id":"o-1","ti_sk":"P-42","ti_pr":"49.75","ti_qu":"2"},
        {"url":"https://no-event-type"},
        {"e":"se","eid":"sp-bad","aid":"shop","se_ca":"shop"}
    ]))
}

/// Posts [`every_event_type`] with the `sp` cookie, as a browser on [`ORIGIN`] does, and checks
/// the answer: `ok`, CORS for the origin, and the cookie renewed.
async fn post_every_event_type(server: &TestServer) {
    let resp = server
        .client
        .post(server.url(TP2))
        .header("origin", ORIGIN)
        .header("content-type", "application/json; charset=utf-8")
        .header("cookie", format!("other=1; sp={COOKIE_ID}"))
        .header("user-agent", "Mozilla/5.0 test")
        .body(every_event_type())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(header(&resp, "access-control-allow-origin"), ORIGIN);
    assert_eq!(header(&resp, "access-control-allow-credentials"), "true");
    let cookie = header(&resp, "set-cookie").to_string();
    assert!(
        cookie.starts_with(&format!("sp={COOKIE_ID}; Expires="))
            && cookie.contains("; Path=/; SameSite=None; Secure; HttpOnly"),
        "{cookie}"
    );
    assert_eq!(resp.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_batch_sent_twice_lands_each_event_type_once() {
    let server = start().await;
    post_every_event_type(&server).await;
    post_every_event_type(&server).await;

    // The event the runner cannot read is a bad row; the one without `e` is not kept.
    bad_rows_exactly(&server, &[("sp-bad", "se_ac")]).await;
    let rows = events_exactly(
        &server,
        &["sp-pp", "sp-pv", "sp-se", "sp-ti", "sp-tr", "sp-ue"],
    )
    .await;

    let Row { row: r, props, ctx } = &rows["sp-pv"];
    assert_eq!(
        (&r["event_type"], &r["event"]),
        (&json!("page"), &json!("Product 42"))
    );
    assert_eq!(r["user_id"], "customer-981");
    assert_eq!(r["anonymous_id"], "d-1");
    assert!(
        r["sent_at"]
            .as_str()
            .unwrap()
            .starts_with("2024-11-07T17:20:00.123"),
        "{r}"
    );
    assert_eq!(*props, json!({}));
    assert_eq!(ctx["ip"], "127.0.0.1");
    assert_eq!(ctx["userAgent"], "Mozilla/5.0 test");
    assert_eq!(ctx["locale"], "en-US");
    assert_eq!(
        ctx["page"],
        json!({"url":"https://shop.example.com/p/42?color=red","path":"/p/42","search":"?color=red",
            "title":"Product 42","referrer":"https://www.google.com/search?q=shoes"})
    );
    assert_eq!(ctx["screen"], json!({"width":1920,"height":1080}));
    assert_eq!(
        ctx["library"],
        json!({"name":"snowplow","version":"js-4.1.0"})
    );
    assert_eq!(
        ctx["entities"],
        json!([{"schema":"iglu:com.acme/user/jsonschema/1-0-0","data":{"tier":"gold"}}])
    );
    assert_eq!(ctx["snowplow"]["network_userid"], COOKIE_ID);
    assert_eq!(ctx["snowplow"]["domain_sessionidx"], 3);
    assert_eq!(ctx["snowplow"]["br_viewwidth"], 1280);

    let Row { row: r, props, ctx } = &rows["sp-ue"];
    assert_eq!(r["event"], "add_to_cart");
    assert!(
        r["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2024-11-07T17:20:00"),
        "{r}"
    );
    assert_eq!(*props, json!({"sku":"P-42","qty":2}));
    assert_eq!(ctx["schema"], "iglu:com.acme/add_to_cart/jsonschema/1-0-0");
    // No duid: the cookie's network user id is the anonymous id.
    assert_eq!(r["anonymous_id"], COOKIE_ID);

    let Row { row: r, props, .. } = &rows["sp-se"];
    assert_eq!(
        (&r["event_type"], &r["event"]),
        (&json!("track"), &json!("add-to-basket"))
    );
    assert_eq!(
        *props,
        json!({"category":"shop","action":"add-to-basket","value":2.5})
    );
    let Row { row: r, props, .. } = &rows["sp-pp"];
    assert_eq!(r["event"], "page_ping");
    assert_eq!(
        *props,
        json!({"min_x":0,"max_x":1280,"min_y":10,"max_y":2400})
    );
    let Row { row: r, props, .. } = &rows["sp-tr"];
    assert_eq!(r["event"], "transaction");
    assert_eq!(
        *props,
        json!({"order_id":"o-1","total":99.5,"currency":"INR"})
    );
    let Row { row: r, props, .. } = &rows["sp-ti"];
    assert_eq!(r["event"], "transaction_item");
    assert_eq!(
        *props,
        json!({"order_id":"o-1","sku":"P-42","price":49.75,"quantity":2})
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pixel_without_a_cookie_sets_a_new_one_that_is_the_network_user_id() {
    let server = start().await;
    let resp = server
        .client
        .get(server.url(
            "/i?e=pv&eid=sp-get&aid=shop&page=Pixel+Page&url=https%3A%2F%2Fshop.example.com%2Fpixel",
        ))
        .header("user-agent", "pixel-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/gif");
    assert_eq!(
        header(&resp, "cache-control"),
        "no-cache, no-store, must-revalidate"
    );
    assert_eq!(header(&resp, "access-control-allow-origin"), "*");
    let new_id = sp_cookie(&resp).expect("a new sp cookie");
    assert_eq!(uuid::Uuid::parse_str(&new_id).unwrap().get_version_num(), 4);
    assert_eq!(hex::encode(resp.bytes().await.unwrap()), GIF_HEX);

    let rows = events_exactly(&server, &["sp-get"]).await;
    let Row { row: r, ctx, .. } = &rows["sp-get"];
    assert_eq!(r["event"], "Pixel Page");
    assert_eq!(r["anonymous_id"], new_id.as_str());
    assert_eq!(ctx["userAgent"], "pixel-test/1");
    assert_eq!(ctx["page"]["path"], "/pixel");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_the_other_pixel_path_answers_the_gif_headers_and_stores_nothing() {
    let server = start().await;
    let resp = server
        .client
        .head(server.url("/ice.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/gif");
    // A pixel with an event after it: that event is all `events` holds.
    let resp = server
        .client
        .get(server.url("/i?e=pv&eid=sp-after-head&aid=shop"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    events_exactly(&server, &["sp-after-head"]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pixel_alias_takes_the_network_user_id_and_base64_contexts() {
    let server = start().await;
    let cx = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(CO);
    let resp = server
        .client
        .get(server.url(&format!(
            "/acme/p.gif?e=se&se_ac=alias-click&eid=sp-alias-get&aid=shop&nuid=n-from-query&cx={cx}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/gif");
    assert_eq!(sp_cookie(&resp).as_deref(), Some("n-from-query"));

    let rows = events_exactly(&server, &["sp-alias-get"]).await;
    let Row { row: r, props, ctx } = &rows["sp-alias-get"];
    assert_eq!(r["event"], "alias-click");
    assert_eq!(*props, json!({"action":"alias-click"}));
    assert_eq!(r["anonymous_id"], "n-from-query");
    assert_eq!(ctx["entities"][0]["data"]["tier"], "gold");
    // The collector parameter `nuid` is kept as sent.
    assert_eq!(ctx["snowplow"]["unknown"]["nuid"], "n-from-query");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_post_alias_takes_a_beacon_with_a_base64_self_describing_event() {
    let server = start().await;
    let resp = server
        .client
        .post(server.url("/com.acme/track"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(payload(
            json!([{"e":"ue","eid":"sp-alias-post","aid":"shop","ue_px":UE_PX,"duid":"d-2"}]),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");

    let rows = events_exactly(&server, &["sp-alias-post"]).await;
    let Row { row: r, props, .. } = &rows["sp-alias-post"];
    assert_eq!(r["event"], "add_to_cart");
    assert_eq!(r["anonymous_id"], "d-2");
    assert_eq!(*props, json!({"sku":"P-42","qty":2}));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp_anonymous_keeps_no_ip_zeroes_the_network_user_id_and_expires_the_cookie() {
    let server = start().await;
    let resp = server
        .client
        .get(server.url("/i?e=pv&eid=sp-anon&aid=shop"))
        .header("sp-anonymous", "*")
        .header("cookie", format!("sp={COOKIE_ID}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = header(&resp, "set-cookie");
    assert!(
        cookie.starts_with("sp=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
        "{cookie}"
    );
    // Without a cookie, SP-Anonymous sets none.
    let resp = server
        .client
        .get(server.url("/ice.png"))
        .header("sp-anonymous", "*")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("set-cookie").is_none());

    let rows = events_exactly(&server, &["sp-anon"]).await;
    let Row { row: r, ctx, .. } = &rows["sp-anon"];
    assert_eq!(r["anonymous_id"], "00000000-0000-0000-0000-000000000000");
    assert!(ctx.get("ip").is_none(), "{ctx}");
    assert_eq!(
        ctx["snowplow"]["network_userid"],
        "00000000-0000-0000-0000-000000000000"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_app_id_is_refused_per_event_and_a_request_of_only_those_is_401() {
    let server = start().await;
    let post = |events: Value| {
        server
            .client
            .post(server.url(TP2))
            .body(payload(events))
            .send()
    };
    let resp = post(json!([{"e":"pv","eid":"sp-intruder","aid":"intruder"}]))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(!header(&resp, "access-control-allow-origin").is_empty());
    let resp = post(json!([
        {"e":"pv","eid":"sp-intruder-2","aid":"intruder"},
        {"e":"pv","eid":"sp-mixed-ok","aid":"shop"}
    ]))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    events_exactly(&server, &["sp-mixed-ok"]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_is_accepted_and_becomes_a_typed_bad_row() {
    // The tracker protocol cannot say which event of a request was bad, so each is kept.
    let server = start().await;
    let resp = server
        .client
        .post(server.url(TP2))
        .body(payload(json!([{"e":"zz","aid":"shop","eid":"sp-zz"}])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = server
        .client
        .get(server.url("/i?url=x&aid=shop&eid=sp-noe"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    bad_rows_exactly(&server, &[("sp-noe", "no \"e\""), ("sp-zz", "zz")]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_bad_input_is_a_4xx_with_a_reason_and_cors_headers() {
    let server = start().await;
    let tp2 = server.url(TP2);
    let client = &server.client;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client.post(&tp2).body(
                json!({"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":[{"e":"pv"}]})
                    .to_string(),
            ),
            400,
            "unsupported schema",
        ),
        (
            client.post(&tp2).body("{\"schema\":"),
            400,
            "malformed json",
        ),
        (
            client.post(&tp2).header("content-encoding", "br").body("x"),
            415,
            "unsupported content encoding",
        ),
    ];
    for (req, status, needle) in cases {
        let resp = req.header("origin", ORIGIN).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{needle}");
        assert_eq!(header(&resp, "access-control-allow-origin"), ORIGIN);
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{needle}: {text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robots_txt_disallows_everything() {
    let server = start().await;
    let resp = server
        .client
        .get(server.url("/robots.txt"))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("Disallow: /"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowplow_answers_503_with_retry_after_on_backlog() {
    // No runner: the raw backlog only grows.
    let server = TestServer::start(
        r#"roles = ["collector"]

[collector]
max_backlog_events = 1
"#,
    )
    .await;
    let (client, base) = (&server.client, &server.base);
    let two = payload(json!([{"e":"pv","eid":"b1"},{"e":"pv","eid":"b2"}]));
    let resp = client
        .post(format!("{base}{TP2}"))
        .body(two.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for req in [
        client.post(format!("{base}{TP2}")).body(two),
        client.get(format!("{base}/i?e=pv&eid=b3")),
    ] {
        let resp = req.header("origin", ORIGIN).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(header(&resp, "retry-after"), "1");
        assert_eq!(header(&resp, "access-control-allow-origin"), ORIGIN);
        assert!(resp.text().await.unwrap().contains("wait for processing"));
    }
    server.shutdown().await;
}
