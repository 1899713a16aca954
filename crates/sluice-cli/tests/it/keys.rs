//! `sluice keys` against a running server: a created key is accepted at once, an unknown one
//! gets 401, a revoked one is refused within a deadline without a restart, and the key file
//! never holds a key.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_testkit::SluiceProcess;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn keys(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(BIN)
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sluice keys {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

async fn post(client: &reqwest::Client, url: &str, key: Option<&str>) -> anyhow::Result<u16> {
    let mut req = client
        .post(format!("{url}/v1/events"))
        .body(r#"{"event":"Signed Up","user_id":"u1"}"#);
    if let Some(k) = key {
        req = req.basic_auth(k, Some(""));
    }
    Ok(req.send().await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_keys_work_and_revoked_keys_stop_working_without_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // Unknown sources and ids are refused with a reason.
    let bad = Command::new(BIN)
        .args(["keys", "create", "--source", "Not Valid", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid source name"));

    let web = keys(&data, &["create", "--source", "web"])?
        .trim()
        .to_string();
    let app = keys(&data, &["create", "--source", "app"])?
        .trim()
        .to_string();
    assert!(web.starts_with("sk_web_") && app.starts_with("sk_app_"));
    let list = keys(&data, &["list"])?;
    assert!(!list.contains(&web) && !list.contains(&app), "{list}");
    let file = std::fs::read_to_string(data.join("keys.json"))?;
    assert!(!file.contains(&web) && !file.contains(&app));

    let server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let url = server.url();
    let client = reqwest::Client::new();
    assert_eq!(post(&client, &url, Some(&web)).await?, 200);
    assert_eq!(post(&client, &url, Some(&app)).await?, 200);
    // With keys configured, loopback is no longer open.
    assert_eq!(post(&client, &url, None).await?, 401);
    assert_eq!(post(&client, &url, Some("sk_web_guess")).await?, 401);

    let id = list
        .lines()
        .find(|l| l.contains(" web "))
        .and_then(|l| l.split_whitespace().next())
        .expect("web key listed")
        .to_string();
    let out = keys(&data, &["revoke", &id])?;
    assert!(out.contains("revoked"), "{out}");
    assert!(
        keys(&data, &["list"])?
            .lines()
            .any(|l| l.starts_with(&id) && !l.ends_with(" -"))
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = post(&client, &url, Some(&web)).await?;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "revoked key still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(&client, &url, Some(&app)).await?,
        200,
        "other keys keep working"
    );
    let bad = Command::new(BIN)
        .args(["keys", "revoke", "nope", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(!bad.status.success());
    Ok(())
}
