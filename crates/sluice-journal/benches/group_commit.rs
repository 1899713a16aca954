//! The group-commit benchmark: durable 500-byte appends to the file journal on the real disk
//! from many concurrent tasks, one record per append and 50 per append, with what group commit
//! made of them (records/s, appends per group commit, fsyncs). It checks nothing. Run it with
//! `cargo bench -p sluice-journal --bench group_commit` (an optimised build).

// The figures are this benchmark's output.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use bytes::Bytes;
use sluice_journal::{Journal, JournalConfig, LocalJournal};

/// Bytes per record.
const RECORD_BYTES: usize = 500;
/// Partitions of the topic, written by the tasks in turn.
const PARTITIONS: u32 = 4;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // (tasks, records per append, appends per task)
    for (tasks, per_append, appends_each) in [(1024usize, 1usize, 200usize), (64, 50, 64)] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The defaults: 64 MiB segments, fsync before every ack.
        let j = LocalJournal::open(JournalConfig {
            dir: dir.path().to_path_buf(),
            ..JournalConfig::default()
        })
        .expect("open the journal");
        j.create_topic("t", PARTITIONS).expect("create the topic");
        let started = Instant::now();
        rt.block_on(async {
            let mut handles = Vec::new();
            for task in 0..tasks {
                let j = j.clone();
                handles.push(tokio::spawn(async move {
                    let p = task as u32 % PARTITIONS;
                    let record = Bytes::from(vec![b'x'; RECORD_BYTES]);
                    for _ in 0..appends_each {
                        let batch = vec![record.clone(); per_append];
                        j.append("t", p, batch).await.expect("append");
                    }
                }));
            }
            for h in handles {
                h.await.expect("an appending task");
            }
        });
        let took = started.elapsed();
        let stats = j.stats();
        println!(
            "{tasks} tasks x {appends_each} appends of {per_append} x {RECORD_BYTES} B: {} records \
             in {took:?} = {:.0} records/s, {} group commits ({:.1} appends each), {} fsyncs",
            stats.records,
            stats.records as f64 / took.as_secs_f64(),
            stats.group_commits,
            stats.appends as f64 / stats.group_commits as f64,
            stats.fsyncs
        );
    }
}
