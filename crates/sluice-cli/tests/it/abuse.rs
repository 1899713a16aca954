//! The HTTP abuse matrix against the real binary: oversized, chunked, compressed, nested,
//! corrupt and deeply nested bodies, header floods, slowloris, idle connections, slow bodies,
//! request smuggling and a compression bomb with a wrong key, each answered as documented in
//! `docs/http-limits.md`, while a probe client keeps sending small valid events. At the end every
//! probe event that got a 200 is in `events` exactly once and the server is still healthy.
//! Raw `TcpStream`s speak HTTP where a client library would not misbehave on purpose.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sluice_testkit::{SluiceProcess, wait_until};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const KEY: &str = "abuse-test-key";
/// `collector.max_body_bytes` in the test config.
const LIMIT: usize = 4 << 20;
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for a timer of the server under test to fire on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);
/// The longest any single answer may take.
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);

fn write_config(dir: &Path, listener_extra: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[listener]
header_timeout = "{}ms"
body_timeout = "{}ms"
keep_alive_timeout = "{}ms"
{listener_extra}

[collector]
max_body_bytes = {LIMIT}
max_events = 500

[lake]
flush_interval = "500ms"

[[sources]]
name = "abuse"
write_keys = ["{KEY}"]
"#,
            HEADER_TIMEOUT.as_millis(),
            BODY_TIMEOUT.as_millis(),
            KEEP_ALIVE_TIMEOUT.as_millis(),
        ),
    )?;
    Ok(path)
}

fn start(dir: &Path, listener_extra: &str) -> anyhow::Result<SluiceProcess> {
    let config = write_config(dir, listener_extra)?;
    let config = config.to_str().context("utf-8 path")?;
    SluiceProcess::spawn(Path::new(BIN), &dir.join("data"), &["--config", config])
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("in-memory gzip");
    enc.finish().expect("in-memory gzip")
}

/// `total` bytes of zeros as gzip: one 1 MiB member repeated (a multi-member gzip stream, which
/// `gunzip` and the collector read as one), so the test need not deflate a whole GiB.
fn gzip_bomb(total: usize) -> Vec<u8> {
    gzip(&vec![0u8; 1 << 20]).repeat(total >> 20)
}

/// A request head for `POST /v1/events` with the write key; `extra` lines end in `\r\n`.
fn head(key: &str, extra: &str) -> String {
    format!("POST /v1/events HTTP/1.1\r\nHost: sluice\r\nX-Write-Key: {key}\r\n{extra}\r\n")
}

/// One HTTP response read off a raw socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Reads one response: the head and a `Content-Length` body.
async fn read_reply(r: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("no status in {head:?}"))?;
            if status == 100 {
                // An interim answer: the final one follows.
                buf.drain(..end + 4);
                continue;
            }
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return Ok(Reply { status, head, body });
            }
        }
        let n = match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Err(_) => bail!("no complete response within {ANSWER_DEADLINE:?}"),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if buf.is_empty() => bail!("connection failed before a response: {e}"),
            Ok(Err(_)) => 0,
        };
        if n == 0 {
            bail!(
                "connection closed after {} bytes, before a complete response: {:?}",
                buf.len(),
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the peer closes (EOF or reset), discarding whatever it sends; returns how long
/// that took from `since`.
async fn closed(
    r: &mut (impl AsyncRead + Unpin),
    since: Instant,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(deadline.saturating_sub(since.elapsed()), r.read(&mut chunk))
            .await
        {
            Err(_) => bail!("connection still open after {deadline:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `head`, then `body` in `chunk`-sized writes from another task, while reading the
/// answer; the server may answer and close before the body is all sent. Returns the answer and
/// how many body bytes were written by the time it came.
async fn send_while_reading(
    addr: SocketAddr,
    head: impl Into<Vec<u8>>,
    body: Vec<u8>,
    chunk: usize,
) -> anyhow::Result<(Reply, usize, Duration)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut r, mut w) = stream.into_split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent2 = sent.clone();
    let start = Instant::now();
    let head: Vec<u8> = head.into();
    let writer = tokio::spawn(async move {
        if w.write_all(&head).await.is_err() {
            return;
        }
        for c in body.chunks(chunk.max(1)) {
            if w.write_all(c).await.is_err() {
                return;
            }
            sent2.fetch_add(c.len(), std::sync::atomic::Ordering::Relaxed);
        }
        // Keep the write side open: a half-close would end the request early.
        std::future::pending::<()>().await;
    });
    let reply = read_reply(&mut r).await;
    let elapsed = start.elapsed();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    writer.abort();
    Ok((reply?, sent, elapsed))
}

/// Sends a whole request on a fresh connection and reads the answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Reply> {
    let (reply, _, _) = send_while_reading(addr, request, Vec::new(), 1).await?;
    Ok(reply)
}

fn post(key: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut req = head(
        key,
        &format!("{extra_headers}Content-Length: {}\r\n", body.len()),
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn expect(reply: &Reply, status: u16, needle: &str) -> anyhow::Result<()> {
    ensure!(
        reply.status == status && reply.body.contains(needle),
        "expected {status} mentioning {needle:?}, got {} {}",
        reply.status,
        reply.body
    );
    Ok(())
}

/// Peak and current resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// What the probe saw.
#[derive(Default)]
struct ProbeReport {
    sent: usize,
    ok: usize,
    acked: Vec<String>,
    failures: Vec<String>,
}

/// Sends one small valid event and a health check every 50 ms until told to stop.
async fn probe(url: String, mut stop: tokio::sync::watch::Receiver<bool>) -> ProbeReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = ProbeReport::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let id = format!("probe-{:05}", report.sent);
        report.sent += 2;
        let event = serde_json::json!({"event": "probe", "event_id": id, "user_id": format!("u{}", report.sent % 7)});
        match client
            .post(format!("{url}/v1/events"))
            .header("x-write-key", KEY)
            .json(&event)
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => match r.json::<serde_json::Value>().await {
                Ok(v) if v["accepted"] == 1 => {
                    report.ok += 1;
                    report.acked.push(id);
                }
                other => report.failures.push(format!("{id}: 200 but {other:?}")),
            },
            Ok(r) => report.failures.push(format!("{id}: status {}", r.status())),
            Err(e) => report.failures.push(format!("{id}: {e}")),
        }
        match client.get(format!("{url}/health")).send().await {
            Ok(r) if r.status() == 200 => report.ok += 1,
            Ok(r) => report
                .failures
                .push(format!("health: status {}", r.status())),
            Err(e) => report.failures.push(format!("health: {e}")),
        }
    }
    report
}

/// One row of the report.
struct Row {
    case: &'static str,
    expected: &'static str,
    outcome: anyhow::Result<String>,
}

async fn run_case(
    rows: &mut Vec<Row>,
    case: &'static str,
    expected: &'static str,
    f: impl std::future::Future<Output = anyhow::Result<String>>,
) {
    let outcome = f.await;
    rows.push(Row {
        case,
        expected,
        outcome,
    });
}

async fn body_over_limit_with_length(addr: SocketAddr) -> anyhow::Result<String> {
    // Only the head is sent: the answer must not wait for the body.
    let mut s = TcpStream::connect(addr).await?;
    let start = Instant::now();
    s.write_all(head(KEY, &format!("Content-Length: {}\r\n", LIMIT + 1)).as_bytes())
        .await?;
    let reply = read_reply(&mut s).await?;
    let took = start.elapsed();
    expect(&reply, 413, "exceeds the limit")?;
    ensure!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "the connection must not be reused: {}",
        reply.head
    );
    let close = closed(&mut s, Instant::now(), Duration::from_secs(5)).await?;
    Ok(format!(
        "413 after the head alone in {took:?} (0 body bytes sent); closed {close:?} later"
    ))
}

async fn chunked_over_limit(addr: SocketAddr) -> anyhow::Result<String> {
    // 10 MiB of chunks, each holding a slice of one long JSON string.
    let mut body = Vec::new();
    let piece = vec![b' '; 64 << 10];
    for _ in 0..160 {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(&piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (reply, sent, took) = send_while_reading(
        addr,
        head(KEY, "Transfer-Encoding: chunked\r\n"),
        body,
        16 << 10,
    )
    .await?;
    expect(&reply, 413, "exceeds the limit")?;
    ensure!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "the connection must not be reused: {}",
        reply.head
    );
    ensure!(
        sent < 10 << 20,
        "the whole 10 MiB was taken before the answer"
    );
    Ok(format!(
        "413 in {took:?} after {} KiB of 10 MiB sent",
        sent >> 10
    ))
}

async fn gzip_bomb_case(addr: SocketAddr, pid: u32) -> anyhow::Result<String> {
    let bomb = gzip_bomb(1 << 30);
    let (hwm_before, _) = memory_kib(pid);
    let start = Instant::now();
    let reply = exchange(addr, &post(KEY, "Content-Encoding: gzip\r\n", &bomb)).await?;
    let took = start.elapsed();
    let (hwm_after, rss_after) = memory_kib(pid);
    expect(&reply, 413, "after decompression")?;
    ensure!(
        took < Duration::from_secs(10),
        "the bomb took {took:?} to refuse"
    );
    let grew = hwm_after.saturating_sub(hwm_before);
    ensure!(
        grew < 256 << 10,
        "peak memory grew by {grew} KiB for a {} KiB body",
        bomb.len() >> 10
    );
    Ok(format!(
        "1 GiB of zeros in {} KiB of gzip: 413 in {took:?}; peak RSS +{} KiB (RSS now {} MiB)",
        bomb.len() >> 10,
        grew,
        rss_after >> 10
    ))
}

async fn bomb_with_wrong_key(addr: SocketAddr) -> anyhow::Result<String> {
    let bomb = gzip_bomb(1 << 30);
    let start = Instant::now();
    let reply = exchange(
        addr,
        &post("wrong-key", "Content-Encoding: gzip\r\n", &bomb),
    )
    .await?;
    let took = start.elapsed();
    expect(&reply, 401, "write key")?;
    // If anything were inflated before the key check, these would be 400 and 415.
    let corrupt = exchange(
        addr,
        &post(
            "wrong-key",
            "Content-Encoding: gzip\r\n",
            b"\x1f\x8b\x08\x00garbage",
        ),
    )
    .await?;
    expect(&corrupt, 401, "write key")?;
    let zstd = exchange(
        addr,
        &post("wrong-key", "Content-Encoding: zstd\r\n", &bomb[..4096]),
    )
    .await?;
    expect(&zstd, 401, "write key")?;
    Ok(format!(
        "401 in {took:?}; corrupt gzip and zstd with the wrong key are 401 too (never decoded)"
    ))
}

async fn nested_and_unsupported_encodings(addr: SocketAddr) -> anyhow::Result<String> {
    let event = br#"{"event":"nested"}"#;
    let twice = gzip(&gzip(event));
    let reply = exchange(addr, &post(KEY, "Content-Encoding: gzip, gzip\r\n", &twice)).await?;
    expect(&reply, 415, "nested content encodings")?;
    let reply = exchange(
        addr,
        &post(
            KEY,
            "Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n",
            &twice,
        ),
    )
    .await?;
    expect(&reply, 415, "nested content encodings")?;
    for coding in ["br", "zstd", "lz4"] {
        let reply = exchange(
            addr,
            &post(KEY, &format!("Content-Encoding: {coding}\r\n"), event),
        )
        .await?;
        expect(&reply, 415, coding)?;
    }
    Ok("gzip,gzip and two gzip lines: 415 nested; br, zstd, lz4: 415 naming the coding".into())
}

async fn corrupt_gzip(addr: SocketAddr) -> anyhow::Result<String> {
    let mut gz = gzip(br#"[{"event":"a"},{"event":"b"},{"event":"c"}]"#);
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    gz[mid + 1] ^= 0x55;
    let reply = exchange(addr, &post(KEY, "Content-Encoding: gzip\r\n", &gz)).await?;
    expect(&reply, 400, "decompress")?;
    let whole = gzip(br#"{"event":"a"}"#);
    let truncated = &whole[..whole.len() - 6];
    let reply = exchange(addr, &post(KEY, "Content-Encoding: gzip\r\n", truncated)).await?;
    expect(&reply, 400, "decompress")?;
    Ok("corrupt and truncated gzip: 400 cannot decompress".into())
}

async fn too_many_events(addr: SocketAddr) -> anyhow::Result<String> {
    let events: Vec<serde_json::Value> = (0..501)
        .map(|i| serde_json::json!({"event": "many", "event_id": format!("many-{i}")}))
        .collect();
    let reply = exchange(addr, &post(KEY, "", &serde_json::to_vec(&events)?)).await?;
    expect(&reply, 413, "exceed the limit of 500")?;
    Ok("501 events: 413, nothing stored".into())
}

async fn one_oversized_event(addr: SocketAddr, ids: &mut Vec<String>) -> anyhow::Result<String> {
    let body = serde_json::json!([
        {"event": "abuse-ok", "event_id": "big-batch-0"},
        {"event": "abuse-ok", "event_id": "big-batch-1", "properties": {"blob": "x".repeat(2 << 20)}},
        {"event": "abuse-ok", "event_id": "big-batch-2"},
    ]);
    let reply = exchange(addr, &post(KEY, "", &serde_json::to_vec(&body)?)).await?;
    ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
    let answer: serde_json::Value = serde_json::from_str(&reply.body)?;
    ensure!(answer["accepted"] == 2, "{answer}");
    ensure!(
        answer["rejected"][0]["index"] == 1 && answer["rejected"][0]["kind"] == "too_large",
        "{answer}"
    );
    ids.extend(["big-batch-0".to_string(), "big-batch-2".to_string()]);
    Ok("2 MB event rejected per event (too_large, index 1); the other 2 accepted".into())
}

async fn deep_nesting(addr: SocketAddr) -> anyhow::Result<String> {
    let reply = exchange(addr, &post(KEY, "", "[".repeat(100_000).as_bytes())).await?;
    expect(&reply, 400, "malformed json")?;
    let balanced = format!(
        "{{\"event\":\"deep\",\"p\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let reply = exchange(addr, &post(KEY, "", balanced.as_bytes())).await?;
    ensure!(reply.status == 400, "{} {}", reply.status, reply.body);
    let deep_ok = format!(
        "{{\"event\":\"deep\",\"p\":{}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let reply = exchange(addr, &post(KEY, "", deep_ok.as_bytes())).await?;
    expect(&reply, 400, "nested deeper than 64")?;
    Ok("[ x100,000 and a balanced 100,000-deep event: 400; 100 levels: 400 per event".into())
}

async fn header_flood(addr: SocketAddr) -> anyhow::Result<String> {
    let many: String = (0..10_000).map(|i| format!("X-Flood-{i}: v\r\n")).collect();
    let (reply, _, took_many) = send_while_reading(addr, head(KEY, &many), Vec::new(), 1).await?;
    ensure!(reply.status == 431, "10,000 headers: {}", reply.status);
    let big = format!("X-Big: {}\r\n", "a".repeat(64 << 10));
    let (reply, _, took_big) = send_while_reading(addr, head(KEY, &big), Vec::new(), 1).await?;
    ensure!(reply.status == 431, "64 KiB header: {}", reply.status);
    Ok(format!(
        "10,000 headers: 431 in {took_many:?}; one 64 KiB header: 431 in {took_big:?}"
    ))
}

async fn cl_and_te(addr: SocketAddr) -> anyhow::Result<String> {
    let chunked = b"5\r\n{\"a\"\r\n0\r\n\r\n";
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let mut req = head(KEY, framing).into_bytes();
        req.extend_from_slice(chunked);
        let reply = exchange(addr, &req).await?;
        expect(&reply, 400, "Content-Length and Transfer-Encoding")?;
    }
    Ok("both orders: 400, connection closed".into())
}

/// Connections that trickle a head and never finish it: all closed by the header timeout.
async fn slowloris(addr: SocketAddr, n: usize) -> anyhow::Result<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            let start = Instant::now();
            s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: sluice\r\n")
                .await?;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut chunk = [0u8; 1024];
            let deadline = HEADER_TIMEOUT + SLACK;
            loop {
                tokio::select! {
                    r = s.read(&mut chunk) => match r {
                        Ok(0) | Err(_) => return anyhow::Ok(start.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tick.tick() => {
                        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                            return Ok(start.elapsed());
                        }
                    }
                    _ = tokio::time::sleep(deadline.saturating_sub(start.elapsed())) => {
                        bail!("a slow connection is still open after {deadline:?}");
                    }
                }
            }
        });
    }
    summarize_closes(tasks, "trickling", n).await
}

/// Connections that send nothing: all closed by the header timeout.
async fn idle_connections(addr: SocketAddr, n: usize) -> anyhow::Result<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            closed(&mut s, Instant::now(), HEADER_TIMEOUT + SLACK).await
        });
    }
    summarize_closes(tasks, "silent", n).await
}

async fn summarize_closes(
    mut tasks: tokio::task::JoinSet<anyhow::Result<Duration>>,
    what: &str,
    n: usize,
) -> anyhow::Result<String> {
    let mut times = Vec::new();
    while let Some(r) = tasks.join_next().await {
        times.push(r??);
    }
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    ensure!(
        first >= HEADER_TIMEOUT.mul_f64(0.9),
        "a {what} connection was closed after {first:?}, before the header timeout"
    );
    Ok(format!(
        "{n} {what} connections closed after {first:?}..{last:?} (header timeout {HEADER_TIMEOUT:?})"
    ))
}

/// A kept-alive connection that goes quiet after a request is closed by the idle timer.
async fn idle_keep_alive(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .await?;
    let reply = read_reply(&mut s).await?;
    ensure!(reply.status == 200, "{reply:?}");
    let since = Instant::now();
    let took = closed(&mut s, since, KEEP_ALIVE_TIMEOUT + SLACK).await?;
    ensure!(
        took >= KEEP_ALIVE_TIMEOUT.mul_f64(0.9),
        "closed after {took:?}, before the keep-alive timeout"
    );
    Ok(format!(
        "closed {took:?} after its last response (keep-alive timeout {KEEP_ALIVE_TIMEOUT:?})"
    ))
}

/// A body that trickles in: 408 once the body timeout has passed.
async fn slow_body(addr: SocketAddr) -> anyhow::Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (mut r, mut w) = stream.into_split();
    let start = Instant::now();
    w.write_all(head(KEY, "Content-Length: 1000\r\n").as_bytes())
        .await?;
    w.write_all(b"[{\"event\":\"slow\"},").await?;
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if w.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let reply = read_reply(&mut r).await;
    let took = start.elapsed();
    let close = closed(&mut r, Instant::now(), SLACK).await;
    trickle.abort();
    let reply = reply?;
    expect(&reply, 408, "not received within")?;
    ensure!(
        took >= BODY_TIMEOUT.mul_f64(0.9),
        "408 after {took:?}, before the body timeout"
    );
    let close = close?;
    Ok(format!(
        "408 after {took:?} (body timeout {BODY_TIMEOUT:?}), closed {close:?} later"
    ))
}

async fn sql(
    client: &reqwest::Client,
    url: &str,
    query: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let resp = client
        .post(format!("{url}/v1/sql?format=json"))
        .body(query.to_string())
        .send()
        .await?;
    ensure!(resp.status() == 200, "sql: {}", resp.status());
    resp.text()
        .await?
        .lines()
        .map(|l| serde_json::from_str(l).map_err(Into::into))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abuse_matrix_is_answered_while_a_probe_keeps_succeeding() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = start(dir.path(), "max_connections = 1000")?;
    let addr = server.addr;
    let url = server.url();
    let pid = server.pid();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let probe_task = tokio::spawn(probe(url.clone(), stop_rx));

    let mut rows = Vec::new();
    let mut extra_ids = Vec::new();
    // The slow and idle attackers run together, then the one-shot cases one after another.
    let (lor, idle, ka, body) = tokio::join!(
        slowloris(addr, 200),
        idle_connections(addr, 200),
        idle_keep_alive(addr),
        slow_body(addr),
    );
    for (case, expected, outcome) in [
        ("slowloris", "closed by the header timeout", lor),
        ("idle connections", "closed by the header timeout", idle),
        ("idle keep-alive", "closed by the keep-alive timeout", ka),
        ("slow body", "408, closed", body),
    ] {
        rows.push(Row {
            case,
            expected,
            outcome,
        });
    }
    run_case(
        &mut rows,
        "body over the limit, Content-Length",
        "413 before the body is read",
        body_over_limit_with_length(addr),
    )
    .await;
    run_case(
        &mut rows,
        "body over the limit, chunked",
        "413 at the limit, closed",
        chunked_over_limit(addr),
    )
    .await;
    run_case(
        &mut rows,
        "gzip bomb",
        "413 quickly, bounded memory",
        gzip_bomb_case(addr, pid),
    )
    .await;
    run_case(
        &mut rows,
        "bomb with a wrong key",
        "401 before decompression",
        bomb_with_wrong_key(addr),
    )
    .await;
    run_case(
        &mut rows,
        "nested or unsupported encoding",
        "415 with a reason",
        nested_and_unsupported_encodings(addr),
    )
    .await;
    run_case(&mut rows, "corrupt gzip", "400", corrupt_gzip(addr)).await;
    run_case(&mut rows, "too many events", "413", too_many_events(addr)).await;
    run_case(
        &mut rows,
        "one oversized event",
        "rejected per event, the rest accepted",
        one_oversized_event(addr, &mut extra_ids),
    )
    .await;
    run_case(
        &mut rows,
        "deep nesting",
        "400, no crash",
        deep_nesting(addr),
    )
    .await;
    run_case(&mut rows, "header flood", "431", header_flood(addr)).await;
    run_case(&mut rows, "CL and TE together", "400", cl_and_te(addr)).await;

    let _ = stop_tx.send(true);
    let report = probe_task.await?;

    let mut failed = 0;
    eprintln!("\n{:<36} {:<40} outcome", "case", "expected");
    for row in &rows {
        match &row.outcome {
            Ok(what) => eprintln!("{:<36} {:<40} ok: {what}", row.case, row.expected),
            Err(e) => {
                failed += 1;
                eprintln!("{:<36} {:<40} FAILED: {e:#}", row.case, row.expected);
            }
        }
    }
    let availability = report.ok as f64 / report.sent.max(1) as f64;
    eprintln!(
        "probe: {}/{} requests succeeded ({:.2}%); failures: {:?}",
        report.ok,
        report.sent,
        availability * 100.0,
        report.failures
    );
    assert_eq!(
        failed, 0,
        "{failed} abuse cases failed (see the table above)"
    );
    assert!(report.sent >= 20, "the probe ran throughout");
    assert!(
        availability >= 0.99,
        "probe availability {:.2}%: {:?}",
        availability * 100.0,
        report.failures
    );

    // Every acked event is in the lake exactly once.
    let mut expected: HashSet<String> = report.acked.iter().cloned().collect();
    expected.extend(extra_ids);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts: BTreeMap<String, i64> = loop {
        let rows = sql(
            &client,
            &url,
            "SELECT event_id, count(*) AS n FROM events GROUP BY event_id",
        )
        .await?;
        let counts: BTreeMap<String, i64> = rows
            .iter()
            .filter_map(|r| Some((r["event_id"].as_str()?.to_string(), r["n"].as_i64()?)))
            .collect();
        if expected.iter().all(|id| counts.contains_key(id)) {
            break counts;
        }
        ensure!(
            Instant::now() < deadline,
            "acked events missing from the lake: {:?}",
            expected
                .iter()
                .filter(|id| !counts.contains_key(*id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "events stored more than once: {twice:?}");
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|id| !id.starts_with("probe-") && !expected.contains(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "events from refused requests were stored: {unexpected:?}"
    );

    let health = client.get(format!("{url}/health")).send().await?;
    assert_eq!(health.status(), 200);
    assert_eq!(server.terminate(Duration::from_secs(60))?.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_the_server_recovers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A long header timeout: the held connections must outlive the refused one.
    let config = write_config(dir.path(), "max_connections = 4")?;
    let text = std::fs::read_to_string(&config)?.replace(
        &format!("header_timeout = \"{}ms\"", HEADER_TIMEOUT.as_millis()),
        "header_timeout = \"3s\"",
    );
    std::fs::write(&config, text)?;
    let mut server = SluiceProcess::spawn(
        Path::new(BIN),
        &dir.path().join("data"),
        &["--config", config.to_str().context("utf-8 path")?],
    )?;
    let addr = server.addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await?);
    }
    // Accepted after the four (the kernel hands out connections in order): no slot left.
    let mut extra = TcpStream::connect(addr).await?;
    let reply = read_reply(&mut extra).await?;
    expect(&reply, 503, "too many open connections")?;
    ensure!(reply.head.to_ascii_lowercase().contains("retry-after: 1"));
    closed(&mut extra, Instant::now(), Duration::from_secs(5)).await?;

    // The held connections are closed by the header timeout, and the slots come back.
    for s in &mut held {
        closed(s, Instant::now(), Duration::from_secs(10)).await?;
    }
    let client = reqwest::Client::new();
    let url = server.url();
    let resp = client
        .post(format!("{url}/v1/events"))
        .header("x-write-key", KEY)
        .body(r#"{"event":"after-cap"}"#)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("sluice_http_connections_refused_total 1"),
        "{metrics}"
    );
    assert_eq!(server.terminate(Duration::from_secs(60))?.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_closes_idle_connections() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let addr = server.addr;

    // A request whose head was read and whose body the handler is waiting for. No key is
    // configured, so ingest is open to local clients: the Host names the loopback address.
    let body = br#"{"event":"in-flight","event_id":"in-flight-1"}"#;
    let mut busy = TcpStream::connect(addr).await?;
    busy.write_all(
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut interim = [0u8; 25];
    tokio::time::timeout(ANSWER_DEADLINE, busy.read_exact(&mut interim)).await??;
    ensure!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    // A kept-alive connection with nothing in flight.
    let mut idle = TcpStream::connect(addr).await?;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .await?;
    ensure!(read_reply(&mut idle).await?.status == 200);

    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
    let took = closed(&mut idle, Instant::now(), Duration::from_secs(10)).await?;
    eprintln!("idle connection closed {took:?} after SIGTERM");

    busy.write_all(body).await?;
    let reply = read_reply(&mut busy).await?;
    ensure!(reply.status == 200, "{reply:?}");
    let answer: serde_json::Value = serde_json::from_str(&reply.body)?;
    assert_eq!(answer["accepted"], 1, "{answer}");
    // The second SIGTERM is a no-op; this waits for the drain and the exit.
    assert_eq!(server.terminate(Duration::from_secs(60))?.code(), Some(0));

    let found = wait_until(Duration::from_secs(10), "the in-flight event", || {
        let out = Command::new(BIN)
            .args(["sql", "--format", "json", "--data-dir"])
            .arg(&data)
            .arg("SELECT count(*) AS n FROM events WHERE event_id = 'in-flight-1'")
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        Ok(text.contains("\"n\":1").then_some(text))
    })?;
    eprintln!("after the drain: {found}");
    Ok(())
}
