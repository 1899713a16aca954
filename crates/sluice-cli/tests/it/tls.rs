//! `[tls]` against the real binary: a CA and a server certificate for localhost and 127.0.0.1
//! made with the `openssl` CLI; HTTPS with curl and reqwest, a plaintext request and a stalled
//! handshake on the TLS port, psql and psycopg with `sslmode=verify-full` on the Postgres wire
//! port, the loader's own client in every `sslmode`, boto3 against the HTTPS Kinesis endpoint;
//! and a bad certificate or key stops the start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sluice_testkit::SluiceProcess;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(20);

/// A CA and a certificate it signed for `localhost` and `127.0.0.1`, in a directory.
struct Pki {
    ca: PathBuf,
    /// The server's chain: its certificate, then the CA's.
    chain: PathBuf,
    key: PathBuf,
    /// A key of another certificate (for the mismatch case).
    other_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("cannot run openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn make_pki(dir: &Path) -> anyhow::Result<Pki> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=Sluice Test CA",
            ],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    )?;
    let chain = [
        std::fs::read_to_string(dir.join("server.pem"))?,
        std::fs::read_to_string(dir.join("ca.pem"))?,
    ]
    .concat();
    std::fs::write(dir.join("chain.pem"), chain)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    Ok(Pki {
        ca: dir.join("ca.pem"),
        chain: dir.join("chain.pem"),
        key: dir.join("server.key"),
        other_key: dir.join("ca.key"),
    })
}

fn utf8(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a utf-8 path")
}

/// A config file with `[tls]` (and `extra` TOML before it).
fn config(dir: &Path, cert: &Path, key: &Path, extra: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[tls]\ncert = {:?}\nkey = {:?}\n",
            utf8(cert)?,
            utf8(key)?
        ),
    )?;
    Ok(path)
}

fn https_client(pki: &Pki) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()?)
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Reads what the server answers to `sent` until it closes the connection (or [`WAIT`] passes).
fn answer_to(port: u16, sent: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(sent)?;
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => Ok(got),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
        Err(e) => Err(e).context("the server neither answered nor closed the connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openssl and curl CLIs; run with --run-ignored all"]
async fn https_only_with_curl_reqwest_and_the_listener_limits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let cfg = config(
        dir.path(),
        &pki.chain,
        &pki.key,
        "[listener]\nheader_timeout = \"300ms\"\n",
    )?;
    let server = SluiceProcess::spawn(
        Path::new(BIN),
        &dir.path().join("data"),
        &["--config", utf8(&cfg)?],
    )?;
    assert_eq!(server.scheme, "https");
    let port = server.addr.port();
    let base = format!("https://localhost:{port}");

    // curl trusts the test CA only when told to.
    let curl = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output()?)
    };
    let ca = utf8(&pki.ca)?;
    let out = curl(&["--cacert", ca, &format!("{base}/health")])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = curl(&[
        "--cacert",
        ca,
        "-H",
        "content-type: application/json",
        "--data",
        r#"[{"event":"Signed Up","event_id":"tls-1","user_id":"u1"}]"#,
        &format!("{base}/v1/events"),
    ])?;
    assert!(out.status.success());
    let body: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        body,
        json!({"accepted": 1, "duplicates": 0, "rejected": []})
    );
    let out = curl(&[&format!("{base}/health")])?;
    assert_eq!(
        out.status.code(),
        Some(60),
        "an unknown CA fails verification"
    );
    let out = curl(&[&format!("http://localhost:{port}/health")])?;
    assert!(!out.status.success(), "plain HTTP is not served");

    // reqwest with the CA added, by name and by address.
    let c = https_client(&pki)?;
    for host in ["localhost", "127.0.0.1"] {
        let resp = c
            .get(format!("https://{host}:{port}/health"))
            .send()
            .await?;
        assert_eq!(resp.status(), 200, "{host}");
    }
    let body: Value = c
        .post(format!("{base}/v1/events"))
        .json(&json!([{"event": "Signed Up", "event_id": "tls-2", "user_id": "u2"}]))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(body["accepted"], 1);
    // Plain HTTP from reqwest: the connection opens, and what comes back is no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .expect_err("plain HTTP is not served");
    let chain = error_chain(&plain);
    assert!(
        plain.is_request() && !plain.is_connect() && !plain.is_timeout(),
        "{chain}"
    );
    assert!(
        chain.contains("invalid HTTP version parsed")
            || chain.contains("connection closed before message completed"),
        "{chain}"
    );

    // A plaintext request gets a TLS alert or a closed connection, never an HTTP answer.
    let got = tokio::task::spawn_blocking(move || {
        answer_to(port, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    })
    .await??;
    assert!(
        got.is_empty() || got[0] == 0x15,
        "not an alert: {:?}",
        String::from_utf8_lossy(&got)
    );
    // A connection that sends nothing, or stops halfway through its handshake, is closed by
    // the header timeout.
    for sent in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let got = tokio::task::spawn_blocking(move || answer_to(port, sent)).await??;
        assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    }
    // And the server keeps serving.
    let resp = c.get(format!("{base}/health")).send().await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}

/// `sluice serve --config CFG` that must fail: its stderr.
fn failed_start(data: &Path, cfg: &Path) -> anyhow::Result<String> {
    SluiceProcess::expect_start_failure(Path::new(BIN), data, &["--config", utf8(cfg)?])
}

#[test]
fn unreadable_or_garbage_certificates_stop_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let cfg = config(dir.path(), &cert, &key, "")?;
    let err = failed_start(&data, &cfg)?;
    assert!(err.contains("tls.cert: cannot read"), "{err}");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    std::fs::write(&key, "no key here\n")?;
    let err = failed_start(&data, &cfg)?;
    assert!(err.contains("not a PEM private key"), "{err}");
    Ok(())
}

#[test]
#[ignore = "needs the openssl CLI; run with --run-ignored all"]
fn a_key_of_another_certificate_stops_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let cfg = config(dir.path(), &pki.chain, &pki.other_key, "")?;
    let err = failed_start(&dir.path().join("data"), &cfg)?;
    assert!(err.contains("do not make a usable pair"), "{err}");
    Ok(())
}

/// `psql "sslmode=MODE sslrootcert=CA host=HOST port=PORT" -c SELECT…` with a reader token.
fn psql(conninfo: &str, token: &str) -> anyhow::Result<std::process::Output> {
    Ok(Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2"])
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openssl CLI and Debian's psql; run with --run-ignored all"]
async fn psql_verifies_the_postgres_wire_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let data = dir.path().join("data");
    let reader = sluice_testkit::process::run_cli(
        Path::new(BIN),
        &[
            "tokens",
            "create",
            "--role",
            "reader",
            "--data-dir",
            utf8(&data)?,
        ],
    )?
    .trim()
    .to_string();
    let cfg = config(dir.path(), &pki.chain, &pki.key, "")?;
    let port = free_port()?;
    let pg = format!("127.0.0.1:{port}");
    let _server = SluiceProcess::spawn(
        Path::new(BIN),
        &data,
        &["--config", utf8(&cfg)?, "--pg", &pg],
    )?;
    let ca = utf8(&pki.ca)?.to_string();
    let verified = format!(
        "sslmode=verify-full sslrootcert={ca} host=localhost port={port} user=analyst dbname=sluice"
    );
    // The pg port starts alongside HTTP: retry until it answers.
    let deadline = Instant::now() + WAIT;
    let out = loop {
        let (c, r) = (verified.clone(), reader.clone());
        let out = tokio::task::spawn_blocking(move || psql(&c, &r)).await??;
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
    // Verification is real: a root that did not sign the certificate fails it.
    let other = dir.path().join("other");
    std::fs::create_dir(&other)?;
    let wrong = make_pki(&other)?;
    let c = format!(
        "sslmode=verify-full sslrootcert={} host=localhost port={port} user=analyst dbname=sluice",
        utf8(&wrong.ca)?
    );
    let r = reader.clone();
    let out = tokio::task::spawn_blocking(move || psql(&c, &r)).await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    // Loopback clients may still connect without TLS.
    let c = format!("sslmode=disable host=127.0.0.1 port={port} user=analyst dbname=sluice");
    let out = tokio::task::spawn_blocking(move || psql(&c, &reader)).await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openssl CLI and python3 with boto3; run with --run-ignored all"]
async fn boto3_puts_over_https_with_the_test_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let cfg = config(dir.path(), &pki.chain, &pki.key, "")?;
    let data = dir.path().join("data");
    let key = sluice_testkit::process::run_cli(
        Path::new(BIN),
        &[
            "keys",
            "create",
            "--source",
            "web",
            "--data-dir",
            utf8(&data)?,
        ],
    )?
    .trim()
    .to_string();
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &["--config", utf8(&cfg)?])?;
    let url = format!("https://localhost:{}", server.addr.port());
    let plan: Vec<Value> = (0..3)
        .map(|i| json!({"event": "Boto Put", "event_id": format!("t{i}"), "user_id": "u"}))
        .collect();
    let plan_path = dir.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan)?)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compat/aws_boto3.py");
    let boto3 = |ca: Option<&Path>| -> anyhow::Result<std::process::Output> {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([url.as_str(), key.as_str(), "put-records", "raw"])
            .arg(&plan_path)
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("AWS_CA_BUNDLE");
        if let Some(ca) = ca {
            // What boto3's `verify=` takes, for every client the script makes.
            cmd.env("AWS_CA_BUNDLE", ca);
        }
        Ok(cmd.output()?)
    };
    let out = boto3(Some(&pki.ca))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = boto3(None)?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CERTIFICATE_VERIFY_FAILED"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openssl CLI; run with --run-ignored all"]
async fn the_loaders_client_speaks_each_sslmode() -> anyhow::Result<()> {
    use sluice_warehouse::pgclient::{PgClientError, PgConnection, PgTarget};
    use sluice_warehouse::pgtls::SslMode;
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let other = dir.path().join("other");
    std::fs::create_dir(&other)?;
    let wrong = make_pki(&other)?;
    let data = dir.path().join("data");
    let reader = sluice_testkit::process::run_cli(
        Path::new(BIN),
        &[
            "tokens",
            "create",
            "--role",
            "reader",
            "--data-dir",
            utf8(&data)?,
        ],
    )?
    .trim()
    .to_string();
    let cfg = config(dir.path(), &pki.chain, &pki.key, "")?;
    let port = free_port()?;
    let pg = format!("127.0.0.1:{port}");
    let _server = SluiceProcess::spawn(
        Path::new(BIN),
        &data,
        &["--config", utf8(&cfg)?, "--pg", &pg],
    )?;
    let target = |sslmode: SslMode, root: Option<&Path>| PgTarget {
        host: "localhost".into(),
        port,
        user: "analyst".into(),
        password: Some(reader.clone()),
        database: "sluice".into(),
        sslmode,
        sslrootcert: root.map(Path::to_path_buf),
    };
    let connect = |t: PgTarget| async move { PgConnection::connect(&t, WAIT).await };
    // The pg port starts alongside HTTP: retry until it answers.
    let deadline = Instant::now() + WAIT;
    let mut conn = loop {
        match connect(target(SslMode::VerifyFull, Some(&pki.ca))).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let answer = conn.query("SELECT 40 + 2").await?;
    assert_eq!(answer, vec![vec![Some("42".to_string())]]);
    for mode in [SslMode::Require, SslMode::Prefer, SslMode::Disable] {
        let mut c = connect(target(mode, None)).await?;
        assert_eq!(
            c.query("SELECT 1").await?,
            vec![vec![Some("1".to_string())]]
        );
    }
    // verify-full against a root that did not sign the server's certificate.
    match connect(target(SslMode::VerifyFull, Some(&wrong.ca))).await {
        Err(PgClientError::Io(e)) => {
            // BadSignature: the other root has the same name but another key.
            assert!(e.to_string().contains("invalid peer certificate"), "{e}");
        }
        Err(other) => anyhow::bail!("not a certificate failure: {other}"),
        Ok(_) => anyhow::bail!("connected with a wrong root"),
    }
    // verify-full without a root is refused before connecting.
    match connect(target(SslMode::VerifyFull, None)).await {
        Err(PgClientError::Protocol(m)) => assert!(m.contains("needs sslrootcert"), "{m}"),
        Err(other) => anyhow::bail!("{other}"),
        Ok(_) => anyhow::bail!("verify-full without a root connected"),
    }
    Ok(())
}

/// A Python with psycopg: the pinned `compat/warehouse/requirements.txt` in a venv, prepared
/// once per content hash under `~/.cache/sluice-compat/`.
fn psycopg_python() -> anyhow::Result<PathBuf> {
    let reqs =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compat/warehouse/requirements.txt");
    let hash = xxhash_rust::xxh3::xxh3_64(&std::fs::read(&reqs)?);
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let root = PathBuf::from(home).join(".cache/sluice-compat");
    std::fs::create_dir_all(&root)?;
    let _lock = sluice_testkit::lock_exclusive(&root.join("tls-psycopg.lock"))?;
    let dir = root.join(format!("tls-psycopg-{hash:016x}"));
    let python = dir.join("venv/bin/python");
    if !dir.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ok = |out: std::process::Output, what: &str| -> anyhow::Result<()> {
            anyhow::ensure!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        ok(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(dir.join("venv"))
                .output()?,
            "python3 -m venv",
        )?;
        ok(
            Command::new(dir.join("venv/bin/pip"))
                .args(["install", "--disable-pip-version-check", "-q", "-r"])
                .arg(&reqs)
                .output()?,
            "pip install",
        )?;
        std::fs::write(dir.join("ready"), "")?;
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openssl CLI and psycopg from PyPI; run with --run-ignored all"]
async fn psycopg_verifies_the_postgres_wire_certificate() -> anyhow::Result<()> {
    let python = tokio::task::spawn_blocking(psycopg_python).await??;
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    let data = dir.path().join("data");
    let reader = sluice_testkit::process::run_cli(
        Path::new(BIN),
        &[
            "tokens",
            "create",
            "--role",
            "reader",
            "--data-dir",
            utf8(&data)?,
        ],
    )?
    .trim()
    .to_string();
    let cfg = config(dir.path(), &pki.chain, &pki.key, "")?;
    let port = free_port()?;
    let pg = format!("127.0.0.1:{port}");
    let _server = SluiceProcess::spawn(
        Path::new(BIN),
        &data,
        &["--config", utf8(&cfg)?, "--pg", &pg],
    )?;
    let script = concat!(
        "import sys, psycopg\n",
        "port, token, ca = sys.argv[1:4]\n",
        "with psycopg.connect(host='localhost', port=int(port), user='analyst', dbname='sluice',\n",
        "                     password=token, sslmode='verify-full', sslrootcert=ca,\n",
        "                     connect_timeout=20) as c:\n",
        "    print(c.execute('SELECT 40 + 2').fetchone()[0], c.info.pgconn.ssl_in_use)\n",
    );
    let ca = utf8(&pki.ca)?.to_string();
    let deadline = Instant::now() + WAIT;
    let out = loop {
        let (py, s, p, r, c) = (
            python.clone(),
            script.to_string(),
            port.to_string(),
            reader.clone(),
            ca.clone(),
        );
        let out = tokio::task::spawn_blocking(move || {
            Command::new(py).args(["-c", &s, &p, &r, &c]).output()
        })
        .await??;
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
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42 True");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openssl CLI; run with --run-ignored all"]
async fn connections_over_the_cap_are_closed_without_a_plaintext_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = make_pki(dir.path())?;
    // A long header timeout: a connection that is not refused would outlast the read below.
    let cfg = config(
        dir.path(),
        &pki.chain,
        &pki.key,
        "[listener]\nmax_connections = 1\nheader_timeout = \"60s\"\n",
    )?;
    let server = SluiceProcess::spawn(
        Path::new(BIN),
        &dir.path().join("data"),
        &["--config", utf8(&cfg)?],
    )?;
    let port = server.addr.port();
    // This one takes the only slot (its handshake has not started).
    let hold = TcpStream::connect(("127.0.0.1", port))?;
    let got = tokio::task::spawn_blocking(move || answer_to(port, b"")).await??;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    drop(hold);
    // The slot comes back once the server sees the first connection go.
    let c = https_client(&pki)?;
    let deadline = Instant::now() + WAIT;
    loop {
        match c
            .get(format!("https://localhost:{port}/health"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => break,
            other => anyhow::ensure!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
