//! The `good` → hot tier projection against an in-memory journal: counters and profiles equal
//! a brute-force recount, a replay does not count twice, and the Redis backend keeps the same
//! contract (those tests need the Redis server on 127.0.0.1:6379 and are ignored by default).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_event::{Event, EventType, Position, topic};
use sluice_hot::{
    BINARY_V1, CONSUMER, CounterSpec, CounterState, EmbeddedStore, EventHook, EventView, HotConfig,
    HotError, HotReader, HotSettings, HotStore, Increment, KeptState, Positions, Profile,
    Projector, RecentRange, WriteBatch, decode_profile,
};
use sluice_journal::{Journal, partition_for};
use sluice_testkit::mem_journal::MemJournal;

const PARTITIONS: u32 = 4;
const START: i64 = 1_795_737_600_000_000;
const MINUTE: i64 = 60_000_000;
const DEADLINE: Duration = Duration::from_secs(60);

fn settings() -> Arc<HotSettings> {
    let config: HotConfig = serde_json::from_value(json!({
        "recent_events": 5,
        "batch_events": 700,
        "counters": [
            {"name": "views_1h", "events": ["Product Viewed"], "window": "1h"},
            {"name": "views_sliding_1h", "events": ["Product Viewed"], "window": "1h", "kind": "sliding"},
            {"name": "spend_24h", "events": ["Order Completed"], "aggregate": "sum", "property": "revenue", "window": "24h", "kind": "sliding", "step": "1h"},
            {"name": "top_categories", "aggregate": "top_k", "property": "category", "k": 3, "window": "24h", "kind": "sliding"},
            {"name": "by_category", "key": "properties.category", "window": "24h"}
        ]
    }))
    .unwrap();
    Arc::new(config.validate().unwrap())
}

/// Small deterministic generator (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn events(seed: u64, n: usize) -> Vec<Event> {
    events_of(seed, n, 40)
}

/// `n` events of `users` users, in time order.
fn events_of(seed: u64, n: usize, users: u64) -> Vec<Event> {
    let mut rng = Rng(seed);
    let mut out: Vec<Event> = (0..n)
        .map(|i| {
            let user = format!("u{}", rng.below(users));
            let ts = START + (rng.below(90 * MINUTE as u64) as i64);
            let (event_type, name, props) = match rng.below(10) {
                0 => {
                    let plan = ["free", "pro"][rng.below(2) as usize];
                    (
                        EventType::Identify,
                        "identify",
                        json!({"plan": plan, "n": i}),
                    )
                }
                1 | 2 => (
                    EventType::Track,
                    "Order Completed",
                    json!({"revenue": rng.below(500) as f64 / 4.0}),
                ),
                _ => (
                    EventType::Track,
                    "Product Viewed",
                    json!({"category": format!("c{}", rng.below(7))}),
                ),
            };
            Event {
                event_id: format!("e{seed}-{i}"),
                event_type,
                event: name.to_string(),
                source: "test".into(),
                user_id: Some(user),
                anonymous_id: None,
                timestamp: ts,
                sent_at: None,
                received_at: ts,
                device_timestamp: None,
                enriched: Default::default(),
                properties: serde_json::value::to_raw_value(&props).unwrap(),
                context: serde_json::value::to_raw_value(&json!({})).unwrap(),
                raw: Position {
                    partition: 0,
                    offset: i as u64,
                },
            }
        })
        .collect();
    out.sort_by_key(|e| e.timestamp);
    out
}

async fn append(journal: &dyn Journal, events: &[Event]) {
    let mut by_partition: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for e in events {
        let p = partition_for(e.user_id.as_deref().unwrap(), PARTITIONS);
        by_partition
            .entry(p)
            .or_default()
            .push(serde_json::to_vec(e).unwrap());
    }
    for (p, records) in by_partition {
        journal
            .append(
                topic::GOOD,
                p,
                records.into_iter().map(Into::into).collect(),
            )
            .await
            .unwrap();
    }
}

fn journal() -> Arc<dyn Journal> {
    let j = MemJournal::default();
    j.create_topic(topic::GOOD, PARTITIONS).unwrap();
    Arc::new(j)
}

/// Runs a projector until it has everything durable, then stops it.
async fn project(
    journal: &Arc<dyn Journal>,
    store: &Arc<dyn HotStore>,
    hook: Option<Box<dyn EventHook>>,
) {
    project_with(journal, store, hook, settings()).await;
}

/// [`project`] with other settings.
async fn project_with(
    journal: &Arc<dyn Journal>,
    store: &Arc<dyn HotStore>,
    hook: Option<Box<dyn EventHook>>,
    settings: Arc<HotSettings>,
) {
    let mut projector = Projector::new(journal.clone(), store.clone(), settings);
    if let Some(h) = hook {
        projector = projector.with_hook(h);
    }
    let progress = projector.progress();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(projector.run(async move {
        let _ = rx.await;
    }));
    tokio::time::timeout(DEADLINE, progress.wait_caught_up(journal.as_ref()))
        .await
        .expect("projection catches up within the deadline")
        .unwrap();
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// Every event's contribution to `spec`, worked out once: its key, its time and the increment.
fn contributions(spec: &CounterSpec, events: &[Event]) -> Vec<(String, i64, Increment)> {
    events
        .iter()
        .filter_map(|e| {
            let view = EventView::new(e, true);
            let (key, inc) = spec.contribution(&view)?;
            Some((key.into_owned(), e.timestamp, inc))
        })
        .collect()
}

/// `spec`'s value for `key` at `at`, recounted from `contributions`.
fn brute_value(
    spec: &CounterSpec,
    contributions: &[(String, i64, Increment)],
    key: &str,
    at: i64,
) -> (Option<f64>, Vec<(String, f64)>) {
    let (from, to) = spec.window_at(at);
    let mut sum = 0.0;
    let mut tops: BTreeMap<String, f64> = BTreeMap::new();
    for (k, ts, inc) in contributions {
        if k != key || *ts < from || *ts >= to {
            continue;
        }
        match inc {
            Increment::Add(x) => sum += x,
            Increment::Value(v) => *tops.entry(v.clone()).or_insert(0.0) += 1.0,
        }
    }
    if spec.k > 0 {
        let mut all: Vec<(String, f64)> = tops.into_iter().collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(spec.k);
        (None, all)
    } else {
        (Some(sum), Vec::new())
    }
}

/// The recent-event indices `user`'s stored profile names, after checking that the store holds
/// exactly those recent events (none inline, none left from before the range).
async fn stored_recent(store: &dyn HotStore, user: &str) -> std::ops::Range<u64> {
    let stored = store.get_many(&[Profile::store_key(user)]).await.unwrap();
    let core = decode_profile(stored[0].as_ref().expect("stored")).unwrap();
    assert!(
        core.last_events.is_empty(),
        "recent events are stored apart"
    );
    let range = core
        .recent
        .expect("a stored profile names its recent events")
        .indices();
    let keys: Vec<String> = (0..range.end + 2)
        .map(|i| Profile::recent_key(user, i))
        .collect();
    let held = holding(store, &keys).await;
    let expected: Vec<bool> = (0..range.end + 2).map(|i| range.contains(&i)).collect();
    assert_eq!(
        held, expected,
        "{user}: the store holds the events of {range:?} only"
    );
    range
}

async fn check_against_brute_force(store: Arc<dyn HotStore>, events: &[Event]) {
    check_against_brute_force_with(store, events, settings()).await;
}

async fn check_against_brute_force_with(
    store: Arc<dyn HotStore>,
    events: &[Event],
    settings: Arc<HotSettings>,
) {
    let reader = HotReader::new(store.clone(), settings.clone());
    let max_ts = events.iter().map(|e| e.timestamp).max().unwrap();
    let users: std::collections::BTreeSet<String> =
        events.iter().filter_map(|e| e.user_id.clone()).collect();
    let categories: Vec<String> = (0..7).map(|c| format!("c{c}")).collect();
    for at in [max_ts, max_ts + 20 * MINUTE, max_ts + 3 * 60 * MINUTE] {
        for spec in &settings.counters {
            let contributions = contributions(spec, events);
            let keys: Vec<&String> = if spec.name == "by_category" {
                categories.iter().collect()
            } else {
                users.iter().collect()
            };
            for key in keys {
                let got = reader.counter(&spec.name, key, at).await.unwrap();
                let (value, top) = brute_value(spec, &contributions, key, at);
                assert_eq!(got.late, 0, "{} {key}", spec.name);
                match value {
                    Some(v) => {
                        let g = got.reading.value.unwrap();
                        assert!(
                            (g - v).abs() < 1e-6 * v.abs().max(1.0),
                            "{} {key} at {at}: got {g}, brute force {v}",
                            spec.name
                        );
                    }
                    None => {
                        let got: Vec<(String, f64)> = got
                            .reading
                            .top
                            .iter()
                            .map(|t| (t.value.clone(), t.count))
                            .collect();
                        assert_eq!(got, top, "{} {key} at {at}", spec.name);
                    }
                }
            }
        }
    }
    for user in &users {
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| e.user_id.as_ref() == Some(user))
            .collect();
        let p = reader.profile(user).await.unwrap().expect("profile exists");
        assert_eq!(p.events_total, mine.len() as u64);
        assert_eq!(
            p.first_seen,
            mine.iter().map(|e| e.timestamp).min().unwrap()
        );
        assert_eq!(p.last_seen, mine.iter().map(|e| e.timestamp).max().unwrap());
        let mut counts = BTreeMap::new();
        for e in &mine {
            *counts.entry(e.event.clone()).or_insert(0u64) += 1;
        }
        assert_eq!(p.event_counts, counts);
        let last: Vec<&str> = mine
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|e| e.event_id.as_str())
            .collect();
        let got: Vec<&str> = p.last_events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(got, last);
        assert_eq!(p.recent, None, "answers leave the stored range out");
        let range = stored_recent(store.as_ref(), user).await;
        assert_eq!(range.clone().count(), last.len(), "{user}: {range:?}");
        if let Some(identify) = mine
            .iter()
            .rev()
            .find(|e| e.event_type == EventType::Identify)
        {
            let traits: serde_json::Value =
                serde_json::from_str(identify.properties.get()).unwrap();
            assert_eq!(p.traits.get("n"), traits.get("n"));
        }
    }
}

#[tokio::test]
async fn counters_and_profiles_match_a_brute_force_recount() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let journal = journal();
    let evs = events(1, 3000);
    append(journal.as_ref(), &evs[..1700]).await;
    project(&journal, &store, None).await;
    append(journal.as_ref(), &evs[1700..]).await;
    project(&journal, &store, None).await;
    check_against_brute_force(store.clone(), &evs).await;
    let positions = store.positions(CONSUMER).await.unwrap();
    for p in 0..PARTITIONS {
        assert_eq!(
            positions.get(&p).copied(),
            Some(journal.end(topic::GOOD, p).unwrap())
        );
    }
}

/// One projector keeps running while events arrive in rounds, so later batches take the
/// profiles and counters they touch from its cache: the values still equal a recount, and a
/// deletion request in between is not undone from the cache by the next event of that person.
#[tokio::test]
async fn a_running_projection_counts_exactly_from_its_cache_and_forgets_what_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let journal = journal();
    let projector = Projector::new(journal.clone(), store.clone(), settings());
    let progress = projector.progress();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(projector.run(async move {
        let _ = rx.await;
    }));
    let caught_up = || async {
        tokio::time::timeout(DEADLINE, progress.wait_caught_up(journal.as_ref()))
            .await
            .expect("projection catches up within the deadline")
            .unwrap();
    };
    let evs = events(5, 3000);
    for round in evs.chunks(500) {
        append(journal.as_ref(), round).await;
        caught_up().await;
    }
    check_against_brute_force(store.clone(), &evs).await;

    let reader = HotReader::new(store.clone(), settings());
    let before = reader
        .profile("u1")
        .await
        .unwrap()
        .expect("u1 has a profile");
    assert!(before.events_total > 1, "{}", before.events_total);
    let recent = stored_recent(store.as_ref(), "u1").await;
    assert_eq!(
        reader.erase(&["u1".to_string()]).await.unwrap(),
        1 + recent.clone().count(),
        "the profile (its four per-person counters inside) and its {} recent events",
        recent.clone().count()
    );
    let keys: Vec<String> = recent.map(|i| Profile::recent_key("u1", i)).collect();
    let left = store.get_many(&keys).await.unwrap();
    assert!(
        left.iter().all(Option::is_none),
        "recent events outlived the erase"
    );
    let mut again = evs
        .iter()
        .find(|e| e.user_id.as_deref() == Some("u1") && e.event == "Product Viewed")
        .unwrap()
        .clone();
    again.event_id = "after-erase".into();
    append(journal.as_ref(), &[again.clone()]).await;
    caught_up().await;
    let after = reader
        .profile("u1")
        .await
        .unwrap()
        .expect("the new event's profile");
    assert_eq!(
        after.events_total, 1,
        "the deleted profile came back: {after:?}"
    );
    let views = reader
        .counter("views_1h", "u1", again.timestamp)
        .await
        .unwrap();
    assert_eq!(views.reading.value, Some(1.0));
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// A profile stored with its recent events inline (as before they were stored apart) is
/// answered as it is, and its next batch moves those events apart, keeping the newest N.
#[tokio::test]
async fn a_profile_stored_with_its_recent_events_inline_moves_them_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let inline: Vec<serde_json::Value> = (0..3)
        .map(|i| json!({"event_id": format!("old-{i}"), "event": "Product Viewed", "event_type": "track", "timestamp": START - 10 + i, "properties": {"category": "c1"}}))
        .collect();
    let legacy = json!({
        "id": "u1", "first_seen": START - 10, "last_seen": START - 8, "events_total": 3,
        "event_counts": {"Product Viewed": 3}, "traits": {}, "last_events": inline,
        "session": null, "sessions": 1
    });
    let batch = WriteBatch {
        consumer: "setup".into(),
        puts: vec![(
            Profile::store_key("u1"),
            serde_json::to_vec(&legacy).unwrap(),
        )],
        ..WriteBatch::default()
    };
    store.write(Arc::new(batch)).await.unwrap();
    let reader = HotReader::new(store.clone(), settings());
    let before = reader.profile("u1").await.unwrap().unwrap();
    let ids =
        |p: &Profile| -> Vec<String> { p.last_events.iter().map(|e| e.event_id.clone()).collect() };
    assert_eq!(ids(&before), ["old-0", "old-1", "old-2"]);

    let journal = journal();
    let mine: Vec<Event> = events(6, 400)
        .into_iter()
        .filter(|e| e.user_id.as_deref() == Some("u1"))
        .take(3)
        .collect();
    append(journal.as_ref(), &mine).await;
    project(&journal, &store, None).await;
    let after = reader.profile("u1").await.unwrap().unwrap();
    assert_eq!(after.events_total, 6);
    let mut expected = vec!["old-1".to_string(), "old-2".to_string()];
    expected.extend(mine.iter().map(|e| e.event_id.clone()));
    assert_eq!(
        ids(&after),
        expected,
        "the newest five, the inline ones first"
    );
    assert_eq!(stored_recent(store.as_ref(), "u1").await, 1..6);
}

/// What a store written as JSON holds for `old`, u1's events: the profile without its recent
/// events, which are under their own keys, and the counters' states, those keyed by `user`
/// inside the profile when `inside` (as stored once they moved in) or each under its own key
/// (as before). The puts, and the profile's JSON.
fn stored_as_json(
    settings: &HotSettings,
    old: &[Event],
    inside: bool,
) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let mut profile = Profile {
        id: "u1".into(),
        ..Profile::default()
    };
    let mut in_profile: BTreeMap<String, CounterState> = BTreeMap::new();
    let mut apart: BTreeMap<String, CounterState> = BTreeMap::new();
    for e in old {
        let view = EventView::new(e, true);
        profile.apply(&view, settings);
        for spec in &settings.counters {
            if let Some((key, inc)) = spec.contribution(&view) {
                let state = match inside && spec.in_profile() {
                    true => in_profile.entry(spec.name.clone()).or_default(),
                    false => apart.entry(spec.store_key(&key)).or_default(),
                };
                spec.apply(state, e.timestamp, inc);
            }
        }
    }
    if inside {
        let kept = in_profile.into_iter().map(|(n, s)| (n, KeptState::new(s)));
        profile.counters = Some(kept.collect());
    }
    let range = profile.recent.unwrap();
    let recent = std::mem::take(&mut profile.last_events);
    let mut puts: Vec<(String, Vec<u8>)> = range
        .indices()
        .zip(&recent)
        .map(|(i, e)| (Profile::recent_key("u1", i), serde_json::to_vec(e).unwrap()))
        .collect();
    let json = serde_json::to_vec(&profile).unwrap();
    puts.push((Profile::store_key("u1"), json.clone()));
    puts.extend(
        apart
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_vec(v).unwrap())),
    );
    (puts, json)
}

/// u1's events of the stream with `seed`, split in two halves.
fn halves_of_u1(seed: u64) -> (Vec<Event>, Vec<Event>) {
    let mine: Vec<Event> = events(seed, 600)
        .into_iter()
        .filter(|e| e.user_id.as_deref() == Some("u1"))
        .collect();
    assert!(mine.len() > 8, "{} events", mine.len());
    let (old, new) = mine.split_at(mine.len() / 2);
    (old.to_vec(), new.to_vec())
}

/// Writes `puts` to `store` with no positions, as an earlier build left them.
async fn put_as_before(store: &dyn HotStore, puts: Vec<(String, Vec<u8>)>) {
    let batch = WriteBatch {
        consumer: "setup".into(),
        puts,
        ..WriteBatch::default()
    };
    store.write(Arc::new(batch)).await.unwrap();
}

/// A profile stored before its counters moved in (its counters under keys of their own) is
/// answered as it is; its next batch moves those counters into the profile and deletes their
/// keys, and every counter still equals a recount of the person's events, old and new.
#[tokio::test]
async fn a_profile_stored_with_its_counters_apart_moves_them_in() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let settings = settings();
    let (old, new) = halves_of_u1(6);
    put_as_before(store.as_ref(), stored_as_json(&settings, &old, false).0).await;
    check_against_brute_force(store.clone(), &old).await;

    let journal = journal();
    append(journal.as_ref(), &new).await;
    project(&journal, &store, None).await;
    let mine = [old, new].concat();
    check_against_brute_force(store.clone(), &mine).await;
    let inside: Vec<String> = settings
        .counters
        .iter()
        .filter(|c| c.in_profile())
        .map(|c| c.store_key("u1"))
        .collect();
    assert_eq!(inside.len(), 4, "{inside:?}");
    assert!(
        holding(store.as_ref(), &inside)
            .await
            .iter()
            .all(|held| !held),
        "the counters' own keys are gone"
    );
    let stored = store.get_many(&[Profile::store_key("u1")]).await.unwrap();
    let stored = decode_profile(stored[0].as_ref().unwrap()).unwrap();
    let names: Vec<&String> = stored.counters.as_ref().unwrap().keys().collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

/// A store written as JSON (profiles with their counters inside, counters keyed by anything
/// else under their own keys) is read as it is; the values the next batch writes take the
/// binary form, and every counter still equals a recount of the events, old and new.
#[tokio::test]
async fn values_stored_as_json_are_read_and_written_again_in_the_binary_form() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let settings = settings();
    let (old, new) = halves_of_u1(7);
    let (puts, json) = stored_as_json(&settings, &old, true);
    put_as_before(store.as_ref(), puts).await;
    check_against_brute_force(store.clone(), &old).await;

    let journal = journal();
    append(journal.as_ref(), &new).await;
    project(&journal, &store, None).await;
    check_against_brute_force(store.clone(), &[old, new.clone()].concat()).await;
    let by_category = settings.counter("by_category").unwrap();
    let mut written = vec![Profile::store_key("u1")];
    for e in &new {
        if let Some((key, _)) = by_category.contribution(&EventView::new(e, true)) {
            written.push(by_category.store_key(&key));
        }
    }
    assert!(written.len() > 1, "{written:?}");
    for (key, value) in written.iter().zip(store.get_many(&written).await.unwrap()) {
        let value = value.expect("stored");
        assert_eq!(
            value[0], BINARY_V1,
            "{key} was written again in the binary form"
        );
    }
    let stored = store.get_many(&[Profile::store_key("u1")]).await.unwrap();
    let stored = stored[0].as_ref().unwrap();
    assert!(
        stored.len() < json.len(),
        "{} ≥ {}",
        stored.len(),
        json.len()
    );
}

/// A hook that forces re-reading from offset 0 and records what it sees: each event with its
/// `live`, and after each batch the positions it was told with the number of events seen by then.
#[derive(Default)]
struct Replayer {
    seen: Arc<Mutex<Vec<(Position, bool)>>>,
    told: Arc<Mutex<Vec<(Positions, usize)>>>,
}

impl Replayer {
    fn seeing(seen: &Arc<Mutex<Vec<(Position, bool)>>>) -> Box<Self> {
        Box::new(Self {
            seen: seen.clone(),
            ..Self::default()
        })
    }
}

impl EventHook for Replayer {
    fn resume_from(&self) -> Positions {
        Positions::new()
    }
    fn on_event(
        &mut self,
        position: Position,
        _: &EventView<'_>,
        _: Option<&mut Profile>,
        live: bool,
    ) {
        self.seen.lock().unwrap().push((position, live));
    }
    fn after_batch(&mut self, next: &Positions) {
        let seen = self.seen.lock().unwrap().len();
        self.told.lock().unwrap().push((next.clone(), seen));
    }
    fn close(&mut self) {}
}

#[tokio::test]
async fn a_replay_of_the_same_positions_does_not_count_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let journal = journal();
    let evs = events(2, 1500);
    append(journal.as_ref(), &evs).await;
    project(&journal, &store, None).await;
    // Re-deliver every position from 0: the store already holds them.
    let seen = Arc::new(Mutex::new(Vec::new()));
    project(&journal, &store, Some(Replayer::seeing(&seen))).await;
    let seen: Vec<(Position, bool)> = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), evs.len());
    assert!(
        seen.iter().all(|(_, live)| !live),
        "every re-delivered event is known to the store"
    );
    check_against_brute_force(store.clone(), &evs).await;
    // And a restart on the same store reads nothing again.
    project(&journal, &store, None).await;
    check_against_brute_force(store, &evs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_is_told_the_positions_of_the_events_it_was_shown() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let journal = journal();
    let evs = events(5, 3000);
    append(journal.as_ref(), &evs).await;
    let hook = Replayer::default();
    let (seen, told) = (hook.seen.clone(), hook.told.clone());
    project(&journal, &store, Some(Box::new(hook))).await;
    let (seen, told) = (seen.lock().unwrap().clone(), told.lock().unwrap().clone());
    // 3000 events in batches of at most 700: each batch but the first was read ahead. After
    // each, the hook is told the position after the last event of each partition it was shown
    // (0 where it was shown none), never one the batch read ahead holds.
    assert!(told.len() >= 5, "{} batches", told.len());
    for (i, (next, n)) in told.iter().enumerate() {
        let mut shown: Positions = (0..PARTITIONS).map(|p| (p, 0)).collect();
        for (position, _) in &seen[..*n] {
            shown.insert(position.partition, position.offset + 1);
        }
        assert_eq!(next, &shown, "batch {i}");
    }
    assert_eq!(seen.len(), evs.len());
    check_against_brute_force(store, &evs).await;
}

#[tokio::test]
async fn a_batch_with_stale_positions_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), false).unwrap();
    conflict_contract(&store, "t").await;
}

async fn conflict_contract(store: &dyn HotStore, consumer: &str) {
    let first = WriteBatch {
        consumer: consumer.into(),
        positions: [(0, (None, 10))].into(),
        puts: vec![
            ("p:a".into(), b"1".to_vec()),
            ("e:a:0".into(), b"0".to_vec()),
        ],
        ..WriteBatch::default()
    };
    store.write(Arc::new(first.clone())).await.unwrap();
    let stale = WriteBatch {
        puts: vec![("p:a".into(), b"2".to_vec()), ("p:b".into(), b"2".to_vec())],
        deletes: vec!["e:a:0".into()],
        ..first
    };
    let err = store.write(Arc::new(stale)).await.unwrap_err();
    assert!(matches!(err, HotError::Conflict { .. }), "{err}");
    let keys = ["p:a".into(), "p:b".into(), "e:a:0".into()];
    let values = store.get_many(&keys).await.unwrap();
    assert_eq!(values, vec![Some(b"1".to_vec()), None, Some(b"0".to_vec())]);
    assert_eq!(
        store.positions(consumer).await.unwrap(),
        Positions::from([(0, 10)])
    );
    let next = WriteBatch {
        consumer: consumer.into(),
        positions: [(0, (Some(10), 12)), (3, (None, 1))].into(),
        puts: vec![("p:a".into(), b"3".to_vec())],
        deletes: vec!["e:a:0".into()],
    };
    store.write(Arc::new(next)).await.unwrap();
    let values = store.get_many(&keys).await.unwrap();
    assert_eq!(values, vec![Some(b"3".to_vec()), None, None]);
    assert_eq!(
        store.positions(consumer).await.unwrap(),
        Positions::from([(0, 12), (3, 1)])
    );
}

#[tokio::test]
async fn the_embedded_store_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal();
    let evs = events(3, 800);
    append(journal.as_ref(), &evs).await;
    {
        let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
        project(&journal, &store, None).await;
    }
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    check_against_brute_force(store, &evs).await;
}

/// A store with scripted faults, picked by call counts so that every run is the same:
/// - `failing`: per operation, which of its calls (counting from 1) fail as a reset
///   connection would; a failing write lands first and loses only its answer;
/// - `armed`: a batch that lands just before the next read of recent events, as another
///   projection batch would between the read of a profile and the read of its recent events;
/// - `slow_writes`: write number k lands only after read number k + 1 began (or after
///   [`HOLD`]), as a slow store's would, so the projection's next batch reads while it is in
///   flight; `overlapped` counts the writes that saw that read.
struct Scripted {
    inner: EmbeddedStore,
    calls: Mutex<BTreeMap<&'static str, u32>>,
    failing: BTreeMap<&'static str, Vec<u32>>,
    armed: Mutex<Option<WriteBatch>>,
    slow_writes: bool,
    reads: tokio::sync::watch::Sender<u32>,
    overlapped: std::sync::atomic::AtomicU32,
}

/// How long a slow write waits at most for the next batch's read.
const HOLD: Duration = Duration::from_secs(1);

impl Scripted {
    fn on(inner: EmbeddedStore) -> Self {
        Self {
            inner,
            calls: Mutex::default(),
            failing: BTreeMap::new(),
            armed: Mutex::default(),
            slow_writes: false,
            reads: tokio::sync::watch::Sender::new(0),
            overlapped: Default::default(),
        }
    }

    /// Fails the way a Redis killed and restarted mid-batch does: a read fails, a write lands
    /// but its answer is lost, and the positions read that follows the retried write's
    /// conflict fails too.
    fn killed_mid_batch(inner: EmbeddedStore) -> Self {
        Self {
            // The first positions read is the start; the second follows the conflict of a
            // retried write.
            failing: BTreeMap::from([
                ("get_many", vec![2]),
                ("positions", vec![2]),
                ("write", vec![3]),
            ]),
            ..Self::on(inner)
        }
    }

    /// Counts a call of `op` and says whether this one fails.
    fn fails(&self, op: &'static str) -> bool {
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(op).or_default();
        *n += 1;
        self.failing.get(op).is_some_and(|f| f.contains(n))
    }
}

fn reset() -> HotError {
    HotError::Redis("Connection reset by peer (os error 104)".into())
}

impl HotStore for Scripted {
    fn delete<'a>(
        &'a self,
        keys: &'a [String],
    ) -> sluice_hot::BoxFuture<'a, Result<usize, HotError>> {
        self.inner.delete(keys)
    }

    fn deletions(&self) -> u64 {
        self.inner.deletions()
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> sluice_hot::BoxFuture<'a, Result<Vec<String>, HotError>> {
        self.inner.keys_with_prefix(prefix)
    }

    fn backend(&self) -> &'static str {
        "scripted"
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> sluice_hot::BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, HotError>> {
        Box::pin(async move {
            if self.fails("get_many") {
                return Err(reset());
            }
            self.reads.send_modify(|n| *n += 1);
            let reads_recent = keys.first().is_some_and(|k| k.starts_with("e:"));
            let batch = reads_recent
                .then(|| self.armed.lock().unwrap().take())
                .flatten();
            if let Some(batch) = batch {
                self.inner.write(Arc::new(batch)).await?;
            }
            self.inner.get_many(keys).await
        })
    }

    fn positions<'a>(
        &'a self,
        consumer: &'a str,
    ) -> sluice_hot::BoxFuture<'a, Result<Positions, HotError>> {
        Box::pin(async move {
            if self.fails("positions") {
                return Err(reset());
            }
            self.inner.positions(consumer).await
        })
    }

    fn write(&self, batch: Arc<WriteBatch>) -> sluice_hot::BoxFuture<'_, Result<(), HotError>> {
        Box::pin(async move {
            let lost_answer = self.fails("write");
            if self.slow_writes {
                let write = self.calls.lock().unwrap()["write"];
                let mut reads = self.reads.subscribe();
                let next_read = reads.wait_for(|n| *n > write);
                if tokio::time::timeout(HOLD, next_read).await.is_ok() {
                    self.overlapped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.inner.write(batch).await?;
            if lost_answer {
                return Err(reset());
            }
            Ok(())
        })
    }
}

/// Projects `evs` with `settings` and the value cache off into a store whose every write waits
/// until the next batch is read: the store, with its record of calls, and the directory it
/// lives in. Every write but the last overlapped a read.
async fn project_with_slow_writes(
    evs: &[Event],
    mut settings: HotSettings,
) -> (Arc<dyn HotStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let scripted = Arc::new(Scripted {
        slow_writes: true,
        ..Scripted::on(EmbeddedStore::open(dir.path(), false).unwrap())
    });
    let store: Arc<dyn HotStore> = scripted.clone();
    let journal = journal();
    append(journal.as_ref(), evs).await;
    settings.cache_bytes = 0;
    project_with(&journal, &store, None, Arc::new(settings)).await;
    let writes = scripted.calls.lock().unwrap()["write"];
    let overlapped = scripted
        .overlapped
        .load(std::sync::atomic::Ordering::Relaxed);
    // Thousands of events in batches of at most 700.
    assert!(writes >= 5, "{writes} writes");
    assert_eq!(
        overlapped + 1,
        writes,
        "{overlapped} of {writes} writes overlapped"
    );
    (store, dir)
}

/// The next batch is read and applied while the one before is still being written: with the
/// value cache off, it takes the values that batch writes from the batch itself, and the
/// profiles and counters still equal a recount exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_while_the_one_before_is_written_counts_exactly() {
    let evs = events(7, 3000);
    let (store, _dir) = project_with_slow_writes(&evs, (*settings()).clone()).await;
    check_against_brute_force(store, &evs).await;
}

/// With every counter in the profiles, a batch leaves the values the batch read ahead does not
/// touch to its write to encode. Each batch is read while the one before is still written and
/// the cache is off, so a value left to a write but needed by the next batch would be read
/// stale from the store: the profiles and counters still equal a recount exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_encoded_by_the_write_are_never_read_before_they_landed() {
    // 400 users: a batch of 700 events shares some of them with the next one, not all.
    let evs = events_of(11, 4000, 400);
    let mut in_profiles = (*settings()).clone();
    in_profiles.counters.retain(|c| c.in_profile());
    assert_eq!(in_profiles.counters.len(), 4, "only by_category is apart");
    let (store, _dir) = project_with_slow_writes(&evs, in_profiles.clone()).await;
    check_against_brute_force_with(store, &evs, Arc::new(in_profiles)).await;
}

/// The projector against a store killed mid-batch: every failure is retried (a read, a write
/// whose answer was lost and is found to have landed, the positions read that finds it out), so
/// the projection never stops and the profiles and counters equal a recount exactly.
#[tokio::test]
async fn a_store_killed_mid_batch_leaves_the_projection_exact() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Scripted::killed_mid_batch(EmbeddedStore::open(dir.path(), false).unwrap());
    let store: Arc<dyn HotStore> = Arc::new(flaky);
    let journal = journal();
    let evs = events(5, 3000);
    append(journal.as_ref(), &evs).await;
    project(&journal, &store, None).await;
    check_against_brute_force(store.clone(), &evs).await;
    let positions = store.positions(CONSUMER).await.unwrap();
    for p in 0..PARTITIONS {
        let end = journal.end(topic::GOOD, p).unwrap();
        assert_eq!(positions.get(&p).copied(), Some(end));
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use sluice_hot::RedisStore;

    fn unique_prefix(test: &str) -> String {
        format!(
            "sluice-test:{test}:{}:{}:",
            std::process::id(),
            sluice_event::now_micros()
        )
    }

    #[tokio::test]
    #[ignore = "needs the Redis server on 127.0.0.1:6379"]
    async fn redis_counters_and_profiles_match_a_brute_force_recount() {
        let store: Arc<dyn HotStore> = Arc::new(
            RedisStore::connect("redis://127.0.0.1:6379", &unique_prefix("recount"))
                .await
                .unwrap(),
        );
        let journal = journal();
        let evs = events(4, 2000);
        append(journal.as_ref(), &evs[..900]).await;
        project(&journal, &store, None).await;
        append(journal.as_ref(), &evs[900..]).await;
        project(&journal, &store, None).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        project(&journal, &store, Some(Replayer::seeing(&seen))).await;
        assert!(seen.lock().unwrap().iter().all(|(_, live)| !live));
        check_against_brute_force(store, &evs).await;
    }

    #[tokio::test]
    #[ignore = "needs the Redis server on 127.0.0.1:6379"]
    async fn redis_erases_the_recent_events_of_a_profile_that_does_not_decode() {
        let store = RedisStore::connect("redis://127.0.0.1:6379", &unique_prefix("erase"))
            .await
            .unwrap();
        erase_contract(Arc::new(store)).await;
    }

    #[tokio::test]
    #[ignore = "needs the Redis server on 127.0.0.1:6379"]
    async fn redis_refuses_a_batch_with_stale_positions_whole() {
        let store = RedisStore::connect("redis://127.0.0.1:6379", &unique_prefix("conflict"))
            .await
            .unwrap();
        conflict_contract(&store, "t").await;
    }
}

/// A deletion request for a person whose stored profile does not decode still erases the
/// recent events stored for it (found by their keys), and nothing of a person whose id only
/// begins like it.
async fn erase_contract(store: Arc<dyn HotStore>) {
    let recent = |id: &str, n: u64| (Profile::recent_key(id, n), b"{}".to_vec());
    let batch = WriteBatch {
        consumer: "erase-test".into(),
        positions: BTreeMap::from([(0, (None, 1))]),
        puts: vec![
            ("p:u1".into(), b"{not a profile".to_vec()),
            recent("u1", 7),
            recent("u1", 8),
            recent("u1:x", 9),
            recent("u10", 3),
        ],
        deletes: Vec::new(),
    };
    store.write(Arc::new(batch)).await.unwrap();
    let reader = HotReader::new(store.clone(), settings());
    assert_eq!(reader.erase(&["u1".to_string()]).await.unwrap(), 3);
    let keys: Vec<String> = [("u1", 7), ("u1", 8), ("u1:x", 9), ("u10", 3)]
        .iter()
        .map(|(id, n)| Profile::recent_key(id, *n))
        .collect();
    assert_eq!(
        holding(store.as_ref(), &keys).await,
        [false, false, true, true]
    );
}

/// Which of `keys` hold a value.
async fn holding(store: &dyn HotStore, keys: &[String]) -> Vec<bool> {
    let values = store.get_many(keys).await.unwrap();
    values.iter().map(Option::is_some).collect()
}

#[tokio::test]
async fn erasing_a_profile_that_does_not_decode_erases_its_recent_events() {
    let dir = tempfile::tempdir().unwrap();
    erase_contract(Arc::new(EmbeddedStore::open(dir.path(), false).unwrap())).await;
}

/// After a crash a partition's end jumps to the journal's floor: the projection steps over the
/// gap, on quiet partitions too, counts as caught up, and stores positions past it.
#[tokio::test]
async fn caught_up_resolves_after_a_crash_gap() {
    const CRASH_GAP: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn HotStore> = Arc::new(EmbeddedStore::open(dir.path(), false).unwrap());
    let mem = Arc::new(MemJournal::default());
    mem.create_topic(topic::GOOD, PARTITIONS).unwrap();
    let journal: Arc<dyn Journal> = mem.clone();
    let evs = events(3, 400);
    append(journal.as_ref(), &evs[..300]).await;
    project(&journal, &store, None).await;
    for p in 0..PARTITIONS {
        mem.crash_gap(topic::GOOD, p, CRASH_GAP).unwrap();
    }
    project(&journal, &store, None).await;
    append(journal.as_ref(), &evs[300..]).await;
    project(&journal, &store, None).await;
    check_against_brute_force(store.clone(), &evs).await;
    let positions = store.positions(CONSUMER).await.unwrap();
    for p in 0..PARTITIONS {
        let end = journal.end(topic::GOOD, p).unwrap();
        assert!(end > CRASH_GAP);
        assert_eq!(positions.get(&p).copied(), Some(end));
    }
}

/// A profile whose oldest recent event a batch replaces between the two reads is read again:
/// the answer is the newest N events as of the later batch, none missing.
#[tokio::test]
async fn a_profile_whose_recent_events_change_while_it_is_read_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedStore::open(dir.path(), false).unwrap();
    let journal = journal();
    let mine: Vec<Event> = events(7, 600)
        .into_iter()
        .filter(|e| e.user_id.as_deref() == Some("u1"))
        .take(6)
        .collect();
    append(journal.as_ref(), &mine[..5]).await;
    let store: Arc<dyn HotStore> = Arc::new(inner.clone());
    project(&journal, &store, None).await;
    assert_eq!(stored_recent(&inner, "u1").await, 0..5);

    // The batch that the sixth event makes, written by hand: the profile's range moves on by
    // one, the new event is set and the oldest deleted.
    let key = Profile::store_key("u1");
    let stored = inner.get_many(std::slice::from_ref(&key)).await.unwrap();
    let mut core = decode_profile(stored[0].as_ref().unwrap()).unwrap();
    core.recent = Some(RecentRange { from: 1, next: 6 });
    let newest = sluice_hot::RecentEvent {
        event_id: mine[5].event_id.clone(),
        event: mine[5].event.clone(),
        event_type: mine[5].event_type,
        timestamp: mine[5].timestamp,
        properties: sluice_hot::RawJson(mine[5].properties.clone()),
    };
    let batch = WriteBatch {
        consumer: "elsewhere".into(),
        puts: vec![
            (key, serde_json::to_vec(&core).unwrap()),
            (
                Profile::recent_key("u1", 5),
                serde_json::to_vec(&newest).unwrap(),
            ),
        ],
        deletes: vec![Profile::recent_key("u1", 0)],
        ..WriteBatch::default()
    };
    let racing: Arc<dyn HotStore> = Arc::new(Scripted {
        armed: Mutex::new(Some(batch)),
        ..Scripted::on(inner.clone())
    });
    let reader = HotReader::new(racing, settings());
    let profile = reader.profile("u1").await.unwrap().unwrap();
    let got: Vec<&str> = profile
        .last_events
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    let expected: Vec<&str> = mine[1..].iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(got, expected);
}
