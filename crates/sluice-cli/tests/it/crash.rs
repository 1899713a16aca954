//! Crash test: the server is SIGKILLed several times while clients ingest, retrying each batch
//! until it is acked (with the same event ids, as trackers do). Afterwards every acked event is in
//! the lake exactly once: no loss (acks are durable), no duplicates (dedupe survives restarts,
//! the runner and the lake sink resume exactly once).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sluice_testkit::{SluiceProcess, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const CLIENTS: usize = 4;
const BATCHES: usize = 100;
const BATCH: usize = 50;
const KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_survive_sigkill_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let url = Arc::new(RwLock::new(server.url()));
    let server = Arc::new(Mutex::new(server));
    let acked = Arc::new(AtomicUsize::new(0));
    let total = CLIENTS * BATCHES * BATCH;

    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        let acked = acked.clone();
        clients.spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
            let mut attempts = 0usize;
            for b in 0..BATCHES {
                let body: String = (0..BATCH)
                    .map(|i| {
                        format!(
                            "{{\"event\":\"crash_test\",\"event_id\":\"c{c}-b{b:03}-{i:02}\",\"anonymous_id\":\"a{}\"}}\n",
                            (b * BATCH + i) % 11
                        )
                    })
                    .collect();
                loop {
                    attempts += 1;
                    anyhow::ensure!(attempts < 10_000, "client {c} cannot get batch {b} acked");
                    let target = format!("{}/v1/events", url.read().unwrap());
                    match client.post(&target).body(body.clone()).send().await {
                        Ok(resp) if resp.status() == 200 => {
                            let answer: serde_json::Value = resp.json().await?;
                            let done = answer["accepted"].as_u64().unwrap_or(0)
                                + answer["duplicates"].as_u64().unwrap_or(0);
                            anyhow::ensure!(done == BATCH as u64, "partial answer {answer}");
                            acked.fetch_add(BATCH, Ordering::SeqCst);
                            break;
                        }
                        Ok(resp) => {
                            let status = resp.status();
                            anyhow::ensure!(
                                status.is_server_error() || status == 429,
                                "permanent error {status}: {}",
                                resp.text().await.unwrap_or_default()
                            );
                        }
                        Err(_) => {} // connection refused or reset: the server is down; retry
                    }
                    // Back off briefly before retrying (the server restarts within seconds).
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            anyhow::Ok(())
        });
    }

    // The nemesis: kill -9 whenever another share of the events has been acked, restart at once.
    let killer = {
        let server = server.clone();
        let url = url.clone();
        let acked = acked.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let mut kills = 0;
            for k in 0..KILLS {
                let threshold = (k + 1) * total / (KILLS + 1);
                let reached = wait_until(
                    Duration::from_secs(120),
                    "acks before the next kill",
                    || Ok((acked.load(Ordering::SeqCst) >= threshold).then_some(())),
                );
                if reached.is_err() {
                    break;
                }
                let mut s = server.lock().unwrap();
                s.kill9()?;
                s.restart()?;
                *url.write().unwrap() = s.url();
                kills += 1;
            }
            Ok(kills)
        })
    };

    while let Some(r) = clients.join_next().await {
        r??;
    }
    let kills = killer.await??;
    assert_eq!(
        kills, KILLS,
        "the server was not killed as often as planned"
    );
    assert_eq!(acked.load(Ordering::SeqCst), total);

    let data2 = data.clone();
    let counts = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(90), "every acked event in the lake", || {
            let out = Command::new(BIN)
                .args(["sql", "--format", "csv", "--data-dir"])
                .arg(&data2)
                .arg("SELECT count(*), count(DISTINCT event_id) FROM events WHERE event = 'crash_test'")
                .output()?;
            anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout)?;
            let line = text.lines().nth(1).unwrap_or("").to_string();
            let nums: Vec<usize> = line.split(',').filter_map(|n| n.trim().parse().ok()).collect();
            // More rows than events is a duplicate, which no amount of waiting fixes.
            anyhow::ensure!(nums.first().is_none_or(|n| *n <= total), "duplicates in the lake: {line}");
            Ok((nums.first() == Some(&total)).then_some(nums))
        })
    })
    .await??;
    assert_eq!(counts, vec![total, total], "every acked event exactly once");

    let status = server.lock().unwrap().terminate(Duration::from_secs(60))?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}
