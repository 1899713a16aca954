//! End to end through the real binary: concurrent clients post events over HTTP, and every one
//! of them comes out of `sluice sql` exactly once; bad input gets clear 4xx answers; SIGTERM
//! drains and exits 0.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_testkit::{SluiceProcess, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn sql_json(data_dir: &Path, query: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = Command::new(BIN)
        .args(["sql", "--format", "json", "--data-dir"])
        .arg(data_dir)
        .arg(query)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sluice sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).map_err(Into::into))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_from_concurrent_clients_arrive_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let url = format!("{}/v1/events", server.url());
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 1250;
    for c in 0..CLIENTS {
        let client = client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let mut acked = 0;
            for batch in 0..(PER_CLIENT / 125) {
                // Alternate plain arrays and gzip NDJSON, as real trackers do.
                let events: Vec<serde_json::Value> = (0..125)
                    .map(|i| {
                        let seq = batch * 125 + i;
                        serde_json::json!({
                            "event": "Page Viewed",
                            "event_id": format!("c{c}-{seq:05}"),
                            "user_id": format!("u{}", seq % 37),
                            "timestamp": "2026-11-27T10:00:00Z",
                            "properties": {"path": format!("/p/{seq}")},
                        })
                    })
                    .collect();
                let req = if batch % 2 == 0 {
                    client.post(&url).json(&events)
                } else {
                    use std::io::Write;
                    let nd: String = events.iter().map(|e| format!("{e}\n")).collect();
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(nd.as_bytes())?;
                    client
                        .post(&url)
                        .header("content-encoding", "gzip")
                        .body(gz.finish()?)
                };
                let resp = req.send().await?;
                anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                let body: serde_json::Value = resp.json().await?;
                anyhow::ensure!(body["accepted"] == 125, "answer {body}");
                acked += 125;
            }
            anyhow::Ok(acked)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    assert_eq!(total, CLIENTS * PER_CLIENT);

    // A client retry of an acked batch is a duplicate, not a second event.
    let resend = serde_json::json!([{"event":"Page Viewed","event_id":"c0-00000","user_id":"u0"}]);
    let body: serde_json::Value = client.post(&url).json(&resend).send().await?.json().await?;
    assert_eq!(
        body,
        serde_json::json!({"accepted":0,"duplicates":1,"rejected":[]})
    );

    let data2 = data.clone();
    let rows = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), "10,000 events in the lake", || {
            let rows = sql_json(
                &data2,
                "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events",
            )?;
            Ok((rows.first().map(|r| r["n"].as_i64()) == Some(Some(10_000))).then_some(rows))
        })
    })
    .await??;
    assert_eq!(rows[0]["d"], 10_000);

    // The canonical columns are there and typed.
    let row = &sql_json(
        &data,
        "SELECT event_id, event, event_type, user_id, source, timestamp, event_date, properties \
         FROM events WHERE event_id = 'c3-00007'",
    )?[0];
    assert_eq!(row["event"], "Page Viewed");
    assert_eq!(row["event_type"], "track");
    assert_eq!(row["user_id"], "u7");
    assert_eq!(row["source"], "default");
    assert_eq!(row["event_date"], "2026-11-27");
    assert!(
        row["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-27T10:00:00"),
        "{row}"
    );
    assert_eq!(row["properties"], r#"{"path":"/p/7"}"#);

    assert_eq!(server.terminate(Duration::from_secs(60))?.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing_else() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let url = format!("{}/v1/events", server.url());
    let client = reqwest::Client::new();

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (client.post(&url).body("{\"event\":"), 400, "malformed json"),
        (client.post(&url).body("   "), 400, "no events"),
        (client.post(&url).body("[1, \"x\"]"), 400, "json object"),
        (
            client.post(&url).body("{\"userId\":\"u\"}"),
            400,
            "non-empty",
        ),
        (
            client.post(&url).header("content-encoding", "br").body("x"),
            415,
            "unsupported content encoding",
        ),
        (
            client
                .post(&url)
                .header("content-encoding", "gzip")
                .body("not gzip"),
            400,
            "decompress",
        ),
        (
            client.post(&url).body("[".repeat(100_000)),
            400,
            "malformed json",
        ),
        (
            client.post(&url).body("{\"event\":\"e\"}\n".repeat(10_001)),
            413,
            "exceed the limit",
        ),
    ];
    for (req, status, needle) in cases {
        let resp = req.send().await?;
        let got = resp.status().as_u16();
        let text = resp.text().await?;
        assert_eq!(got, status, "{needle}: {text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
    // A gzip bomb: small on the wire, over the limit once inflated.
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 40 << 20])?;
        let resp = client
            .post(&url)
            .header("content-encoding", "gzip")
            .body(gz.finish()?)
            .send()
            .await?;
        assert_eq!(resp.status(), 413);
        assert!(resp.text().await?.contains("after decompression"));
    }
    // Mixed batch: the good events are accepted, the bad ones rejected with their index.
    let body = serde_json::json!([
        {"event": "ok1", "event_id": "m1"},
        {"nope": true},
        7,
        {"event": "ok2", "event_id": "m2", "properties": {"big": "x".repeat(70_000)}},
        {"event": "ok3", "event_id": "m3", "timestamp": "not a time"},
    ]);
    let resp = client.post(&url).json(&body).send().await?;
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await?;
    assert_eq!(answer["accepted"], 2, "{answer}");
    let rejected: Vec<u64> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, vec![1, 2, 3]);
    assert_eq!(answer["rejected"][2]["kind"], "too_large");

    // m1 reaches the lake; m3's unparseable timestamp becomes a bad row, not a loss.
    let data2 = data.clone();
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), "m1 in events", || {
            let rows = sql_json(&data2, "SELECT event_id FROM events ORDER BY event_id")?;
            let ids: HashSet<String> = rows
                .iter()
                .map(|r| r["event_id"].as_str().unwrap_or("").to_string())
                .collect();
            Ok((ids == HashSet::from(["m1".to_string()])).then_some(()))
        })
    })
    .await??;
    let data3 = data.clone();
    let bad = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), "m3 in bad_rows", || {
            let rows = sql_json(&data3, "SELECT event_id, kind, reason FROM bad_rows")?;
            Ok((!rows.is_empty()).then_some(rows))
        })
    })
    .await??;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["event_id"], "m3");
    assert_eq!(bad[0]["kind"], "parse");
    assert!(bad[0]["reason"].as_str().unwrap().contains("timestamp"));

    // Read-only SQL.
    let out = Command::new(BIN)
        .args(["sql", "--data-dir"])
        .arg(&data)
        .arg("DROP TABLE events")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());

    assert_eq!(server.terminate(Duration::from_secs(60))?.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_spools_what_it_cannot_deliver_and_delivers_it_later() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let spool = dir.path().join("spool");
    let input = dir.path().join("events.ndjson");
    let lines: String = (0..1200)
        .map(|i| format!("{{\"event\":\"sent\",\"user_id\":\"u{i}\"}}\n"))
        .collect();
    std::fs::write(&input, lines + "not json\n")?;
    let send = |url: &str, retry_for: &str| {
        Command::new(BIN)
            .args([
                "send",
                "--batch-size",
                "500",
                "--retry-for",
                retry_for,
                "--server",
                url,
                "--spool",
            ])
            .arg(&spool)
            .arg(&input)
            .output()
    };

    // No server: the batches stay in the spool and the command says so.
    let out = send("http://127.0.0.1:9", "1s")?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stays in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spooled = std::fs::read_dir(&spool)?
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
        .count();
    assert_eq!(spooled, 1, "the undelivered batch is spooled");

    // With a server, the spooled batch goes first, then the whole file; the ids derive from the
    // lines, so the file's first batch is now recognised as what the spool already delivered.
    let mut server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let out = send(&server.url(), "30s")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1200 accepted, 500 duplicates"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1201: not a json object"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "a bad input line is an error");
    let left = std::fs::read_dir(&spool)?
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
        .count();
    assert_eq!(left, 0, "the spool is empty once everything is acked");

    let data2 = data.clone();
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), "sent events in the lake", || {
            let rows = sql_json(
                &data2,
                "SELECT count(*) AS n FROM events WHERE event = 'sent'",
            )?;
            Ok((rows.first().map(|r| r["n"].as_i64()) == Some(Some(1200))).then_some(()))
        })
    })
    .await??;
    assert_eq!(server.terminate(Duration::from_secs(60))?.code(), Some(0));
    Ok(())
}
