//! Schemas, bad rows and replay through the real binary: events bound to a schema the registry
//! lacks become `schema_violation` bad rows; after `sluice schemas push` the fix is replayed with
//! `sluice replay --bad`; replaying again (bad rows or the whole raw range), also after a
//! restart, adds nothing: `events` holds every event exactly once.

use std::path::{Path, PathBuf};
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

/// How long a test waits for the pipeline.
const WAIT: Duration = Duration::from_secs(60);

/// `SELECT count(*) … FROM bad_rows WHERE event_id = 'o4'`: the invalid order's bad rows.
const O4_BAD_ROWS: &str = "SELECT count(*) AS n FROM bad_rows WHERE event_id = 'o4'";

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
    let mut server = SluiceProcess::spawn(
        Path::new(BIN),
        &data,
        &["--config", config.to_str().unwrap()],
    )?;
    let url = server.url();

    views_and_orders_of_a_missing_schema_are_bad_rows(&url, &data).await?;
    a_dry_run_counts_what_it_would_replay(&url)?;
    push_the_schema_then_replay_the_bad_rows(&url, &data, &order_schema(dir.path())?)?;
    replaying_again_re_drives_only_the_invalid_order(&url)?;
    replaying_after_a_restart_adds_nothing(&mut server, &data)?;
    // A bad request is refused with a reason. (An admin POST without a token needs a content
    // type a browser form cannot send.)
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/replay", server.url()))
        .header("content-type", "application/json")
        .body(r#"{"bad":true,"raw":true}"#)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    server.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// Writes the schema `iglu:com.acme/order/jsonschema/1-0-0` (a required number `total`) in
/// `dir`: its path.
fn order_schema(dir: &Path) -> anyhow::Result<PathBuf> {
    let schema = dir.join("order.json");
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
    Ok(schema)
}

/// 30 page views and 20 orders; one order (`o4`) is invalid even once the schema exists.
async fn views_and_orders_of_a_missing_schema_are_bad_rows(
    url: &str,
    data: &Path,
) -> anyhow::Result<()> {
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

    wait_until(WAIT, "30 events and 20 bad rows", || {
        let good = count(data, "SELECT count(*) AS n FROM events")?;
        let bad = count(
            data,
            "SELECT count(*) AS n FROM bad_rows WHERE kind = 'schema_violation' AND function = 'validate'",
        )?;
        Ok((good == 30 && bad == 20).then_some(()))
    })?;
    Ok(())
}

/// Nothing to replay yet that would succeed: a dry run counts, appends nothing.
fn a_dry_run_counts_what_it_would_replay(url: &str) -> anyhow::Result<()> {
    let dry = replay(url, &["--bad", "--dry-run"])?;
    assert_eq!(dry["candidates"], 20, "{dry}");
    assert_eq!(
        dry["replayed"], 20,
        "a dry run reports what it would replay: {dry}"
    );
    Ok(())
}

/// The fix: push the schema, then replay; the valid orders land, the invalid one fails again
/// and says why.
fn push_the_schema_then_replay_the_bad_rows(
    url: &str,
    data: &Path,
    schema: &Path,
) -> anyhow::Result<()> {
    let pushed = sluice(&["schemas", "push", schema.to_str().unwrap(), "--server", url])?;
    assert!(
        pushed.contains("iglu:com.acme/order/jsonschema/1-0-0 created"),
        "{pushed}"
    );
    let listed = sluice(&["schemas", "list", "--server", url])?;
    assert_eq!(listed.trim(), "iglu:com.acme/order/jsonschema/1-0-0");
    let first = replay(url, &["--bad", "--kind", "schema_violation"])?;
    assert_eq!(first["replayed"], 20, "{first}");
    wait_until(WAIT, "the 19 valid orders in events", || {
        Ok((count(data, "SELECT count(*) AS n FROM events")? == 49).then_some(()))
    })?;
    wait_until(WAIT, "the invalid order failing again", || {
        Ok((count(data, O4_BAD_ROWS)? == 2).then_some(()))
    })?;
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
    Ok(())
}

/// Again: only the still-invalid order is re-driven; nothing good is duplicated, also when
/// the whole raw range is replayed.
fn replaying_again_re_drives_only_the_invalid_order(url: &str) -> anyhow::Result<()> {
    let second = replay(url, &["--bad"])?;
    assert_eq!(second["already_good"], 19, "{second}");
    assert_eq!(second["replayed"], 1, "{second}");
    let raw = replay(
        url,
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
    Ok(())
}

fn replaying_after_a_restart_adds_nothing(
    server: &mut SluiceProcess,
    data: &Path,
) -> anyhow::Result<()> {
    assert!(server.terminate(Duration::from_secs(60))?.success());
    server.restart()?;
    let third = replay(&server.url(), &["--bad"])?;
    assert_eq!(third["already_good"], 19, "{third}");
    wait_until(WAIT, "replays processed", || {
        Ok((count(data, O4_BAD_ROWS)? >= 4).then_some(()))
    })?;
    assert_eq!(count(data, "SELECT count(*) AS n FROM events")?, 49);
    assert_eq!(
        count(data, "SELECT count(DISTINCT event_id) AS n FROM events")?,
        49
    );
    // Enriched columns arrive with the events.
    assert_eq!(
        count(
            data,
            "SELECT count(*) AS n FROM events WHERE session_id IS NOT NULL AND event_fingerprint IS NOT NULL"
        )?,
        49
    );
    Ok(())
}
