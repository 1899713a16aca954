//! Compatibility tests with the real tracker SDKs: segment-analytics-python,
//! @segment/analytics-node, snowplow-tracker (Python), @snowplow/node-tracker,
//! @snowplow/browser-tracker in headless Chromium, and boto3's Kinesis and Firehose clients.
//!
//! Each test starts the real `sluice` binary on loopback with a fresh data directory, runs one
//! script from `compat/` that sends a known set of events through the SDK, and then polls
//! `POST /v1/sql` until the `events` table holds exactly that set: nothing missing, nothing extra,
//! no duplicate, no bad row, with the right names, users, properties and source.
//!
//! The SDKs come from PyPI and npm, so these tests are ignored by default (plain `cargo test`
//! stays hermetic); run them with `cargo nextest run --workspace --run-ignored all`. The toolchain
//! (a Python venv from `compat/requirements.txt`, `npm ci` from `compat/package-lock.json`, and
//! Debian's Chromium for the browser test) is prepared once, outside the checkout, under
//! `$SLUICE_COMPAT_CACHE` (default `$HOME/.cache/sluice-compat`) in a folder named by a hash of
//! those files; a lock file serialises concurrent preparation by parallel test processes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use sluice_testkit::{SluiceProcess, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// The longest an SDK script may run.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);
/// The longest the events may take to be queryable once the SDK has delivered them.
const SQL_DEADLINE: Duration = Duration::from_secs(60);
/// The longest toolchain preparation may take (a cold pip install and npm ci).
const PREPARE_DEADLINE: Duration = Duration::from_secs(900);
/// The source every test's write key (and Snowplow app id) belongs to.
const SOURCE: &str = "compat";

// ---------------------------------------------------------------------------------------------
// Toolchain
// ---------------------------------------------------------------------------------------------

/// The prepared toolchain: a venv and a `node_modules`, both outside the checkout.
struct Toolchain {
    dir: PathBuf,
}

impl Toolchain {
    fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }

    fn node_modules(&self) -> PathBuf {
        self.dir.join("node/node_modules")
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn compat_dir() -> PathBuf {
    repo_root().join("compat")
}

fn cache_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_COMPAT_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/sluice-compat"))
}

/// Prepares (once, idempotently) the venv and node_modules; with `browser`, makes sure Debian's
/// Chromium is installed too.
fn toolchain(browser: bool) -> anyhow::Result<Toolchain> {
    let compat = compat_dir();
    let mut hashed = Vec::new();
    for name in ["requirements.txt", "package.json", "package-lock.json"] {
        let path = compat.join(name);
        hashed.extend(std::fs::read(&path).with_context(|| format!("read {}", path.display()))?);
        hashed.push(0);
    }
    let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&hashed));
    let root = cache_root()?;
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let _lock = sluice_testkit::lock_exclusive(&root.join("prepare.lock"))?;

    if browser && !Path::new("/usr/bin/chromium").exists() {
        run(
            Command::new("apt-get").arg("update"),
            PREPARE_DEADLINE,
            "apt-get update",
        )?;
        run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            PREPARE_DEADLINE,
            "apt-get install chromium",
        )?;
    }

    let dir = root.join(&hash);
    let ready = dir.join("ready");
    if !ready.exists() {
        let started = Instant::now();
        if dir.exists() {
            // A preparation that died halfway: start over.
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("node"))?;
        run(
            Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(dir.join("venv")),
            PREPARE_DEADLINE,
            "python3 -m venv",
        )?;
        run(
            Command::new(dir.join("venv/bin/pip"))
                .args(["install", "--disable-pip-version-check", "-q", "-r"])
                .arg(compat.join("requirements.txt")),
            PREPARE_DEADLINE,
            "pip install -r compat/requirements.txt",
        )?;
        for name in ["package.json", "package-lock.json"] {
            std::fs::copy(compat.join(name), dir.join("node").join(name))?;
        }
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(dir.join("node")),
            PREPARE_DEADLINE,
            "npm ci",
        )?;
        std::fs::write(&ready, "")?;
        eprintln!(
            "compat toolchain prepared in {} in {:.1?}",
            dir.display(),
            started.elapsed()
        );
    }
    Ok(Toolchain { dir })
}

/// Runs a command to completion (killed after `deadline`); fails with its output unless it
/// exits 0. Returns its stdout.
fn run(cmd: &mut Command, deadline: Duration, what: &str) -> anyhow::Result<String> {
    let out_dir = tempfile::tempdir()?;
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path)?)
        .stderr(File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {
            if !stdout.trim().is_empty() {
                eprintln!("{what}: {}", stdout.trim());
            }
            Ok(stdout)
        }
        Some(s) => bail!("{what} failed ({s})\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        None => {
            bail!("{what} did not finish within {deadline:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server and the checks
// ---------------------------------------------------------------------------------------------

/// One test's world: a temp dir, the running server, a unique run id.
struct Harness {
    dir: tempfile::TempDir,
    server: SluiceProcess,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// Unique per run: goes into every id and name the test sends.
    run: String,
    /// The write key of source [`SOURCE`].
    write_key: String,
    /// The Snowplow app id of source [`SOURCE`].
    app_id: String,
    /// When the test started (µs since the epoch).
    started_micros: i64,
}

impl Harness {
    /// Starts `sluice serve` with source [`SOURCE`] (a write key and a Snowplow app id), a short
    /// lake flush interval and `extra_config` appended to the config file.
    fn start(extra_config: &str) -> anyhow::Result<Self> {
        let started_micros = now_micros();
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let write_key = format!("wk-{run}");
        let app_id = format!("app-{run}");
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                "[lake]\nflush_interval = \"200ms\"\n\n\
                 [[sources]]\nname = \"{SOURCE}\"\nwrite_keys = [\"{write_key}\"]\n\
                 snowplow_app_ids = [\"{app_id}\"]\n\n{extra_config}\n"
            ),
        )?;
        let config_arg = config.to_string_lossy().to_string();
        let server = SluiceProcess::spawn(
            Path::new(BIN),
            &dir.path().join("data"),
            &["--config", &config_arg],
        )?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            dir,
            server,
            rt,
            http,
            run,
            write_key,
            app_id,
            started_micros,
        })
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Writes a JSON file into the temp dir and returns its path.
    fn write_json(&self, name: &str, value: &Value) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
        Ok(path)
    }

    /// Runs a script of `compat/` with the venv's Python.
    fn python(&self, tc: &Toolchain, script: &str, args: &[&str]) -> anyhow::Result<String> {
        let started = Instant::now();
        let out = run(
            Command::new(tc.python())
                .arg(compat_dir().join(script))
                .args(args)
                .env("PYTHONUNBUFFERED", "1"),
            SCRIPT_DEADLINE,
            script,
        )?;
        eprintln!("{script} ran in {:.1?}", started.elapsed());
        Ok(out)
    }

    /// Runs a CommonJS script of `compat/` with node, resolving packages in the prepared
    /// node_modules.
    fn node(&self, tc: &Toolchain, script: &str, args: &[&str]) -> anyhow::Result<String> {
        let started = Instant::now();
        let out = run(
            Command::new("node")
                .arg(compat_dir().join(script))
                .args(args)
                .env("NODE_PATH", tc.node_modules()),
            SCRIPT_DEADLINE,
            script,
        )?;
        eprintln!("{script} ran in {:.1?}", started.elapsed());
        Ok(out)
    }

    /// `POST /v1/sql?format=json`: the rows as JSON objects.
    fn sql(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/v1/sql?format=json", self.url());
        let (status, text) = self.rt.block_on(async {
            let resp = self.http.post(&url).body(query.to_string()).send().await?;
            let status = resp.status();
            anyhow::Ok((status, resp.text().await?))
        })?;
        ensure!(status == 200, "sql answered {status}: {text}");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad json line {l:?}")))
            .collect()
    }

    /// Bad rows so far (none when the table does not exist yet).
    fn bad_rows(&self) -> anyhow::Result<Vec<Value>> {
        match self.sql("SELECT * FROM bad_rows") {
            Ok(rows) => Ok(rows),
            Err(e) if is_missing_table(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The sum of a Prometheus counter's series that carry `label` (e.g. `outcome="accepted"`).
    fn counter(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        let url = format!("{}/metrics", self.url());
        let text = self
            .rt
            .block_on(async { anyhow::Ok(self.http.get(&url).send().await?.text().await?) })?;
        let mut sum = 0.0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(name)
                && rest.starts_with('{')
                && rest.contains(label)
                && let Some(value) = rest.rsplit(' ').next()
            {
                sum += value
                    .parse::<f64>()
                    .with_context(|| format!("bad metric line {line}"))?;
            }
        }
        Ok(sum)
    }

    /// Whether everything the collector acknowledged has reached the lake (as an event or a
    /// bad row), so no late row can still appear.
    fn drained(&self) -> anyhow::Result<bool> {
        let accepted = self.counter("sluice_collector_events_total", "outcome=\"accepted\"")?;
        let events = self.counter("sluice_lake_rows_written_total", "table=\"events\"")?;
        let bad = self.counter("sluice_lake_rows_written_total", "table=\"bad_rows\"")?;
        Ok(accepted > 0.0 && events + bad >= accepted)
    }

    /// Waits until everything acknowledged has reached the lake and `events` holds as many rows
    /// as expected (failing at once on any bad row), then checks that they are exactly the
    /// expected set.
    fn expect_events(&self, expected: &[Expected]) -> anyhow::Result<Vec<Value>> {
        let started = Instant::now();
        let query = "SELECT event_id, event_type, event, source, user_id, anonymous_id, \
                     timestamp, properties, context FROM events";
        let rows = wait_until(SQL_DEADLINE, "the events in SQL", || {
            let bad = self.bad_rows()?;
            if !bad.is_empty() {
                return Ok(Some(Err(bad)));
            }
            let rows = match self.sql(query) {
                Ok(rows) => rows,
                Err(e) if is_missing_table(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok((rows.len() >= expected.len() && self.drained()?).then_some(Ok(rows)))
        })
        .with_context(|| {
            let have = self
                .sql(query)
                .map(|r| pretty(&r))
                .unwrap_or_else(|e| e.to_string());
            format!(
                "expected {} events:\n{}\nthe table has:\n{have}",
                expected.len(),
                expected
                    .iter()
                    .map(|e| format!("  {e:?}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        let rows = match rows {
            Ok(rows) => rows,
            Err(bad) => bail!("the pipeline made bad rows:\n{}", pretty(&bad)),
        };
        match_exactly(expected, &rows)?;
        // Every event happened during the test (a unit or clock-skew mistake shows here).
        let now = now_micros();
        let late: Vec<&Value> = rows
            .iter()
            .filter(|r| {
                !sluice_event::parse_timestamp(&r["timestamp"]).is_some_and(|t| {
                    t >= self.started_micros - CLOCK_SLACK_MICROS && t <= now + CLOCK_SLACK_MICROS
                })
            })
            .collect();
        ensure!(
            late.is_empty(),
            "events with a timestamp outside the test's run:\n{}",
            late.iter()
                .map(|r| format!("  {r}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        eprintln!(
            "{} events found in SQL {:.1?} after the SDK finished",
            rows.len(),
            started.elapsed()
        );
        Ok(rows)
    }
}

/// How far an event's timestamp may lie outside the test's run (trackers send whole seconds).
const CLOCK_SLACK_MICROS: i64 = 60_000_000;

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn is_missing_table(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("not found") || text.contains("does not exist") || text.contains("No table")
}

fn pretty(rows: &[Value]) -> String {
    rows.iter()
        .map(|r| format!("  {r}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One event the `events` table must hold.
#[derive(Debug, Clone)]
struct Expected {
    /// The event id, when the SDK lets the test choose it.
    event_id: Option<String>,
    event_type: String,
    event: String,
    user_id: Option<String>,
    /// `None`: any anonymous id (Snowplow's comes from the collector's cookie).
    anonymous_id: Option<Option<String>>,
    /// Every key here must be in the row's properties with this value.
    properties: Value,
    /// The row's properties must have no other key.
    exact_properties: bool,
    /// (JSON pointer, value) pairs the row's context must hold (null: must not hold).
    context: Vec<(String, Value)>,
    /// Self-describing entities the row's `context.entities` must hold.
    entities: Vec<Value>,
}

impl Expected {
    fn new(event_type: &str, event: &str) -> Self {
        Self {
            event_id: None,
            event_type: event_type.into(),
            event: event.into(),
            user_id: None,
            anonymous_id: Some(None),
            properties: json!({}),
            exact_properties: false,
            context: Vec::new(),
            entities: Vec::new(),
        }
    }

    /// Why `row` is not this event (`None`: it is).
    fn mismatch(&self, row: &Value) -> Option<String> {
        let text = |key: &str| row.get(key).and_then(Value::as_str).map(str::to_string);
        let mut why = Vec::new();
        if let Some(id) = &self.event_id
            && text("event_id").as_deref() != Some(id)
        {
            why.push("event_id");
        }
        if text("event_type").as_deref() != Some(&self.event_type) {
            why.push("event_type");
        }
        if text("event").as_deref() != Some(&self.event) {
            why.push("event");
        }
        if text("source").as_deref() != Some(SOURCE) {
            why.push("source");
        }
        if text("user_id") != self.user_id {
            why.push("user_id");
        }
        if let Some(anonymous_id) = &self.anonymous_id
            && text("anonymous_id") != *anonymous_id
        {
            why.push("anonymous_id");
        }
        let props: Value = text("properties")
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or(Value::Null);
        let want = self.properties.as_object().cloned().unwrap_or_default();
        let have = props.as_object().cloned().unwrap_or_default();
        if want.iter().any(|(k, v)| have.get(k) != Some(v))
            || (self.exact_properties && have.len() != want.len())
        {
            why.push("properties");
        }
        let context: Value = text("context")
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or(Value::Null);
        // A null value means absent.
        if self
            .context
            .iter()
            .any(|(ptr, v)| context.pointer(ptr).unwrap_or(&Value::Null) != v)
        {
            why.push("context");
        }
        let entities = context.get("entities").and_then(Value::as_array);
        if self
            .entities
            .iter()
            .any(|want| !entities.is_some_and(|have| have.contains(want)))
        {
            why.push("entities");
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

/// Pairs every expected event with exactly one row and fails on anything unpaired.
fn match_exactly(expected: &[Expected], rows: &[Value]) -> anyhow::Result<()> {
    let mut free: Vec<bool> = vec![true; rows.len()];
    let mut missing = Vec::new();
    for want in expected {
        let found = rows
            .iter()
            .enumerate()
            .find(|(i, row)| free[*i] && want.mismatch(row).is_none());
        match found {
            Some((i, _)) => free[i] = false,
            None => {
                // The closest row (same event name) says what differs.
                let near = rows
                    .iter()
                    .find(|r| r.get("event").and_then(Value::as_str) == Some(&want.event))
                    .map(|r| {
                        format!(
                            "\n    closest row differs in {}: {r}",
                            want.mismatch(r).unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                missing.push(format!("  {want:?}{near}"));
            }
        }
    }
    let extra: Vec<String> = rows
        .iter()
        .zip(&free)
        .filter(|(_, f)| **f)
        .map(|(r, _)| format!("  {r}"))
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "the events table is not exactly the events sent\nmissing:\n{}\nextra or duplicate:\n{}",
        missing.join("\n"),
        extra.join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Segment
// ---------------------------------------------------------------------------------------------

/// A plan of Segment calls (one of each type; ids and names unique to the run and the SDK) and
/// the rows they must become.
fn segment_plan(run: &str, sdk: &str) -> (Value, Vec<Expected>) {
    let user = format!("user-{sdk}-{run}");
    let user2 = format!("user2-{sdk}-{run}");
    let anon = format!("anon-{sdk}-{run}");
    let id = |i: usize| format!("{sdk}-{run}-{i}");
    let order = json!({
        "order_id": format!("o-{run}"),
        "revenue": 42.5,
        "currency": "EUR",
        "items": [{"sku": "P-42", "qty": 2}],
        "nested": {"a": {"b": true}},
        "text": "ünïcödé € \"quoted\"",
    });
    let plan = json!([
        {"type": "identify", "messageId": id(0), "userId": user,
         "traits": {"email": format!("{run}@example.com"), "plan": "pro"}},
        {"type": "track", "messageId": id(1), "userId": user,
         "event": format!("Order Completed {run}"), "properties": order},
        {"type": "track", "messageId": id(2), "anonymousId": anon,
         "event": format!("Viewed Thing {run}"), "properties": {"n": 7}},
        {"type": "page", "messageId": id(3), "userId": user,
         "name": format!("Pricing {run}"), "properties": {"path": "/pricing"}},
        {"type": "screen", "messageId": id(4), "userId": user2,
         "name": format!("Home {run}"), "properties": {"tab": "feed"}},
        {"type": "group", "messageId": id(5), "userId": user,
         "groupId": format!("group-{run}"), "traits": {"name": "Acme", "employees": 12}},
        {"type": "alias", "messageId": id(6), "userId": user, "previousId": anon},
    ]);
    let mut expected = Vec::new();
    for msg in plan.as_array().into_iter().flatten() {
        let s = |k: &str| msg.get(k).and_then(Value::as_str).map(str::to_string);
        let kind = s("type").unwrap_or_default();
        let name = match kind.as_str() {
            "track" => s("event").unwrap_or_default(),
            "page" | "screen" => s("name").unwrap_or_default(),
            other => other.to_string(),
        };
        let mut e = Expected::new(&kind, &name);
        e.event_id = s("messageId");
        e.user_id = s("userId");
        e.anonymous_id = Some(s("anonymousId"));
        e.properties = msg
            .get("properties")
            .or_else(|| msg.get("traits"))
            .cloned()
            .unwrap_or(json!({}));
        e.exact_properties = kind == "track";
        expected.push(e);
    }
    (plan, expected)
}

fn segment_test(sdk: &str, library: &str) -> anyhow::Result<()> {
    let tc = toolchain(false)?;
    let h = Harness::start("")?;
    let (plan, mut expected) = segment_plan(&h.run, sdk);
    for e in &mut expected {
        e.context = vec![("/library/name".into(), json!(library))];
    }
    let plan_path = h.write_json("plan.json", &plan)?;
    let plan_arg = plan_path.to_string_lossy();
    let url = h.url();
    // Twice, as a client retrying after a lost answer would: the message ids make the second
    // delivery a duplicate, so the table still holds each event once.
    for _ in 0..2 {
        match sdk {
            "python" => h.python(&tc, "segment_python.py", &[&url, &h.write_key, &plan_arg])?,
            _ => h.node(&tc, "segment_node.cjs", &[&url, &h.write_key, &plan_arg])?,
        };
    }
    h.expect_events(&expected)?;
    Ok(())
}

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn segment_python() -> anyhow::Result<()> {
    segment_test("python", "analytics-python")
}

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn segment_node() -> anyhow::Result<()> {
    segment_test("node", "@segment/analytics-node")
}

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn segment_browser() -> anyhow::Result<()> {
    let tc = toolchain(true)?;
    let h = Harness::start("")?;
    let (plan, expected) = segment_plan(&h.run, "browser");
    // analytics.js has no screen call, picks its own message ids and anonymous ids, and adds
    // the page's url, path, title... to page properties.
    let mut calls = Vec::new();
    let mut want = Vec::new();
    for (msg, mut e) in plan.as_array().into_iter().flatten().zip(expected) {
        if msg["type"] == "screen" {
            continue;
        }
        e.event_id = None;
        if e.anonymous_id == Some(None) {
            e.anonymous_id = None;
        }
        e.exact_properties = false;
        e.context = vec![("/library/name".into(), json!("analytics.js"))];
        calls.push(msg.clone());
        want.push(e);
    }
    let plan_path = h.write_json("plan.json", &Value::Array(calls))?;
    let url = h.url();
    h.node(
        &tc,
        "browser.cjs",
        &["segment", &url, &h.write_key, &plan_path.to_string_lossy()],
    )?;
    h.expect_events(&want)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Snowplow
// ---------------------------------------------------------------------------------------------

/// A plan of Snowplow events for `compat/snowplow_*.py|cjs` and the browser page: a page view,
/// a structured event and self-describing events, with and without a user and entities.
fn snowplow_plan(run: &str, sdk: &str) -> Value {
    let user = format!("user-{sdk}-{run}");
    let entity = json!({
        "schema": "iglu:com.acme/user_tier/jsonschema/1-0-0",
        "data": {"tier": "gold", "run": run},
    });
    json!([
        {"kind": "page_view", "user_id": user,
         "url": format!("https://shop.example.com/{sdk}/{run}?q=1"),
         "title": format!("Product {run}"), "referrer": "https://www.example.org/search?q=shoes",
         "contexts": [entity]},
        {"kind": "struct", "user_id": user, "category": format!("shop-{run}"),
         "action": "add-to-cart", "label": "sku-42", "property": "size", "value": 2.5},
        {"kind": "self_describing", "user_id": format!("user2-{sdk}-{run}"),
         "schema": "iglu:com.acme/checkout/jsonschema/1-0-0",
         "data": {"order": format!("o-{run}"), "total": 12.5,
                  "items": [{"sku": "P-42", "qty": 2}], "note": "ünïcödé €"},
         "contexts": [entity]},
        {"kind": "self_describing", "schema": "iglu:com.acme/signup/jsonschema/1-0-0",
         "data": {"plan": format!("pro-{run}")}},
    ])
}

/// The rows a Snowplow plan must become; `ids` are the event ids the tracker reported (in plan
/// order), when it reports them. A page view is a `page` named after its title; a structured
/// event a `track` named after its action; a self-describing event a `track` named after its
/// schema, with its data as properties; entities land in `context.entities`.
fn snowplow_expected(plan: &Value, ids: Option<&[String]>) -> Vec<Expected> {
    let mut expected = Vec::new();
    for (i, item) in plan.as_array().into_iter().flatten().enumerate() {
        let s = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_string);
        let mut e = match s("kind").as_deref() {
            Some("page_view") => {
                let mut e = Expected::new("page", &s("title").unwrap_or_default());
                e.context = vec![
                    ("/page/url".into(), item["url"].clone()),
                    ("/page/title".into(), item["title"].clone()),
                    ("/page/referrer".into(), item["referrer"].clone()),
                ];
                e
            }
            Some("struct") => {
                let mut e = Expected::new("track", &s("action").unwrap_or_default());
                e.properties = json!({
                    "category": item["category"], "action": item["action"],
                    "label": item["label"], "property": item["property"],
                    "value": item["value"],
                });
                e.exact_properties = true;
                e
            }
            _ => {
                let schema = s("schema").unwrap_or_default();
                // iglu:vendor/NAME/jsonschema/1-0-0
                let name = schema.split('/').nth(1).unwrap_or_default().to_string();
                let mut e = Expected::new("track", &name);
                e.properties = item.get("data").cloned().unwrap_or(json!({}));
                e.exact_properties = true;
                e.context = vec![("/schema".into(), json!(schema))];
                e
            }
        };
        e.event_id = ids.and_then(|ids| ids.get(i).cloned());
        e.user_id = s("user_id");
        e.anonymous_id = None;
        e.context.push(("/library/name".into(), json!("snowplow")));
        e.entities = item
            .get("contexts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        expected.push(e);
    }
    expected
}

/// Event ids printed by a script as `{"event_ids": [...]}` on its last line.
fn event_ids(stdout: &str) -> anyhow::Result<Vec<String>> {
    let last = stdout
        .lines()
        .last()
        .context("the script printed nothing")?;
    let v: Value = serde_json::from_str(last).with_context(|| format!("not json: {last}"))?;
    v["event_ids"]
        .as_array()
        .context("no event_ids")?
        .iter()
        .map(|id| {
            id.as_str()
                .map(str::to_string)
                .context("an event id is not text")
        })
        .collect()
}

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn snowplow_python() -> anyhow::Result<()> {
    let tc = toolchain(false)?;
    let h = Harness::start("")?;
    let mut expected = Vec::new();
    // POST and GET, with entities and self-describing events base64-encoded and not.
    for (method, b64) in [
        ("post", "true"),
        ("post", "false"),
        ("get", "true"),
        ("get", "false"),
    ] {
        let sdk = format!("py-{method}-{b64}");
        let plan = snowplow_plan(&h.run, &sdk);
        let plan_path = h.write_json(&format!("plan-{sdk}.json"), &plan)?;
        let url = h.url();
        let out = h.python(
            &tc,
            "snowplow_python.py",
            &[&url, &h.app_id, method, b64, &plan_path.to_string_lossy()],
        )?;
        let ids = event_ids(&out)?;
        expected.extend(snowplow_expected(&plan, Some(&ids)));
    }
    h.expect_events(&expected)?;
    Ok(())
}

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn snowplow_node() -> anyhow::Result<()> {
    let tc = toolchain(false)?;
    let h = Harness::start("")?;
    let mut expected = Vec::new();
    for (method, b64) in [("post", "false"), ("post", "true"), ("get", "true")] {
        let sdk = format!("node-{method}-{b64}");
        let plan = snowplow_plan(&h.run, &sdk);
        let plan_path = h.write_json(&format!("plan-{sdk}.json"), &plan)?;
        let url = h.url();
        let out = h.node(
            &tc,
            "snowplow_node.cjs",
            &[&url, &h.app_id, method, b64, &plan_path.to_string_lossy()],
        )?;
        let ids = event_ids(&out)?;
        expected.extend(snowplow_expected(&plan, Some(&ids)));
    }
    h.expect_events(&expected)?;
    Ok(())
}

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn snowplow_browser() -> anyhow::Result<()> {
    let tc = toolchain(true)?;
    let h = Harness::start("")?;
    let mut plan = snowplow_plan(&h.run, "browser");
    // The structured event goes through a GET tracker (base64), the rest through POST; one more
    // event goes through an anonymous tracker with server anonymisation (SP-Anonymous).
    if let Some(item) = plan.get_mut(1) {
        item["method"] = json!("get");
    }
    if let Some(items) = plan.as_array_mut() {
        items.push(json!({
            "kind": "self_describing", "method": "anon",
            "schema": "iglu:com.acme/anonymous_ping/jsonschema/1-0-0",
            "data": {"run": h.run},
        }));
    }
    let plan_path = h.write_json("plan.json", &plan)?;
    let url = h.url();
    h.node(
        &tc,
        "browser.cjs",
        &["snowplow", &url, &h.app_id, &plan_path.to_string_lossy()],
    )?;
    // The browser tracker adds its own entities (web_page) besides the plan's: the check is
    // that the plan's are there.
    let mut expected = snowplow_expected(&plan, None);
    if let Some(anon) = expected.last_mut() {
        anon.anonymous_id = Some(Some("00000000-0000-0000-0000-000000000000".into()));
        anon.context.push(("/ip".into(), Value::Null));
    }
    h.expect_events(&expected)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Kinesis and Firehose
// ---------------------------------------------------------------------------------------------

/// Native events (as JSON objects) for the Kinesis and Firehose intake, and their rows.
fn native_plan(run: &str, sdk: &str, n: usize) -> (Value, Vec<Expected>) {
    let mut plan = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n {
        let event = format!("{sdk} event {} {run}", i % 3);
        let user = format!("user-{}-{sdk}-{run}", i % 4);
        let properties = json!({"i": i, "run": run, "nested": {"ok": true}, "text": "ünï €"});
        let id = format!("{sdk}-{run}-{i}");
        plan.push(json!({
            "event": event, "event_id": id, "user_id": user, "properties": properties,
        }));
        let mut e = Expected::new("track", &event);
        e.event_id = Some(id);
        e.user_id = Some(user);
        e.properties = properties;
        e.exact_properties = true;
        expected.push(e);
    }
    (Value::Array(plan), expected)
}

/// The config that makes `events` a pipeline intake stream besides `raw`.
const KINESIS_CONFIG: &str = "[kinesis]\ningest_streams = [\"events\"]\n";

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn kinesis_boto3() -> anyhow::Result<()> {
    let tc = toolchain(false)?;
    let h = Harness::start(KINESIS_CONFIG)?;
    let url = h.url();
    // A plain stream: create, put_records, get_records round trip, delete.
    let stream = format!("compat-{}", h.run);
    h.python(
        &tc,
        "aws_boto3.py",
        &[&url, &h.write_key, "roundtrip", &stream, "40"],
    )?;
    // The pipeline, through `raw` and through the `events` alias: the events land in SQL and
    // come back canonical from `good`.
    let (plan, expected) = native_plan(&h.run, "kinesis", 12);
    let events = plan.as_array().context("plan")?;
    let (first, second) = events.split_at(events.len() / 2);
    for (stream, part) in [("raw", first), ("events", second)] {
        let plan_path = h.write_json(&format!("plan-{stream}.json"), &json!(part))?;
        h.python(
            &tc,
            "aws_boto3.py",
            &[
                &url,
                &h.write_key,
                "put-records",
                stream,
                &plan_path.to_string_lossy(),
            ],
        )?;
    }
    h.expect_events(&expected)?;
    let out = h.python(
        &tc,
        "aws_boto3.py",
        &[
            &url,
            &h.write_key,
            "read",
            "good",
            &expected.len().to_string(),
        ],
    )?;
    let last = out.lines().last().context("no output")?;
    let good: Vec<Value> = serde_json::from_str(last)?;
    let mut got: Vec<String> = good
        .iter()
        .filter_map(|r| r["data"]["event_id"].as_str().map(str::to_string))
        .collect();
    got.sort();
    let mut want: Vec<String> = expected.iter().filter_map(|e| e.event_id.clone()).collect();
    want.sort();
    ensure!(
        got == want && good.len() == want.len(),
        "get_records on good returned {} records with ids {got:?}, expected {want:?}",
        good.len()
    );
    // The canonical events read back carry what was sent.
    for record in &good {
        let data = &record["data"];
        let sent = events
            .iter()
            .find(|e| e["event_id"] == data["event_id"])
            .context("an unknown event in good")?;
        ensure!(
            data["event"] == sent["event"] && data["user_id"] == sent["user_id"],
            "good record {data} does not match the event sent {sent}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "drives real tracker SDKs from PyPI and npm; run with --run-ignored all"]
fn firehose_boto3() -> anyhow::Result<()> {
    let tc = toolchain(false)?;
    let h = Harness::start(KINESIS_CONFIG)?;
    let (plan, expected) = native_plan(&h.run, "firehose", 12);
    let url = h.url();
    let events = plan.as_array().context("plan")?;
    let (first, second) = events.split_at(events.len() / 2);
    for (stream, part) in [("raw", first), ("events", second)] {
        let plan_path = h.write_json(&format!("plan-{stream}.json"), &json!(part))?;
        h.python(
            &tc,
            "aws_boto3.py",
            &[
                &url,
                &h.write_key,
                "firehose",
                stream,
                &plan_path.to_string_lossy(),
            ],
        )?;
    }
    h.expect_events(&expected)?;
    Ok(())
}
