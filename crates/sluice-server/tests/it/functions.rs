//! User functions through a running server: deploy over HTTP (JSON and raw module bodies),
//! events changed by a function in `events`, throwing and looping events as `function_failure`
//! bad rows while the rest flows, logs, metering in `/v1/functions/stats` and `/metrics`,
//! rollback, delete, and the admin guard.

use serde_json::{Value, json};
use sluice_testkit::server::TestServer;

const ADMIN: &str = "admin-token-functions-0123";

/// A server with an admin token, whose requests through [`TestServer::get_json`] and
/// [`TestServer::sql_rows`] send it.
async fn start() -> TestServer {
    let mut server = TestServer::start(&format!(
        r#"
admin_token = "{ADMIN}"
[lake]
flush_interval = "100ms"
"#
    ))
    .await;
    server.token = Some(ADMIN.to_string());
    server
}

/// `PUT /v1/functions/NAME` with a JSON body, as the admin.
async fn put_json(server: &TestServer, name: &str, body: Value) -> reqwest::Response {
    server
        .client
        .put(server.url(&format!("/v1/functions/{name}")))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The function `tier`: adds `plan_tier` from its config, logs, and reads a secret.
fn tier(t: &str) -> Value {
    json!({
        "code": "export function transform(e, ctx) { console.log('tiering', e.event_id, ctx.secrets.key.length); return {...e, plan_tier: ctx.config.tier}; }",
        "config": {"tier": t},
        "secrets": {"key": "hunter2"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_needs_the_admin_and_bad_code_is_refused_with_its_reason() {
    let server = start().await;
    let r = server
        .client
        .put(server.url("/v1/functions/tier"))
        .json(&json!({"code": "export function transform(e) { return e; }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = put_json(
        &server,
        "tier",
        json!({"code": "export function nothing() {}"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("neither process"));
    let r = put_json(
        &server,
        "tier",
        json!({"code": "export function transform(e) { return e; }", "batch_size": 0}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = put_json(&server, "tier", json!({"code": "x", "bogus": 1})).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("bogus"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_deploy_run_fail_meter_and_roll_back_over_http() {
    let server = start().await;
    deploy_tier_gate_and_spin(&server).await;
    send_twenty_events(&server).await;
    changed_events_land_and_failures_are_bad_rows(&server).await;
    logs_and_metering_name_each_function(&server).await;
    a_new_version_then_a_rollback_take_effect_without_a_restart(&server).await;
    show_hides_secrets_and_delete_respects_the_order(&server).await;
    server.shutdown().await;
}

/// v1 of `tier` adds a field from its config and logs; `gate` after it throws for poisoned
/// events (a raw module body, options in the query); `spin` loops forever on some.
async fn deploy_tier_gate_and_spin(server: &TestServer) {
    let r = put_json(server, "tier", tier("gold")).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["mode"].as_str()),
        (Some(1), Some("event"))
    );
    let r = put_json(server, "tier", tier("gold")).await;
    assert_eq!(
        r.status(),
        200,
        "the same code and settings make no new version"
    );
    let r = server
        .client
        .put(server.url("/v1/functions/gate?after=tier&max_retries=0&batch_size=10"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/javascript")
        .body("export function process(events) { const out = []; for (const e of events) { if (e.properties.poison) throw new TypeError('poisoned ' + e.event_id); out.push(e); if (e.properties.n === 0) out.push({...e, event: 'Echoed'}); } return out; }")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = put_json(
        server,
        "spin",
        json!({"code": "export function transform(e) { while (e.properties.spin) {} return e; }",
               "after": "validate", "timeout_ms": 100, "max_retries": 0}),
    )
    .await;
    assert_eq!(r.status(), 201);
}

/// c00…c19; c03 and c11 are poisoned for `gate`, c07 makes `spin` loop.
async fn send_twenty_events(server: &TestServer) {
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({"event": "Clicked", "event_id": format!("c{i:02}"), "userId": format!("u{}", i % 4),
                   "properties": {"n": i, "poison": i == 3 || i == 11, "spin": i == 7}})
        })
        .collect();
    let r = server
        .client
        .post(server.url("/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn changed_events_land_and_failures_are_bad_rows(server: &TestServer) {
    // 20 events less 3 failed, plus the one `gate` split off c00.
    let good = server
        .sql_rows(
            "SELECT event_id, event, properties FROM events ORDER BY event_id",
            18,
        )
        .await;
    assert_eq!(good.len(), 18);
    assert_eq!(
        (good[0]["event_id"].as_str(), good[0]["event"].as_str()),
        (Some("c00"), Some("Clicked"))
    );
    assert_eq!(
        (good[1]["event_id"].as_str(), good[1]["event"].as_str()),
        (Some("c00#1"), Some("Echoed"))
    );
    for row in &good {
        let props: Value = serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
        assert_eq!(props["plan_tier"], "gold", "{row}");
    }
    let bad = server
        .sql_rows(
            "SELECT event_id, kind, function, reason FROM bad_rows ORDER BY event_id",
            3,
        )
        .await;
    let got: Vec<(&str, &str, &str)> = bad
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
                r["function"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("c03", "function_failure", "function:gate:v1"),
            ("c07", "function_failure", "function:spin:v1"),
            ("c11", "function_failure", "function:gate:v1"),
        ]
    );
    assert!(
        bad[0]["reason"]
            .as_str()
            .unwrap()
            .contains("TypeError: poisoned c03")
    );
    assert!(
        bad[1]["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 100 ms")
    );
}

async fn logs_and_metering_name_each_function(server: &TestServer) {
    let logs = server.get_json("/v1/functions/tier/logs?lines=5").await;
    let lines = logs["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 5);
    assert!(
        lines[0].as_str().unwrap().contains(" v1 INFO tiering c"),
        "{logs}"
    );
    let gate_logs = server.get_json("/v1/functions/gate/logs").await;
    assert!(
        gate_logs.to_string().contains("ERROR invocation of"),
        "{gate_logs}"
    );
    let stats = server.get_json("/v1/functions/stats").await;
    let tier_stats = stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["function"] == "tier")
        .unwrap();
    // 20 events less the one `spin` (after validate) gave up on.
    assert_eq!(tier_stats["events_in"], 19);
    assert!(tier_stats["lambda_cost_usd"].as_f64().unwrap() > 0.0);
    let metrics = server.get_text("/metrics").await;
    assert!(metrics.contains("sluice_function_invocations_total{function=\"tier\",version=\"1\"}"));
    // The batch with the looping event timed out, and so did each half holding it.
    assert!(metrics.contains(
        "sluice_function_errors_total{function=\"spin\",version=\"1\",kind=\"timeout\"} "
    ));
    assert!(metrics.contains("# TYPE sluice_function_duration_seconds histogram"));
    assert!(
        metrics.contains("sluice_function_lambda_cost_usd_total{function=\"gate\",version=\"1\"}")
    );
}

/// Sends one event `id` and returns its `properties` as stored.
pub(crate) async fn stored_properties_of(server: &TestServer, id: &str) -> String {
    let r = server
        .client
        .post(server.url("/v1/events"))
        .json(&json!({"event": "Clicked", "event_id": id, "userId": "u9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let query = format!("SELECT properties FROM events WHERE event_id = '{id}'");
    let rows = server.sql_rows(&query, 1).await;
    rows[0]["properties"].as_str().unwrap().to_string()
}

/// v2, then a rollback to v1: each takes effect without a restart.
async fn a_new_version_then_a_rollback_take_effect_without_a_restart(server: &TestServer) {
    assert_eq!(put_json(server, "tier", tier("silver")).await.status(), 201);
    assert!(
        stored_properties_of(server, "after-v2")
            .await
            .contains("silver")
    );
    let r = server
        .client
        .post(server.url("/v1/functions/tier/rollback"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 1);
    assert!(
        stored_properties_of(server, "after-rollback")
            .await
            .contains("gold")
    );
}

async fn show_hides_secrets_and_delete_respects_the_order(server: &TestServer) {
    let shown = server.get_json("/v1/functions/tier").await;
    assert_eq!(shown["active"], 1);
    // Deploys push onto the history, a rollback pops: v2 is gone from it, v1 runs.
    assert_eq!(shown["history"], json!([1]));
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);
    assert!(!shown.to_string().contains("hunter2"));
    assert!(shown["code"].as_str().unwrap().contains("plan_tier"));
    let del = |name: &str| {
        server
            .client
            .delete(server.url(&format!("/v1/functions/{name}")))
            .bearer_auth(ADMIN)
            .send()
    };
    // `gate` runs after `tier`.
    assert_eq!(del("tier").await.unwrap().status(), 409);
    assert_eq!(del("gate").await.unwrap().status(), 200);
    assert_eq!(del("tier").await.unwrap().status(), 200);
    assert_eq!(del("tier").await.unwrap().status(), 404);
    let list = server.get_json("/v1/functions").await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["spin"]);
}
