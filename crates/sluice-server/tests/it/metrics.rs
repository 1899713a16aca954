//! `/metrics`: every HTTP answer is counted once in `sluice_http_requests_total`, under its
//! route, the per-address quota's refusals included.

use sluice_testkit::server::TestServer;

/// The value of `sluice_http_requests_total` for `route` and `status` (0 when absent).
fn requests(metrics: &str, route: &str, status: u16) -> u64 {
    let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
    metrics
        .lines()
        .filter(|l| l.starts_with("sluice_http_requests_total{"))
        .filter(|l| l.contains(&route) && l.contains(&status))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_is_counted_once_under_its_route_throttled_ones_too() {
    let server =
        TestServer::start("[collector.quotas]\nrequests_per_sec_per_ip = 1\nburst = \"1s\"\n")
            .await;
    let post = |body: &'static str| {
        server
            .client
            .post(server.url("/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    // One request's worth of rate: the first passes, the next is refused before its body.
    let first = post(r#"{"event_id":"m-1","event":"Signed Up","user_id":"u1"}"#)
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = post(r#"{"event_id":"m-2","event":"Signed Up","user_id":"u1"}"#)
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    let sql = server
        .client
        .post(server.url("/v1/sql"))
        .body("SELECT 1 AS one")
        .send()
        .await
        .unwrap();
    assert_eq!(sql.status(), 200);
    let metrics = server.get_text("/metrics").await;
    assert_eq!(requests(&metrics, "events", 200), 1, "{metrics}");
    assert_eq!(requests(&metrics, "events", 429), 1, "{metrics}");
    assert_eq!(requests(&metrics, "sql", 200), 1, "{metrics}");
    server.shutdown().await;
}
