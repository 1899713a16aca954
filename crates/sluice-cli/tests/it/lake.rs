//! `sluice lake expire` beside a running server: events dated before the retention leave
//! `events` and their typed table, recent ones stay, and delivery goes on exactly once.

use std::path::Path;
use std::time::Duration;

use crate::support::{BIN, count};
use sluice_testkit::process::run_cli;
use sluice_testkit::{SluiceProcess, wait_until};

fn day(days_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_removes_old_partitions_while_the_server_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let body: String = (0..40)
        .map(|i| {
            let when = if i % 2 == 0 { day(60) } else { day(1) };
            format!(
                r#"{{"event_id":"e{i}","event":"Viewed","user_id":"u{i}","timestamp":"{when}"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/events", server.url()))
        .body(body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let all = "SELECT count(*) AS n FROM events";
    let typed = "SELECT count(*) AS n FROM viewed";
    wait_until(Duration::from_secs(60), "40 events and typed rows", || {
        Ok((count(&data, all)? == 40 && count(&data, typed)? == 40).then_some(()))
    })?;
    let bad = run_cli(
        Path::new(BIN),
        &[
            "lake",
            "expire",
            "--retention",
            "1h",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(bad.unwrap_err().to_string().contains("at least 1d"));
    let out = run_cli(
        Path::new(BIN),
        &[
            "lake",
            "expire",
            "--retention",
            "30d",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    )?;
    assert!(out.contains("events: "), "{out}");
    assert_eq!(count(&data, all)?, 20);
    assert_eq!(count(&data, typed)?, 20);
    let old = format!(
        "SELECT count(*) AS n FROM events WHERE event_date < DATE '{}'",
        &day(30)[..10]
    );
    assert_eq!(count(&data, &old)?, 0);
    // Delivery goes on: a new event arrives once, the expired ones stay gone.
    let resp = client
        .post(format!("{}/v1/events", server.url()))
        .body(format!(
            r#"{{"event_id":"late","event":"Viewed","timestamp":"{}"}}"#,
            day(0)
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    wait_until(Duration::from_secs(60), "the new event", || {
        Ok((count(&data, all)? == 21).then_some(()))
    })?;
    Ok(())
}
