//! The real binary with its lake on S3 (`[lake] root = "s3://…"`), against a local S3-compatible
//! store ([`sluice_testkit::Moto`]): ingest, SQL over HTTP and straight from the store, typed
//! tables, a SIGKILL and restart delivering exactly once, `sluice lake expire|optimize|vacuum`
//! with credentials from the AWS environment, model checkpoints in the bucket, and start-up refusing a bad store with its reason.
//! Ignored by default (moto comes from PyPI); run with `--run-ignored all`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_testkit::moto::{ACCESS_KEY, REGION, SECRET_KEY};
use sluice_testkit::{Moto, SluiceProcess, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const BUCKET: &str = "events-lake";
const DEADLINE: Duration = Duration::from_secs(90);

/// A config file whose lake is `s3://events-lake/sluice` in `moto`; the keys are in the file
/// when `keys`, else they must come from the environment.
fn config(dir: &Path, name: &str, endpoint: &str, bucket: &str, keys: bool) -> PathBuf {
    let mut text = format!(
        "[lake]\nroot = \"s3://{bucket}/sluice\"\nendpoint = \"{endpoint}\"\nregion = \"{REGION}\"\n\
         allow_http = true\nflush_interval = \"200ms\"\n"
    );
    if keys {
        // An online model whose checkpoints go beside the lake.
        text.push_str(
            "[predict]\ncheckpoint_interval = \"1s\"\n[[predict.models]]\nname = \"buys\"\n\
             outcome = \"Bought\"\nhorizon = \"30m\"\nbits = 10\n",
        );
        text.push_str(&format!(
            "[lake.storage_options]\naws_access_key_id = \"{ACCESS_KEY}\"\n\
             aws_secret_access_key = \"{SECRET_KEY}\"\n"
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `sluice ARGS` with the AWS keys in its environment (not in the config file).
fn cli_with_env(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(BIN)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn count(server: &SluiceProcess, query: &str) -> anyhow::Result<i64> {
    crate::support::count_at(&server.url(), query)
}

fn day(days_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339()
}

/// `n` events `Viewed` with ids `<prefix>0..`, every other one dated 60 days back.
fn events(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            let when = if i % 2 == 0 { day(60) } else { day(1) };
            format!(
                r#"{{"event_id":"{prefix}{i}","event":"Viewed","user_id":"u{i}","timestamp":"{when}"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn send(server: &SluiceProcess, body: String) -> anyhow::Result<()> {
    crate::support::post_events(&server.url(), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto from PyPI (run with --run-ignored all)"]
async fn serve_with_an_s3_lake_delivers_queries_and_keeps_up() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let served = config(dir.path(), "serve.toml", &moto.endpoint(), BUCKET, true);
    let cfg = served.to_str().expect("utf-8");
    let mut server = SluiceProcess::spawn(Path::new(BIN), &data, &["--config", cfg])?;

    send(&server, events("a", 40)).await?;
    let all = "SELECT count(*) AS n FROM events";
    let distinct = "SELECT count(DISTINCT event_id) AS n FROM events";
    let typed = "SELECT count(*) AS n FROM viewed";
    wait_until(DEADLINE, "40 events and typed rows over SQL", || {
        Ok((count(&server, all)? == 40 && count(&server, typed)? == 40).then_some(()))
    })?;
    // The tables are in the bucket, nothing lake-like on local disk.
    let keys = moto.list(BUCKET, "sluice/")?;
    for table in ["events", "viewed"] {
        let first = format!("sluice/{table}/_delta_log/00000000000000000000.json");
        assert!(keys.contains(&first), "{first} missing from {keys:?}");
    }
    assert!(!data.join("lake").exists());

    // SIGKILL right after more events are acked; the restart delivers each of them once.
    send(&server, events("b", 30)).await?;
    server.kill9()?;
    server.restart()?;
    wait_until(DEADLINE, "70 events after the restart", || {
        Ok((count(&server, all)? == 70 && count(&server, typed)? == 70).then_some(()))
    })?;
    assert_eq!(count(&server, distinct)?, 70);

    // Upkeep by hand, beside the running server, with the keys from the AWS environment.
    let env_cfg = config(dir.path(), "env.toml", &moto.endpoint(), BUCKET, false);
    let env_cfg = env_cfg.to_str().expect("utf-8");
    let out = cli_with_env(&["lake", "expire", "--config", env_cfg, "--retention", "30d"])?;
    assert!(out.contains("events: "), "{out}");
    assert_eq!(count(&server, all)?, 35);
    assert_eq!(count(&server, typed)?, 35);
    let out = cli_with_env(&["lake", "optimize", "--config", env_cfg])?;
    assert!(out.contains("events: "), "{out}");
    let log = moto.list(BUCKET, "sluice/events/_delta_log/")?;
    assert!(
        log.iter().any(|k| k.ends_with(".checkpoint.parquet")),
        "{log:?}"
    );
    let out = cli_with_env(&[
        "lake",
        "vacuum",
        "--config",
        env_cfg,
        "--retention",
        "0s",
        "--force",
    ])?;
    assert!(out.contains("events: "), "{out}");
    // Straight from the store, without the server: the same answer.
    let out = cli_with_env(&["sql", "--config", env_cfg, "--format", "json", distinct])?;
    assert!(out.contains("\"n\":35"), "{out}");

    // Delivery goes on after upkeep: one more event arrives once.
    send(
        &server,
        format!(
            r#"{{"event_id":"late","event":"Viewed","timestamp":"{}"}}"#,
            day(0)
        ),
    )
    .await?;
    wait_until(DEADLINE, "the late event", || {
        Ok((count(&server, all)? == 36).then_some(()))
    })?;
    assert_eq!(count(&server, distinct)?, 36);

    // SIGTERM checkpoints the model: an object beside the tables, not a file in the data
    // directory.
    let status = server.terminate(DEADLINE)?;
    assert!(status.success(), "{status}");
    let keys = moto.list(BUCKET, "sluice/_models/")?;
    assert!(
        keys.contains(&"sluice/_models/buys.ftrl".to_string()),
        "{keys:?}"
    );
    assert!(!data.join("models/buys.ftrl").exists());
    Ok(())
}

/// Runs `sluice serve --config CONFIG` expecting it to fail at start, without the machine's AWS
/// keys: its stderr.
fn serve_fails(config: &Path, data: &Path) -> anyhow::Result<String> {
    let config = config.to_str().expect("a UTF-8 path");
    SluiceProcess::expect_start_failure_without(
        Path::new(BIN),
        data,
        &["--config", config],
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto from PyPI (run with --run-ignored all)"]
async fn serve_refuses_a_bad_object_store_with_the_reason() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");

    let missing = config(dir.path(), "missing.toml", &moto.endpoint(), "nope", true);
    let err = serve_fails(&missing, &data)?;
    assert!(err.contains("s3://nope/sluice/"), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");

    // A store that checks credentials (after the one unauthenticated bucket creation), which
    // knows none of the test's keys.
    let checking = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")])?;
    checking.create_bucket(BUCKET)?;
    let wrong_keys = config(dir.path(), "keys.toml", &checking.endpoint(), BUCKET, true);
    let err = serve_fails(&wrong_keys, &data)?;
    assert!(err.contains("s3://events-lake/sluice/"), "{err}");
    assert!(err.contains("InvalidAccessKeyId"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nowhere = config(
        dir.path(),
        "nowhere.toml",
        &format!("http://127.0.0.1:{port}"),
        BUCKET,
        true,
    );
    let err = serve_fails(&nowhere, &data)?;
    assert!(err.contains("cannot list it"), "{err}");
    assert!(err.to_lowercase().contains("connect"), "{err}");

    let plain = dir.path().join("plain.toml");
    std::fs::write(
        &plain,
        format!(
            "[lake]\nroot = \"s3://{BUCKET}/x\"\nendpoint = \"{}\"\n",
            moto.endpoint()
        ),
    )?;
    let err = serve_fails(&plain, &data)?;
    assert!(err.contains("allow_http"), "{err}");
    Ok(())
}
