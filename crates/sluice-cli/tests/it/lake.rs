//! `sluice lake expire` beside a running server: events dated before the retention leave
//! `events` and their typed table, recent ones stay, and delivery goes on exactly once; `optimize`
//! and `vacuum --dry-run` then report on the same lake and keep its rows. A flood
//! of event and property names stays within `[lake] max_typed_tables` and `max_typed_columns`,
//! in the lake's typed tables and in the Postgres loader's, and every event stays in `events`;
//! lowered below what exists, the limits keep the loader's tables and columns working. `sluice lake verify`
//! and the upkeep scrub naming a data file with a flipped byte.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::{BIN, DEADLINE, count, eventually, nanos, pg_count, pg_rows};
use sluice_lake::typed::FIXED_COLUMNS;
use sluice_testkit::process::run_cli;
use sluice_testkit::{SluiceProcess, wait_until};

fn day(days_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_removes_old_partitions_while_the_server_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &[])?;
    let body: String = (0..40)
        .map(|i| {
            let when = if i % 2 == 0 { day(60) } else { day(1) };
            format!(
                r#"{{"event_id":"e{i}","event":"Viewed","user_id":"u{i}","timestamp":"{when}"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/events", server.url()))
        .body(body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let all = "SELECT count(*) AS n FROM events";
    let typed = "SELECT count(*) AS n FROM viewed";
    wait_until(Duration::from_secs(60), "40 events and typed rows", || {
        Ok((count(&data, all)? == 40 && count(&data, typed)? == 40).then_some(()))
    })?;
    let bad = run_cli(
        Path::new(BIN),
        &[
            "lake",
            "expire",
            "--retention",
            "1h",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(bad.unwrap_err().to_string().contains("at least 1d"));
    let out = run_cli(
        Path::new(BIN),
        &[
            "lake",
            "expire",
            "--retention",
            "30d",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    )?;
    assert!(out.contains("events: "), "{out}");
    assert_eq!(count(&data, all)?, 20);
    assert_eq!(count(&data, typed)?, 20);
    let old = format!(
        "SELECT count(*) AS n FROM events WHERE event_date < DATE '{}'",
        &day(30)[..10]
    );
    assert_eq!(count(&data, &old)?, 0);
    // Delivery goes on: a new event arrives once, the expired ones stay gone.
    let resp = client
        .post(format!("{}/v1/events", server.url()))
        .body(format!(
            r#"{{"event_id":"late","event":"Viewed","timestamp":"{}"}}"#,
            day(0)
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    wait_until(Duration::from_secs(60), "the new event", || {
        Ok((count(&data, all)? == 21).then_some(()))
    })?;
    // The other upkeep by hand, on the same lake, while the server runs: every table is
    // reported, and the rows stay.
    let lake = |args: &[&str]| {
        let mut all = vec!["lake"];
        all.extend_from_slice(args);
        all.extend(["--data-dir", data.to_str().expect("utf-8")]);
        run_cli(Path::new(BIN), &all)
    };
    let optimized = lake(&["optimize", "--table", "events"])?;
    assert!(
        optimized.starts_with("events: ") && optimized.contains("compacted"),
        "{optimized}"
    );
    let vacuum = lake(&["vacuum", "--dry-run"])?;
    assert!(
        vacuum.contains("events: ") && vacuum.contains("would be deleted"),
        "{vacuum}"
    );
    assert_eq!(count(&data, all)?, 21);
    Ok(())
}

/// The typed tables under the lake (its directories but `events`, `bad_rows` and `_sluice`).
fn typed_tables(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("lake"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "events" && n != "bad_rows" && !n.starts_with('_'))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_names_stays_within_the_typed_table_limits() -> anyhow::Result<()> {
    const NAMES: usize = 60;
    const PROPS: usize = 40;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[lake]\nflush_interval = \"200ms\"\nmax_typed_tables = 5\nmax_typed_columns = 4\n",
    )?;
    let config = config.to_str().expect("utf-8 path");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &["--config", config])?;
    // One event per distinct name, then one event per distinct property of one name.
    let mut lines: Vec<String> = (0..NAMES)
        .map(|i| format!(r#"{{"event_id":"n{i}","event":"Name {i}","user_id":"u"}}"#))
        .collect();
    lines.extend((0..PROPS).map(|i| {
        format!(r#"{{"event_id":"p{i}","event":"Name 0","user_id":"u","properties":{{"prop_{i}":{i}}}}}"#)
    }));
    let total = lines.len() as i64;
    let client = reqwest::Client::new();
    for chunk in lines.chunks(20) {
        let resp = client
            .post(format!("{}/v1/events", server.url()))
            .body(chunk.join("\n"))
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
    }
    // Every event is in `events`, and the typed sink has accounted for each: in a typed table
    // or counted as refused on /health.
    let all = "SELECT count(*) AS n FROM events";
    let warning = wait_until(Duration::from_secs(60), "every event accounted for", || {
        if count(&data, all)? != total {
            return Ok(None);
        }
        let url = format!("{}/health", server.url());
        let health: serde_json::Value = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { reqwest::get(url).await?.json().await })
        })?;
        let Some(lake) = health["warnings"]["typed_limits"]
            .as_array()
            .and_then(|w| w.iter().find(|r| r["sink"] == "lake").cloned())
        else {
            return Ok(None);
        };
        let typed: i64 = typed_tables(&data)
            .iter()
            .map(|t| count(&data, &format!("SELECT count(*) AS n FROM {t}")))
            .sum::<anyhow::Result<i64>>()?;
        let refused = lake["events_without_table"].as_i64().unwrap_or(0);
        Ok((typed + refused == total).then_some(lake))
    })?;
    let tables = typed_tables(&data);
    assert_eq!(tables.len(), 5, "{tables:?}");
    assert_eq!(warning["max_typed_tables"], 5);
    assert!(
        !warning["refused_tables"]
            .as_array()
            .expect("list")
            .is_empty()
    );
    // `name_0` is one of the five (the first flush holds it), with 4 property columns.
    if tables.contains(&"name_0".to_string()) {
        let data_s = data.to_str().expect("utf-8");
        let sql = |q: &str| run_cli(Path::new(BIN), &["sql", "--data-dir", data_s, q]);
        sql("SELECT prop_0, prop_1, prop_2, prop_3 FROM name_0")?;
        let missing = sql("SELECT prop_4 FROM name_0").unwrap_err().to_string();
        assert!(missing.contains("prop_4"), "{missing}");
        assert_eq!(warning["properties_without_column"], (PROPS - 4) as i64);
    }
    // The refused names' events are all in `events`, properties as JSON.
    assert_eq!(
        count(
            &data,
            "SELECT count(*) AS n FROM events WHERE properties LIKE '%prop_39%'"
        )?,
        1
    );
    Ok(())
}

/// The property columns of each typed table the loader made in `schema` (its tables but
/// `events` and the positions), by name.
async fn loader_typed_tables(schema: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let rows = pg_rows(&format!(
        "SELECT table_name, column_name FROM information_schema.columns \
         WHERE table_schema = '{schema}' ORDER BY table_name, column_name"
    ))
    .await?;
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        let (Some(Some(table)), Some(Some(column))) = (row.first(), row.get(1)) else {
            continue;
        };
        if table == "events" || table.starts_with('_') {
            continue;
        }
        let columns = tables.entry(table.clone()).or_default();
        if !FIXED_COLUMNS.contains(&column.as_str()) {
            columns.push(column.clone());
        }
    }
    Ok(tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Postgres server on 127.0.0.1:5432"]
async fn the_loader_keeps_the_typed_table_limits() -> anyhow::Result<()> {
    const NAMES: usize = 30;
    const PROPS: usize = 24;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let schema = format!("limits_{}_{}", std::process::id(), nanos());
    let config = dir.path().join("sluice.toml");
    let start = |tables: usize, columns: usize| {
        std::fs::write(
            &config,
            format!(
                r#"
[lake]
max_typed_tables = {tables}
max_typed_columns = {columns}

[loader]
host = "127.0.0.1"
port = 5432
user = "postgres"
database = "test"
schema = "{schema}"
flush_interval = "100ms"
"#
            ),
        )?;
        let config = config.to_str().expect("utf-8 path");
        SluiceProcess::spawn(Path::new(BIN), &data, &["--config", config])
    };
    let mut server = start(3, 4)?;
    let url = server.url();
    let client = reqwest::Client::new();
    let post = |url: &str, lines: Vec<String>| {
        let request = client
            .post(format!("{url}/v1/events"))
            .body(lines.join("\n"));
        async move {
            let resp = request.send().await?;
            anyhow::ensure!(resp.status() == 200, "{}", resp.text().await?);
            anyhow::Ok(())
        }
    };

    // First one event with more properties than a table may have columns: its table exists
    // before the flood, with the first four.
    let first: Vec<String> = (0..6).map(|i| format!(r#""prop_{i}":{i}"#)).collect();
    post(
        &url,
        vec![format!(
            r#"{{"event_id":"big","event":"Big","user_id":"u","properties":{{{}}}}}"#,
            first.join(",")
        )],
    )
    .await?;
    eventually("the first event in the loader's events", || async {
        Ok((pg_count(&schema, "events", "true").await? == 1).then_some(()))
    })
    .await?;
    // Then a flood: a new name per event, and a new property per event of the first name.
    let mut lines: Vec<String> = (0..NAMES)
        .map(|i| format!(r#"{{"event_id":"n{i}","event":"Name {i}","user_id":"u"}}"#))
        .collect();
    lines.extend((0..PROPS).map(|i| {
        format!(
            r#"{{"event_id":"p{i}","event":"Big","user_id":"u","properties":{{"extra_{i}":{i}}}}}"#
        )
    }));
    let total = 1 + lines.len() as i64;
    for chunk in lines.chunks(10) {
        post(&url, chunk.to_vec()).await?;
    }

    // Every event is in the loader's `events`, each once, properties as JSON.
    eventually("every event in the loader's events", || async {
        let all = pg_count(&schema, "events", "true").await?;
        anyhow::ensure!(all <= total, "{all} rows for {total} events");
        Ok((all == total).then_some(()))
    })
    .await?;
    let distinct = pg_rows(&format!(
        "SELECT count(DISTINCT event_id) FROM \"{schema}\".events"
    ))
    .await?;
    assert_eq!(distinct[0][0].as_deref(), Some(total.to_string().as_str()));
    assert_eq!(
        pg_count(
            &schema,
            "events",
            "properties::jsonb ->> 'extra_23' = '23' AND event_id = 'p23'"
        )
        .await?,
        1
    );

    // At most three typed tables, at most four property columns each; `big` is one of them,
    // with the first event's first four properties, and holds every event of its name.
    let tables = loader_typed_tables(&schema).await?;
    assert_eq!(tables.len(), 3, "{tables:?}");
    for (table, columns) in &tables {
        assert!(columns.len() <= 4, "{table}: {columns:?}");
    }
    assert_eq!(
        tables.get("big").map(Vec::as_slice),
        Some(&["prop_0", "prop_1", "prop_2", "prop_3"].map(String::from)[..]),
        "{tables:?}"
    );
    assert_eq!(pg_count(&schema, "big", "true").await?, 1 + PROPS as i64);
    for (table, _) in tables.iter().filter(|(t, _)| *t != "big") {
        assert_eq!(pg_count(&schema, table, "true").await?, 1, "{table}");
    }

    // `/health` says what the loader refused.
    let health: serde_json::Value = client
        .get(format!("{url}/health"))
        .send()
        .await?
        .json()
        .await?;
    let loader = health["warnings"]["typed_limits"]
        .as_array()
        .and_then(|w| w.iter().find(|r| r["sink"] == "loader"))
        .unwrap_or_else(|| panic!("no loader warning in {health}"));
    assert_eq!(loader["max_typed_tables"], 3, "{loader}");
    assert_eq!(loader["max_typed_columns"], 4, "{loader}");
    assert!(
        loader["events_without_table"].as_u64() >= Some(NAMES as u64 - 2),
        "{loader}"
    );
    assert!(
        loader["properties_without_column"].as_u64() >= Some(2 + PROPS as u64),
        "{loader}"
    );
    assert!(
        loader["refused_columns"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "big.prop_4")),
        "{loader}"
    );
    server.terminate(DEADLINE)?;

    // Lowered below what exists, the limits keep the existing tables and columns working and
    // let nothing new in.
    let server = start(1, 2)?;
    let url = server.url();
    let named = tables.keys().find(|t| *t != "big").expect("a name table");
    let name = named.replace("name_", "Name ");
    post(
        &url,
        vec![
            r#"{"event_id":"late-big","event":"Big","user_id":"u","properties":{"prop_3":3,"later":1}}"#.into(),
            format!(r#"{{"event_id":"late-name","event":"{name}","user_id":"u"}}"#),
            r#"{"event_id":"late-new","event":"Fresh Name","user_id":"u"}"#.into(),
        ],
    )
    .await?;
    eventually("the three late events in the loader's events", || async {
        Ok((pg_count(&schema, "events", "true").await? == total + 3).then_some(()))
    })
    .await?;
    assert_eq!(loader_typed_tables(&schema).await?, tables);
    assert_eq!(
        pg_count(&schema, "big", "event_id = 'late-big' AND prop_3 = 3").await?,
        1
    );
    assert_eq!(pg_count(&schema, named, "event_id = 'late-name'").await?, 1);
    pg_rows(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await?;
    Ok(())
}

/// The Parquet data files of table `table` under the lake, relative to its directory.
fn data_files(data: &Path, table: &str) -> Vec<String> {
    let dir = data.join("lake").join(table);
    let mut out = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("_delta_log") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "parquet")
                && let Ok(rel) = path.strip_prefix(&dir)
            {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_lake_file_is_named_by_verify_and_health() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[lake]\nflush_interval = \"200ms\"\n[upkeep]\nverify_interval = \"1s\"\n",
    )?;
    let config = config.to_str().expect("utf-8 path");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &["--config", config])?;
    let body: String = (0..30)
        .map(|i| format!(r#"{{"event_id":"v{i}","event":"Viewed","user_id":"u{i}"}}"#))
        .collect::<Vec<_>>()
        .join("\n");
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/events", server.url()))
        .body(body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let all = "SELECT count(*) AS n FROM events";
    wait_until(Duration::from_secs(60), "30 events", || {
        Ok((count(&data, all)? == 30).then_some(()))
    })?;
    let data_s = data.to_str().expect("utf-8");
    let verify = || {
        std::process::Command::new(BIN)
            .args(["lake", "verify", "--data-dir", data_s, "--table", "events"])
            .output()
    };
    let whole = verify()?;
    let out = String::from_utf8_lossy(&whole.stdout).into_owned();
    assert!(whole.status.success(), "{out}");
    assert!(out.contains("without a checksum, 0 damaged"), "{out}");
    assert!(out.contains(" 0 without a checksum"), "{out}");

    let files = data_files(&data, "events");
    let victim = files.first().expect("a data file").clone();
    let path = data.join("lake/events").join(&victim);
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes)?;

    let damaged = verify()?;
    let out = String::from_utf8_lossy(&damaged.stdout).into_owned();
    assert!(!damaged.status.success(), "{out}");
    assert!(out.contains(&format!("damaged: events/{victim}")), "{out}");
    assert!(out.contains("1 damaged"), "{out}");

    // The scrub finds it too and /health shows it (still 200: the node serves).
    let url = format!("{}/health", server.url());
    let warning = wait_until(Duration::from_secs(60), "the damage on /health", || {
        let health: serde_json::Value = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { reqwest::get(&url).await?.json().await })
        })?;
        Ok(health["warnings"]["lake_damaged"]
            .as_array()
            .and_then(|w| w.first().cloned()))
    })?;
    assert_eq!(warning["table"], "events");
    assert_eq!(warning["path"], victim);
    assert_eq!(reqwest::get(&url).await?.status(), 200);
    Ok(())
}
