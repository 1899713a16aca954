//! The Postgres wire server, driven by a minimal hand-written protocol-v3 client (startup and
//! simple queries), so the test needs no Postgres client library and no network beyond
//! loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_event::topic;
use sluice_lake::{LakeRoot, LakeSettings, LakeSink};
use sluice_testkit::mem_journal::MemJournal;
use sluice_warehouse::{Warehouse, serve_pg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

fn event(i: u64) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "event_id": format!("e-{i}"), "event_type": "track", "event": "Signed Up",
            "source": "web", "timestamp": 1_764_237_600_000_000_i64, "received_at": 1_764_237_600_000_000_i64,
            "properties": {}, "context": {}, "raw": {"partition": 0, "offset": i},
        }))
        .unwrap(),
    )
}

/// One backend message: its type byte and body.
async fn read_message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let kind = stream.read_u8().await.unwrap();
    let len = stream.read_i32().await.unwrap();
    let mut body = vec![0; usize::try_from(len - 4).unwrap()];
    stream.read_exact(&mut body).await.unwrap();
    (kind, body)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // The server binds in its own task: poll until it accepts.
    let mut stream = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("pg server never accepted: {e}"),
        }
    };
    let mut body = Vec::new();
    body.extend_from_slice(&196_608_i32.to_be_bytes()); // protocol 3.0
    for part in ["user", "tester", "database", "sluice"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = (i32::try_from(body.len()).unwrap() + 4)
        .to_be_bytes()
        .to_vec();
    message.extend_from_slice(&body);
    stream.write_all(&message).await.unwrap();
    loop {
        let (kind, _) = read_message(&mut stream).await;
        assert_ne!(kind, b'E', "startup failed");
        if kind == b'Z' {
            return stream;
        }
    }
}

/// Runs one simple query: the rows as text, or the error message.
async fn simple_query(
    stream: &mut TcpStream,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut message = vec![b'Q'];
    message.extend_from_slice(&(i32::try_from(sql.len()).unwrap() + 5).to_be_bytes());
    message.extend_from_slice(sql.as_bytes());
    message.push(0);
    stream.write_all(&message).await.unwrap();
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let (kind, body) = read_message(stream).await;
        match kind {
            b'D' => {
                let columns = u16::from_be_bytes([body[0], body[1]]);
                let mut at = 2;
                let mut row = Vec::new();
                for _ in 0..columns {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                    at += 4;
                    if len < 0 {
                        row.push(None);
                    } else {
                        let end = at + usize::try_from(len).unwrap();
                        row.push(Some(String::from_utf8(body[at..end].to_vec()).unwrap()));
                        at = end;
                    }
                }
                rows.push(row);
            }
            b'E' => {
                // Fields: a type byte and a NUL-terminated string each; 'M' is the message.
                let message = body
                    .split(|b| *b == 0)
                    .find(|f| f.first() == Some(&b'M'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).to_string())
                    .unwrap_or_default();
                error = Some(message);
            }
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_style_clients_read_the_lake_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    journal
        .append_now(topic::GOOD, 0, (0..3).map(event).collect())
        .unwrap();
    let sink = LakeSink::new(journal.clone(), root.clone(), LakeSettings::default());
    let progress = sink.progress();
    let stop_sink = CancellationToken::new();
    let sink_task = tokio::spawn(sink.run(stop_sink.clone()));
    tokio::time::timeout(DEADLINE, progress.wait_for_offsets(&[0]))
        .await
        .unwrap()
        .unwrap();
    stop_sink.cancel();
    sink_task.await.unwrap().unwrap();

    let warehouse = Arc::new(Warehouse::open(root).unwrap());
    // A free loopback port (released again just before the server binds it).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_pg(warehouse.clone(), addr, shutdown.clone()));
    let mut client = connect(addr).await;

    let rows = simple_query(&mut client, "SELECT count(*) AS n FROM events").await;
    assert_eq!(rows, Ok(vec![vec![Some("3".to_string())]]));
    let rows = simple_query(
        &mut client,
        "SELECT event_id FROM events ORDER BY event_id LIMIT 1",
    )
    .await;
    assert_eq!(rows, Ok(vec![vec![Some("e-0".to_string())]]));
    for sql in [
        "INSERT INTO events (event_id) VALUES ('x')",
        "DROP TABLE events",
        "CREATE TABLE t (a INT)",
        "COPY events TO '/tmp/sluice-pg-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = simple_query(&mut client, sql).await.unwrap_err();
        assert!(err.contains("not allowed"), "{sql}: {err}");
    }
    // Drivers' session chatter still works.
    assert!(
        simple_query(&mut client, "SET application_name = 'test'")
            .await
            .is_ok()
    );
    assert!(simple_query(&mut client, "BEGIN").await.is_ok());
    assert!(simple_query(&mut client, "COMMIT").await.is_ok());
    let rows = simple_query(&mut client, "SELECT count(*) FROM events").await;
    assert_eq!(rows, Ok(vec![vec![Some("3".to_string())]]));

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
