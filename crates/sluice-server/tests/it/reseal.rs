//! `POST /v1/functions:reseal` on a running server: after a key rotation, a dry run shows the
//! old key in use and changes nothing; the reseal moves every version to the new key, so the
//! node starts with the new key alone and a rollback to the first version runs it. The route
//! needs the admin, does not shadow a function named `reseal`, and a node without a key
//! refuses with the reason.

use std::path::Path;

use serde_json::{Value, json};
use sluice_functions::udf::SecretsKey;
use sluice_testkit::server::TestServer;

const ADMIN: &str = "admin-token-reseal-0123";
const KEY_A: &str = "1f2e3d4c5b6a79880a1b2c3d4e5f60718293a4b5c6d7e8f90f1e2d3c4b5a6978";
const KEY_B: &str = "2f2e3d4c5b6a79880a1b2c3d4e5f60718293a4b5c6d7e8f90f1e2d3c4b5a6978";

/// `salted` v`n`: puts its secret and its version in every event's properties.
fn salted(n: u32, salt: &str) -> Value {
    json!({
        "code": format!("// v{n}\nexport function transform(e, ctx) {{ return {{...e, salt: ctx.secrets.SALT, v: ctx.version}}; }}"),
        "secrets": {"SALT": salt},
    })
}

fn id(hex: &str) -> String {
    SecretsKey::from_hex(hex).unwrap().id().to_string()
}

/// A node on `data` whose current key is in `current` and previous keys in `previous` (files
/// in `keys`), with the admin token.
async fn node(data: &Path, keys: &Path, current: Option<&str>, previous: &[&str]) -> TestServer {
    let file = |hex: &str| {
        let path = keys.join(hex);
        std::fs::write(&path, hex).unwrap();
        path
    };
    let mut toml = format!("admin_token = \"{ADMIN}\"\n[lake]\nflush_interval = \"100ms\"\n");
    if let Some(current) = current {
        let previous: Vec<_> = previous.iter().map(|h| file(h)).collect();
        toml += &format!(
            "[functions]\nsecrets_key_file = {:?}\nprevious_secrets_key_files = {:?}\n",
            file(current),
            previous
        );
    }
    let mut server = TestServer::start_in(data, &toml).await;
    server.token = Some(ADMIN.to_string());
    server
}

/// `POST /v1/functions:reseal` with `query`, as the admin: the status and the answer.
async fn reseal(server: &TestServer, query: &str) -> (u16, Value) {
    let r = server
        .client
        .post(server.url(&format!("/v1/functions:reseal{query}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn put(server: &TestServer, name: &str, body: Value) -> u16 {
    let r = server
        .client
        .put(server.url(&format!("/v1/functions/{name}")))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// Sends event `id`; its stored `properties`.
async fn properties_of(server: &TestServer, id: &str) -> Value {
    let text = crate::functions::stored_properties_of(server, id).await;
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseal_over_http_lets_the_old_key_go() {
    let (data, keys) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (data, keys) = (data.path(), keys.path());
    let a = node(data, keys, Some(KEY_A), &[]).await;
    assert_eq!(put(&a, "salted", salted(1, "salt-one")).await, 201);
    assert_eq!(put(&a, "salted", salted(2, "salt-two")).await, 201);
    a.shutdown().await;

    let rotated = node(data, keys, Some(KEY_B), &[KEY_A]).await;
    the_route_needs_the_admin_and_leaves_a_function_named_reseal_alone(&rotated).await;
    let (status, dry) = reseal(&rotated, "?dry_run=true").await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["key"], json!(id(KEY_B)));
    assert_eq!(dry["in_use"]["by_key"], json!({ id(KEY_A): 2 }), "{dry}");
    assert_eq!(dry["resealed"]["by_key"], json!({ id(KEY_A): 2 }), "{dry}");
    let (status, done) = reseal(&rotated, "").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["dry_run"], json!(false));
    assert_eq!(
        done["resealed"],
        json!({"by_key": { id(KEY_A): 2 }, "plain": 0})
    );
    assert_eq!(
        done["in_use"],
        json!({"by_key": { id(KEY_B): 2 }, "plain": 0})
    );
    let salted_line = &done["functions"][0];
    assert_eq!(
        (&salted_line["name"], &salted_line["versions"]),
        (&json!("salted"), &json!([1, 2]))
    );
    let (_, again) = reseal(&rotated, "").await;
    assert_eq!(
        again["resealed"],
        json!({"by_key": {}, "plain": 0}),
        "{again}"
    );
    assert_eq!(again["in_use"], done["in_use"]);
    rotated.shutdown().await;

    // Key B alone: the node starts, v2 runs, and a rollback runs v1 with its secret.
    let new_only = node(data, keys, Some(KEY_B), &[]).await;
    let props = properties_of(&new_only, "after-reseal").await;
    assert_eq!(
        (&props["salt"], &props["v"]),
        (&json!("salt-two"), &json!(2))
    );
    let r = new_only
        .client
        .post(new_only.url("/v1/functions/salted/rollback"))
        .bearer_auth(ADMIN)
        .json(&json!({"to": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let props = properties_of(&new_only, "after-rollback").await;
    assert_eq!(
        (&props["salt"], &props["v"]),
        (&json!("salt-one"), &json!(1))
    );
    new_only.shutdown().await;

    // Without a key there is nothing to reseal with.
    let elsewhere = tempfile::tempdir().unwrap();
    let keyless = node(elsewhere.path(), keys, None, &[]).await;
    for query in ["", "?dry_run=true"] {
        let (status, e) = reseal(&keyless, query).await;
        assert_eq!(status, 400, "{e}");
        assert!(
            e["error"].as_str().unwrap().contains("secrets_key_file"),
            "{e}"
        );
    }
    keyless.shutdown().await;
}

async fn the_route_needs_the_admin_and_leaves_a_function_named_reseal_alone(server: &TestServer) {
    let anonymous = server
        .client
        .post(server.url("/v1/functions:reseal"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, e) = reseal(server, "?dry_run=perhaps").await;
    assert_eq!(status, 400, "{e}");
    // `reseal` is a valid function name: its routes are its own.
    let plain = json!({"code": "export function transform(e) { return e; }"});
    assert_eq!(put(server, "reseal", plain).await, 201);
    let shown = server.get_json("/v1/functions/reseal").await;
    assert_eq!(shown["name"], json!("reseal"));
    let deleted = server
        .client
        .delete(server.url("/v1/functions/reseal"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
}
