//! Reading the sinks from outside, as an operator would: the lake through `POST /v1/sql`, the
//! hot tier through `POST /v1/profiles:batch`, the server's counters through `/metrics`, and
//! the loader's tables through tokio-postgres.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

/// Runs `query` once; its rows (JSON lines).
pub async fn sql(http: &reqwest::Client, base: &str, query: &str) -> anyhow::Result<Vec<Value>> {
    let resp = http
        .post(format!("{base}/v1/sql?format=json"))
        .body(query.to_string())
        .send()
        .await
        .with_context(|| format!("POST /v1/sql {query}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "{query}: {status}: {text}");
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{query}: bad line {l:?}")))
        .collect()
}

/// The first column of every row of `query`, as strings.
pub async fn sql_strings(
    http: &reqwest::Client,
    base: &str,
    query: &str,
) -> anyhow::Result<Vec<String>> {
    let rows = sql(http, base, query).await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.as_object()?.values().next().cloned())
        .map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .collect())
}

/// A single number from `query` (e.g. a count); 0 when the table does not exist yet.
pub async fn sql_count(http: &reqwest::Client, base: &str, query: &str) -> anyhow::Result<u64> {
    let rows = match sql(http, base, query).await {
        Ok(rows) => rows,
        Err(e) if e.to_string().contains("not found") => return Ok(0),
        Err(e) => return Err(e),
    };
    let v = rows
        .first()
        .and_then(|r| r.as_object()?.values().next().cloned())
        .context("no row")?;
    v.as_u64()
        .or_else(|| v.as_str()?.parse().ok())
        .with_context(|| format!("{query}: not a count: {v}"))
}

/// The ids of the events of `table` whose id starts with `prefix`, one per row.
pub async fn ids_in(
    http: &reqwest::Client,
    base: &str,
    table: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    sql_strings(
        http,
        base,
        &format!("SELECT event_id FROM {table} WHERE event_id LIKE '{prefix}-%'"),
    )
    .await
}

/// Polls `check` every 100 ms until it is true or `deadline` passes; whether it became true.
pub async fn wait_for<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Ok(true) = check().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `events_total` of every profile among `ids` (missing profiles count 0).
pub async fn profile_totals(
    http: &reqwest::Client,
    base: &str,
    ids: &[String],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(100) {
        let resp = http
            .post(format!("{base}/v1/profiles:batch"))
            .json(&serde_json::json!({ "ids": chunk }))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "profiles:batch {status}: {body}");
        let profiles = body["profiles"].as_array().context("no profiles")?;
        for p in profiles.iter().filter(|p| !p.is_null()) {
            let id = p["id"].as_str().context("profile without id")?;
            out.insert(id.to_string(), p["events_total"].as_u64().unwrap_or(0));
        }
    }
    Ok(out)
}

/// The value of the Prometheus sample `name{labels}` (labels as written, e.g.
/// `outcome="accepted"`), summed over every series that carries them.
pub async fn metric(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &str,
) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(sum_metric(&text, name, labels))
}

/// [`metric`] over an already fetched exposition.
pub fn sum_metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = if labels.is_empty() {
                rest.is_empty() || rest.starts_with('{')
            } else {
                rest.starts_with('{') && rest.contains(labels)
            };
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The ids in the loader's table `schema.table` starting with `prefix`.
pub async fn pg_ids(
    conn: &str,
    schema: &str,
    table: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let rows = client
        .query(
            &format!("SELECT event_id FROM \"{schema}\".\"{table}\" WHERE event_id LIKE $1"),
            &[&format!("{prefix}-%")],
        )
        .await;
    drop(client);
    let _ = driver.await;
    Ok(rows?.iter().map(|r| r.get::<_, String>(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_matching_series() {
        let text = "# HELP x\n\
            sluice_collector_events_total{outcome=\"accepted\",source=\"a\"} 5\n\
            sluice_collector_events_total{outcome=\"accepted\",source=\"b\"} 7\n\
            sluice_collector_events_total{outcome=\"duplicate\"} 100\n\
            sluice_collector_events_total_other{outcome=\"accepted\"} 1000\n";
        assert_eq!(
            sum_metric(
                text,
                "sluice_collector_events_total",
                "outcome=\"accepted\""
            ),
            12.0
        );
        assert_eq!(sum_metric(text, "missing", ""), 0.0);
    }
}
