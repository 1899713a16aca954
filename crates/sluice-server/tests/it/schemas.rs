//! The schema registry over HTTP (Iglu paths, admin token, immutable versions) and what
//! validation and enrichment put in `events`, through a running server.

use serde_json::{Value, json};
use sluice_testkit::http::sql_rows_as;
use sluice_testkit::server::TestServer;

const ADMIN: &str = "admin-token-0123456789";

fn schema(version: &str, props: Value) -> Value {
    json!({
        "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
        "self": {"vendor": "com.acme", "name": "signup", "format": "jsonschema", "version": version},
        "type": "object", "properties": props, "required": ["plan"]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_pushed_read_and_enforced_and_enrichment_fills_columns() {
    let server = TestServer::start(&format!(
        r#"
admin_token = "{ADMIN}"
[lake]
flush_interval = "100ms"
[validation]
bindings = {{ "Signed Up" = "iglu:com.acme/signup/jsonschema/1-0-0" }}
[enrich.referer]
internal_domains = ["example.com"]
"#
    ))
    .await;
    let (c, base) = (&server.client, &server.base);
    let url = format!("{base}/v1/schemas/com.acme/signup/jsonschema/1-0-0");
    let put = |body: Value, token: Option<&str>| {
        let mut r = c.put(&url).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let v1 = schema("1-0-0", json!({"plan": {"enum": ["free", "pro"]}}));
    assert_eq!(put(v1.clone(), None).await.unwrap().status(), 401);
    assert_eq!(put(v1.clone(), Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(put(v1.clone(), Some(ADMIN)).await.unwrap().status(), 201);
    assert_eq!(put(v1.clone(), Some(ADMIN)).await.unwrap().status(), 200);
    let changed = schema("1-0-0", json!({"plan": {"type": "string"}}));
    let r = put(changed, Some(ADMIN)).await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(
        r.headers().get("retry-after").is_none(),
        "a conflict is not retried"
    );
    assert!(r.text().await.unwrap().contains("immutable"));
    // The address and the schema's self must agree; junk is refused with a reason.
    let r = put(schema("2-0-0", json!({})), Some(ADMIN)).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .put(format!("{base}/v1/schemas/com.acme/signup/jsonschema/1-0"))
        .bearer_auth(ADMIN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Read back: with a token configured, reading needs one too.
    let r = c.get(format!("{base}/v1/schemas")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let list: Value = c
        .get(format!("{base}/v1/schemas"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["schemas"],
        json!(["iglu:com.acme/signup/jsonschema/1-0-0"])
    );
    let got: Value = c
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, v1);
    let missing = c
        .get(format!("{base}/v1/schemas/com.acme/nope/jsonschema/1-0-0"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // A schema named after an event gives its typed table's column types: `total` is a number,
    // so an integer first does not make it a bigint column that then refuses 5.5.
    let order = json!({
        "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
        "self": {"vendor": "com.acme", "name": "order_completed", "format": "jsonschema", "version": "1-0-0"},
        "type": "object", "properties": {"total": {"type": "number"}}
    });
    let r = c
        .put(format!(
            "{base}/v1/schemas/com.acme/order_completed/jsonschema/1-0-0"
        ))
        .bearer_auth(ADMIN)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // One valid and one invalid signup, a page view from a search engine on a phone, and two
    // orders.
    let body = [
        json!({"event_id": "o1", "event": "Order Completed", "user_id": "u1", "properties": {"total": 5}}),
        json!({"event_id": "o2", "event": "Order Completed", "user_id": "u1", "properties": {"total": 5.5}}),
        json!({"event_id": "ok", "event": "Signed Up", "user_id": "u1", "properties": {"plan": "pro"}}),
        json!({"event_id": "nope", "event": "Signed Up", "user_id": "u2", "properties": {"plan": "gold"}}),
        json!({"event_id": "pv", "type": "page", "anonymous_id": "a1", "context": {
            "page": {"url": "https://shop.example.com/p/1?utm_source=news&utm_medium=email&fbclid=F1", "referrer": "https://www.bing.com/search?q=red+shoes"},
            "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let r = c
        .post(format!("{base}/v1/events"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let orders = sql_rows_as(
        c,
        base,
        Some(ADMIN),
        "SELECT event_id, total FROM order_completed ORDER BY event_id",
        2,
    )
    .await;
    assert_eq!(orders[0]["total"], 5.0);
    assert_eq!(orders[1]["total"], 5.5);
    let types = sql_rows_as(c, base, Some(ADMIN), "SELECT data_type FROM information_schema.columns WHERE table_name = 'order_completed' AND column_name = 'total'", 1).await;
    assert_eq!(
        types[0]["data_type"], "Float64",
        "the declared type, not the first value's"
    );
    let good = sql_rows_as(c, base, Some(ADMIN), "SELECT event_id, schema, ua_os, ua_device_class, is_bot, page_host, page_path, mkt_source, mkt_medium, mkt_network, refr_medium, refr_source, refr_term, session_index, event_fingerprint FROM events ORDER BY event_id", 4).await;
    assert_eq!(good.len(), 4, "{good:?}");
    assert_eq!(good[0]["event_id"], "o1");
    assert_eq!(good[2]["event_id"], "ok");
    assert_eq!(good[2]["schema"], "iglu:com.acme/signup/jsonschema/1-0-0");
    let pv = &good[3];
    assert_eq!(pv["ua_os"], "iPhone");
    assert_eq!(pv["ua_device_class"], "mobile");
    assert_eq!(pv["is_bot"], false);
    assert_eq!(pv["page_host"], "shop.example.com");
    assert_eq!(pv["page_path"], "/p/1");
    assert_eq!(pv["mkt_source"], "news");
    assert_eq!(pv["mkt_medium"], "email");
    assert_eq!(pv["mkt_network"], "Facebook");
    assert_eq!(pv["refr_medium"], "search");
    assert_eq!(pv["refr_source"], "Bing");
    assert_eq!(pv["refr_term"], "red shoes");
    assert_eq!(pv["session_index"], 1);
    assert_eq!(pv["event_fingerprint"].as_str().map(str::len), Some(32));
    let bad = sql_rows_as(
        c,
        base,
        Some(ADMIN),
        "SELECT event_id, kind, function, reason FROM bad_rows",
        1,
    )
    .await;
    assert_eq!(bad[0]["event_id"], "nope");
    assert_eq!(bad[0]["kind"], "schema_violation");
    assert_eq!(bad[0]["function"], "validate");
    assert!(
        bad[0]["reason"].as_str().unwrap().contains("gold"),
        "{bad:?}"
    );
    server.shutdown().await;
}
