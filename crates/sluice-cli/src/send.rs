//! `sluice send`: an NDJSON producer that never loses an event to a network error.
//!
//! Every event without an id gets an `event_id` before its first attempt, derived from its line
//! number and text, so a retry — or sending the same file again after a failure — is recognised
//! by the server's dedupe instead of stored twice. Events go out in gzip batches;
//! each batch is first written (and fsynced) to a spool directory and removed only once the
//! server acked it, so a batch that could not be delivered — server down past the retry budget,
//! process killed — is sent first by the next `sluice send`. Retries use exponential backoff with
//! jitter on connection errors, 429 and 5xx (honouring `Retry-After`); a 4xx is permanent: the
//! batch moves to `spool/rejected/` with the server's answer next to it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_journal::Backoff;

/// Arguments of `sluice send`.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    server: crate::remote::ServerArg,
    /// Write key (sent as a bearer token).
    #[arg(long, env = "SLUICE_WRITE_KEY")]
    write_key: Option<String>,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Give up retrying a batch after this long (it stays spooled for the next run).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// Spool directory. Default: $XDG_STATE_HOME/sluice/spool or ~/.local/state/sluice/spool.
    #[arg(long)]
    spool: Option<PathBuf>,
    /// NDJSON file to send; `-` or nothing reads standard input.
    file: Option<PathBuf>,
}

/// Largest batch body before compression.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Retries of a batch the server could not take: first wait and cap.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Totals {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
}

/// Sends the input, spooled batches first.
pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let spool = args.spool.clone().unwrap_or_else(default_spool);
    std::fs::create_dir_all(&spool)
        .with_context(|| format!("cannot create spool {}", spool.display()))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the http client")?;
    let endpoint = format!("{}/v1/events", args.server.base());
    let mut totals = Totals::default();

    // Batches left by an earlier run go first, oldest first (file names are UUIDv7s).
    let mut leftovers: Vec<PathBuf> = std::fs::read_dir(&spool)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    leftovers.sort();
    for path in leftovers {
        let body = std::fs::read(&path)?;
        deliver(&client, &endpoint, &args, &spool, &path, body, &mut totals).await?;
    }

    let reader: Box<dyn BufRead> = match args.file.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p == Path::new("-") => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
    };
    let mut batch = Vec::new();
    let mut count = 0usize;
    let mut bad_lines = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("cannot read input")?;
        if line.trim().is_empty() {
            continue;
        }
        let mut event: serde_json::Map<String, serde_json::Value> =
            match serde_json::from_str(&line) {
                Ok(e) => e,
                Err(e) => {
                    bad_lines.push(format!("line {}: not a json object: {e}", n + 1));
                    continue;
                }
            };
        if !["event_id", "messageId", "eventId"]
            .iter()
            .any(|k| event.contains_key(*k))
        {
            event.insert("event_id".into(), derived_id(n, &line).into());
        }
        serde_json::to_writer(&mut batch, &event)?;
        batch.push(b'\n');
        count += 1;
        if count >= args.batch_size || batch.len() >= MAX_BATCH_BYTES {
            spool_and_deliver(
                &client,
                &endpoint,
                &args,
                &spool,
                std::mem::take(&mut batch),
                &mut totals,
            )
            .await?;
            count = 0;
        }
    }
    if !batch.is_empty() {
        spool_and_deliver(&client, &endpoint, &args, &spool, batch, &mut totals).await?;
    }
    println!(
        "sent: {} accepted, {} duplicates, {} rejected",
        totals.accepted, totals.duplicates, totals.rejected
    );
    if !bad_lines.is_empty() {
        for l in &bad_lines {
            eprintln!("{l}");
        }
        anyhow::bail!(
            "{} input lines were not json objects and were not sent",
            bad_lines.len()
        );
    }
    if totals.rejected > 0 {
        anyhow::bail!("{} events were rejected by the server", totals.rejected);
    }
    Ok(())
}

/// A stable id for an input line without one: the same line of the same input always gets the
/// same id, so resending an input is idempotent.
fn derived_id(line_no: usize, line: &str) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(line_no as u64).to_le_bytes());
    h.update(line.as_bytes());
    uuid::Uuid::from_u128(h.digest128()).to_string()
}

fn default_spool() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sluice").join("spool")
}

async fn spool_and_deliver(
    client: &reqwest::Client,
    endpoint: &str,
    args: &SendArgs,
    spool: &Path,
    batch: Vec<u8>,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let path = spool.join(format!("{}.ndjson", uuid::Uuid::now_v7()));
    {
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("cannot spool to {}", path.display()))?;
        f.write_all(&batch)?;
        f.sync_data()?;
    }
    deliver(client, endpoint, args, spool, &path, batch, totals).await
}

async fn deliver(
    client: &reqwest::Client,
    endpoint: &str,
    args: &SendArgs,
    spool: &Path,
    path: &Path,
    batch: Vec<u8>,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let body = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&batch)?;
        gz.finish()?
    };
    let started = Instant::now();
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
    loop {
        let mut req = client
            .post(endpoint)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(body.clone());
        if let Some(key) = &args.write_key {
            req = req.bearer_auth(key);
        }
        let wait = match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                let answer: serde_json::Value = resp.json().await.unwrap_or_default();
                totals.accepted += answer["accepted"].as_u64().unwrap_or(0);
                totals.duplicates += answer["duplicates"].as_u64().unwrap_or(0);
                if let Some(rejected) = answer["rejected"].as_array() {
                    totals.rejected += rejected.len() as u64;
                    for r in rejected {
                        eprintln!("rejected: {r}");
                    }
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                return Ok(());
            }
            Ok(resp) if resp.status().as_u16() == 429 || resp.status().is_server_error() => {
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                tracing::warn!(status = %resp.status(), "server asks to retry");
                after.unwrap_or_else(|| backoff.next_delay())
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let dir = spool.join("rejected");
                std::fs::create_dir_all(&dir)?;
                let name = path.file_name().context("spool file has no name")?;
                std::fs::rename(path, dir.join(name))?;
                std::fs::write(
                    dir.join(name).with_extension("answer"),
                    format!("{status}\n{text}\n"),
                )?;
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let n = answer["rejected"].as_array().map_or(1, |r| r.len() as u64);
                totals.rejected += n;
                eprintln!("batch rejected with {status}: {text}");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the server; retrying");
                backoff.next_delay()
            }
        };
        if started.elapsed() + wait > args.retry_for {
            anyhow::bail!(
                "gave up after {:?}; the batch stays in {} and is sent by the next `sluice send`",
                args.retry_for,
                path.display()
            );
        }
        // The backoff's jitter keeps many senders from retrying in lockstep; a Retry-After is
        // taken as the server gave it.
        tokio::time::sleep(wait).await;
    }
}
