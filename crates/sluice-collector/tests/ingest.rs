//! The collector over an in-memory journal: stamping, routing, dedupe that survives a restart,
//! and refusal when the journal cannot take more.

use std::sync::Arc;

use bytes::Bytes;
use sluice_collector::{Collector, CollectorConfig, Encoding, IngestRequest, decode_raw};
use sluice_event::{ErrorKind, topic};
use sluice_journal::{Journal, partition_for};
use sluice_testkit::mem_journal::MemJournal;

fn request(source: &str, body: &str) -> IngestRequest {
    IngestRequest {
        source: source.into(),
        body: Bytes::from(body.to_string()),
        encoding: Encoding::Identity,
        ip: Some("127.0.0.1".into()),
        user_agent: Some("test/1".into()),
    }
}

fn collector(j: &Arc<MemJournal>) -> Collector {
    Collector::open(j.clone(), CollectorConfig::default().validate().unwrap()).unwrap()
}

#[tokio::test]
async fn stamps_routes_and_dedupes_across_restart() {
    let j = MemJournal::with_topics(&[(topic::RAW, 4)]);
    let c = collector(&j);
    let body = r#"[{"event":"a","userId":"alice","event_id":"e1"},
                   {"event":"b","anonymousId":"anon-9"},
                   {"event":"c","userId":"alice","event_id":"e1"}]"#;
    let out = c.ingest(request("web", body)).await.unwrap();
    assert_eq!(
        (out.accepted, out.duplicates, out.rejected.len()),
        (2, 1, 0)
    );

    let alice = partition_for("alice", 4);
    let raw: Vec<_> = j
        .records(topic::RAW, alice)
        .iter()
        .map(|r| decode_raw(&r.value).unwrap())
        .filter(|r| r.event_id == "e1")
        .collect();
    assert_eq!(raw.len(), 1, "alice's event is in alice's partition, once");
    assert_eq!(raw[0].event_id, "e1");
    assert_eq!(raw[0].source, "web");
    assert_eq!(raw[0].ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(raw[0].user_agent.as_deref(), Some("test/1"));
    assert!(raw[0].received_at > 1_700_000_000_000_000);
    let anon = j.records(topic::RAW, partition_for("anon-9", 4));
    let stamped = anon
        .iter()
        .map(|r| decode_raw(&r.value).unwrap())
        .find(|r| r.event_id != "e1")
        .unwrap();
    let id = uuid::Uuid::parse_str(&stamped.event_id).expect("stamped id is a uuid");
    assert_eq!(id.get_version_num(), 7);

    // Another source may use the same id: dedupe is per source.
    let out = c
        .ingest(request("app", r#"{"event":"a","event_id":"e1"}"#))
        .await
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (1, 0));

    // A restarted collector remembers what was acked.
    drop(c);
    let c = collector(&j);
    let out = c
        .ingest(request("web", r#"{"event":"a","event_id":"e1"}"#))
        .await
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (0, 1));
    assert_eq!(c.dedupe_len(), 3);
}

#[tokio::test]
async fn refuses_when_the_journal_cannot_take_more() {
    let j = MemJournal::with_topics(&[(topic::RAW, 2)]);
    let cfg = CollectorConfig {
        max_backlog_events: 3,
        ..Default::default()
    };
    let c = Collector::open(j.clone(), cfg.validate().unwrap()).unwrap();
    let out = c
        .ingest(request(
            "web",
            "{\"event\":\"a\"}\n{\"event\":\"b\"}\n{\"event\":\"c\"}\n{\"event\":\"d\"}",
        ))
        .await
        .unwrap();
    assert_eq!(out.accepted, 4);
    let err = c
        .ingest(request("web", r#"{"event":"e"}"#))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("wait for processing"), "{err}");
    // Once the runner has caught up, intake resumes.
    for p in 0..2 {
        let end = j.end(topic::RAW, p).unwrap();
        j.commit("functions", topic::RAW, p, end).unwrap();
    }
    assert_eq!(
        c.ingest(request("web", r#"{"event":"e"}"#))
            .await
            .unwrap()
            .accepted,
        1
    );

    // A failed journal: 503, and the events are not remembered as acked.
    j.set_failed(true);
    let err = c
        .ingest(request("web", r#"{"event":"f","event_id":"f1"}"#))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    j.set_failed(false);
    let out = c
        .ingest(request("web", r#"{"event":"f","event_id":"f1"}"#))
        .await
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (1, 0));
}

#[tokio::test]
async fn concurrent_requests_with_the_same_id_store_it_once() {
    let j = MemJournal::with_topics(&[(topic::RAW, 4)]);
    let c = Arc::new(collector(&j));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let c = c.clone();
        tasks.spawn(async move {
            c.ingest(request("web", r#"{"event":"a","event_id":"same"}"#))
                .await
                .unwrap()
        });
    }
    let mut accepted = 0;
    let mut dups = 0;
    while let Some(r) = tasks.join_next().await {
        let o = r.unwrap();
        accepted += o.accepted;
        dups += o.duplicates;
    }
    assert_eq!((accepted, dups), (1, 15));
    let stored: usize = (0..4).map(|p| j.records(topic::RAW, p).len()).sum();
    assert_eq!(stored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_events_in_opposite_orders_never_wait_for_each_other() {
    // Two requests at once, each event in both but in opposite orders (a client's retry of a
    // batch it rebuilt, running beside the first try): each is answered at once, never "being
    // written by another request" after both waited for each other.
    let j = MemJournal::with_topics(&[(topic::RAW, 4)]);
    let c = Arc::new(collector(&j));
    for round in 0..50 {
        let ids: Vec<String> = (0..40).map(|i| format!("r{round}-{i}")).collect();
        let body = |ids: &mut dyn Iterator<Item = &String>| {
            let events: Vec<String> = ids
                .map(|id| format!(r#"{{"event":"a","userId":"u","event_id":"{id}"}}"#))
                .collect();
            format!("[{}]", events.join(","))
        };
        let bodies = [body(&mut ids.iter()), body(&mut ids.iter().rev())];
        let mut tasks = tokio::task::JoinSet::new();
        for b in bodies {
            let c = c.clone();
            tasks.spawn(async move { c.ingest(request("web", &b)).await });
        }
        let mut counts = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let o = r.unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
            counts.push((o.accepted, o.duplicates));
        }
        counts.sort();
        assert_eq!(counts, [(0, 40), (40, 0)], "round {round}");
    }
    let stored: usize = (0..4).map(|p| j.records(topic::RAW, p).len()).sum();
    assert_eq!(stored, 50 * 40);
}

#[tokio::test]
async fn a_quarantined_partition_refuses_only_its_own_events() {
    let j = MemJournal::with_topics(&[(topic::RAW, 2)]);
    let c = collector(&j);
    let sick = partition_for("alice", 2);
    let healthy_user = (0..100)
        .map(|i| format!("user{i}"))
        .find(|u| partition_for(u, 2) != sick)
        .unwrap();
    j.quarantine(topic::RAW, sick);
    let body = format!(r#"{{"event":"a","userId":"{healthy_user}"}}"#);
    let out = c.ingest(request("web", &body)).await.unwrap();
    assert_eq!(out.accepted, 1, "events of healthy partitions still go in");
    let err = c
        .ingest(request(
            "web",
            r#"{"event":"a","userId":"alice","event_id":"q1"}"#,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn submit_places_every_slot_and_duplicates_point_at_the_first_copy() {
    use std::borrow::Cow;

    use serde_json::value::RawValue;
    use sluice_collector::{Item, Origin, Placement};
    use sluice_event::Protocol;

    let j = MemJournal::with_topics(&[(topic::RAW, 4)]);
    let c = collector(&j);
    let web: Arc<str> = Arc::from("web");
    let payload = |s: &str| RawValue::from_string(s.to_string()).unwrap();
    let item = |id: &str, user: &str, source: &Arc<str>, p: Box<RawValue>| Item {
        source: source.clone(),
        protocol: Protocol::Kinesis,
        event_id: Some(id.to_string()),
        user_id: Some(user.to_string()),
        anonymous_id: None,
        network_user_id: None,
        partition_key: Some("pk".into()),
        payload: Cow::Owned(p),
    };
    let origin = Origin::default();
    let first = c
        .submit(
            &origin,
            vec![
                Ok(item("k1", "alice", &web, payload(r#"{"event":"a"}"#))),
                Err((ErrorKind::Invalid, "decoder said no".into())),
                Ok(item("k2", "alice", &web, payload(r#""not an object""#))),
                // The same id again in the same request: a duplicate of slot 0.
                Ok(item("k1", "alice", &web, payload(r#"{"event":"a"}"#))),
            ],
        )
        .await
        .unwrap();
    assert_eq!(first.outcome.accepted, 2);
    assert_eq!(first.outcome.duplicates, 1);
    assert_eq!(first.outcome.rejected[0].index, 1);
    let p = &first.placements;
    let (Placement::Appended(a0), Placement::Appended(a2)) = (p[0], p[2]) else {
        panic!("{p:?}")
    };
    assert_eq!(p[1], Placement::Rejected);
    assert_eq!(p[3], Placement::Duplicate(a0));
    assert_eq!(a0.partition, partition_for("alice", 4));
    assert_eq!((a2.partition, a2.offset), (a0.partition, a0.offset + 1));
    // The stored records are what the positions say, with the protocol and partition key.
    let recs = j.records(topic::RAW, a0.partition);
    let r0 = decode_raw(&recs[a0.offset as usize].value).unwrap();
    assert_eq!(
        (r0.event_id.as_str(), r0.protocol),
        ("k1", Protocol::Kinesis)
    );
    assert_eq!(r0.partition_key.as_deref(), Some("pk"));
    let r2 = decode_raw(&recs[a2.offset as usize].value).unwrap();
    assert_eq!(r2.payload.get(), r#""not an object""#);

    // A later request's duplicate points at the first copy too; another source's same id is new.
    let app: Arc<str> = Arc::from("app");
    let again = c
        .submit(
            &origin,
            vec![
                Ok(item("k2", "alice", &web, payload("{}"))),
                Ok(item("k2", "alice", &app, payload("{}"))),
            ],
        )
        .await
        .unwrap();
    assert_eq!(again.placements[0], Placement::Duplicate(a2));
    assert!(matches!(again.placements[1], Placement::Appended(_)));
    // After a restart the index, rebuilt from raw, still knows where the copies are.
    let c = collector(&j);
    let after = c
        .submit(&origin, vec![Ok(item("k1", "bob", &web, payload("{}")))])
        .await
        .unwrap();
    assert_eq!(after.placements[0], Placement::Duplicate(a0));
}

#[tokio::test]
async fn dedupe_is_bounded_and_a_restart_reads_back_only_the_newest() {
    let j = MemJournal::with_topics(&[(topic::RAW, 2)]);
    let settings = CollectorConfig {
        dedupe_max_entries: 1000,
        ..CollectorConfig::default()
    }
    .validate()
    .unwrap();
    let c = Collector::open(j.clone(), settings.clone()).unwrap();
    let batch = |from: usize, to: usize| -> String {
        (from..to)
            .map(|i| format!(r#"{{"event":"a","userId":"u{i}","event_id":"e{i}"}}"#))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for chunk in 0..8 {
        let out = c
            .ingest(request("web", &batch(chunk * 500, chunk * 500 + 500)))
            .await
            .unwrap();
        assert_eq!(out.accepted, 500);
    }
    // 4,000 stored; the index keeps about the newest 1,000.
    let newest = c
        .ingest(request("web", &batch(3_800, 4_000)))
        .await
        .unwrap();
    assert_eq!((newest.accepted, newest.duplicates), (0, 200));
    let oldest = c.ingest(request("web", &batch(0, 200))).await.unwrap();
    assert_eq!(
        (oldest.accepted, oldest.duplicates),
        (200, 0),
        "evicted pairs are new again"
    );
    drop(c);

    // A restart reads back no more than the bound (per partition, the newest), files it oldest
    // first, and still knows the newest events: those of the last request.
    let reopened = Collector::open(j.clone(), settings).unwrap();
    assert!(reopened.dedupe_len() <= 1_000, "{}", reopened.dedupe_len());
    let newest = reopened
        .ingest(request("web", &batch(0, 200)))
        .await
        .unwrap();
    assert_eq!((newest.accepted, newest.duplicates), (0, 200));
    let old = reopened
        .ingest(request("web", &batch(1_000, 1_100)))
        .await
        .unwrap();
    assert_eq!((old.accepted, old.duplicates), (100, 0));
    let bad = CollectorConfig {
        dedupe_max_entries: 10,
        ..CollectorConfig::default()
    };
    assert!(bad.validate().unwrap_err().contains("dedupe_max_entries"));
}

/// A `raw` record for `event_id` of `source`, as another node's collector writes it.
fn foreign_record(source: &str, event_id: &str) -> Bytes {
    let raw = serde_json::json!({
        "event_id": event_id,
        "source": source,
        "protocol": "native",
        "received_at": sluice_event::now_micros(),
        "payload": {"event": "a", "userId": "alice"},
    });
    Bytes::from(serde_json::to_vec(&raw).unwrap())
}

fn event_ids(j: &MemJournal, p: u32) -> Vec<String> {
    j.records(topic::RAW, p)
        .iter()
        .map(|r| decode_raw(&r.value).unwrap().event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_journal_events_other_nodes_stored_are_duplicates() {
    use sluice_collector::{Origin, Placement};

    let j = MemJournal::with_topics(&[(topic::RAW, 2)]);
    j.set_shared(true);
    let c = collector(&j);
    let follow = tokio::spawn(c.follower().expect("a shared journal is followed"));
    let alice = partition_for("alice", 2);
    let one = |id: &str| format!(r#"{{"event":"a","userId":"alice","event_id":"{id}"}}"#);

    // Another node stored e1 before this one's request: its retry here is a duplicate.
    j.append_foreign(topic::RAW, alice, vec![foreign_record("web", "e1")])
        .unwrap();
    let out = c.ingest(request("web", &one("e1"))).await.unwrap();
    assert_eq!((out.accepted, out.duplicates), (0, 1));

    // Another node stores e2 while this node's request for e2 and e3 is in flight, after its
    // dedupe check: the conditional append is refused, the request reads the other node's
    // record, answers e2 as a duplicate where that node stored it, and appends only e3.
    j.append_foreign_before_next(topic::RAW, alice, vec![foreign_record("web", "e2")])
        .unwrap();
    let body = format!("[{},{}]", one("e2"), one("e3"));
    let items = sluice_collector::split_events(body.as_bytes(), 10)
        .unwrap()
        .into_iter()
        .map(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
            Ok(sluice_collector::Item {
                source: Arc::from("web"),
                protocol: sluice_event::Protocol::Native,
                event_id: v["event_id"].as_str().map(str::to_string),
                user_id: Some("alice".into()),
                anonymous_id: None,
                network_user_id: None,
                partition_key: None,
                payload: std::borrow::Cow::Borrowed(raw),
            })
        })
        .collect();
    let submitted = c.submit(&Origin::default(), items).await.unwrap();
    assert_eq!(
        (submitted.outcome.accepted, submitted.outcome.duplicates),
        (1, 1)
    );
    let e2_at = j
        .records(topic::RAW, alice)
        .iter()
        .position(|r| decode_raw(&r.value).unwrap().event_id == "e2")
        .unwrap() as u64;
    assert_eq!(
        submitted.placements[0],
        Placement::Duplicate(sluice_event::Position {
            partition: alice,
            offset: e2_at
        })
    );
    assert!(matches!(submitted.placements[1], Placement::Appended(_)));

    // An unrelated record of another node in between only delays the append.
    j.append_foreign_before_next(topic::RAW, alice, vec![foreign_record("web", "e4")])
        .unwrap();
    let out = c.ingest(request("web", &one("e5"))).await.unwrap();
    assert_eq!((out.accepted, out.duplicates), (1, 0));
    // And what this node knows it learned from the others: e4 is a duplicate here too.
    let out = c.ingest(request("web", &one("e4"))).await.unwrap();
    assert_eq!((out.accepted, out.duplicates), (0, 1));

    assert_eq!(event_ids(&j, alice), ["e1", "e2", "e3", "e4", "e5"]);
    follow.abort();
}

#[tokio::test]
async fn a_journal_only_this_process_writes_is_not_followed() {
    let j = MemJournal::with_topics(&[(topic::RAW, 2)]);
    assert!(collector(&j).follower().is_none());
}
