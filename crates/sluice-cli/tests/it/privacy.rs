//! Deleting a person through the real binary (`sluice privacy delete`): their rows leave
//! `events`, the typed tables, `bad_rows` and the Postgres loader's tables, their profile and
//! per-person counters leave the hot tier, everyone else's data stays, their new events (and a
//! replay of their raw records) are dropped, the model's examples waiting for a label forget
//! them, the request is on record with who asked and how many rows went, and once vacuum runs
//! the table versions from before the delete cannot be read any more.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_testkit::{SluiceProcess, wait_until};

use crate::support::{BIN, DEADLINE, count, eventually, nanos, pg_count, sluice};

fn event(id: &str, name: &str, user: Option<&str>, anon: Option<&str>) -> Value {
    let mut e = json!({"event_id": id, "event": name, "properties": {"plan": "pro"}});
    if let Some(u) = user {
        e["user_id"] = u.into();
    }
    if let Some(a) = anon {
        e["anonymous_id"] = a.into();
    }
    e
}

async fn post(client: &reqwest::Client, url: &str, events: &[Value]) -> anyhow::Result<()> {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let resp = client
        .post(format!("{url}/v1/events"))
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "{}", resp.text().await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Postgres server on 127.0.0.1:5432"]
async fn a_deleted_person_is_gone_from_every_copy_and_stays_gone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let schema = format!("privacy_{}_{}", std::process::id(), nanos());
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[loader]
host = "127.0.0.1"
port = 5432
user = "postgres"
database = "test"
schema = "{schema}"
flush_interval = "100ms"

[[hot.counters]]
name = "views"
key = "user"
window = "1h"
kind = "sliding"

[[predict.models]]
name = "buys"
outcome = "Order Completed"
horizon = "30d"
"#
        ),
    )?;
    let mut server = SluiceProcess::spawn(
        Path::new(BIN),
        &data,
        &["--config", config.to_str().unwrap()],
    )?;
    let url = server.url();
    let client = reqwest::Client::new();

    // alice: 4 events under her user id, 2 under her anonymous id, and one event whose date
    // is out of range (a bad row with her id in its payload). bob: 5 events and a bad row.
    let mut events = Vec::new();
    for i in 0..4 {
        events.push(event(&format!("a{i}"), "Page Viewed", Some("alice"), None));
    }
    for i in 0..2 {
        events.push(event(
            &format!("an{i}"),
            "Signed Up",
            None,
            Some("anon-alice"),
        ));
    }
    for i in 0..5 {
        events.push(event(&format!("b{i}"), "Page Viewed", Some("bob"), None));
    }
    let mut late = event("a-late", "Page Viewed", Some("alice"), None);
    late["timestamp"] = "1990-01-01T00:00:00Z".into();
    events.push(late);
    let mut late = event("b-late", "Page Viewed", Some("bob"), None);
    late["timestamp"] = "1990-01-01T00:00:00Z".into();
    events.push(late);
    post(&client, &url, &events).await?;

    wait_until(DEADLINE, "11 events and 2 bad rows in the lake", || {
        let good = count(&data, "SELECT count(*) AS n FROM events")?;
        let typed = count(&data, "SELECT count(*) AS n FROM page_viewed")?;
        let bad = count(&data, "SELECT count(*) AS n FROM bad_rows")?;
        Ok((good == 11 && typed == 9 && bad == 2).then_some(()))
    })?;
    eventually("the loader's tables", || async {
        let all = pg_count(&schema, "events", "true").await?;
        let typed = pg_count(&schema, "signed_up", "true").await?;
        Ok((all == 11 && typed == 2).then_some(()))
    })
    .await?;
    for who in ["alice", "anon-alice", "bob"] {
        let resp = client
            .get(format!("{url}/v1/profiles/{who}"))
            .send()
            .await?;
        let resp = match resp.status() {
            reqwest::StatusCode::OK => resp,
            _ => {
                eventually("profiles", || async {
                    let r = client
                        .get(format!("{url}/v1/profiles/{who}"))
                        .send()
                        .await?;
                    Ok((r.status() == 200).then_some(()))
                })
                .await?;
                client
                    .get(format!("{url}/v1/profiles/{who}"))
                    .send()
                    .await?
            }
        };
        assert_eq!(resp.status(), 200);
    }
    let counter = client
        .get(format!("{url}/v1/counters/views/alice"))
        .send()
        .await?;
    let counter: Value = counter.json().await?;
    assert_eq!(counter["value"].as_f64(), Some(4.0), "{counter}");
    let lake = data.join("lake");
    let before = sluice_lake::LakeRoot::from_path(&lake)?;
    let mut events_table = before.table("events")?;
    events_table.load().await?;
    let version_before = events_table.version().expect("a version");
    let files_before: Vec<String> = events_table.get_file_uris()?.collect();

    // The request, waited for.
    let out = sluice(&[
        "privacy",
        "--server",
        &url,
        "delete",
        "--user",
        "alice",
        "--user",
        "anon-alice",
        "--wait",
    ])?;
    assert!(out.contains("done"), "{out}");
    let request_id = out.split_whitespace().next().unwrap().to_string();

    // Gone from every table; bob is untouched.
    let who = "'alice', 'anon-alice'";
    for (table, left) in [("events", 5), ("page_viewed", 5), ("signed_up", 0)] {
        let q = format!(
            "SELECT count(*) AS n FROM {table} WHERE user_id IN ({who}) OR anonymous_id IN ({who})"
        );
        assert_eq!(count(&data, &q)?, 0, "{table}");
        let all = count(&data, &format!("SELECT count(*) AS n FROM {table}"))?;
        assert_eq!(all, left, "{table} keeps everyone else");
    }
    assert_eq!(
        count(
            &data,
            "SELECT count(*) AS n FROM bad_rows WHERE strpos(payload, 'alice') > 0"
        )?,
        0
    );
    assert_eq!(
        count(&data, "SELECT count(*) AS n FROM bad_rows")?,
        1,
        "bob's bad row stays"
    );
    let filter = "user_id IN ('alice', 'anon-alice') OR anonymous_id IN ('alice', 'anon-alice')";
    assert_eq!(pg_count(&schema, "events", filter).await?, 0);
    assert_eq!(pg_count(&schema, "page_viewed", filter).await?, 0);
    assert_eq!(pg_count(&schema, "signed_up", "true").await?, 0);
    assert_eq!(pg_count(&schema, "events", "true").await?, 5);
    for gone in ["alice", "anon-alice"] {
        let r = client
            .get(format!("{url}/v1/profiles/{gone}"))
            .send()
            .await?;
        assert_eq!(r.status(), 404, "profile {gone}");
    }
    let r = client.get(format!("{url}/v1/profiles/bob")).send().await?;
    assert_eq!(r.status(), 200);
    let counter: Value = client
        .get(format!("{url}/v1/counters/views/alice"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(counter["value"].as_f64(), Some(0.0), "{counter}");

    // The record: who, when, how many rows where; it names no id.
    let record: Value = client
        .get(format!("{url}/v1/privacy/deletions/{request_id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(record["status"], "done", "{record}");
    assert_eq!(record["requested_by"], "open access (local)");
    let rows = |table: &str| {
        record["lake"]
            .as_array()
            .and_then(|t| t.iter().find(|r| r["table"] == table))
            .map_or(0, |r| r["rows_deleted"].as_u64().unwrap_or(0))
    };
    assert_eq!(rows("events"), 6, "{record}");
    assert_eq!(rows("page_viewed"), 4, "{record}");
    assert_eq!(rows("signed_up"), 2, "{record}");
    assert_eq!(rows("bad_rows"), 1, "{record}");
    assert!(
        record["hot_keys_deleted"].as_u64().unwrap() >= 3,
        "{record}"
    );
    assert!(!record.to_string().contains("alice"), "{record}");
    let found: Value = client
        .get(format!("{url}/v1/privacy/deletions?id=anon-alice"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(found["requests"][0]["id"], request_id.as_str());
    let status = sluice(&["privacy", "--server", &url, "status", &request_id])?;
    assert!(status.contains("lake events: 6 rows"), "{status}");

    // New events of alice are dropped; so is a replay of her raw records.
    post(
        &client,
        &url,
        &[
            event("a-new", "Page Viewed", Some("alice"), None),
            event("b-new", "Page Viewed", Some("bob"), None),
        ],
    )
    .await?;
    wait_until(DEADLINE, "bob's new event", || {
        let n = count(
            &data,
            "SELECT count(*) AS n FROM events WHERE event_id = 'b-new'",
        )?;
        Ok((n == 1).then_some(()))
    })?;
    sluice(&["replay", "--server", &url, "--raw"])?;
    wait_until(DEADLINE, "the replay to pass through", || {
        let n = count(&data, "SELECT count(*) AS n FROM events")?;
        Ok((n == 6).then_some(()))
    })?;
    assert_eq!(
        count(
            &data,
            "SELECT count(*) AS n FROM events WHERE user_id = 'alice'"
        )?,
        0
    );
    let r = client
        .get(format!("{url}/v1/profiles/alice"))
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    // Time travel: the version before the delete still reads until vacuum removes its files.
    let missing = |files: &[String]| {
        files
            .iter()
            .filter(|f| !Path::new(f.trim_start_matches("file://")).exists())
            .count()
    };
    assert_eq!(missing(&files_before), 0, "old files stay until vacuum");
    sluice(&[
        "lake",
        "vacuum",
        "--data-dir",
        data.to_str().unwrap(),
        "--retention",
        "0s",
        "--force",
    ])?;
    assert!(
        missing(&files_before) > 0,
        "vacuum removes the files that held alice"
    );
    let mut old = before.table("events")?;
    let readable = match old.load_version(version_before).await {
        Ok(()) => old
            .get_file_uris()
            .map(|files| missing(&files.collect::<Vec<_>>()) == 0)
            .unwrap_or(false),
        Err(_) => false,
    };
    assert!(
        !readable,
        "version {version_before} can no longer be read in full"
    );

    // The model's pending examples (each with its person's id) left its state: the checkpoint
    // written at shutdown names bob, whose examples still wait for a label, and not alice.
    server.terminate(Duration::from_secs(30))?;
    let checkpoint = std::fs::read(data.join("models").join("buys.ftrl"))?;
    let holds = |id: &str| {
        checkpoint
            .windows(id.len() + 2)
            .any(|w| w == format!("\"{id}\"").as_bytes())
    };
    assert!(holds("bob"), "bob's pending examples are checkpointed");
    assert!(!holds("alice") && !holds("anon-alice"), "alice's are gone");
    Ok(())
}
