//! Resealing function secrets with the current key (`Functions::reseal`): after a key rotation
//! every version of every function, and secrets stored before there was a key, are sealed with
//! the new key in place, so that the old key can go and a rollback to an old version still
//! runs; a dry run and a second reseal change no byte; a value under a key the node lacks
//! refuses the whole reseal with nothing written.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use sluice_event::Position;
use sluice_functions::udf::{DeployOutcome, Keyring, SecretsAtRest, SecretsKey, UdfError};
use sluice_functions::{Chain, ChainState, FunctionSpec, Functions, Outcome};

const KEY_A: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";
const KEY_B: &str = "b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0";
const KEY_C: &str = "c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0";

/// `early` puts its secret `TOKEN` in `properties.token`.
const EARLY: &str = "export function transform(e, ctx) { \
                     return {...e, properties: {...e.properties, token: ctx.secrets.TOKEN}}; }";

/// `salted` v`n` puts its secret `SALT` and its version in the event's properties.
fn salted(n: u32) -> String {
    format!(
        "// v{n}\nexport function transform(e, ctx) {{ \
         return {{...e, properties: {{...e.properties, salt: ctx.secrets.SALT, v: ctx.version}}}}; }}"
    )
}

fn id(hex: &str) -> String {
    SecretsKey::from_hex(hex).unwrap().id().to_string()
}

fn keys(current: &str, previous: &[&str]) -> SecretsAtRest {
    let key = |h: &str| SecretsKey::from_hex(h).unwrap();
    SecretsAtRest::Sealed(Arc::new(Keyring::new(
        key(current),
        previous.iter().map(|h| key(h)).collect(),
    )))
}

fn secrets(pairs: &[(&str, &str)]) -> FunctionSpec {
    FunctionSpec {
        secrets: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..FunctionSpec::default()
    }
}

/// A node's functions in `data` (its `functions` directory), and a chain that runs them.
struct Node {
    functions: Arc<Functions>,
    chain: Chain,
}

fn node(data: &Path, secrets: SecretsAtRest) -> Result<Node, UdfError> {
    let functions = Arc::new(Functions::open_with(
        &data.join("functions"),
        1,
        None,
        secrets,
    )?);
    let chain = crate::udf::chain_running(data, functions.clone());
    Ok(Node { functions, chain })
}

/// The properties of one event run through the node's functions.
async fn properties_after(node: &Node) -> Value {
    let raw = serde_json::to_vec(&json!({
        "event_id": "e1", "source": "web", "protocol": "native",
        "received_at": sluice_event::now_micros(),
        "payload": {"event": "Clicked", "userId": "u1", "properties": {}}
    }))
    .unwrap();
    let at = Position {
        partition: 0,
        offset: 0,
    };
    let live = node.chain.live();
    let out = node
        .chain
        .process_batch(&[(at, &raw[..])], &mut ChainState::default(), &live)
        .await;
    match out.into_iter().next() {
        Some(Outcome::Good(events)) if events.len() == 1 => {
            let event: Value = serde_json::from_slice(&events[0]).unwrap();
            event["properties"].clone()
        }
        other => panic!("not one good event: {other:?}"),
    }
}

/// Every file of the deployed functions, with its bytes.
fn stored(data: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&data.join("functions/deployed"), &mut out);
    out
}

/// Whether `path` is a version record (`v<N>.json`).
fn is_record(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.starts_with('v') && name.ends_with(".json")
}

/// `early` v1 deployed without a key (its secret stored as given), then `salted` v1 and v2
/// under key A.
fn deploy_before_the_rotation(data: &Path) {
    let plain = node(data, SecretsAtRest::Plain).unwrap();
    let early = secrets(&[("TOKEN", "t0-plain")]);
    plain.functions.deploy("early", EARLY, &early).unwrap();
    drop(plain);
    let a = node(data, keys(KEY_A, &[])).unwrap();
    let v1 = secrets(&[("SALT", "salt-one")]);
    a.functions.deploy("salted", &salted(1), &v1).unwrap();
    let v2 = secrets(&[("SALT", "salt-two"), ("PEPPER", "pepper-two")]);
    a.functions.deploy("salted", &salted(2), &v2).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reseal_the_old_key_can_go_and_every_version_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    deploy_before_the_rotation(data);
    let rotated = node(data, keys(KEY_B, &[KEY_A])).unwrap();
    let before = stored(data);

    // A dry run says what would be resealed and which keys are in use now, and writes nothing.
    let dry = rotated.functions.reseal(true).unwrap();
    assert_eq!((dry.key.as_str(), dry.dry_run), (id(KEY_B).as_str(), true));
    assert_eq!(dry.resealed.by_key, BTreeMap::from([(id(KEY_A), 3)]));
    assert_eq!(dry.resealed.plain, 1);
    assert_eq!(dry.in_use, dry.resealed, "{dry:?}");
    assert!(dry.refused.is_empty(), "{dry:?}");
    let versions: Vec<(&str, &[u32])> = dry
        .functions
        .iter()
        .map(|f| (f.name.as_str(), &f.versions[..]))
        .collect();
    assert_eq!(versions, [("early", &[1][..]), ("salted", &[1, 2][..])]);
    assert_eq!(stored(data), before, "a dry run writes nothing");

    // The reseal: the same values, now all under key B.
    let done = rotated.functions.reseal(false).unwrap();
    assert!(!done.dry_run);
    assert_eq!(done.resealed, dry.resealed);
    assert_eq!(done.in_use.by_key, BTreeMap::from([(id(KEY_B), 4)]));
    assert_eq!(done.in_use.plain, 0);
    only_the_version_records_changed_and_they_hold_key_b(&before, &stored(data));
    let shown = rotated.functions.show("salted").unwrap();
    assert_eq!(
        (shown.active, shown.history, shown.versions.len()),
        (2, vec![1, 2], 2),
        "no version is created and the history stays"
    );

    // Again: nothing to do, not a byte written.
    let resealed = stored(data);
    let again = rotated.functions.reseal(false).unwrap();
    assert_eq!(again.resealed.total(), 0, "{again:?}");
    assert_eq!(again.in_use, done.in_use);
    assert_eq!(stored(data), resealed, "a second reseal changes nothing");
    // The running functions did not restart and see the same secrets; deploying v2's secrets
    // again seals them as the reseal did, so it creates no version.
    let props = properties_after(&rotated).await;
    assert_eq!(
        (&props["token"], &props["salt"]),
        (&json!("t0-plain"), &json!("salt-two"))
    );
    let v2 = secrets(&[("SALT", "salt-two"), ("PEPPER", "pepper-two")]);
    let redeployed = rotated.functions.deploy("salted", &salted(2), &v2).unwrap();
    assert_eq!(redeployed.outcome, DeployOutcome::Unchanged);
    drop(rotated);

    the_new_key_alone_opens_every_version(data).await;
}

/// Compared with `before`, only `v<N>.json` files changed; each is private, holds key B and
/// neither key A nor a secret as given.
fn only_the_version_records_changed_and_they_hold_key_b(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "no file is added or removed"
    );
    let (sealed_a, sealed_b) = (
        format!("sluice-sealed:v1:{}:", id(KEY_A)),
        format!("sluice-sealed:v1:{}:", id(KEY_B)),
    );
    for (path, bytes) in after {
        if !is_record(path) {
            assert_eq!(bytes, &before[path], "{} changed", path.display());
            continue;
        }
        let text = String::from_utf8_lossy(bytes);
        assert!(
            text.contains(&sealed_b) && !text.contains(&sealed_a) && !text.contains("t0-plain"),
            "{}: {text}",
            path.display()
        );
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

/// With key B only, the node starts, every version opens and a rollback to v1 runs it; with
/// key A only, nothing opens any more.
async fn the_new_key_alone_opens_every_version(data: &Path) {
    let e = node(data, keys(KEY_A, &[]))
        .err()
        .expect("key A opens nothing");
    assert!(e.to_string().contains(&id(KEY_B)), "{e}");
    let new_only = node(data, keys(KEY_B, &[])).unwrap();
    let props = properties_after(&new_only).await;
    assert_eq!(
        (&props["token"], &props["salt"], &props["v"]),
        (&json!("t0-plain"), &json!("salt-two"), &json!(2))
    );
    assert_eq!(new_only.functions.rollback("salted", None).unwrap(), 1);
    assert_eq!(new_only.functions.live().blocked(), None);
    let props = properties_after(&new_only).await;
    assert_eq!(
        (&props["salt"], &props["v"]),
        (&json!("salt-one"), &json!(1))
    );
    assert_eq!(new_only.functions.rollback("salted", Some(2)).unwrap(), 2);
    let props = properties_after(&new_only).await;
    assert_eq!(props["salt"], json!("salt-two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_under_a_key_the_node_lacks_refuses_the_reseal_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    deploy_before_the_rotation(data);
    // v3 of `salted` sealed with key C, then rolled back: it stays stored, not running.
    let c = node(data, keys(KEY_C, &[KEY_A])).unwrap();
    let v3 = secrets(&[("SALT", "salt-three")]);
    c.functions.deploy("salted", &salted(3), &v3).unwrap();
    assert_eq!(c.functions.rollback("salted", None).unwrap(), 2);
    drop(c);

    let rotated = node(data, keys(KEY_B, &[KEY_A])).unwrap();
    let before = stored(data);
    let e = rotated.functions.reseal(false).unwrap_err();
    let why = e.to_string();
    assert!(matches!(e, UdfError::Invalid(_)), "{why}");
    assert!(
        why.starts_with("nothing was resealed")
            && why.contains("secret \"SALT\" of function \"salted\" v3")
            && why.contains(&id(KEY_C))
            && why.contains("previous_secrets_key_files"),
        "{why}"
    );
    assert_eq!(stored(data), before, "a refused reseal writes nothing");
    // A dry run lists it, with key C among the keys in use.
    let dry = rotated.functions.reseal(true).unwrap();
    assert_eq!(dry.refused.len(), 1, "{dry:?}");
    assert!(dry.refused[0].contains("v3"), "{dry:?}");
    assert_eq!(
        dry.in_use.by_key,
        BTreeMap::from([(id(KEY_A), 3), (id(KEY_C), 1)])
    );
    assert_eq!(stored(data), before);
    drop(rotated);

    // Without a current key there is nothing to reseal with.
    for secrets in [SecretsAtRest::Plain, SecretsAtRest::Refused] {
        let dir = tempfile::tempdir().unwrap();
        let keyless = node(dir.path(), secrets).unwrap();
        for dry_run in [true, false] {
            let e = keyless.functions.reseal(dry_run).unwrap_err();
            assert!(
                matches!(e, UdfError::Invalid(_)) && e.to_string().contains("secrets_key_file"),
                "{e}"
            );
        }
    }
}
