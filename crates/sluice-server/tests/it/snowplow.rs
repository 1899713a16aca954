//! The Snowplow tracker protocol end to end in one process: a POST batch, GET pixels (through a
//! path alias too), `SP-Anonymous`, the CORS preflight and the `sp` cookie, checked by the
//! answers and by exactly the expected rows in `events` and `bad_rows` through `POST /v1/sql`.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowplow_post_batch_and_pixels_land_in_events() {
    let server = TestServer::start(&format!(
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
    .await;
    let (client, base) = (&server.client, &server.base);

    // CORS preflight, on the canonical path and an alias.
    for path in [TP2, "/com.acme/track"] {
        let resp = client
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
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

    // A POST batch: every event type, one event the collector refuses (no `e`), and one it
    // accepts that the runner cannot read (a structured event without an action).
    let batch = payload(json!([
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
    ]));
    for attempt in 0..2 {
        let resp = client
            .post(format!("{base}{TP2}"))
            .header("origin", ORIGIN)
            .header("content-type", "application/json; charset=utf-8")
            .header("cookie", format!("other=1; sp={COOKIE_ID}"))
            .header("user-agent", "Mozilla/5.0 test")
            .body(batch.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "attempt {attempt}");
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

    // A pixel without a cookie: a new UUIDv4 cookie, recorded as the network user id.
    let resp = client
        .get(format!(
            "{base}/i?e=pv&eid=sp-get&aid=shop&page=Pixel+Page&url=https%3A%2F%2Fshop.example.com%2Fpixel"
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

    // HEAD on the other pixel path, with no event: the GIF headers, nothing stored.
    let resp = client.head(format!("{base}/ice.png")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/gif");

    // The pixel alias, with the network user id in `nuid` and base64 contexts.
    let cx = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(CO);
    let resp = client
        .get(format!(
            "{base}/acme/p.gif?e=se&se_ac=alias-click&eid=sp-alias-get&aid=shop&nuid=n-from-query&cx={cx}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/gif");
    assert_eq!(sp_cookie(&resp).as_deref(), Some("n-from-query"));

    // The POST alias, as text/plain (sendBeacon), with a base64 self-describing event.
    let resp = client
        .post(format!("{base}/com.acme/track"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(payload(
            json!([{"e":"ue","eid":"sp-alias-post","aid":"shop","ue_px":UE_PX,"duid":"d-2"}]),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");

    // SP-Anonymous: no IP, an all-zero network user id, and the existing cookie expired.
    let resp = client
        .get(format!("{base}/i?e=pv&eid=sp-anon&aid=shop"))
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
    let resp = client
        .get(format!("{base}/ice.png"))
        .header("sp-anonymous", "*")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("set-cookie").is_none());

    // App ids decide the source: an unknown one is refused per event, and a request where
    // every event is refused answers 401.
    let resp = client
        .post(format!("{base}{TP2}"))
        .body(payload(
            json!([{"e":"pv","eid":"sp-intruder","aid":"intruder"}]),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(!header(&resp, "access-control-allow-origin").is_empty());
    let resp = client
        .post(format!("{base}{TP2}"))
        .body(payload(json!([
            {"e":"pv","eid":"sp-intruder-2","aid":"intruder"},
            {"e":"pv","eid":"sp-mixed-ok","aid":"shop"}
        ])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Wrong content is not refused: the tracker protocol cannot say which event of a request
    // was bad, so each is kept and becomes a typed bad row (checked below).
    let resp = client
        .post(format!("{base}{TP2}"))
        .body(payload(json!([{"e":"zz","aid":"shop","eid":"sp-zz"}])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(format!("{base}/i?url=x&aid=shop&eid=sp-noe"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Permanently bad input: 4xx with a reason, CORS headers included.
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client.post(format!("{base}{TP2}")).body(
                json!({"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":[{"e":"pv"}]})
                    .to_string(),
            ),
            400,
            "unsupported schema",
        ),
        (
            client.post(format!("{base}{TP2}")).body("{\"schema\":"),
            400,
            "malformed json",
        ),
        (
            client
                .post(format!("{base}{TP2}"))
                .header("content-encoding", "br")
                .body("x"),
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

    let resp = client
        .get(format!("{base}/robots.txt"))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("Disallow: /"));

    // Exactly the expected rows.
    let expected = [
        "sp-alias-get",
        "sp-alias-post",
        "sp-anon",
        "sp-get",
        "sp-mixed-ok",
        "sp-pp",
        "sp-pv",
        "sp-se",
        "sp-ti",
        "sp-tr",
        "sp-ue",
    ];
    let bad = wait_rows(
        client,
        base,
        "SELECT event_id, kind, reason, source FROM bad_rows ORDER BY event_id",
        |rows| rows.len() >= 3,
    )
    .await;
    assert_eq!(bad.len(), 3, "{bad:?}");
    for (row, (id, needle)) in
        bad.iter()
            .zip([("sp-bad", "se_ac"), ("sp-noe", "no \"e\""), ("sp-zz", "zz")])
    {
        assert_eq!(row["event_id"], id);
        assert_eq!(row["kind"], "parse");
        assert!(row["reason"].as_str().unwrap().contains(needle), "{row}");
    }
    let n = expected.len();
    wait_rows(
        client,
        base,
        "SELECT count(*) AS n FROM events",
        move |rows| rows.first().and_then(|r| r["n"].as_u64()) == Some(n as u64),
    )
    .await;
    let rows = sql(
        client,
        base,
        "SELECT event_id, event_type, event, source, user_id, anonymous_id, timestamp, sent_at, \
         properties, context FROM events ORDER BY event_id",
    )
    .await
    .unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected);
    let row = |id: &str| {
        let r = rows.iter().find(|r| r["event_id"] == id).unwrap().clone();
        let props: Value = serde_json::from_str(r["properties"].as_str().unwrap()).unwrap();
        let ctx: Value = serde_json::from_str(r["context"].as_str().unwrap()).unwrap();
        (r, props, ctx)
    };
    for r in &rows {
        assert_eq!(r["source"], "web", "{r}");
    }

    let (r, props, ctx) = row("sp-pv");
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
    assert_eq!(props, json!({}));
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

    let (r, props, ctx) = row("sp-ue");
    assert_eq!(r["event"], "add_to_cart");
    assert!(
        r["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2024-11-07T17:20:00"),
        "{r}"
    );
    assert_eq!(props, json!({"sku":"P-42","qty":2}));
    assert_eq!(ctx["schema"], "iglu:com.acme/add_to_cart/jsonschema/1-0-0");
    // No duid: the cookie's network user id is the anonymous id.
    assert_eq!(r["anonymous_id"], COOKIE_ID);

    let (r, props, _) = row("sp-se");
    assert_eq!(
        (&r["event_type"], &r["event"]),
        (&json!("track"), &json!("add-to-basket"))
    );
    assert_eq!(
        props,
        json!({"category":"shop","action":"add-to-basket","value":2.5})
    );
    let (r, props, _) = row("sp-pp");
    assert_eq!(r["event"], "page_ping");
    assert_eq!(
        props,
        json!({"min_x":0,"max_x":1280,"min_y":10,"max_y":2400})
    );
    let (r, props, _) = row("sp-tr");
    assert_eq!(r["event"], "transaction");
    assert_eq!(
        props,
        json!({"order_id":"o-1","total":99.5,"currency":"INR"})
    );
    let (r, props, _) = row("sp-ti");
    assert_eq!(r["event"], "transaction_item");
    assert_eq!(
        props,
        json!({"order_id":"o-1","sku":"P-42","price":49.75,"quantity":2})
    );

    let (r, _, ctx) = row("sp-get");
    assert_eq!(r["event"], "Pixel Page");
    assert_eq!(r["anonymous_id"], new_id.as_str());
    assert_eq!(ctx["userAgent"], "pixel-test/1");
    assert_eq!(ctx["page"]["path"], "/pixel");

    let (r, props, ctx) = row("sp-alias-get");
    assert_eq!(r["event"], "alias-click");
    assert_eq!(props, json!({"action":"alias-click"}));
    assert_eq!(r["anonymous_id"], "n-from-query");
    assert_eq!(ctx["entities"][0]["data"]["tier"], "gold");
    // The collector parameter `nuid` is kept as sent.
    assert_eq!(ctx["snowplow"]["unknown"]["nuid"], "n-from-query");

    let (r, props, _) = row("sp-alias-post");
    assert_eq!(r["event"], "add_to_cart");
    assert_eq!(r["anonymous_id"], "d-2");
    assert_eq!(props, json!({"sku":"P-42","qty":2}));

    let (r, _, ctx) = row("sp-anon");
    assert_eq!(r["anonymous_id"], "00000000-0000-0000-0000-000000000000");
    assert!(ctx.get("ip").is_none(), "{ctx}");
    assert_eq!(
        ctx["snowplow"]["network_userid"],
        "00000000-0000-0000-0000-000000000000"
    );

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
