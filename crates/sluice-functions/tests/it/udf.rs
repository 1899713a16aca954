//! User functions in the chain, with Lambda's Kinesis-trigger semantics: changed, dropped and
//! split events, exceptions that send exactly the failing events to `bad`, timeouts and
//! out-of-memory that cost a retry and never the partition, partial-batch responses, retries,
//! record age, `on_failure = skip`, order under parallelism, and the stage a function runs
//! after.

use std::sync::Arc;

use serde_json::{Value, json};
use sluice_event::{BadKind, BadRow, Event, Position};
use sluice_functions::udf::{DeployOutcome, Keyring, SecretsAtRest, SecretsKey, UdfError};
use sluice_functions::{
    Chain, ChainState, EnrichConfig, FunctionSpec, Functions, OnFailure, Outcome, Registry,
    ValidationConfig,
};

struct Fixture {
    _dir: tempfile::TempDir,
    functions: Arc<Functions>,
    chain: Chain,
}

fn fixture() -> Fixture {
    fixture_with(SecretsAtRest::Plain)
}

fn fixture_with(secrets: SecretsAtRest) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let functions =
        Arc::new(Functions::open_with(&dir.path().join("functions"), 1, None, secrets).unwrap());
    let chain = chain_running(dir.path(), functions.clone());
    Fixture {
        _dir: dir,
        functions,
        chain,
    }
}

/// A chain with default validation and enrichment (schemas under `data`) that runs
/// `functions`.
pub(crate) fn chain_running(data: &std::path::Path, functions: Arc<Functions>) -> Chain {
    let registry = Arc::new(Registry::open(data.join("schemas")).unwrap());
    Chain::new(
        registry,
        ValidationConfig::default(),
        EnrichConfig::default(),
        64 * 1024,
    )
    .unwrap()
    .with_functions(functions)
}

fn raw(i: usize, received_at: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": format!("e{i}"), "source": "web", "protocol": "native",
        "received_at": received_at,
        "payload": {"event": "Clicked", "userId": format!("u{}", i % 3), "properties": {"n": i},
                    "context": {"page": {"url": "https://shop.example.com/p?utm_source=news"}}}
    }))
    .unwrap()
}

fn now() -> i64 {
    sluice_event::now_micros()
}

/// Runs `n` events through the chain; returns good events (with their part markers) and bad
/// rows, each with its raw offset.
async fn run(f: &Fixture, n: usize, received_at: i64) -> (Vec<(u64, Value)>, Vec<(u64, BadRow)>) {
    let records: Vec<Vec<u8>> = (0..n).map(|i| raw(i, received_at)).collect();
    let inputs: Vec<(Position, &[u8])> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                Position {
                    partition: 0,
                    offset: i as u64,
                },
                &r[..],
            )
        })
        .collect();
    let live = f.chain.live();
    let out = f
        .chain
        .process_batch(&inputs, &mut ChainState::default(), &live)
        .await;
    assert_eq!(out.len(), n, "one outcome per raw record");
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, o) in out.into_iter().enumerate() {
        match o {
            Outcome::Good(events) => {
                for e in events {
                    let v: Value = serde_json::from_slice(&e).unwrap();
                    // Every good record is still an Event the sinks can read.
                    let _: Event = serde_json::from_slice(&e).unwrap();
                    good.push((i as u64, v));
                }
            }
            Outcome::Bad(b) => bad.push((i as u64, serde_json::from_slice(&b).unwrap())),
        }
    }
    (good, bad)
}

fn deploy(f: &Fixture, name: &str, code: &str, spec: FunctionSpec) {
    f.functions.deploy(name, code, &spec).unwrap();
}

fn stats(f: &Fixture, name: &str) -> sluice_functions::udf::MeterSnapshot {
    f.functions
        .stats()
        .into_iter()
        .rev()
        .find(|s| s.function == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_adds_drops_and_splits() {
    let f = fixture();
    deploy(
        &f,
        "shape",
        r#"
        export function transform(e, ctx) {
          const n = e.properties.n;
          if (n % 5 === 1) return null;                       // dropped
          if (n % 5 === 2) return [e, {...e, event: "Clicked Twice"}, {event: "Fresh", properties: {from: e.event_id}}];
          return {...e, tier: ctx.config.tier, seen_by: `${ctx.function}@${ctx.version}`, src: ctx.source};
        }"#,
        FunctionSpec {
            config: json!({"tier": "gold"}),
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 10, now()).await;
    assert!(bad.is_empty(), "{bad:?}");
    let offsets: Vec<u64> = good.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [0, 2, 2, 2, 3, 4, 5, 7, 7, 7, 8, 9]);
    let plain = &good[0].1;
    assert_eq!(plain["properties"]["tier"], "gold");
    assert_eq!(plain["properties"]["seen_by"], "shape@1");
    assert_eq!(plain["properties"]["src"], "web");
    // The enrichers ran before the function (default `after = enrich`) and their columns stay.
    assert_eq!(plain["enriched"]["mkt_source"], "news");
    assert!(plain.get("part").is_none());
    // A split record: distinct ids, the first keeps the raw id, each part numbered.
    let split: Vec<&Value> = good
        .iter()
        .filter(|(o, _)| *o == 2)
        .map(|(_, v)| v)
        .collect();
    let ids: Vec<&str> = split
        .iter()
        .map(|v| v["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e2", "e2#1", "e2#2"]);
    assert_eq!(split[1]["event"], "Clicked Twice");
    assert_eq!(split[2]["event"], "Fresh");
    assert_eq!(split[2]["properties"]["from"], "e2");
    assert_eq!(split[2]["source"], "web");
    assert_eq!(
        split.iter().map(|v| v["part"].clone()).collect::<Vec<_>>(),
        [json!([0, 3]), json!([1, 3]), json!([2, 3])]
    );
    let s = stats(&f, "shape");
    assert_eq!((s.invocations, s.events_in, s.events_out), (1, 10, 12));
    assert!(s.gb_seconds > 0.0 && s.lambda_cost_usd > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_returned_twice_holds_every_member_both_times() {
    // What an output still holds as given is moved out of its input, copied while another
    // output still reads that input; on failure with `skip` the inputs pass on whole.
    for (code, on_failure, events) in [
        (
            "export function transform(e) { return e.properties.n % 2 ? [e, e] : e; }",
            OnFailure::Bad,
            6,
        ),
        (
            "export function process(events) { return [events[1], ...events, events[0]]; }",
            OnFailure::Bad,
            6,
        ),
        (
            "export function transform(e) { if (e.properties.n === 2) throw new Error('x'); return [e, e]; }",
            OnFailure::Skip,
            7,
        ),
    ] {
        let f = fixture();
        let spec = FunctionSpec {
            on_failure,
            max_retries: 0,
            ..Default::default()
        };
        deploy(&f, "twice", code, spec);
        let (good, bad) = run(&f, 4, now()).await;
        assert!(bad.is_empty(), "{code}: {bad:?}");
        assert_eq!(good.len(), events, "{code}: {good:?}");
        for (offset, v) in &good {
            let i = *offset as usize;
            assert!(
                v["event_id"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("e{i}")),
                "{code}: {v}"
            );
            assert_eq!(v["event"], "Clicked", "{code}: {v}");
            assert_eq!(v["source"], "web", "{code}: {v}");
            assert_eq!(v["user_id"], format!("u{}", i % 3), "{code}: {v}");
            assert_eq!(v["properties"]["n"], i, "{code}: {v}");
            let url = "https://shop.example.com/p?utm_source=news";
            assert_eq!(v["context"]["page"]["url"], url, "{code}: {v}");
            assert_eq!(v["enriched"]["mkt_source"], "news", "{code}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_throwing_events_go_bad_in_both_modes() {
    for (mode, code) in [
        (
            "batch",
            "export function process(events) { for (const e of events) { if (e.properties.n % 7 === 3) throw new Error(`no ${e.properties.n}`); e.properties.ok = true; } return events; }",
        ),
        (
            "event",
            "export function transform(e) { if (e.properties.n % 7 === 3) throw new Error(`no ${e.properties.n}`); e.properties.ok = true; return e; }",
        ),
    ] {
        let f = fixture();
        deploy(
            &f,
            "picky",
            code,
            FunctionSpec {
                batch_size: 8,
                max_retries: 1,
                ..Default::default()
            },
        );
        let (good, bad) = run(&f, 40, now()).await;
        let bad_offsets: Vec<u64> = bad.iter().map(|(o, _)| *o).collect();
        assert_eq!(bad_offsets, [3, 10, 17, 24, 31, 38], "{mode}");
        assert_eq!(good.len(), 34, "{mode}");
        assert!(
            good.iter().all(|(_, v)| v["properties"]["ok"] == true),
            "{mode}"
        );
        let row = &bad[0].1;
        assert_eq!(row.kind, BadKind::FunctionFailure);
        assert_eq!(row.function, "function:picky:v1");
        assert!(
            row.reason
                .starts_with("picky v1: retries exhausted after 2 attempts: Error: no 3"),
            "{}",
            row.reason
        );
        // The bad row keeps the original raw record, for replay after a fix.
        assert!(row.payload.get().contains("\"event_id\":\"e3\""));
        let s = stats(&f, "picky");
        assert_eq!(s.events_failed, 6, "{mode}");
        assert!(s.retries >= 5, "{mode}: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_times_out_and_the_partition_moves_on() {
    let f = fixture();
    deploy(
        &f,
        "loopy",
        "export function process(events) { for (const e of events) { if (e.properties.n === 5) { while (true) {} } } return events; }",
        FunctionSpec {
            timeout_ms: 100,
            batch_size: 4,
            max_retries: 1,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 12, now()).await;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0, 5);
    assert!(
        bad[0].1.reason.contains("timed out after 100 ms"),
        "{}",
        bad[0].1.reason
    );
    assert_eq!(good.len(), 11);
    let s = stats(&f, "loopy");
    assert!(s.errors["timeout"] >= 2, "{s:?}");
    // Out of memory is the same: one event's batch retried, then a bad row; the rest flow.
    let f = fixture();
    deploy(
        &f,
        "hungry",
        "export function transform(e) { if (e.properties.n === 2) { const a = []; while (true) a.push('x'.repeat(4096) + a.length); } return e; }",
        FunctionSpec {
            memory_mb: 16,
            timeout_ms: 20_000,
            max_retries: 0,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 6, now()).await;
    assert_eq!(bad.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [2]);
    assert!(bad[0].1.reason.contains("memory"), "{}", bad[0].1.reason);
    assert_eq!(good.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_responses_retry_from_the_first_failure() {
    let f = fixture();
    // Reports event 2 of each batch as failed every time; 1 only on its first try.
    deploy(
        &f,
        "partial",
        r#"
        const tried = new Set();
        export function process(events) {
          const failed = [];
          for (const e of events) {
            const n = e.properties.n;
            if (n === 2 || (n === 1 && !tried.has(n))) failed.push({itemIdentifier: e.event_id});
            tried.add(n);
            e.properties.done = true;
          }
          return {events, batchItemFailures: failed};
        }"#,
        FunctionSpec {
            bisect_on_error: false,
            max_retries: 3,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 5, now()).await;
    // Lambda's rule without bisecting: what precedes the first failure is done, the rest is
    // retried together; when the retries run out, all of the rest is given up.
    assert_eq!(good.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(bad.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(
        bad[0].1.reason.contains("named in batchItemFailures"),
        "{}",
        bad[0].1.reason
    );
    assert!(
        bad[1].1.reason.contains("after an earlier event failed"),
        "{}",
        bad[1].1.reason
    );
    let f = fixture();
    deploy(
        &f,
        "partial",
        "export function process(events) { return {events, batchItemFailures: events.filter(e => e.properties.n === 2).map(e => ({itemIdentifier: e.event_id}))}; }",
        FunctionSpec::default(),
    );
    // With bisecting (the default) the failed event is split from the rest, which succeed.
    let (good, bad) = run(&f, 5, now()).await;
    assert_eq!(bad.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [2]);
    assert_eq!(
        good.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [0, 1, 3, 4]
    );
    // An identifier that is not in the batch fails the invocation.
    let f = fixture();
    deploy(
        &f,
        "liar",
        "export function process(events) { return {events, batchItemFailures: [{itemIdentifier: 'nope'}]}; }",
        FunctionSpec {
            max_retries: 0,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 2, now()).await;
    assert!(good.is_empty());
    assert!(
        bad[0].1.reason.contains("not an event_id of the batch"),
        "{}",
        bad[0].1.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_and_succeeds() {
    let f = fixture();
    deploy(
        &f,
        "flaky",
        "let calls = 0; export function process(events) { if (++calls === 1) throw new Error('cold start'); return events; }",
        FunctionSpec {
            bisect_on_error: false,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 10, now()).await;
    assert!(bad.is_empty());
    assert_eq!(good.len(), 10);
    let s = stats(&f, "flaky");
    assert_eq!((s.invocations, s.retries, s.errors["exception"]), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_expire_and_skip_passes_failures_on() {
    let f = fixture();
    deploy(
        &f,
        "aged",
        "export function transform(e) { e.properties.seen = true; return e; }",
        FunctionSpec {
            max_record_age_s: 60,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 3, now() - 3_600_000_000).await;
    assert!(good.is_empty());
    assert_eq!(bad.len(), 3);
    assert!(
        bad[0].1.reason.contains("maximum record age (60 s)"),
        "{}",
        bad[0].1.reason
    );
    let (good, _) = run(&f, 3, now()).await;
    assert_eq!(good.len(), 3);

    let f = fixture();
    deploy(
        &f,
        "lenient",
        "export function transform(e) { if (e.properties.n === 1) throw new Error('x'); return [{...e, a: 1}, {...e, b: 2}]; }",
        FunctionSpec {
            on_failure: OnFailure::Skip,
            max_retries: 0,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 3, now()).await;
    assert!(bad.is_empty());
    let per: Vec<(u64, &str)> = good
        .iter()
        .map(|(o, v)| (*o, v["event_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        per,
        [(0, "e0"), (0, "e0#1"), (1, "e1"), (2, "e2"), (2, "e2#1")]
    );
    assert!(
        good[2].1["properties"].get("a").is_none(),
        "the failed event passes unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_invocations_keep_the_order() {
    let f = fixture();
    deploy(
        &f,
        "slow",
        // Later batches finish first: the first batch spins longest.
        "export function process(events) { const until = Date.now() + (events[0].properties.n === 0 ? 50 : 1); while (Date.now() < until) {} return events.map(e => ({...e, k: e.properties.n})); }",
        FunctionSpec {
            batch_size: 3,
            parallelism: 4,
            ..Default::default()
        },
    );
    let (good, bad) = run(&f, 30, now()).await;
    assert!(bad.is_empty());
    let ks: Vec<u64> = good
        .iter()
        .map(|(_, v)| v["properties"]["k"].as_u64().unwrap())
        .collect();
    assert_eq!(ks, (0..30).collect::<Vec<u64>>());
    assert_eq!(stats(&f, "slow").invocations, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_run_after_the_stage_they_name() {
    let f = fixture();
    // After canonicalize: no enrichment yet; the change is then validated and enriched.
    deploy(
        &f,
        "early",
        "export function transform(e) { return {...e, early_saw_enriched: Object.keys(e.enriched).length, context: {...e.context, page: {url: 'https://x.example/?utm_source=early'}}}; }",
        FunctionSpec {
            after: "canonicalize".into(),
            ..Default::default()
        },
    );
    deploy(
        &f,
        "late",
        "export function transform(e) { return {...e, late_saw_source: e.enriched.mkt_source}; }",
        FunctionSpec::default(),
    );
    deploy(
        &f,
        "later",
        "export function transform(e) { return {...e, after_late: e.properties.late_saw_source}; }",
        FunctionSpec {
            after: "late".into(),
            ..Default::default()
        },
    );
    let (good, _) = run(&f, 1, now()).await;
    let p = &good[0].1["properties"];
    assert_eq!(p["early_saw_enriched"], 0);
    assert_eq!(p["late_saw_source"], "early");
    assert_eq!(p["after_late"], "early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_from_a_function_are_bad_rows_with_the_reason() {
    let f = fixture();
    deploy(
        &f,
        "broken",
        "export function transform(e) { if (e.properties.n === 1) return {...e, event: ''}; if (e.properties.n === 2) return {...e, enriched: {mine: 1}}; return e; }",
        FunctionSpec::default(),
    );
    let (good, bad) = run(&f, 3, now()).await;
    assert_eq!(good.len(), 1);
    assert!(
        bad[0].1.reason.contains("needs a name"),
        "{}",
        bad[0].1.reason
    );
    assert!(
        bad[1].1.reason.contains("enriched.mine"),
        "{}",
        bad[1].1.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_outputs_go_bad_with_the_reason_and_are_not_retried() {
    // Event 2 returns a cycle, event 4 a BigInt, event 6 (per-event mode) a function; the rest
    // read back the way JSON text would (undefined left out, NaN null, a Date its ISO string).
    // In batch mode an output without `raw` belongs to the one before it, so there event 6
    // keeps its input.
    let body = "const n = e.properties.n; \
        if (n === 2) { const o = {...e}; o.properties.self = o; return o; } \
        if (n === 4) return {...e, big: 10n}; \
        if (n === 6 && SIX) return () => e; \
        return {...e, gone: undefined, nan: NaN, when: new Date(0), big: 2**63};";
    for (mode, code, want) in [
        (
            "batch",
            format!(
                "export function process(events) {{ return events.map((e) => {{ {} }}); }}",
                body.replace("SIX", "false")
            ),
            &[2, 4][..],
        ),
        (
            "event",
            format!(
                "export function transform(e) {{ {} }}",
                body.replace("SIX", "true")
            ),
            &[2, 4, 6][..],
        ),
    ] {
        let f = fixture();
        deploy(
            &f,
            "odd",
            &code,
            FunctionSpec {
                batch_size: 4,
                max_retries: 3,
                ..Default::default()
            },
        );
        let (good, bad) = run(&f, 8, now()).await;
        let offsets: Vec<u64> = bad.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, want, "{mode}");
        let reasons: Vec<&str> = bad.iter().map(|(_, r)| r.reason.as_str()).collect();
        assert!(
            reasons[0].starts_with(
                "odd v1: invalid result: a cycle: the value contains itself (at properties.self)"
            ),
            "{mode}: {}",
            reasons[0]
        );
        assert!(
            reasons[1].contains("a BigInt has no JSON form") && reasons[1].contains("(at big)"),
            "{mode}: {}",
            reasons[1]
        );
        if let Some(r) = reasons.get(2) {
            assert!(
                r.contains("an event must be an object, not a function"),
                "{mode}: {r}"
            );
        }
        assert!(bad.iter().all(|(_, r)| r.kind == BadKind::FunctionFailure));
        assert_eq!(good.len(), 8 - want.len(), "{mode}");
        let p = &good[0].1["properties"];
        assert!(p.get("gone").is_none(), "{mode}: {p}");
        assert_eq!(p["nan"], Value::Null, "{mode}");
        assert_eq!(p["when"], "1970-01-01T00:00:00.000Z", "{mode}");
        assert_eq!(p["big"].as_u64(), Some(9_223_372_036_854_776_000), "{mode}");
        let s = stats(&f, "odd");
        assert_eq!((s.invocations, s.retries), (2, 0), "{mode}: {s:?}");
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_stored_sealed_and_open_only_with_the_key() {
    const KEY: &str = "8f1d2c3b4a5968778695a4b3c2d1e0f000112233445566778899aabbccddeeff";
    const NEW_KEY: &str = "9f1d2c3b4a5968778695a4b3c2d1e0f000112233445566778899aabbccddeeff";
    let keys = |current: &str, previous: &[&str]| {
        let key = |h: &str| SecretsKey::from_hex(h).unwrap();
        SecretsAtRest::Sealed(Arc::new(Keyring::new(
            key(current),
            previous.iter().map(|h| key(h)).collect(),
        )))
    };
    let f = fixture_with(keys(KEY, &[]));
    let code = "export function transform(e, ctx) { \
                return {...e, properties: {...e.properties, salt: ctx.secrets.API_SALT}}; }";
    let spec = FunctionSpec {
        secrets: [("API_SALT".to_string(), "pepper-4f9a".to_string())].into(),
        ..FunctionSpec::default()
    };
    deploy(&f, "salted", code, spec.clone());
    // The function sees the value; no file of the store holds it.
    let (good, bad) = run(&f, 3, now()).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert!(
        good.iter()
            .all(|(_, e)| e["properties"]["salt"] == "pepper-4f9a"),
        "{good:?}"
    );
    let dir = f._dir.path().join("functions");
    let stored = files_under(&dir);
    assert!(
        stored
            .iter()
            .any(|(_, b)| String::from_utf8_lossy(b).contains("sluice-sealed:v1:"))
    );
    for (path, bytes) in &stored {
        assert!(
            !String::from_utf8_lossy(bytes).contains("pepper-4f9a"),
            "{}",
            path.display()
        );
    }
    // The same deploy again changes nothing: the secrets seal the same way.
    let again = f.functions.deploy("salted", code, &spec).unwrap();
    assert_eq!(
        (again.version, again.outcome),
        (1, DeployOutcome::Unchanged)
    );

    // Started again with another key, or none, the function does not start, and says why.
    for (secrets, why) in [
        (keys(NEW_KEY, &[]), "previous_secrets_key_files"),
        (SecretsAtRest::Plain, "secrets_key_file"),
    ] {
        let e = Functions::open_with(&dir, 1, None, secrets).unwrap_err();
        assert!(
            matches!(e, UdfError::Invalid(_)) && e.to_string().contains(why),
            "{e}"
        );
        assert!(e.to_string().contains("API_SALT"), "{e}");
    }

    // A new key, the old one kept to open: v1 runs, and what is deployed now is sealed with the
    // new key.
    let rotated = Functions::open_with(&dir, 1, None, keys(NEW_KEY, &[KEY])).unwrap();
    let v2 = rotated
        .deploy("salted", &code.replace("salt:", "salt2:"), &spec)
        .unwrap();
    assert_eq!(v2.version, 2);
    drop(rotated);
    // Once the old key is gone, v2 runs; a rollback to v1, whose secret it sealed, is refused
    // and v2 keeps running.
    let new_only = Functions::open_with(&dir, 1, None, keys(NEW_KEY, &[])).unwrap();
    let e = new_only.rollback("salted", None).unwrap_err().to_string();
    assert!(e.contains("previous_secrets_key_files"), "{e}");
    assert_eq!(new_only.show("salted").unwrap().active, 2);
    assert_eq!(new_only.live().blocked(), None);
    drop(new_only);
    assert!(Functions::open_with(&dir, 1, None, keys(NEW_KEY, &[])).is_ok());

    // Shared through a store others read, without a key: secrets are refused, the rest is not.
    let f = fixture_with(SecretsAtRest::Refused);
    let e = f.functions.deploy("salted", code, &spec).unwrap_err();
    assert!(
        matches!(e, UdfError::Invalid(_)) && e.to_string().contains("secrets_key_file"),
        "{e}"
    );
    let plain = FunctionSpec::default();
    assert_eq!(
        f.functions.deploy("salted", code, &plain).unwrap().version,
        1
    );
}
