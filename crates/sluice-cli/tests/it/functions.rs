//! `sluice functions` through the real binary, while events stream in: deploys and a rollback
//! during ingest lose and duplicate nothing (every acked event is in `events` once, stamped by
//! the version that ran its batch); list, show, logs and stats answer; a restart keeps the
//! running version. After a key rotation, `sluice functions reseal` moves every version's
//! secrets to the new key, so that the server starts with the new key alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{BIN, sluice, sql};
use sluice_testkit::{SluiceProcess, wait_until};

/// Events the client streams: 60 batches of 20.
const STREAMED: usize = 1200;

/// Writes `stamp<v>.js` in `dir`: a batch function that logs and stamps each event with `v`.
fn stamp_code(dir: &Path, v: u32) -> PathBuf {
    let path = dir.join(format!("stamp{v}.js"));
    std::fs::write(
        &path,
        format!(
            "// v{v}\nexport function process(events, ctx) {{\n  console.log('batch of', events.length, 'on', ctx.partition);\n  return events.map(e => ({{...e, stamped: {v}}}));\n}}\n"
        ),
    )
    .unwrap();
    path
}

/// `sluice functions deploy stamp FILE --server URL EXTRA...`: its output.
fn deploy(url: &str, file: &Path, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec![
        "functions",
        "deploy",
        "stamp",
        file.to_str().unwrap(),
        "--server",
        url,
    ];
    args.extend_from_slice(extra);
    sluice(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_and_rollbacks_during_ingest_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let url = server.url();
    let out = deploy(
        &url,
        &stamp_code(dir.path(), 1),
        &["--batch-size", "25", "--timeout", "2000"],
    )?;
    assert!(out.starts_with("stamp v1 created (batch mode)"), "{out}");

    stream_while_v2_is_deployed_and_rolled_back(&url, &stamp_code(dir.path(), 2)).await?;
    every_streamed_event_is_in_events_once_stamped(&data)?;
    list_show_logs_and_stats_answer(&url)?;
    a_restart_runs_the_same_version(&mut server, &data).await?;
    let url = server.url();
    let out = sluice(&["functions", "delete", "stamp", "--server", &url])?;
    assert_eq!(out.trim(), "stamp deleted");
    assert_eq!(
        sluice(&["functions", "list", "--server", &url])?.trim(),
        "no functions deployed"
    );
    server.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// A client streams batches of 20 events while `v2` is deployed and then rolled back; every
/// batch is acked.
async fn stream_while_v2_is_deployed_and_rolled_back(url: &str, v2: &Path) -> anyhow::Result<()> {
    let sender = {
        let url = url.to_string();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = 0usize;
            for b in 0..STREAMED / 20 {
                let body: String = (0..20)
                    .map(|i| {
                        format!(
                            "{{\"event_id\":\"s{b}-{i}\",\"event\":\"Streamed\",\"user_id\":\"u{}\"}}\n",
                            (b * 20 + i) % 13
                        )
                    })
                    .collect();
                let resp = client
                    .post(format!("{url}/v1/events"))
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(resp.status(), 200);
                acked += 20;
                tokio::task::yield_now().await;
            }
            acked
        })
    };
    let out = tokio::task::spawn_blocking({
        let (url, v2) = (url.to_string(), v2.to_path_buf());
        move || deploy(&url, &v2, &["--batch-size", "25"])
    })
    .await??;
    assert!(out.starts_with("stamp v2 created"), "{out}");
    let out = tokio::task::spawn_blocking({
        let url = url.to_string();
        move || sluice(&["functions", "rollback", "stamp", "--server", &url])
    })
    .await??;
    assert_eq!(out.trim(), "stamp now runs v1");
    assert_eq!(sender.await?, STREAMED);
    Ok(())
}

fn every_streamed_event_is_in_events_once_stamped(data: &Path) -> anyhow::Result<()> {
    let rows = wait_until(Duration::from_secs(60), "every streamed event", || {
        let rows = sql(
            data,
            "SELECT count(*) AS n, count(DISTINCT event_id) AS d, min(properties) AS p FROM events WHERE event = 'Streamed'",
        )?;
        Ok((rows[0]["n"] == STREAMED).then_some(rows))
    })?;
    assert_eq!(rows[0]["d"], STREAMED, "no event twice");
    let stamped = sql(
        data,
        "SELECT properties FROM events WHERE event = 'Streamed'",
    )?;
    assert!(stamped.iter().all(|r| {
        let p = r["properties"].as_str().unwrap_or_default();
        p.contains("\"stamped\":1") || p.contains("\"stamped\":2")
    }));
    Ok(())
}

fn list_show_logs_and_stats_answer(url: &str) -> anyhow::Result<()> {
    // `--url` is the older name of `--server`.
    let list = sluice(&["functions", "list", "--url", url])?;
    assert!(
        list.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("stamp") && l.contains("batch") && l.contains("enrich")),
        "{list}"
    );
    let show = sluice(&["functions", "show", "stamp", "--server", url])?;
    assert!(
        show.contains("\"history\"")
            && show.contains("--- code (v1) ---")
            && show.contains("// v1"),
        "{show}"
    );
    let logs = sluice(&["functions", "logs", "stamp", "-n", "3", "--server", url])?;
    assert_eq!(logs.lines().count(), 3, "{logs}");
    assert!(logs.contains("INFO batch of"), "{logs}");
    let stats = sluice(&["functions", "stats", "--json", "--server", url])?;
    let stats: Vec<serde_json::Value> = serde_json::from_str(&stats)?;
    let events_out: u64 = stats
        .iter()
        .map(|s| s["events_out"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(events_out, STREAMED as u64, "{stats:?}");
    assert!(
        stats
            .iter()
            .all(|s| s["lambda_cost_usd"].as_f64().unwrap_or(0.0) > 0.0 || s["invocations"] == 0)
    );
    let table = sluice(&["functions", "stats", "--server", url])?;
    assert!(
        table.contains("Lambda USD") && table.contains("stamp"),
        "{table}"
    );
    let err = Command::new(BIN)
        .args([
            "functions",
            "rollback",
            "stamp",
            "--to",
            "9",
            "--server",
            url,
        ])
        .output()?;
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no version 9"));
    Ok(())
}

async fn a_restart_runs_the_same_version(
    server: &mut SluiceProcess,
    data: &Path,
) -> anyhow::Result<()> {
    assert!(server.terminate(Duration::from_secs(30))?.success());
    server.restart()?;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/events", server.url()))
        .body("{\"event_id\":\"after-restart\",\"event\":\"Streamed\"}")
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let rows = wait_until(
        Duration::from_secs(60),
        "the event after the restart",
        || {
            let rows = sql(
                data,
                "SELECT properties FROM events WHERE event_id = 'after-restart'",
            )?;
            Ok((!rows.is_empty()).then_some(rows))
        },
    )?;
    assert!(
        rows[0]["properties"]
            .as_str()
            .unwrap()
            .contains("\"stamped\":1")
    );
    Ok(())
}

#[test]
fn reseal_moves_every_version_to_the_new_key_so_the_old_one_can_go() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // A config with `current` as the key and `previous` kept to open, each key in a file.
    let config = |name: &str, current: &str, previous: &[&str]| -> anyhow::Result<PathBuf> {
        let file = |hex: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(format!("{}.key", &hex[..8]));
            std::fs::write(&path, hex)?;
            Ok(path)
        };
        let previous: Vec<PathBuf> = previous.iter().map(|h| file(h)).collect::<Result<_, _>>()?;
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[functions]\nsecrets_key_file = {:?}\nprevious_secrets_key_files = {previous:?}\n",
                file(current)?
            ),
        )?;
        Ok(path)
    };
    let (old, new) = ("6d".repeat(32), "7e".repeat(32));
    let id =
        |hex: &str| sluice_functions::udf::SecretsKey::from_hex(hex).map(|k| k.id().to_string());
    let (old_id, new_id) = (id(&old)?, id(&new)?);
    let serve = |config: &Path| {
        SluiceProcess::spawn(
            Path::new(BIN),
            &data,
            &["--config", config.to_str().unwrap()],
        )
    };

    let mut server = serve(&config("old.toml", &old, &[])?)?;
    for v in [1, 2] {
        let salt = format!("SALT=salt-{v}");
        deploy(
            &server.url(),
            &stamp_code(dir.path(), v),
            &["--secret", &salt],
        )?;
    }
    server.terminate(Duration::from_secs(30))?;
    let mut server = serve(&config("rotated.toml", &new, &[&old])?)?;
    let url = server.url();
    let dry = sluice(&["functions", "reseal", "--dry-run", "--server", &url])?;
    assert!(
        dry.starts_with(&format!(
            "would reseal 2 secret values with key {new_id} (2 from key {old_id})\n"
        )) && dry.contains("stamp")
            && dry.ends_with(&format!("keys in use now: {old_id} (2)\n")),
        "{dry}"
    );
    let done = sluice(&["functions", "reseal", "--server", &url])?;
    assert!(
        done.starts_with("resealed 2 secret values")
            && done.contains("v1 v2")
            && done.ends_with(&format!("keys in use: {new_id} (2)\n")),
        "{done}"
    );
    let again = sluice(&["functions", "reseal", "--json", "--server", &url])?;
    let again: serde_json::Value = serde_json::from_str(&again)?;
    assert_eq!(
        again["resealed"],
        serde_json::json!({"by_key": {}, "plain": 0}),
        "{again}"
    );
    server.terminate(Duration::from_secs(30))?;

    // The new key alone opens every version: the server starts, and a rollback runs v1.
    let mut server = serve(&config("new.toml", &new, &[])?)?;
    let out = sluice(&["functions", "rollback", "stamp", "--server", &server.url()])?;
    assert_eq!(out.trim(), "stamp now runs v1");
    server.terminate(Duration::from_secs(30))?;
    Ok(())
}
