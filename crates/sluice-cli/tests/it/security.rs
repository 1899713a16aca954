//! Roles against the real binary: write keys, reader and admin tokens made with `sluice tokens`,
//! open local access until a token exists, loopback trust lost to proxy headers and foreign
//! `Host`s, cross-site browser requests refused, one body per refusal status, the Kinesis API's
//! access key ids, tokens as Postgres wire passwords, and private files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sluice_testkit::SluiceProcess;
use sluice_testkit::process::run_cli;
use sluice_warehouse::pgclient::{PgClientError, PgConnection, PgTarget};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(20);

/// `sluice <what> ARGS --data-dir DATA`: its stdout, trimmed.
fn cli(what: &str, data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let data = data.to_str().context("a utf-8 path")?;
    let all: Vec<&str> = [what].into_iter().chain(args.iter().copied()).collect();
    let out = run_cli(Path::new(BIN), &[&all[..], &["--data-dir", data]].concat())?;
    Ok(out.trim().to_string())
}

fn mode(p: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

/// An answer: status and body.
async fn answer(req: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Polls `f` until it gives `want`, within [`WAIT`] (a credentials file is re-read about once a
/// second).
async fn until_status<F, Fut>(what: &str, want: u16, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u16, Value)>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = f().await?;
        if status == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: still {status} {body}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unauthorized() -> Value {
    json!({"error": "missing, unknown or revoked credential (write key or token)", "kind": "unauthorized"})
}

fn forbidden() -> Value {
    json!({"error": "this credential may not make this request", "kind": "forbidden"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_tokens_and_loopback_trust_over_http() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    assert_eq!(mode(&data)?, 0o700, "the data directory is private");
    let (url, c) = (server.url(), reqwest::Client::new());
    let sql = |token: Option<&str>| {
        let mut r = c.post(format!("{url}/v1/sql")).body("SELECT 1 AS one");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    };

    // No token yet: loopback is open, unless a proxy forwarded the request or the Host is not
    // a loopback name (DNS rebinding).
    assert_eq!(answer(sql(None)).await?.0, 200);
    for (h, v) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
        ("x-forwarded-host", "sluice.example.com"),
        ("host", "attacker.example:8080"),
    ] {
        assert_eq!(
            answer(sql(None).header(h, v)).await?,
            (401, unauthorized()),
            "{h}"
        );
    }
    // Admin requests a browser could send cross-site are refused; a JSON one from a local tool
    // goes through (and fails on its own terms).
    let replay = |ct: &str| {
        c.post(format!("{url}/v1/replay"))
            .header("content-type", ct)
            .body("{}")
    };
    assert_eq!(answer(replay("text/plain")).await?, (401, unauthorized()));
    let cross = replay("application/json").header("sec-fetch-site", "cross-site");
    assert_eq!(answer(cross).await?, (401, unauthorized()));
    let foreign = replay("application/json").header("origin", "http://attacker.example");
    assert_eq!(answer(foreign).await?, (401, unauthorized()));
    let (status, body) = answer(replay("application/json")).await?;
    assert!(![401, 403].contains(&status), "{status} {body}");

    // Tokens and a write key; the files hold hashes only, readable by their owner only.
    let reader = cli("tokens", &data, &["create", "--role", "reader"])?;
    let admin = cli("tokens", &data, &["create", "--role", "admin"])?;
    let key = cli("keys", &data, &["create", "--source", "web"])?;
    assert!(reader.starts_with("st_reader_") && admin.starts_with("st_admin_"));
    for (file, secret) in [("tokens.json", &reader), ("keys.json", &key)] {
        let path = data.join(file);
        assert_eq!(mode(&path)?, 0o600, "{file}");
        assert!(!std::fs::read_to_string(&path)?.contains(secret.as_str()));
    }
    let list = cli("tokens", &data, &["list"])?;
    assert!(!list.contains(&reader) && list.contains(" reader ") && list.contains(" admin "));
    let bad = Command::new(BIN)
        .args(["tokens", "create", "--role", "root", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("reader or admin"));

    // Once a token exists, loopback needs one too (within the reload interval).
    until_status("anonymous SQL once tokens exist", 401, || answer(sql(None))).await?;
    assert_eq!(answer(sql(None)).await?, (401, unauthorized()));
    assert_eq!(
        answer(sql(Some("st_reader_guess"))).await?,
        (401, unauthorized())
    );
    assert_eq!(answer(sql(Some(&reader))).await?.0, 200);
    assert_eq!(answer(sql(Some(&admin))).await?.0, 200);
    // A write key is a valid credential of the wrong role: 403, one body for every reason.
    assert_eq!(answer(sql(Some(&key))).await?, (403, forbidden()));
    let profile = |t: &str| c.get(format!("{url}/v1/profiles/u1")).bearer_auth(t);
    assert_eq!(answer(profile(&key)).await?, (403, forbidden()));
    assert!(![401, 403].contains(&answer(profile(&reader)).await?.0));
    let ingest = c
        .post(format!("{url}/v1/events"))
        .basic_auth(&key, Some(""))
        .body(r#"{"event":"Signed Up","user_id":"u1"}"#);
    assert_eq!(answer(ingest).await?.0, 200);
    // A token is valid but does not ingest: 403, in a header or in a Segment body.
    let ingest = c
        .post(format!("{url}/v1/events"))
        .basic_auth(&reader, Some(""))
        .body(r#"{"event":"Signed Up","user_id":"u1"}"#);
    assert_eq!(answer(ingest).await?, (403, forbidden()));
    let track = |key: &str| {
        let body = json!({"writeKey": key, "userId": "u1", "event": "Signed Up"});
        c.post(format!("{url}/v1/track"))
            .header("content-type", "text/plain")
            .body(body.to_string())
    };
    assert_eq!(answer(track(&admin)).await?, (403, forbidden()));
    assert_eq!(answer(track("sk_web_guess")).await?, (401, unauthorized()));
    assert_eq!(answer(track(&key)).await?.0, 200);

    // Administration: readers get 403, admins get through.
    let schema = json!({
        "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
        "self": {"vendor": "com.acme", "name": "s", "format": "jsonschema", "version": "1-0-0"},
        "type": "object"
    });
    let push = |t: &str| {
        c.put(format!("{url}/v1/schemas/com.acme/s/jsonschema/1-0-0"))
            .bearer_auth(t)
            .json(&schema)
    };
    assert_eq!(answer(push(&reader)).await?, (403, forbidden()));
    assert_eq!(answer(push(&admin)).await?.0, 201);
    let cross = push(&admin).header("sec-fetch-site", "cross-site");
    assert_eq!(answer(cross).await?, (403, forbidden()));
    let schemas = |t: &str| c.get(format!("{url}/v1/schemas")).bearer_auth(t);
    assert_eq!(answer(schemas(&reader)).await?.0, 200);

    // Metrics: open to a local scraper, a reader's when proxied.
    let metrics = || c.get(format!("{url}/metrics"));
    assert_eq!(answer(metrics()).await?.0, 200);
    let proxied = metrics().header("x-forwarded-for", "203.0.113.7");
    assert_eq!(answer(proxied).await?, (401, unauthorized()));
    let proxied = metrics()
        .header("x-forwarded-for", "203.0.113.7")
        .bearer_auth(&reader);
    assert_eq!(answer(proxied).await?.0, 200);
    assert_eq!(answer(c.get(format!("{url}/health"))).await?.0, 200);

    // Revoking a token refuses it without a restart.
    let id = list
        .lines()
        .find(|l| l.contains(" reader "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the reader token is listed")
        .to_string();
    assert!(cli("tokens", &data, &["revoke", &id])?.contains("revoked"));
    until_status("the revoked reader token", 401, || {
        answer(sql(Some(&reader)))
    })
    .await?;
    assert_eq!(answer(sql(Some(&admin))).await?.0, 200);
    Ok(())
}

/// A Kinesis JSON 1.1 call with `akid` as the SigV4 access key id: status, `__type`, body.
async fn kinesis(
    c: &reqwest::Client,
    url: &str,
    akid: &str,
    op: &str,
    body: Value,
) -> anyhow::Result<(u16, String, Value)> {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={akid}/20261204/us-east-1/kinesis/aws4_request, \
         SignedHeaders=host;x-amz-target, Signature=00"
    );
    let resp = c
        .post(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("Kinesis_20131202.{op}"))
        .header("authorization", auth)
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await?;
    let kind = body["__type"].as_str().unwrap_or("").to_string();
    Ok((status, kind, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_access_key_ids_map_to_roles() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let key = cli("keys", &data, &["create", "--source", "web"])?;
    let reader = cli("tokens", &data, &["create", "--role", "reader"])?;
    let admin = cli("tokens", &data, &["create", "--role", "admin"])?;
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let (url, c) = (server.url(), reqwest::Client::new());
    let call = |akid: &str, op: &str, body: Value| {
        let (c, url, akid, op) = (c.clone(), url.clone(), akid.to_string(), op.to_string());
        async move { kinesis(&c, &url, &akid, &op, body).await }
    };
    let denied = |r: (u16, String, Value)| {
        assert_eq!(
            (r.0, r.1.as_str()),
            (403, "AccessDeniedException"),
            "{}",
            r.2
        );
        assert_eq!(r.2["message"], "this credential may not make this request");
    };
    let raw = json!({"StreamName": "raw"});
    let good_iter = json!({"StreamName": "good", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"});
    let raw_iter = json!({"StreamName": "raw", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"});

    // A write key puts into raw and describes it; nothing else.
    let put = json!({"StreamName": "raw", "Data": "eyJldmVudCI6IlgifQ==", "PartitionKey": "k"});
    assert_eq!(call(&key, "PutRecord", put.clone()).await?.0, 200);
    assert_eq!(
        call(&key, "DescribeStreamSummary", raw.clone()).await?.0,
        200
    );
    denied(call(&key, "GetShardIterator", good_iter.clone()).await?);
    denied(call(&key, "GetShardIterator", raw_iter.clone()).await?);
    denied(call(&key, "ListStreams", json!({})).await?);
    denied(
        call(
            &key,
            "CreateStream",
            json!({"StreamName": "s1", "ShardCount": 1}),
        )
        .await?,
    );
    denied(call(&key, "DeleteStream", json!({"StreamName": "good"})).await?);
    // Unknown ids: 401, whatever the call.
    for op in ["PutRecord", "ListStreams"] {
        let (status, kind, body) = call("AKIDGUESS", op, put.clone()).await?;
        assert_eq!(
            (status, kind.as_str()),
            (401, "UnrecognizedClientException"),
            "{body}"
        );
    }
    // A reader token as the access key id reads good, not raw, and manages nothing.
    let (status, _, body) = call(&reader, "GetShardIterator", good_iter.clone()).await?;
    assert_eq!(status, 200, "{body}");
    let it = body["ShardIterator"].clone();
    let (status, _, body) = call(&reader, "GetRecords", json!({"ShardIterator": it})).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&reader, "ListStreams", json!({})).await?.0, 200);
    denied(call(&reader, "GetShardIterator", raw_iter.clone()).await?);
    denied(
        call(
            &reader,
            "CreateStream",
            json!({"StreamName": "s1", "ShardCount": 1}),
        )
        .await?,
    );
    denied(call(&reader, "PutRecord", put.clone()).await?);
    // An admin token manages streams and reads raw.
    let (status, _, body) = call(&admin, "GetShardIterator", raw_iter).await?;
    assert_eq!(status, 200, "{body}");
    let create = json!({"StreamName": "s1", "ShardCount": 1});
    assert_eq!(call(&admin, "CreateStream", create).await?.0, 200);
    // An iterator an admin got on raw does not let a reader read raw.
    let it = body["ShardIterator"].clone();
    denied(call(&reader, "GetRecords", json!({"ShardIterator": it})).await?);
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn pg_login(port: u16, password: &str) -> Result<PgConnection, PgClientError> {
    let target = PgTarget {
        host: "127.0.0.1".into(),
        port,
        user: "analyst".into(),
        password: Some(password.into()),
        database: "sluice".into(),
        sslmode: sluice_warehouse::pgtls::SslMode::Disable,
        sslrootcert: None,
    };
    PgConnection::connect(&target, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_postgres_wire_passwords() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port()?;
    let pg = format!("127.0.0.1:{port}");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &["--pg", &pg])?;
    // No token: any login on loopback, no password asked.
    let deadline = Instant::now() + WAIT;
    let mut open = loop {
        match pg_login(port, "").await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => anyhow::bail!("postgres wire port not up: {e}"),
        }
    };
    assert_eq!(
        open.query("SELECT 1 AS one").await?,
        vec![vec![Some("1".into())]]
    );
    drop(open);

    let reader = cli("tokens", &data, &["create", "--role", "reader"])?;
    let key = cli("keys", &data, &["create", "--source", "web"])?;
    let deadline = Instant::now() + WAIT;
    while pg_login(port, "").await.is_ok() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "logins without a token still work"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = pg_login(port, &reader).await?;
    assert_eq!(
        conn.query("SELECT 2 AS two").await?,
        vec![vec![Some("2".into())]]
    );
    for wrong in ["st_reader_guess", key.as_str()] {
        match pg_login(port, wrong).await {
            Err(PgClientError::Server { code, .. }) => assert_eq!(code, "28P01", "{wrong}"),
            Err(other) => anyhow::bail!("{wrong}: not a password refusal: {other}"),
            Ok(_) => anyhow::bail!("{wrong} logged in"),
        }
    }
    drop(server);
    Ok(())
}

/// `psql -c COMMAND` as user `analyst` with `password`.
fn psql(port: u16, password: &str, command: &str) -> anyhow::Result<std::process::Output> {
    Ok(Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=analyst dbname=sluice"
        ))
        .args(["-X", "-A", "-t", "-c", command])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's psql; run with --run-ignored all"]
async fn psql_logs_in_with_a_reader_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let reader = cli("tokens", &data, &["create", "--role", "reader"])?;
    let port = free_port()?;
    let pg = format!("127.0.0.1:{port}");
    let _server = SluiceProcess::spawn(Path::new(BIN), &data, &["--pg", &pg])?;
    let deadline = Instant::now() + WAIT;
    let out = loop {
        let (t, reader) = (port, reader.clone());
        let out = tokio::task::spawn_blocking(move || psql(t, &reader, "SELECT 40 + 2")).await??;
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out =
        tokio::task::spawn_blocking(move || psql(port, "st_reader_guess", "SELECT 1")).await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Password authentication failed"),
        "{stderr}"
    );
    Ok(())
}

/// `python3 compat/aws_boto3.py URL AKID ARGS...`.
fn boto3(url: &str, akid: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compat/aws_boto3.py");
    Ok(Command::new("python3")
        .arg(script)
        .args([url, akid])
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with boto3; run with --run-ignored all"]
async fn boto3_puts_with_a_write_key_and_reads_good_with_a_reader_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let key = cli("keys", &data, &["create", "--source", "web"])?;
    let reader = cli("tokens", &data, &["create", "--role", "reader"])?;
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let url = server.url();
    let plan: Vec<Value> = (0..6)
        .map(|i| json!({"event": "Boto Put", "event_id": format!("b{i}"), "user_id": format!("u{i}")}))
        .collect();
    let plan_path = dir.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan)?)?;
    let plan_arg = plan_path.to_str().context("a utf-8 path")?;
    let ok = |out: std::process::Output| -> anyhow::Result<String> {
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.success(), "aws_boto3.py failed: {stderr}");
        Ok(String::from_utf8(out.stdout)?)
    };
    let (u, k, p) = (url.clone(), key.clone(), plan_arg.to_string());
    ok(tokio::task::spawn_blocking(move || boto3(&u, &k, &["put-records", "raw", &p])).await??)?;
    // The write key may not read good; the reader token reads the six events back.
    let (u, k) = (url.clone(), key.clone());
    let refused =
        tokio::task::spawn_blocking(move || boto3(&u, &k, &["read", "good", "1"])).await??;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("AccessDeniedException"));
    let (u, r) = (url.clone(), reader.clone());
    let out =
        ok(tokio::task::spawn_blocking(move || boto3(&u, &r, &["read", "good", "6"])).await??)?;
    let good: Vec<Value> = serde_json::from_str(out.lines().last().context("no output")?)?;
    let mut ids: Vec<&str> = good
        .iter()
        .filter_map(|r| r["data"]["event_id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["b0", "b1", "b2", "b3", "b4", "b5"]);
    assert!(good.iter().all(|r| r["data"]["source"] == "web"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with boto3; run with --run-ignored all"]
async fn boto3_create_stream_past_max_streams_is_limit_exceeded_and_admin_only()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let key = cli("keys", &data, &["create", "--source", "web"])?;
    let reader = cli("tokens", &data, &["create", "--role", "reader"])?;
    let admin = cli("tokens", &data, &["create", "--role", "admin"])?;
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[kinesis]\nmax_streams = 3\n")?;
    let config = config.to_str().context("a utf-8 path")?;
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &["--config", config])?;
    let create = |akid: &str, prefix: &str| -> anyhow::Result<Value> {
        let out = boto3(&server.url(), akid, &["create-streams", prefix, "10"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.success(), "aws_boto3.py failed: {stderr}");
        let stdout = String::from_utf8(out.stdout)?;
        Ok(serde_json::from_str(
            stdout.lines().last().context("no output")?,
        )?)
    };
    // Who may create streams is unchanged: neither a write key nor a reader token.
    for akid in [&key, &reader] {
        let got = tokio::task::block_in_place(|| create(akid, "nope"))?;
        assert_eq!(got["created"], 0, "{got}");
        assert_eq!(got["error"], "AccessDeniedException", "{got}");
    }
    // An admin token gets max_streams streams, then boto3 sees Kinesis's own limit error.
    let got = tokio::task::block_in_place(|| create(&admin, "s"))?;
    assert_eq!(got["created"], 3, "{got}");
    assert_eq!(got["error"], "LimitExceededException", "{got}");
    assert!(
        got["message"]
            .as_str()
            .is_some_and(|m| m.contains("kinesis.max_streams")),
        "{got}"
    );
    Ok(())
}
