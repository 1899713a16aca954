//! What several test modules ask of the binary: run a command, read a query's rows, read the
//! loader's tables in the Postgres server on 127.0.0.1:5432, wait for a condition.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_testkit::process::run_cli;
use sluice_warehouse::pgclient::{PgConnection, PgTarget};

/// How long a test waits for the pipeline to get somewhere.
pub(crate) const DEADLINE: Duration = Duration::from_secs(90);

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Runs `sluice ARGS` and returns its standard output.
pub(crate) fn sluice(args: &[&str]) -> anyhow::Result<String> {
    run_cli(Path::new(BIN), args)
}

/// The rows of `query`, read with `sluice sql` from the data directory.
pub(crate) fn sql(data: &Path, query: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let data = data.to_str().expect("utf-8 path");
    let out = sluice(&["sql", "--format", "json", "--data-dir", data, query])?;
    out.lines()
        .map(|l| serde_json::from_str(l).map_err(Into::into))
        .collect()
}

/// The column `n` of the first row of `query` (-1 when there is none).
pub(crate) fn count(data: &Path, query: &str) -> anyhow::Result<i64> {
    let rows = sql(data, query)?;
    Ok(rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(-1))
}

/// The column `n` of the first row of `query`, asked of a running server over HTTP (`POST
/// /v1/sql`; -1 when there is none).
pub(crate) fn count_at(server_url: &str, query: &str) -> anyhow::Result<i64> {
    let out = sluice(&["sql", "--server", server_url, "--format", "json", query])?;
    let row: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("{}"))?;
    Ok(row["n"].as_i64().unwrap_or(-1))
}

/// Posts `body` (events) to a running server's `/v1/events`; an error unless it answers 200.
pub(crate) async fn post_events(server_url: &str, body: String) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .post(format!("{server_url}/v1/events"))
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "ingest answered {}", resp.status());
    Ok(())
}

/// The Postgres server on this machine (trust authentication, database `test`).
pub(crate) fn pg_target() -> PgTarget {
    PgTarget {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: None,
        database: "test".into(),
        sslmode: sluice_warehouse::pgtls::SslMode::Disable,
        sslrootcert: None,
    }
}

/// The rows of `query` in the Postgres server, as text (`None` for NULL).
pub(crate) async fn pg_rows(query: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut conn = PgConnection::connect(&pg_target(), DEADLINE).await?;
    Ok(conn.query(query).await?)
}

/// The rows of `schema.table` that match `filter` (-1 when the answer has none).
pub(crate) async fn pg_count(schema: &str, table: &str, filter: &str) -> anyhow::Result<i64> {
    let rows = pg_rows(&format!(
        "SELECT count(*) FROM \"{schema}\".\"{table}\" WHERE {filter}"
    ))
    .await?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1))
}

/// Waits, without blocking the runtime, until `check` answers `Some`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        let last = check().await;
        if let Ok(Some(v)) = last {
            return Ok(v);
        }
        if Instant::now() >= end {
            anyhow::bail!("timed out waiting for {what}: last answer {:?}", last.err());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nanoseconds since the epoch: a suffix that keeps test schemas apart.
pub(crate) fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
