//! A clean shutdown closes the file journal at its exact end, whatever still holds a handle to
//! it, so the next start continues its offsets without a gap.

use serde_json::json;
use sluice_testkit::server::TestServer;

/// The offset floor of every partition of `topic` in the journal under `data_dir`.
fn floors(data_dir: &std::path::Path, topic: &str) -> Vec<u64> {
    let dir = data_dir.join("journal").join(topic);
    let mut floors = Vec::new();
    for p in 0.. {
        let Ok(bytes) = std::fs::read(dir.join(p.to_string()).join("floor")) else {
            break;
        };
        assert_eq!(&bytes[..8], b"SLUICEJF", "floor file of partition {p}");
        floors.push(u64::from_le_bytes(bytes[12..20].try_into().unwrap()));
    }
    floors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_writes_each_partitions_exact_end_as_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), "").await;
    let events: Vec<_> = (0..40)
        .map(|i| json!({"event": "Viewed", "event_id": format!("s-{i}"), "user_id": format!("u{i}")}))
        .collect();
    let sent = server
        .client
        .post(server.url("/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    // While it runs, each floor lies a reserve ahead of what is written.
    assert!(floors(dir.path(), "raw").iter().all(|f| *f > 40));
    // Something still holds the journal when the server has shut down (a connection task, a
    // task on a runtime the process does not wait for): it is closed all the same.
    let held = server.journal();
    server.shutdown().await;
    let raw = floors(dir.path(), "raw");
    assert_eq!(raw.len(), 4);
    assert_eq!(raw.iter().sum::<u64>(), 40, "{raw:?}");
    let e = held
        .append("raw", 0, vec![bytes::Bytes::from_static(b"{}")])
        .await;
    assert!(
        matches!(e, Err(sluice_journal::JournalError::Closed)),
        "{e:?}"
    );
}
