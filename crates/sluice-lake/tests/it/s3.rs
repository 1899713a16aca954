//! The lake on object storage: the same sinks against a local S3-compatible store
//! ([`sluice_testkit::Moto`], which honours conditional puts). Ignored by default (moto comes from
//! PyPI); run with `cargo nextest run --workspace --run-ignored all`.

use std::collections::BTreeMap;
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::datafusion::prelude::SessionContext;
use sluice_event::topic;
use sluice_lake::{LakeConfig, LakeRoot, LakeSettings, LakeSink};
use sluice_testkit::Moto;
use sluice_testkit::mem_journal::MemJournal;

use super::deliver::{append_events, caught_up, expected_ids, settings, start};

const BUCKET: &str = "lake";

/// A lake under `s3://lake/<prefix>` in `moto`, configured as a user would: `[lake]` fields.
fn s3_root(moto: &Moto, prefix: &str) -> LakeRoot {
    let config = LakeConfig {
        root: Some(format!("s3://{BUCKET}/{prefix}")),
        endpoint: Some(moto.endpoint()),
        region: Some(sluice_testkit::moto::REGION.into()),
        allow_http: true,
        storage_options: [
            ("aws_access_key_id", sluice_testkit::moto::ACCESS_KEY),
            ("aws_secret_access_key", sluice_testkit::moto::SECRET_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..LakeConfig::default()
    };
    config.lake_root(std::path::Path::new("unused")).unwrap()
}

fn moto() -> Moto {
    let moto = Moto::start().expect("moto (a local S3 store) installs and starts");
    moto.create_bucket(BUCKET).unwrap();
    moto
}

/// Event ids in `events` with how often each occurs, read back through DataFusion from S3.
async fn event_ids(root: &LakeRoot) -> BTreeMap<String, i64> {
    let table = deltalake::open_table_with_storage_options(
        root.table_url("events").unwrap(),
        root.storage_options().clone(),
    )
    .await
    .unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("events", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT CAST(event_id AS VARCHAR) AS id, count(*) AS n FROM events GROUP BY event_id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for batch in batches {
        let counts = batch.column(1).as_primitive::<Int64Type>();
        let ids = batch.column(0);
        for i in 0..ids.len() {
            let id = match ids.as_string_view_opt() {
                Some(a) => a.value(i).to_string(),
                None => ids.as_string::<i32>().value(i).to_string(),
            };
            out.insert(id, counts.value(i));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto from PyPI (run with --run-ignored all)"]
async fn two_sinks_on_one_s3_table_never_duplicate() {
    let moto = moto();
    let root = s3_root(&moto, "race");
    root.check(true).await.unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    let fast = LakeSettings {
        flush_max_events: 7,
        ..settings()
    };
    let first = start(LakeSink::new(journal.clone(), root.clone(), fast.clone()));
    caught_up(&first.progress, &journal).await;
    let second = start(LakeSink::new(journal.clone(), root.clone(), fast.clone()));
    tokio::time::timeout(
        Duration::from_secs(60),
        second.progress.wait_for_offsets(&[0, 0]),
    )
    .await
    .unwrap()
    .unwrap();
    for chunk in 0..5 {
        append_events(&journal, 0, chunk * 10..chunk * 10 + 10);
        append_events(&journal, 1, chunk * 6..chunk * 6 + 6);
    }
    caught_up(&first.progress, &journal).await;
    caught_up(&second.progress, &journal).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    assert_eq!(
        event_ids(&root).await,
        expected_ids(&[(0, 0..50), (1, 0..30)])
    );

    // Commits are plain puts of `N.json` (conditional), never a temporary file renamed into
    // place; with flushes of 7 records the table passed `checkpoint_interval` versions.
    let log = moto.list(BUCKET, "race/events/_delta_log/").unwrap();
    assert!(
        log.iter().any(|k| k.ends_with(".checkpoint.parquet")),
        "{log:?}"
    );
    assert!(!log.iter().any(|k| k.contains(".tmp")), "{log:?}");

    // A restart resumes from the table's txn versions: more records arrive once, nothing twice.
    append_events(&journal, 0, 50..60);
    let again = start(LakeSink::new(journal.clone(), root.clone(), fast));
    caught_up(&again.progress, &journal).await;
    again.stop().await.unwrap();
    assert_eq!(
        event_ids(&root).await,
        expected_ids(&[(0, 0..60), (1, 0..30)])
    );

    // Upkeep on the object store: compaction keeps every row once, vacuum then deletes the
    // replaced files, and the tables are found by listing the root.
    assert_eq!(
        sluice_lake::upkeep::list_tables(&root).await.unwrap(),
        vec!["events".to_string()]
    );
    let optimized = sluice_lake::upkeep::optimize_all(&root, &[], 3)
        .await
        .unwrap();
    let report = optimized.into_iter().next().unwrap().unwrap();
    assert!(report.files_removed > 2, "{report:?}");
    assert_eq!(
        event_ids(&root).await,
        expected_ids(&[(0, 0..60), (1, 0..30)])
    );
    let before = data_files(&moto);
    let vacuumed = sluice_lake::upkeep::vacuum_all(&root, &[], Duration::ZERO, false)
        .await
        .unwrap();
    let report = vacuumed.into_iter().next().unwrap().unwrap();
    // Two event dates: one compacted file each is all that is left.
    let after = data_files(&moto);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(report.files_deleted, before.len() - 2);
    assert_eq!(
        event_ids(&root).await,
        expected_ids(&[(0, 0..60), (1, 0..30)])
    );
}

/// The Parquet files of the `race` lake's `events` table, as the store lists them.
fn data_files(moto: &Moto) -> Vec<String> {
    moto.list(BUCKET, "race/events/event_date=")
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto from PyPI (run with --run-ignored all)"]
async fn a_bad_object_store_root_is_refused_with_the_reason() {
    let moto = moto();
    let keys = s3_root(&moto, "x").storage_options().clone();
    let keys: std::collections::BTreeMap<String, String> = keys
        .into_iter()
        .filter(|(k, _)| k.contains("access_key"))
        .collect();
    // A bucket that does not exist.
    let missing = LakeConfig {
        root: Some("s3://no-such-bucket/lake".into()),
        endpoint: Some(moto.endpoint()),
        allow_http: true,
        storage_options: keys.clone(),
        ..LakeConfig::default()
    }
    .lake_root(std::path::Path::new("unused"))
    .unwrap();
    let err = missing.check(false).await.unwrap_err().to_string();
    assert!(err.contains("s3://no-such-bucket/lake/"), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = LakeConfig {
        root: Some(format!("s3://{BUCKET}/lake")),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        allow_http: true,
        storage_options: keys,
        ..LakeConfig::default()
    }
    .lake_root(std::path::Path::new("unused"))
    .unwrap();
    let err = unreachable.check(false).await.unwrap_err().to_string();
    assert!(err.contains("cannot list it"), "{err}");
    assert!(err.to_lowercase().contains("connect"), "{err}");
}

#[test]
fn object_store_config_is_checked_before_anything_is_opened() {
    let base = |root: &str| LakeConfig {
        root: Some(root.into()),
        ..LakeConfig::default()
    };
    let dir = std::path::Path::new("/data");
    assert_eq!(
        LakeConfig::default().lake_root(dir).unwrap().url().as_str(),
        "file:///data/lake/"
    );
    let plain_http = LakeConfig {
        endpoint: Some("http://127.0.0.1:9000".into()),
        ..base("s3://b/p")
    };
    let err = plain_http.lake_root(dir).unwrap_err().to_string();
    assert!(err.contains("allow_http"), "{err}");
    let unsafe_rename = LakeConfig {
        storage_options: [("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "true".into())].into(),
        ..base("s3://b/p")
    };
    let err = unsafe_rename.lake_root(dir).unwrap_err().to_string();
    assert!(err.contains("conditional put"), "{err}");
    let local_with_endpoint = LakeConfig {
        endpoint: Some("https://s3.example.net".into()),
        ..base("/srv/lake")
    };
    let err = local_with_endpoint.lake_root(dir).unwrap_err().to_string();
    assert!(err.contains("object-store root"), "{err}");
    let err = base("gs://b/p").lake_root(dir).unwrap_err().to_string();
    assert!(err.contains("s3://"), "{err}");
    let ok = LakeConfig {
        endpoint: Some("https://s3.example.net".into()),
        region: Some("eu-west-1".into()),
        ..base("s3://b/p")
    }
    .lake_root(dir)
    .unwrap();
    assert_eq!(ok.table_url("events").unwrap().as_str(), "s3://b/p/events/");
    assert_eq!(
        ok.storage_options()["aws_endpoint"],
        "https://s3.example.net"
    );
    assert_eq!(ok.storage_options()["aws_region"], "eu-west-1");
}
