//! `sluice functions` through the real binary, while events stream in: deploys and a rollback
//! during ingest lose and duplicate nothing (every acked event is in `events` once, stamped by
//! the version that ran its batch); list, show, logs and stats answer; a restart keeps the
//! running version.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{BIN, sluice, sql};
use sluice_testkit::{SluiceProcess, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_and_rollbacks_during_ingest_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let url = server.url();
    let code = |v: u32| {
        let path = dir.path().join(format!("stamp{v}.js"));
        std::fs::write(
            &path,
            format!(
                "// v{v}\nexport function process(events, ctx) {{\n  console.log('batch of', events.length, 'on', ctx.partition);\n  return events.map(e => ({{...e, stamped: {v}}}));\n}}\n"
            ),
        )
        .unwrap();
        path
    };
    let (v1, v2) = (code(1), code(2));
    let deploy = |file: &Path, extra: &[&str]| -> anyhow::Result<String> {
        let mut args = vec![
            "functions",
            "deploy",
            "stamp",
            file.to_str().unwrap(),
            "--server",
            &url,
        ];
        args.extend_from_slice(extra);
        sluice(&args)
    };
    let out = deploy(&v1, &["--batch-size", "25", "--timeout", "2000"])?;
    assert!(out.starts_with("stamp v1 created (batch mode)"), "{out}");

    // A client streams batches of 20 events while v2 is deployed and then rolled back.
    let sender = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = 0usize;
            for b in 0..60 {
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
        let v2 = v2.clone();
        let url = url.clone();
        move || {
            sluice(&[
                "functions",
                "deploy",
                "stamp",
                v2.to_str().unwrap(),
                "--server",
                &url,
                "--batch-size",
                "25",
            ])
        }
    })
    .await??;
    assert!(out.starts_with("stamp v2 created"), "{out}");
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || sluice(&["functions", "rollback", "stamp", "--server", &url])
    })
    .await??;
    assert_eq!(out.trim(), "stamp now runs v1");
    let acked = sender.await?;
    assert_eq!(acked, 1200);

    let rows = wait_until(Duration::from_secs(60), "every streamed event", || {
        let rows = sql(
            &data,
            "SELECT count(*) AS n, count(DISTINCT event_id) AS d, min(properties) AS p FROM events WHERE event = 'Streamed'",
        )?;
        Ok((rows[0]["n"] == 1200).then_some(rows))
    })?;
    assert_eq!(rows[0]["d"], 1200, "no event twice");
    let stamped = sql(
        &data,
        "SELECT properties FROM events WHERE event = 'Streamed'",
    )?;
    assert!(stamped.iter().all(|r| {
        let p = r["properties"].as_str().unwrap_or_default();
        p.contains("\"stamped\":1") || p.contains("\"stamped\":2")
    }));

    // The other commands.
    // `--url` is the older name of `--server`.
    let list = sluice(&["functions", "list", "--url", &url])?;
    assert!(
        list.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("stamp") && l.contains("batch") && l.contains("enrich")),
        "{list}"
    );
    let show = sluice(&["functions", "show", "stamp", "--server", &url])?;
    assert!(
        show.contains("\"history\"")
            && show.contains("--- code (v1) ---")
            && show.contains("// v1"),
        "{show}"
    );
    let logs = sluice(&["functions", "logs", "stamp", "-n", "3", "--server", &url])?;
    assert_eq!(logs.lines().count(), 3, "{logs}");
    assert!(logs.contains("INFO batch of"), "{logs}");
    let stats = sluice(&["functions", "stats", "--json", "--server", &url])?;
    let stats: Vec<serde_json::Value> = serde_json::from_str(&stats)?;
    let events_out: u64 = stats
        .iter()
        .map(|s| s["events_out"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(events_out, 1200, "{stats:?}");
    assert!(
        stats
            .iter()
            .all(|s| s["lambda_cost_usd"].as_f64().unwrap_or(0.0) > 0.0 || s["invocations"] == 0)
    );
    let table = sluice(&["functions", "stats", "--server", &url])?;
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
            &url,
        ])
        .output()?;
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no version 9"));

    // A restart runs the same version.
    assert!(server.terminate(Duration::from_secs(30))?.success());
    server.restart()?;
    let url = server.url();
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{url}/v1/events"))
        .body("{\"event_id\":\"after-restart\",\"event\":\"Streamed\"}")
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let rows = wait_until(
        Duration::from_secs(60),
        "the event after the restart",
        || {
            let rows = sql(
                &data,
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
    let out = sluice(&["functions", "delete", "stamp", "--server", &url])?;
    assert_eq!(out.trim(), "stamp deleted");
    assert_eq!(
        sluice(&["functions", "list", "--server", &url])?.trim(),
        "no functions deployed"
    );
    server.terminate(Duration::from_secs(30))?;
    Ok(())
}
