//! HTTP helpers for tests that drive a server: SQL polled until enough rows arrive.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `query` on `base`'s `/v1/sql` until it returns at least `n` rows (JSON lines), or
/// panics after 30 s with the last answer.
pub async fn sql_rows(client: &reqwest::Client, base: &str, query: &str, n: usize) -> Vec<Value> {
    sql_rows_as(client, base, None, query, n).await
}

/// [`sql_rows`] with a reader or admin token.
pub async fn sql_rows_as(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
    n: usize,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = client
            .post(format!("{base}/v1/sql?format=json"))
            .body(query.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let last = match req.send().await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                let text = resp.text().await.unwrap_or_default();
                if ok {
                    let rows: Vec<Value> = text
                        .lines()
                        .map(|l| {
                            serde_json::from_str(l)
                                .unwrap_or_else(|e| panic!("{query}: not a JSON line {l:?}: {e}"))
                        })
                        .collect();
                    if rows.len() >= n {
                        return rows;
                    }
                    format!("{} rows", rows.len())
                } else {
                    text
                }
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{query}: fewer than {n} rows in time (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
