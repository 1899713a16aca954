//! The journal on NATS JetStream against a private nats-server 2.15 ([`NatsServer`]): the same
//! contract checks as the file journal, the pipeline end to end (events posted → rows in
//! `events`), clear start-up errors (no server, an unsafe stream, a server that acks before it
//! fsyncs), records removed unread reported, and a SIGKILLed server that keeps acked records and
//! committed positions. The tests that need the server install it from PyPI and are ignored by
//! plain `cargo test` (run them with `--run-ignored all`, as CI does).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::json;
use sluice_journal::{JetStreamJournal, Journal, JournalBackend, JournalConfig, LocalJournal};
use sluice_testkit::NatsServer;
use sluice_testkit::journal_contract::{self, read_all};
use sluice_testkit::server::TestServer;

const DEADLINE: Duration = Duration::from_secs(30);

fn config(nats: &NatsServer) -> JournalConfig {
    let mut c = JournalConfig {
        backend: JournalBackend::Jetstream,
        ..JournalConfig::default()
    };
    c.jetstream.urls = vec![nats.url()];
    c.jetstream.monitor_urls = vec![nats.monitor_url()];
    c
}

fn server_toml(nats: &NatsServer) -> String {
    format!(
        "[journal]\nbackend = \"jetstream\"\n[journal.jetstream]\nurls = [{:?}]\nmonitor_urls = [{:?}]\n",
        nats.url(),
        nats.monitor_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_journal_keeps_the_journal_contract() {
    let nats = NatsServer::start().unwrap();
    let j = JetStreamJournal::open(config(&nats)).await.unwrap();
    journal_contract::check_all(j).await;
    // Again with a tail cache of one record: nearly every read is fetched from the streams.
    let mut c = config(&nats);
    c.jetstream.prefix = "uncached".into();
    c.jetstream.tail_cache_bytes = 1;
    journal_contract::check_all(JetStreamJournal::open(c).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_fences_out_a_second_writer_on_a_partition() {
    let nats = NatsServer::start().unwrap();
    let first = JetStreamJournal::open(config(&nats)).await.unwrap();
    first.create_topic("t", 1).unwrap();
    first
        .append("t", 0, vec![Bytes::from_static(b"a")])
        .await
        .unwrap();
    // A second node on the same streams appends: the first one's next batch is refused whole
    // (`Fenced`) instead of interleaving with the other writer; its journal goes on.
    let second = JetStreamJournal::open(config(&nats)).await.unwrap();
    assert_eq!(
        second
            .append("t", 0, vec![Bytes::from_static(b"b")])
            .await
            .unwrap(),
        1
    );
    let refused = first
        .append(
            "t",
            0,
            vec![Bytes::from_static(b"c1"), Bytes::from_static(b"c2")],
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(sluice_journal::JournalError::Fenced { after: 1, .. })
        ),
        "{refused:?}"
    );
    assert!(!first.is_failed() && !second.is_failed());
    let values: Vec<Bytes> = read_all(second.as_ref(), "t", 0, 10)
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(
        values,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
    // Having read the partition again, the first one appends after the other writer's record.
    first.sync("t", 0).await.unwrap();
    let at = first.append("t", 0, vec![Bytes::from_static(b"d")]).await;
    assert_eq!(at.unwrap(), 2);
    // A record stored after a sync (as a batch whose ack was lost lands late) fences the
    // writer's next append: it decided what to write from what the sync showed.
    assert_eq!(first.sync("t", 0).await.unwrap(), 3);
    assert_eq!(second.sync("t", 0).await.unwrap(), 3);
    let late = second.append("t", 0, vec![Bytes::from_static(b"e")]);
    assert_eq!(late.await.unwrap(), 3);
    let refused = first.append("t", 0, vec![Bytes::from_static(b"f")]).await;
    assert!(
        matches!(
            refused,
            Err(sluice_journal::JournalError::Fenced { after: 3, .. })
        ),
        "{refused:?}"
    );
    assert_eq!(first.sync("t", 0).await.unwrap(), 4);
    let at = first.append("t", 0, vec![Bytes::from_static(b"f")]).await;
    assert_eq!(at.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_journal_keeps_the_same_journal_contract() {
    let dir = tempfile::tempdir().unwrap();
    let j = LocalJournal::open(JournalConfig {
        dir: dir.path().to_path_buf(),
        ..JournalConfig::default()
    })
    .unwrap();
    journal_contract::check_all(j).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_pipeline_delivers_posted_events_to_sql() {
    let nats = NatsServer::start().unwrap();
    let server = TestServer::start(&server_toml(&nats)).await;
    let client = reqwest::Client::new();
    let events: Vec<_> = (0..20)
        .map(|i| json!({"event": "Page Viewed", "event_id": format!("e-{i}"), "user_id": format!("u{}", i % 5)}))
        .collect();
    let post = || client.post(server.url("/v1/events")).json(&events).send();
    let first: serde_json::Value = post().await.unwrap().json().await.unwrap();
    assert_eq!(first["accepted"], 20, "{first}");
    // A retry of an acked request is answered as duplicates, not stored twice.
    let retry: serde_json::Value = post().await.unwrap().json().await.unwrap();
    assert_eq!(retry["duplicates"], 20, "{retry}");
    let rows = server
        .sql_rows("SELECT event_id FROM events ORDER BY event_id", 20)
        .await;
    assert_eq!(rows.len(), 20, "{rows:?}");
    // The records are in the streams (4 raw partitions), not in a local journal.
    assert!(!server.data_dir().join("journal").exists());
    let j = JetStreamJournal::open(config(&nats)).await.unwrap();
    let raw: u64 = (0..4).map(|p| j.end("raw", p).unwrap()).sum();
    assert_eq!(raw, 20);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_start_fails_clearly_without_a_server() {
    let port = sluice_testkit::tools::free_port().unwrap();
    let err = TestServer::start_error(&format!(
        "[journal]\nbackend = \"jetstream\"\n[journal.jetstream]\nurls = [\"nats://127.0.0.1:{port}\"]\ntimeout = \"1s\"\n"
    ))
    .await
    .to_string();
    assert!(
        err.contains("cannot connect to NATS at nats://127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_start_refuses_an_unsafe_stream_and_a_server_without_fsync() {
    let nats = NatsServer::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "sluice_raw_0".into(),
        subjects: vec!["sluice.raw.0".into()],
        max_messages_per_subject: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = TestServer::start_error(&server_toml(&nats))
        .await
        .to_string();
    assert!(
        err.contains("sluice_raw_0") && err.contains("max_msgs_per_subject"),
        "{err}"
    );
    // A monitoring endpoint that reports no fsync before acks: this one serves a /varz whose
    // JetStream config has `sync_always` off.
    let varz = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = varz.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = varz.accept().await {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let body = r#"{"jetstream":{"config":{"sync_interval":120000000000}}}"#;
            let _ = conn
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let mut c = config(&nats);
    c.jetstream.prefix = "other".into();
    c.jetstream.monitor_urls = vec![format!("http://{addr}")];
    let err = JetStreamJournal::open(c).await.err().unwrap().to_string();
    assert!(err.contains("acks before it fsyncs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_reports_records_removed_before_a_group_read_them() {
    let nats = NatsServer::start().unwrap();
    let mut c = config(&nats);
    c.retention_bytes = Some(2048);
    let j = JetStreamJournal::open(c).await.unwrap();
    j.create_topic("t", 1).unwrap();
    j.commit("slow", "t", 0, 0).unwrap();
    for _ in 0..8 {
        j.append("t", 0, vec![Bytes::from(vec![1u8; 1000])])
            .await
            .unwrap();
    }
    // The stream's max_bytes removed the oldest records: `start` moves past the position the
    // group committed, and reads skip to it.
    let deadline = Instant::now() + DEADLINE;
    while j.start("t", 0).unwrap() == 0 {
        assert!(Instant::now() < deadline, "start never moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = j.start("t", 0).unwrap();
    while j.removed_unread() < start {
        assert!(Instant::now() < deadline, "the removal was not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = j.read("t", 0, 0, 100, usize::MAX).unwrap();
    assert_eq!(read.first().map(|r| r.offset), Some(start));
    assert_eq!(read.last().map(|r| r.offset), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_keeps_acked_records_and_positions_across_a_server_kill() {
    let mut nats = NatsServer::start().unwrap();
    // A short ack timeout: the batch in flight at the kill fails fast.
    let mut c = config(&nats);
    c.jetstream.timeout = Duration::from_secs(1);
    let j = JetStreamJournal::open(c).await.unwrap();
    j.create_topic("t", 2).unwrap();
    let mut sent = Vec::new();
    for b in 0..10u8 {
        let batch: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![b, i])).collect();
        j.append("t", u32::from(b % 2), batch.clone())
            .await
            .unwrap();
        sent.push(batch);
    }
    j.commit("g", "t", 1, 15).unwrap();
    // Partition 1 is appended to all along, across the kill and the restart: appends fail while
    // the server is down (a batch in flight may still land later), and the journal must not
    // take its own late batches for another writer's.
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (j, stop) = (j.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let value = Bytes::from(format!("live-{i}"));
                if let Ok(offset) = j.append("t", 1, vec![value.clone()]).await {
                    acked.push((offset, value));
                }
                i += 1;
            }
            acked
        })
    };
    let grown_to = |n: u64| {
        let j = j.clone();
        async move {
            let deadline = Instant::now() + DEADLINE;
            while j.end("t", 1).unwrap() < n {
                assert!(
                    Instant::now() < deadline,
                    "partition 1 does not grow past {n}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    grown_to(25 + 20).await;
    nats.kill();
    nats.restart().unwrap();
    // The same journal reconnects and goes on appending after the acked records.
    let deadline = Instant::now() + DEADLINE;
    let next = loop {
        match j.append("t", 0, vec![Bytes::from_static(b"after")]).await {
            Ok(offset) => break offset,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no append after the restart: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(next, 25);
    grown_to(j.end("t", 1).unwrap() + 20).await;
    stop.store(true, Ordering::Relaxed);
    let live = appender.await.unwrap();
    assert!(
        !j.is_failed(),
        "the journal took its own late batches for another writer's"
    );
    drop(j);
    // A new journal (a restarted node) finds every acked record and the committed position.
    let j: Arc<dyn Journal> = JetStreamJournal::open(config(&nats)).await.unwrap();
    assert_eq!(j.partitions("t").unwrap(), 2);
    for p in 0..2u32 {
        let want: Vec<Bytes> = sent
            .iter()
            .enumerate()
            .filter(|(b, _)| *b as u32 % 2 == p)
            .flat_map(|(_, batch)| batch.iter().cloned())
            .chain((p == 0).then(|| Bytes::from_static(b"after")))
            .collect();
        let got = read_all(j.as_ref(), "t", p, 7);
        let values: Vec<Bytes> = got.iter().map(|r| r.value.clone()).collect();
        assert_eq!(values[..want.len()], want[..], "partition {p}");
        if p == 0 {
            assert_eq!(values.len(), want.len());
        }
    }
    // Every append to partition 1 that was acked is at the offset its ack named, and every
    // record stored after the first 25 was acked: a batch whose ack was lost in the kill is
    // either acked after all or not stored.
    let got = read_all(j.as_ref(), "t", 1, 100);
    for (offset, value) in &live {
        assert_eq!(&got[*offset as usize].value, value, "offset {offset}");
    }
    assert_eq!(got.len(), 25 + live.len(), "records stored without an ack");
    assert_eq!(j.committed("g", "t", 1).unwrap(), Some(15));
    assert_eq!(j.committed("g", "t", 0).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_shared_appends_of_two_nodes_take_turns_and_lose_nothing() {
    use sluice_journal::JournalError;

    let nats = NatsServer::start().unwrap();
    let a = JetStreamJournal::open(config(&nats)).await.unwrap();
    a.create_topic("k", 1).unwrap();
    let b = JetStreamJournal::open(config(&nats)).await.unwrap();
    assert!(a.shared() && b.shared());
    // Two nodes append to one partition at once, several appends in flight on each.
    let mut tasks = tokio::task::JoinSet::new();
    for (node, j) in [("a", a.clone()), ("b", b.clone())] {
        for task in 0..4 {
            let j = j.clone();
            tasks.spawn(async move {
                let mut firsts = Vec::new();
                for i in 0..10 {
                    let batch: Vec<Bytes> = (0..5)
                        .map(|r| Bytes::from(format!("{node}-{task}-{i}-{r}")))
                        .collect();
                    let first = j.append_shared("k", 0, batch.clone(), None).await.unwrap();
                    firsts.push((first, batch));
                }
                firsts
            });
        }
    }
    let mut acked = Vec::new();
    while let Some(r) = tasks.join_next().await {
        acked.extend(r.unwrap());
    }
    // A node's end follows the other node's appends as its tail reads them.
    let deadline = Instant::now() + DEADLINE;
    while a.end("k", 0).unwrap() < 400 {
        assert!(Instant::now() < deadline, "a never saw b's appends");
        a.wait_for("k", 0, 399, Duration::from_millis(100)).await;
    }
    let stored = read_all(a.as_ref(), "k", 0, 1000);
    assert_eq!(stored.len(), 400, "every acked record, once");
    assert!(stored.iter().enumerate().all(|(i, r)| r.offset == i as u64));
    // Each append is stored whole, at the offsets its ack named.
    for (first, batch) in &acked {
        let at: Vec<&Bytes> = stored[*first as usize..][..batch.len()]
            .iter()
            .map(|r| &r.value)
            .collect();
        assert_eq!(at, batch.iter().collect::<Vec<_>>());
    }
    // A conditional append made before reading the other node's records is refused whole.
    let refused = b
        .append_shared("k", 0, vec![Bytes::from_static(b"late")], Some(0))
        .await;
    match refused {
        Err(JournalError::Contended { end, .. }) => assert!(end > 0 && end <= 400, "{end}"),
        other => panic!("{other:?}"),
    }
    let ok = b
        .append_shared("k", 0, vec![Bytes::from_static(b"late")], Some(400))
        .await
        .unwrap();
    assert_eq!(ok, 400);
    assert!(!a.is_failed() && !b.is_failed());
    // Each node's positions are the other's too.
    a.commit("g", "k", 0, 7).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while b.committed("g", "k", 0).unwrap() != Some(7) {
        assert!(Instant::now() < deadline, "b never saw a's commit");
        b.wait_for("k", 0, 1_000, Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn jetstream_nodes_share_intake_and_store_each_event_once() {
    let nats = NatsServer::start().unwrap();
    let full = TestServer::start(&format!("{}node = \"full\"\n", server_toml(&nats))).await;
    let intake = TestServer::start(&format!(
        "roles = [\"collector\"]\n{}node = \"intake\"\n",
        server_toml(&nats)
    ))
    .await;
    let events: Vec<_> = (0..120)
        .map(|i| json!({"event": "Page Viewed", "event_id": format!("e-{i}"), "user_id": format!("u{}", i % 7)}))
        .collect();
    let post = |server: &TestServer, events: &[serde_json::Value]| {
        let req = server
            .client
            .post(server.url("/v1/events"))
            .json(&events.to_vec());
        async move {
            let answer: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
            answer
        }
    };
    // The same events to both nodes at once, in overlapping requests, then every request again
    // on the other node (a client retrying elsewhere): each event is stored once.
    let (first, second, third) = tokio::join!(
        post(&full, &events[..80]),
        post(&intake, &events[40..]),
        post(&intake, &events[20..60]),
    );
    let accepted = [&first, &second, &third]
        .iter()
        .map(|a| a["accepted"].as_u64())
        .sum::<Option<u64>>();
    assert_eq!(accepted, Some(120), "{first} {second} {third}");
    let retry_a = post(&intake, &events[..80]).await;
    let retry_b = post(&full, &events[40..]).await;
    assert_eq!(retry_a["duplicates"], 80, "{retry_a}");
    assert_eq!(retry_b["duplicates"], 80, "{retry_b}");
    let rows = full
        .sql_rows("SELECT DISTINCT event_id FROM events", 120)
        .await;
    assert_eq!(rows.len(), 120);
    let all = full.sql("SELECT count(*) AS n FROM events").await;
    assert_eq!(all[0]["n"], 120, "{all:?}");
    let j = JetStreamJournal::open(config(&nats)).await.unwrap();
    let raw: u64 = (0..4).map(|p| j.end("raw", p).unwrap()).sum();
    assert_eq!(raw, 120, "raw holds each event once");

    // Either node reports both, the lease and the runner's lag on every raw partition (the
    // collector-only node knows it from the positions the other one commits).
    let deadline = Instant::now() + DEADLINE;
    let cluster = loop {
        let c = intake.get_json("/v1/cluster").await;
        let raw_lag: Vec<_> = c["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["topic"] == "raw")
            .map(|p| p["consumers"]["functions"]["lag"].clone())
            .collect();
        if raw_lag.len() == 4 && raw_lag.iter().all(|l| l == 0) {
            break c;
        }
        assert!(Instant::now() < deadline, "{c}");
        j.wait_for("raw", 0, u64::MAX, Duration::from_millis(100))
            .await;
    };
    assert_eq!(cluster["backend"], "jetstream");
    assert_eq!(cluster["node"], "intake");
    let nodes: Vec<_> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].clone(), n["state"].clone(), n["roles"].clone()))
        .collect();
    assert_eq!(nodes.len(), 2, "{cluster}");
    assert_eq!(nodes[0].0, "full");
    assert_eq!(nodes[0].1, "running");
    assert_eq!(
        nodes[1],
        (json!("intake"), json!("running"), json!(["collector"]))
    );
    // The pipeline's lease, then the runner's partitions: all on the one node with the runner.
    assert_eq!(
        cluster["leases"],
        json!([
            {"name": "pipeline", "holder": "full"},
            {"name": "runner.0", "holder": "full"},
            {"name": "runner.1", "holder": "full"},
            {"name": "runner.2", "holder": "full"},
            {"name": "runner.3", "holder": "full"},
        ])
    );
    let ends: u64 = cluster["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["topic"] == "raw")
        .map(|p| p["end"].as_u64().unwrap())
        .sum();
    assert_eq!(ends, 120);
    intake.shutdown().await;
    full.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_lease_is_taken_renewed_released_and_lost_when_another_node_writes_it() {
    let nats = NatsServer::start().unwrap();
    let node = |name: &str| {
        let mut c = config(&nats);
        c.jetstream.node = name.into();
        c.jetstream.lease_ttl = Duration::from_secs(3);
        JetStreamJournal::open(c)
    };
    let (a, b) = (node("a").await.unwrap(), node("b").await.unwrap());
    let lease = a.acquire_lease("t").await.unwrap();
    assert_eq!(b.lease_holder("t").await.unwrap().as_deref(), Some("a"));
    let client = async_nats::connect(nats.url()).await.unwrap();
    let leases = async_nats::jetstream::new(client)
        .get_key_value("sluice_leases")
        .await
        .unwrap();
    // Renewed (a third of the TTL apart) for longer than its TTL while the holder lives.
    let mut renews = leases.watch("t").await.unwrap();
    for _ in 0..4 {
        let renew = tokio::time::timeout(DEADLINE, renews.next()).await.unwrap();
        assert_eq!(&renew.unwrap().unwrap().value[..], b"a");
    }
    assert!(lease.is_held());
    assert_eq!(b.lease_holder("t").await.unwrap().as_deref(), Some("a"));
    // One attempt to take a held lease is refused; the leases held are listed, not the nodes.
    assert!(b.try_lease("t").await.unwrap().is_none());
    let free = b
        .try_lease("u")
        .await
        .unwrap()
        .expect("a free lease is taken");
    let held = [("t".to_string(), "a".to_string()), ("u".into(), "b".into())];
    assert_eq!(a.leases().await.unwrap(), held);
    free.release().await;
    assert_eq!(a.leases().await.unwrap(), held[..1]);
    // Released, it is free at once: the other node takes it.
    lease.release().await;
    let lease = tokio::time::timeout(DEADLINE, b.acquire_lease("t"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.lease_holder("t").await.unwrap().as_deref(), Some("b"));
    // Someone else writes the key: the holder's next renew is refused and it knows it lost it.
    leases.put("t", "intruder".into()).await.unwrap();
    tokio::time::timeout(DEADLINE, lease.lost()).await.unwrap();
    assert!(!lease.is_held());
    // Every node must use the same TTL: another is refused with the reason.
    let mut c = config(&nats);
    c.jetstream.lease_ttl = Duration::from_secs(7);
    let other = JetStreamJournal::open(c).await.unwrap();
    let refused = other.acquire_lease("t").await.err().unwrap().to_string();
    assert!(refused.contains("lease_ttl must be the same"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_node_that_loses_its_lease_on_the_pipeline_stops() {
    let nats = NatsServer::start().unwrap();
    let mut server = TestServer::start(&format!(
        "{}node = \"n1\"\nlease_ttl = \"10s\"\n",
        server_toml(&nats)
    ))
    .await;
    let j = JetStreamJournal::open(config(&nats)).await.unwrap();
    // The node serves first, then takes the leases: the runner's partitions and the pipeline.
    let deadline = Instant::now() + DEADLINE;
    for lease in ["runner.0", "runner.1", "runner.2", "runner.3", "pipeline"] {
        while j.lease_holder(lease).await.unwrap().as_deref() != Some("n1") {
            assert!(Instant::now() < deadline, "n1 never took {lease}");
            j.wait_for("raw", 0, u64::MAX, Duration::from_millis(50))
                .await;
        }
    }
    let client = async_nats::connect(nats.url()).await.unwrap();
    let leases = async_nats::jetstream::new(client)
        .get_key_value("sluice_leases")
        .await
        .unwrap();
    leases.put("pipeline", "n2".into()).await.unwrap();
    let stopped = tokio::time::timeout(DEADLINE, server.stopped())
        .await
        .unwrap();
    assert!(
        matches!(stopped, sluice_server::ServerError::LeaseLost),
        "{stopped}"
    );
    // Exiting, it gives the runner's partitions up instead of leaving them to expire: each
    // lease ends in a delete (an expired key leaves no entry at all).
    server.abandon().await;
    for p in 0..4 {
        let entry = leases.entry(format!("runner.{p}")).await.unwrap();
        let operation = entry.as_ref().map(|e| e.operation);
        assert_eq!(
            operation,
            Some(async_nats::jetstream::kv::Operation::Delete),
            "runner.{p}: {entry:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_deletion_on_one_node_suppresses_the_person_on_every_runner_node() {
    let (_nats, j, a, b) = two_runner_nodes().await;
    let deadline = Instant::now() + DEADLINE;
    let (gone, kept) = (per_partition("gone"), per_partition("kept"));
    // The request goes to `a`, which runs the pipeline (and so takes deletions).
    loop {
        let resp = a
            .client
            .post(a.url("/v1/privacy/deletions"))
            .json(&json!({ "ids": gone }))
            .send()
            .await
            .unwrap();
        if resp.status() == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        j.wait_for("raw", 0, u64::MAX, Duration::from_millis(100))
            .await;
    }
    // Their events come in afterwards on both nodes, each partition's before one of a person
    // kept: once those are in `events`, the runner of every partition has passed the others.
    post_each(&a, &gone, "via-a").await;
    post_each(&b, &gone, "via-b").await;
    post_each(&a, &kept, "via-a").await;
    post_each(&b, &kept, "via-b").await;
    a.sql_rows("SELECT event_id FROM events WHERE user_id LIKE 'kept-%'", 8)
        .await;
    let leaked = a
        .sql("SELECT user_id FROM events WHERE user_id LIKE 'gone-%'")
        .await;
    assert!(
        leaked.is_empty(),
        "deleted people came back through the runner partitions of the other node: {leaked:?}"
    );
}

/// A node `a` with every role and a node `b` with the collector and the runner, each running two
/// of the runner's four partitions, and a journal handle on their server.
async fn two_runner_nodes() -> (NatsServer, Arc<JetStreamJournal>, TestServer, TestServer) {
    two_runner_nodes_with("").await
}

/// [`two_runner_nodes`], both with the config tables `extra`.
async fn two_runner_nodes_with(
    extra: &str,
) -> (NatsServer, Arc<JetStreamJournal>, TestServer, TestServer) {
    let nats = NatsServer::start().unwrap();
    let a = TestServer::start(&format!("{}node = \"a\"\n{extra}", server_toml(&nats))).await;
    let b = TestServer::start(&format!(
        "roles = [\"collector\", \"runner\"]\n{}node = \"b\"\n{extra}",
        server_toml(&nats)
    ))
    .await;
    let j = JetStreamJournal::open(config(&nats)).await.unwrap();
    runner_shared_with(&j, "b").await;
    (nats, j, a, b)
}

/// Waits until both runner nodes run two of the four raw partitions, `node` among them.
async fn runner_shared_with(j: &JetStreamJournal, node: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let holders: Vec<String> = j
            .leases()
            .await
            .unwrap()
            .into_iter()
            .filter(|(name, _)| name.starts_with("runner."))
            .map(|(_, holder)| holder)
            .collect();
        if holders.iter().filter(|h| *h == node).count() == 2 && holders.len() == 4 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the runner was not shared: {holders:?}"
        );
        j.wait_for("raw", 0, u64::MAX, Duration::from_millis(100))
            .await;
    }
}

/// One user id per raw partition (of four), named `<prefix>-<k>`.
fn per_partition(prefix: &str) -> Vec<String> {
    (0..4)
        .map(|p| {
            (0..)
                .map(|k| format!("{prefix}-{k}"))
                .find(|id| sluice_journal::partition_for(id, 4) == p)
                .unwrap()
        })
        .collect()
}

/// Posts one event per user in `ids` to `node`, ids `<tag>-<user>`.
async fn post_each(node: &TestServer, ids: &[String], tag: &str) {
    post_each_as(node, ids, tag, json!({"event": "Signed In"})).await;
}

/// [`post_each`], each event `template` with its user and id.
async fn post_each_as(node: &TestServer, ids: &[String], tag: &str, template: serde_json::Value) {
    let events: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut e = template.clone();
            e["user_id"] = json!(id);
            e["event_id"] = json!(format!("{tag}-{id}"));
            e
        })
        .collect();
    let sent = node
        .client
        .post(node.url("/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success(), "{}", sent.status());
}

/// Waits until `node` answers `path` with `status`.
async fn answers(node: &TestServer, path: &str, status: u16) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = node
            .client
            .get(node.url(path))
            .send()
            .await
            .unwrap()
            .status();
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: {got}, not {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_function_deployed_on_one_node_runs_on_every_runner_node() {
    // Both runner nodes seal secrets with the same key.
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), format!("{}\n", "5a".repeat(32))).unwrap();
    let keyed = format!("[functions]\nsecrets_key_file = {:?}\n", key.path());
    let (nats, _j, a, b) = two_runner_nodes_with(&keyed).await;
    // Deployed on `b`; `a` takes it within a second.
    let code = "export function transform(e, ctx) { \
                return {...e, plan_tier: ctx.config.tier, salt: ctx.secrets.salt}; }";
    let deployed = b
        .client
        .put(b.url("/v1/functions/tier"))
        .json(&json!({"code": code, "config": {"tier": "gold"}, "secrets": {"salt": "pepper-77"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201);
    answers(&a, "/v1/functions/tier", 200).await;
    let shown = a.get_json("/v1/functions/tier").await;
    assert_eq!(shown["active"], 1, "{shown}");
    // The secret is in NATS sealed, never as given.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value("sluice_functions")
        .await
        .unwrap();
    let stored = String::from_utf8(bucket.get("tier").await.unwrap().unwrap().to_vec()).unwrap();
    assert!(
        stored.contains("sluice-sealed:v1:") && !stored.contains("pepper-77"),
        "{stored}"
    );
    // A runner node without the key cannot run it, and does not start.
    let e = TestServer::start_error(&format!("{}node = \"c\"\n", server_toml(&nats)))
        .await
        .to_string();
    assert!(e.contains("secrets_key_file") && e.contains("tier"), "{e}");
    // Events to both nodes, on every partition: each one ran the function, secret opened.
    let users = per_partition("user");
    post_each(&a, &users, "first-a").await;
    post_each(&b, &users, "first-b").await;
    let rows = a
        .sql_rows("SELECT event_id, properties FROM events", 8)
        .await;
    for row in &rows {
        let props: serde_json::Value =
            serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
        assert_eq!(
            (&props["plan_tier"], &props["salt"]),
            (&json!("gold"), &json!("pepper-77")),
            "{row}"
        );
    }
    // Deleted on `a`: `b` drops it too, and nothing runs it any more.
    let deleted = a
        .client
        .delete(a.url("/v1/functions/tier"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    answers(&b, "/v1/functions/tier", 404).await;
    post_each(&a, &users, "then-a").await;
    post_each(&b, &users, "then-b").await;
    let rows = a
        .sql_rows(
            "SELECT event_id, properties FROM events WHERE event_id LIKE 'then-%'",
            8,
        )
        .await;
    for row in &rows {
        let props = row["properties"].as_str().unwrap_or("");
        assert!(!props.contains("plan_tier"), "{row}");
    }
    // A runner node without a key refuses secrets (they would sit in NATS as given), not the
    // rest of a deploy.
    let c = TestServer::start(&format!("{}node = \"c\"\n", server_toml(&nats))).await;
    let deploy = |body: serde_json::Value| {
        c.client
            .put(c.url("/v1/functions/plain"))
            .json(&body)
            .send()
    };
    let refused = deploy(json!({"code": code, "secrets": {"salt": "pepper-77"}}))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let why = refused.text().await.unwrap();
    assert!(why.contains("secrets_key_file"), "{why}");
    let plain = "export function transform(e, ctx) { return e; }";
    assert_eq!(deploy(json!({"code": plain})).await.unwrap().status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_shared_map_refuses_a_change_made_from_an_old_view() {
    let nats = NatsServer::start().unwrap();
    let seen = |tag: &'static str| {
        let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let l = log.clone();
        let on_change: sluice_journal::OnChange = Arc::new(move |key, value| {
            let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
            l.lock().unwrap().push(format!("{tag} {key}={value:?}"));
        });
        (log, on_change)
    };
    let (log1, on1) = seen("one");
    let (log2, on2) = seen("two");
    let one = JetStreamJournal::open(config(&nats)).await.unwrap();
    let two = JetStreamJournal::open(config(&nats)).await.unwrap();
    let m1 = one.shared_map("functions", on1).await.unwrap();
    let m2 = two.shared_map("functions", on2).await.unwrap();
    assert!(m1.set("f", Some(Bytes::from_static(b"v1"))).await.unwrap());
    // `two` has not seen v1: its change is refused, and it takes v1 instead.
    assert!(!m2.set("f", Some(Bytes::from_static(b"v2"))).await.unwrap());
    assert_eq!(
        *log2.lock().unwrap(),
        vec![r#"two f=Some("v1")"#.to_string()]
    );
    // Now that it has seen v1 it changes it; `one`, behind, cannot delete it.
    assert!(m2.set("f", Some(Bytes::from_static(b"v2"))).await.unwrap());
    assert!(!m1.set("f", None).await.unwrap());
    assert_eq!(
        *log1.lock().unwrap(),
        vec![
            r#"one f=Some("v1")"#.to_string(),
            r#"one f=Some("v2")"#.to_string()
        ]
    );
    assert!(m1.set("f", None).await.unwrap());
    m2.catch_up().await.unwrap();
    assert_eq!(log2.lock().unwrap().last().unwrap(), "two f=None");
    assert!(m1.keys().await.is_empty() && m2.keys().await.is_empty());
    // Only the sets and maps there are can be opened.
    let refused = one.shared_map("anything", Arc::new(|_, _| {})).await;
    assert!(
        matches!(
            &refused,
            Err(sluice_journal::JournalError::Invalid(m)) if m.contains("\"anything\"")
        ),
        "{:?}",
        refused.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_schema_pushed_on_one_node_validates_on_every_runner_node() {
    let binding =
        "[validation]\nbindings = { \"Signed Up\" = \"iglu:com.acme/signup/jsonschema/1-0-0\" }\n";
    let (_nats, _j, a, b) = two_runner_nodes_with(binding).await;
    let schema = |version: &str, required: &[&str]| {
        let mut s = json!({
            "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
            "self": {"vendor": "com.acme", "name": "signup", "format": "jsonschema", "version": version},
            "type": "object",
            "properties": {"plan": {"enum": ["free", "pro"]}},
        });
        if !required.is_empty() {
            s["required"] = json!(required);
        }
        s
    };
    let put = |node: &TestServer, version: &str, body: serde_json::Value| {
        node.client
            .put(node.url(&format!("/v1/schemas/com.acme/signup/jsonschema/{version}")))
            .json(&body)
            .send()
    };
    // Pushed on `b`; `a` has it within a second.
    assert_eq!(
        put(&b, "1-0-0", schema("1-0-0", &[]))
            .await
            .unwrap()
            .status(),
        201
    );
    answers(&a, "/v1/schemas/com.acme/signup/jsonschema/1-0-0", 200).await;
    // Versions stay immutable across nodes, and an addition pushed on `a` is checked against
    // the version `b` took.
    let other = put(&a, "1-0-0", schema("1-0-0", &["plan"])).await.unwrap();
    assert_eq!(other.status(), 409);
    let breaking = put(&a, "1-0-1", schema("1-0-1", &["plan"])).await.unwrap();
    assert_eq!(breaking.status(), 400);
    // Events that break it, on every partition, to both nodes, then events that keep it: only
    // the latter reach `events`, whichever node ran their partition.
    let users = per_partition("user");
    let bad = json!({"event": "Signed Up", "properties": {"plan": "enterprise"}});
    let good = json!({"event": "Signed Up", "properties": {"plan": "pro"}});
    post_each_as(&a, &users, "bad-a", bad.clone()).await;
    post_each_as(&b, &users, "bad-b", bad).await;
    post_each_as(&a, &users, "good-a", good.clone()).await;
    post_each_as(&b, &users, "good-b", good).await;
    a.sql_rows(
        "SELECT event_id FROM events WHERE event_id LIKE 'good-%'",
        8,
    )
    .await;
    let passed = a
        .sql("SELECT event_id FROM events WHERE event_id LIKE 'bad-%'")
        .await;
    assert!(
        passed.is_empty(),
        "events the schema refuses passed: {passed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_key_made_or_revoked_on_one_node_holds_on_every_node() {
    use sluice_server::auth::KeyFile;
    let (_nats, _j, a, b) = two_runner_nodes().await;
    let send = |node: &TestServer, key: Option<&str>| {
        let mut req = node
            .client
            .post(node.url("/v1/events"))
            .json(&json!([{"event": "Signed In", "user_id": "u1"}]));
        if let Some(k) = key {
            req = req.basic_auth(k, Some(""));
        }
        // Any 2xx as 200.
        async move {
            let status = req.send().await.unwrap().status();
            if status.is_success() {
                200
            } else {
                status.as_u16()
            }
        }
    };
    // No key anywhere: open to local clients on both nodes.
    assert_eq!(send(&a, None).await, 200);
    // A key made on `b` (as `sluice keys create` does, in its data directory)...
    let path = KeyFile::path(b.data_dir());
    let mut keys = KeyFile::load(&path).unwrap();
    let (secret, entry) = keys.create("web").unwrap();
    keys.store(&path).unwrap();
    // ...closes `a` to keyless requests and opens it to the key.
    let deadline = Instant::now() + DEADLINE;
    while send(&a, None).await != 401 {
        assert!(Instant::now() < deadline, "a never learned of b's key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(&a, Some(&secret)).await, 200);
    // Revoked on `a`: `b` refuses it too.
    let path = KeyFile::path(a.data_dir());
    let mut keys = KeyFile::load(&path).unwrap();
    keys.revoke(&entry.id).unwrap();
    keys.store(&path).unwrap();
    while send(&b, Some(&secret)).await != 401 {
        assert!(
            Instant::now() < deadline,
            "b never learned of the revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(&a, Some(&secret)).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server from PyPI (run with --run-ignored all)"]
async fn a_reseal_on_one_node_reaches_every_runner_node_and_the_old_key_can_go() {
    use sluice_functions::udf::SecretsKey;
    let keys = tempfile::tempdir().unwrap();
    let key = |name: &str, hex: String| {
        let path = keys.path().join(name);
        std::fs::write(&path, &hex).unwrap();
        (path, SecretsKey::from_hex(&hex).unwrap().id().to_string())
    };
    let ((old, old_id), (new, new_id)) = (key("old", "6b".repeat(32)), key("new", "7c".repeat(32)));
    let nats = NatsServer::start().unwrap();
    let node = |name: &str, functions: String| {
        let toml = format!(
            "{}node = {name:?}\n[functions]\n{functions}",
            server_toml(&nats)
        );
        async move { TestServer::start(&toml).await }
    };
    // Two versions deployed on a node with the old key alone.
    let before = node("before", format!("secrets_key_file = {old:?}\n")).await;
    for (n, salt) in [(1, "salt-one"), (2, "salt-two")] {
        let code = format!("// v{n}\nexport function transform(e, ctx) {{ return e; }}");
        let r = before
            .client
            .put(before.url("/v1/functions/salted"))
            .json(&json!({"code": code, "secrets": {"SALT": salt}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    before.shutdown().await;
    // Two runner nodes with the new key, the old one kept to open.
    let rotated = format!("secrets_key_file = {new:?}\nprevious_secrets_key_files = [{old:?}]\n");
    let a = node("a", rotated.clone()).await;
    let b = node("b", rotated).await;
    let reseal = |query: &'static str| {
        let req = a
            .client
            .post(a.url(&format!("/v1/functions:reseal{query}")))
            // An admin POST from a local client without a token: a JSON one, which a browser
            // cannot send across sites.
            .header("content-type", "application/json");
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let dry = reseal("?dry_run=true").await;
    assert_eq!(
        dry["in_use"]["by_key"],
        json!({ old_id.clone(): 2 }),
        "{dry}"
    );
    let done = reseal("").await;
    assert_eq!(
        done["in_use"]["by_key"],
        json!({ new_id.clone(): 2 }),
        "{done}"
    );

    // In NATS, and then on `b`, every version is sealed with the new key.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value("sluice_functions")
        .await
        .unwrap();
    let shared = String::from_utf8(bucket.get("salted").await.unwrap().unwrap().to_vec()).unwrap();
    let (sealed_old, sealed_new) = (
        format!("sluice-sealed:v1:{old_id}:"),
        format!("sluice-sealed:v1:{new_id}:"),
    );
    assert!(
        shared.matches(&sealed_new).count() == 2 && !shared.contains(&sealed_old),
        "{shared}"
    );
    let v1_on_b = b.data_dir().join("functions/deployed/salted/v1.json");
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&v1_on_b)
        .unwrap_or_default()
        .contains(&sealed_new)
    {
        assert!(Instant::now() < deadline, "b never took the reseal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A runner node with the new key alone starts (it runs what the others run), and v1 opens.
    let c = node("c", format!("secrets_key_file = {new:?}\n")).await;
    let r = c
        .client
        .post(c.url("/v1/functions/salted/rollback"))
        .json(&json!({"to": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
