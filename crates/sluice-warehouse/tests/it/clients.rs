//! Real clients against the warehouse: `psql` (Debian's postgresql-client), psycopg (PyPI) and
//! the `pg` npm client log in to the Postgres wire server by SCRAM and run queries, the catalog
//! queries psql sends for `\dt` and `\d` included; and the lake is read without sluice, by the
//! `deltalake` Python package and by DuckDB, which must see the same rows as sluice's SQL.
//!
//! The Python and npm packages are pinned in `compat/warehouse/` and installed once into
//! `~/.cache/sluice-compat/warehouse-<hash>`; the tests are ignored by default (they need the
//! registries): `cargo nextest run --run-ignored all`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{compat_dir, run, toolchain};
use bytes::Bytes;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;
use serde_json::{Value, json};
use sluice_event::topic;
use sluice_lake::{LakeRoot, LakeSettings, LakeSink, TypedSink};
use sluice_testkit::mem_journal::MemJournal;
use sluice_warehouse::{PgCredentials, Warehouse, serve_pg_with};

use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const T0: i64 = 1_764_237_600_000_000;
const PASSWORD: &str = "s3cret pass";

fn event(i: u64) -> Bytes {
    let (name, props) = if i.is_multiple_of(2) {
        (
            "Signed Up",
            json!({"plan": if i.is_multiple_of(4) { "pro" } else { "free" }}),
        )
    } else {
        ("Order Completed", json!({"total": i * 10}))
    };
    Bytes::from(
        serde_json::to_vec(&json!({
            "event_id": format!("e-{i}"), "event_type": "track", "event": name,
            "source": "web", "user_id": if i.is_multiple_of(5) { Value::Null } else { json!(format!("u{}", i % 7)) },
            "timestamp": T0 + i as i64 * 1_000_001, "received_at": T0,
            "properties": props, "context": {}, "raw": {"partition": 0, "offset": i},
        }))
        .unwrap(),
    )
}

async fn lake(dir: &Path, n: u64) {
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    journal
        .append_now(topic::GOOD, 0, (0..n).map(event).collect())
        .unwrap();
    let root = LakeRoot::from_path(dir).unwrap();
    let settings = LakeSettings {
        flush_interval: Duration::from_millis(20),
        flush_max_events: 7,
        ..LakeSettings::default()
    };
    let events = LakeSink::new(journal.clone(), root.clone(), settings.clone());
    let typed = TypedSink::new(journal.clone(), root, settings);
    let (p1, p2) = (events.progress(), typed.progress());
    let shutdown = CancellationToken::new();
    let t1 = tokio::spawn(events.run(shutdown.clone()));
    let t2 = tokio::spawn(typed.run(shutdown.clone()));
    for p in [p1, p2] {
        tokio::time::timeout(DEADLINE, p.wait_caught_up(journal.as_ref()))
            .await
            .unwrap()
            .unwrap();
    }
    shutdown.cancel();
    t1.await.unwrap().unwrap();
    t2.await.unwrap().unwrap();
}

async fn start_pg(dir: &Path) -> (SocketAddr, CancellationToken) {
    let warehouse = Arc::new(Warehouse::open(LakeRoot::from_path(dir).unwrap()).unwrap());
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let shutdown = CancellationToken::new();
    let credentials = PgCredentials {
        user: "sluice".into(),
        password: PASSWORD.into(),
    };
    tokio::spawn(serve_pg_with(
        warehouse,
        addr,
        Some(credentials),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "pg never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (addr, shutdown)
}

fn psql(addr: SocketAddr, password: &str, command: &str) -> std::process::Output {
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=sluice dbname=sluice",
            addr.port()
        ))
        .args(["-X", "-A", "-t", "-c", command])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's psql and PyPI/npm packages; run with --run-ignored all"]
async fn psql_psycopg_and_node_pg_log_in_and_query() {
    let dir = tempfile::tempdir().unwrap();
    lake(dir.path(), 20).await;
    let (addr, shutdown) = start_pg(dir.path()).await;

    // psql: plain queries and the catalog queries behind \dt and \d.
    let (a, c) = (addr, "SELECT count(*) FROM events");
    let out = tokio::task::spawn_blocking(move || psql(a, PASSWORD, c))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20");
    let out = tokio::task::spawn_blocking(move || psql(addr, PASSWORD, "\\dt"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in ["events", "signed_up", "order_completed"] {
        assert!(text.contains(table), "\\dt lists {table}: {text}");
    }
    let out = tokio::task::spawn_blocking(move || psql(addr, PASSWORD, "\\d signed_up"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("timestamp with time zone") && text.contains("plan"),
        "{text}"
    );
    let out = tokio::task::spawn_blocking(move || psql(addr, PASSWORD, "DELETE FROM events"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    let out = tokio::task::spawn_blocking(move || psql(addr, "wrong", "SELECT 1"))
        .await
        .unwrap();
    assert!(!out.status.success(), "a wrong password is refused");

    let tools = tokio::task::spawn_blocking(toolchain).await.unwrap();
    let compat = compat_dir();
    let port = addr.port().to_string();

    // psycopg
    let out = run(
        Command::new(tools.join("venv/bin/python"))
            .arg(compat.join("pg_clients.py"))
            .args(["127.0.0.1", &port, "sluice", PASSWORD]),
        "psycopg",
    );
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["count"], 20);
    assert_eq!(got["by_id"], json!(["Order Completed", "u3"]));
    assert_eq!(got["timestamp_type"], "datetime");
    assert_eq!(got["typed"], json!([["free", 5], ["pro", 5]]));
    assert_eq!(got["drop"], "25006", "{got}");
    assert!(
        got["tables"]
            .as_array()
            .unwrap()
            .contains(&json!("signed_up"))
    );

    // node pg
    let out = run(
        Command::new("node")
            .arg(compat.join("pg_clients.cjs"))
            .args(["127.0.0.1", &port, "sluice", PASSWORD])
            .env("NODE_PATH", tools.join("node/node_modules")),
        "node pg",
    );
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["count"], 20);
    assert_eq!(got["by_id"], json!(["Order Completed", "u3"]));
    assert_eq!(got["typed"], json!([["free", 5], ["pro", 5]]));
    assert_eq!(got["insert"], "25006", "{got}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PyPI packages; run with --run-ignored all"]
async fn deltalake_and_duckdb_read_the_same_rows_as_sluice_sql() {
    let dir = tempfile::tempdir().unwrap();
    lake(dir.path(), 50).await;
    let warehouse = Warehouse::open(LakeRoot::from_path(dir.path()).unwrap()).unwrap();
    let output = warehouse
        .query("SELECT event_id, event, user_id, CAST(timestamp AS BIGINT) AS ts FROM events ORDER BY event_id")
        .await
        .unwrap();
    let mut ours = Vec::new();
    for batch in &output.batches {
        let text = |i: usize, row: usize| -> Value {
            let col = batch.column(i);
            if col.is_null(row) {
                return Value::Null;
            }
            match col.data_type() {
                deltalake::arrow::datatypes::DataType::Utf8View => {
                    json!(col.as_string_view().value(row))
                }
                _ => json!(col.as_string::<i32>().value(row)),
            }
        };
        for row in 0..batch.num_rows() {
            ours.push(json!([
                text(0, row),
                text(1, row),
                text(2, row),
                batch.column(3).as_primitive::<Int64Type>().value(row)
            ]));
        }
    }
    assert_eq!(ours.len(), 50);

    let tools = tokio::task::spawn_blocking(toolchain).await.unwrap();
    let out = run(
        Command::new(tools.join("venv/bin/python"))
            .arg(compat_dir().join("openness.py"))
            .arg(dir.path())
            .arg("events"),
        "openness.py",
    );
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("duckdb read the lake through: {}", got["duckdb_path"]);
    assert_eq!(got["deltalake"], Value::Array(ours.clone()));
    assert_eq!(got["duckdb"], Value::Array(ours));
}
