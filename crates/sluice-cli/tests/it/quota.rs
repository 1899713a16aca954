//! Quotas against the real binary: one source flooding is held to its events/s while another
//! source's requests all pass; a throttled request gets 429, `Retry-After` and the error body
//! on the native and Segment routes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sluice_testkit::SluiceProcess;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const NOISY_RATE: f64 = 300.0;

const CONFIG: &str = r#"
[[sources]]
name = "noisy"
write_keys = ["k-noisy"]

[[sources]]
name = "quiet"
write_keys = ["k-quiet"]

[[sources]]
name = "tiny"
write_keys = ["k-tiny"]

[collector.quotas]
events_per_sec = 100000
burst = "1s"

[collector.quotas.sources.noisy]
events_per_sec = 300

[collector.quotas.sources.tiny]
events_per_sec = 1
"#;

fn batch(tag: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!(r#"{{"event":"Viewed","event_id":"{tag}-{i}","user_id":"u{i}"}}"#))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A collector-only server with [`CONFIG`] in `dir`.
fn start(dir: &Path) -> anyhow::Result<SluiceProcess> {
    let config = dir.join("sluice.toml");
    std::fs::write(&config, CONFIG)?;
    let config = config.to_str().expect("utf-8 path");
    let args = ["--config", config, "--role", "collector"];
    SluiceProcess::spawn(Path::new(BIN), &dir.join("data"), &args)
}

/// Status, `Retry-After` and body of one native post.
async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: String,
) -> anyhow::Result<(u16, Option<u64>, serde_json::Value)> {
    let resp = client
        .post(format!("{url}/v1/events"))
        .basic_auth(key, Some(""))
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok((status, retry, resp.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_is_held_to_its_quota_and_another_is_not_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path())?;
    let url = server.url();
    let client = reqwest::Client::new();
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (client, url) = (client.clone(), url.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
        flood.spawn(async move {
            for i in 0..30 {
                let (status, retry, body) = post(
                    &client,
                    &url,
                    "k-noisy",
                    batch(&format!("n{worker}-{i}"), 100),
                )
                .await?;
                match status {
                    200 => accepted.fetch_add(100, Ordering::Relaxed),
                    429 => {
                        anyhow::ensure!(retry.is_some_and(|s| s >= 1), "429 without Retry-After");
                        anyhow::ensure!(body["kind"] == "overloaded", "{body}");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    other => anyhow::bail!("flood answered {other}: {body}"),
                };
            }
            anyhow::Ok(())
        });
    }
    // The quiet source keeps sending while the other floods: none of its requests is refused.
    for i in 0..30 {
        let (status, _, body) = post(&client, &url, "k-quiet", batch(&format!("q{i}"), 10)).await?;
        assert_eq!(status, 200, "quiet source refused: {body}");
        assert_eq!(body["accepted"], 10, "{body}");
    }
    while let Some(r) = flood.join_next().await {
        r??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (accepted, refused) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    assert!(
        refused > 0,
        "the flood was never throttled ({accepted} accepted)"
    );
    // What a bucket of one second's rate, refilled for the elapsed time, allows, plus the one
    // request a full bucket lets through in debt.
    let allowed = NOISY_RATE * (elapsed + 1.0) + 100.0;
    assert!(
        accepted as f64 <= allowed,
        "{accepted} noisy events accepted in {elapsed:.1} s, quota allows {allowed:.0}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_request_gets_429_with_retry_after_on_native_and_segment() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(dir.path())?;
    let url = server.url();
    let client = reqwest::Client::new();
    // A full bucket (one event) takes a request of five and owes four: the next waits 5 s.
    let (status, _, body) = post(&client, &url, "k-tiny", batch("t", 5)).await?;
    assert_eq!(status, 200, "{body}");
    let (status, retry, body) = post(&client, &url, "k-tiny", batch("u", 1)).await?;
    assert_eq!(status, 429, "{body}");
    assert!(
        retry.is_some_and(|s| (2..=5).contains(&s)),
        "Retry-After {retry:?}"
    );
    assert_eq!(body["kind"], "overloaded");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains(r#"source "tiny" is over its quota of 1 events/s"#),
        "{body}"
    );
    let resp = client
        .post(format!("{url}/v1/batch"))
        .basic_auth("k-tiny", Some(""))
        .json(&serde_json::json!({"batch": [{"type": "track", "event": "Viewed", "userId": "u1", "messageId": "s1"}]}))
        .send()
        .await?;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["kind"], "overloaded", "{body}");
    Ok(())
}
