//! Schemas, bad rows and replay through the real binary: events bound to a schema the registry
//! lacks become `schema_violation` bad rows; after `sluice schemas push` the fix is replayed with
//! `sluice replay --bad`; replaying again (bad rows or the whole raw range), also after a
//! restart, adds nothing: `events` holds every event exactly once.

use std::path::Path;
use std::time::Duration;

use crate::support::{BIN, count, sluice};
use sluice_testkit::{SluiceProcess, wait_until};

fn replay(url: &str, what: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut args = vec!["replay", "--server", url];
    args.extend_from_slice(what);
    let line = sluice(&args)?;
    // "scanned S · candidates C · already good G · unreplayable U · replayed R"
    let nums: Vec<i64> = line
        .split(['·', ' '])
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    anyhow::ensure!(nums.len() == 5, "unexpected replay output {line:?}");
    Ok(
        serde_json::json!({"scanned": nums[0], "candidates": nums[1], "already_good": nums[2], "unreplayable": nums[3], "replayed": nums[4]}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_replay_after_a_fix_and_replaying_again_changes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        r#"
[validation]
on_unknown_schema = "bad"
bindings = { "Order Completed" = "iglu:com.acme/order/jsonschema/1-0-0" }
"#,
    )?;
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        serde_json::to_vec(&serde_json::json!({
            "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
            "self": {"vendor": "com.acme", "name": "order", "format": "jsonschema", "version": "1-0-0"},
            "type": "object",
            "properties": {"total": {"type": "number"}},
            "required": ["total"]
        }))?,
    )?;
    let mut server = SluiceProcess::spawn(
        Path::new(BIN),
        &data,
        &["--config", config.to_str().unwrap()],
    )?;
    let url = server.url();

    // 30 page views and 20 orders; one order is invalid even once the schema exists.
    let mut body = String::new();
    for i in 0..50 {
        let line = if i % 5 < 3 {
            format!(
                r#"{{"event_id":"v{i}","event":"Viewed","user_id":"u{}"}}"#,
                i % 7
            )
        } else if i == 4 {
            format!(
                r#"{{"event_id":"o{i}","event":"Order Completed","user_id":"u{}","properties":{{"total":"lots"}}}}"#,
                i % 7
            )
        } else {
            format!(
                r#"{{"event_id":"o{i}","event":"Order Completed","user_id":"u{}","properties":{{"total":{i}}}}}"#,
                i % 7
            )
        };
        body.push_str(&line);
        body.push('\n');
    }
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .body(body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200, "{}", resp.text().await?);

    wait_until(Duration::from_secs(60), "30 events and 20 bad rows", || {
        let good = count(&data, "SELECT count(*) AS n FROM events")?;
        let bad = count(
            &data,
            "SELECT count(*) AS n FROM bad_rows WHERE kind = 'schema_violation' AND function = 'validate'",
        )?;
        Ok((good == 30 && bad == 20).then_some(()))
    })?;

    // Nothing to replay yet that would succeed: a dry run counts, appends nothing.
    let dry = replay(&url, &["--bad", "--dry-run"])?;
    assert_eq!(dry["candidates"], 20, "{dry}");
    assert_eq!(
        dry["replayed"], 20,
        "a dry run reports what it would replay: {dry}"
    );

    // The fix: push the schema, then replay.
    let pushed = sluice(&[
        "schemas",
        "push",
        schema.to_str().unwrap(),
        "--server",
        &url,
    ])?;
    assert!(
        pushed.contains("iglu:com.acme/order/jsonschema/1-0-0 created"),
        "{pushed}"
    );
    let listed = sluice(&["schemas", "list", "--server", &url])?;
    assert_eq!(listed.trim(), "iglu:com.acme/order/jsonschema/1-0-0");
    let first = replay(&url, &["--bad", "--kind", "schema_violation"])?;
    assert_eq!(first["replayed"], 20, "{first}");
    wait_until(
        Duration::from_secs(60),
        "the 19 valid orders in events",
        || Ok((count(&data, "SELECT count(*) AS n FROM events")? == 49).then_some(())),
    )?;
    wait_until(
        Duration::from_secs(60),
        "the invalid order failing again",
        || {
            Ok((count(
                &data,
                "SELECT count(*) AS n FROM bad_rows WHERE event_id = 'o4'",
            )? == 2)
                .then_some(()))
        },
    )?;
    let reason = sluice(&[
        "sql",
        "--format",
        "json",
        "--data-dir",
        data.to_str().unwrap(),
        "SELECT reason FROM bad_rows WHERE event_id = 'o4' ORDER BY failed_at DESC LIMIT 1",
    ])?;
    assert!(
        reason.contains("total"),
        "the new bad row says why: {reason}"
    );

    // Again: only the still-invalid order is re-driven; nothing good is duplicated.
    let second = replay(&url, &["--bad"])?;
    assert_eq!(second["already_good"], 19, "{second}");
    assert_eq!(second["replayed"], 1, "{second}");
    // The whole raw range: everything good is skipped.
    let raw = replay(
        &url,
        &[
            "--raw",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
    )?;
    assert_eq!(raw["candidates"], 50, "{raw}");
    assert_eq!(raw["already_good"], 49, "{raw}");

    // After a restart, too.
    assert!(server.terminate(Duration::from_secs(60))?.success());
    server.restart()?;
    let url = server.url();
    let third = replay(&url, &["--bad"])?;
    assert_eq!(third["already_good"], 19, "{third}");
    wait_until(Duration::from_secs(60), "replays processed", || {
        Ok((count(
            &data,
            "SELECT count(*) AS n FROM bad_rows WHERE event_id = 'o4'",
        )? >= 4)
            .then_some(()))
    })?;
    assert_eq!(count(&data, "SELECT count(*) AS n FROM events")?, 49);
    assert_eq!(
        count(&data, "SELECT count(DISTINCT event_id) AS n FROM events")?,
        49
    );
    // Enriched columns arrive with the events.
    assert_eq!(
        count(
            &data,
            "SELECT count(*) AS n FROM events WHERE session_id IS NOT NULL AND event_fingerprint IS NOT NULL"
        )?,
        49
    );
    // A bad request is refused with a reason. (An admin POST without a token needs a content
    // type a browser form cannot send.)
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/replay"))
        .header("content-type", "application/json")
        .body(r#"{"bad":true,"raw":true}"#)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    server.terminate(Duration::from_secs(30))?;
    Ok(())
}
