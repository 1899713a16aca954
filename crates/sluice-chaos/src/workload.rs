//! The workload: K clients posting native NDJSON batches to whichever server is up, retrying a
//! batch with the same event ids until it is acked (as trackers do), and logging every attempt
//! in the [`History`]. Ids are deterministic (`<run>-<client>-<seq>`), so a missing event names
//! the client and the sequence number that lost it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::checker::{History, Outcome};

/// The base URL of the server under test; the nemesis swaps it after a restart.
#[derive(Debug)]
pub struct Target {
    url: RwLock<String>,
}

impl Target {
    /// A target at `url` (`http://host:port`).
    pub fn new(url: String) -> Arc<Self> {
        Arc::new(Self {
            url: RwLock::new(url),
        })
    }

    /// The current base URL.
    pub fn url(&self) -> String {
        self.url.read().expect("target lock").clone()
    }

    /// Points the clients at a restarted server.
    pub fn set(&self, url: String) {
        *self.url.write().expect("target lock") = url;
    }
}

/// The shape of a run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Prefix of every event id: unique per run, so sinks can be filtered to this run.
    pub run: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Batches per client.
    pub batches: usize,
    /// Events per batch.
    pub batch: usize,
    /// Distinct users (the hot tier's profiles).
    pub users: usize,
    /// Event names, used in turn (each has its typed table).
    pub names: Vec<String>,
    /// How long one batch may be retried before the client gives up on it.
    pub give_up_after: Duration,
}

impl Workload {
    /// Every event the run sends.
    pub fn total(&self) -> usize {
        self.clients * self.batches * self.batch
    }

    /// The id of client `c`'s event number `seq`.
    pub fn event_id(&self, c: usize, seq: usize) -> String {
        format!("{}-{c:03}-{seq:09}", self.run)
    }

    fn parse(&self, id: &str) -> Option<(usize, usize)> {
        let rest = id.strip_prefix(&self.run)?.strip_prefix('-')?;
        let (c, seq) = rest.split_once('-')?;
        Some((c.parse().ok()?, seq.parse().ok()?))
    }

    /// The event name of `id`.
    pub fn name_of(&self, id: &str) -> Option<&str> {
        let (c, seq) = self.parse(id)?;
        Some(&self.names[(c + seq) % self.names.len()])
    }

    /// The user of `id`.
    pub fn user_of(&self, id: &str) -> Option<String> {
        let (c, seq) = self.parse(id)?;
        Some(format!("{}-u{}", self.run, (c * 7919 + seq) % self.users))
    }

    /// Every user the run can touch.
    pub fn all_users(&self) -> Vec<String> {
        (0..self.users)
            .map(|u| format!("{}-u{u}", self.run))
            .collect()
    }

    /// The NDJSON body of client `c`'s batch `b` and its ids.
    pub fn body(&self, c: usize, b: usize) -> (String, Vec<String>) {
        let mut ids = Vec::with_capacity(self.batch);
        let mut body = String::new();
        for i in 0..self.batch {
            let seq = b * self.batch + i;
            let id = self.event_id(c, seq);
            let line = serde_json::json!({
                "event": self.name_of(&id),
                "event_id": id,
                "user_id": self.user_of(&id),
                "timestamp": "2026-11-27T10:00:00Z",
                "properties": {"client": c, "seq": seq, "pad": "x".repeat(120)},
            });
            body.push_str(&line.to_string());
            body.push('\n');
            ids.push(id);
        }
        (body, ids)
    }
}

/// Counters the nemesis watches to time its faults.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events acked so far.
    pub acked: AtomicUsize,
    /// Set when every client has finished.
    pub done: AtomicBool,
}

/// What one attempt of a request came to.
pub fn classify(status: Option<u16>, answered_all: bool) -> Outcome {
    match status {
        None => Outcome::Unknown,
        Some(s) if (200..300).contains(&s) && answered_all => Outcome::Ok,
        // A 2xx that did not count every event: treat as unknown and retry; the checker then
        // sees whether the missing ones were stored.
        Some(s) if (200..300).contains(&s) => Outcome::Unknown,
        Some(408 | 429) => Outcome::Unknown,
        Some(s) if (400..500).contains(&s) => Outcome::Failed,
        Some(_) => Outcome::Unknown,
    }
}

/// Runs every client to the end; each batch is retried until acked, refused, or
/// `give_up_after` passes (then it stays unknown).
pub async fn run(
    w: Arc<Workload>,
    target: Arc<Target>,
    history: Arc<History>,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..w.clients {
        let (w, target, history, progress) =
            (w.clone(), target.clone(), history.clone(), progress.clone());
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            for b in 0..w.batches {
                let (body, ids) = w.body(c, b);
                let end = Instant::now() + w.give_up_after;
                let mut backoff = Duration::from_millis(20);
                loop {
                    let url = format!("{}/v1/events", target.url());
                    let (status, all) = match http.post(&url).body(body.clone()).send().await {
                        Err(_) => (None, false),
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let all = match resp.json::<serde_json::Value>().await {
                                Ok(v) => {
                                    v["accepted"].as_u64().unwrap_or(0)
                                        + v["duplicates"].as_u64().unwrap_or(0)
                                        == ids.len() as u64
                                }
                                // The answer was lost on the way: the append may have happened.
                                Err(_) => false,
                            };
                            (Some(status), all)
                        }
                    };
                    let outcome = classify(status, all);
                    history.record(c, ids.clone(), outcome);
                    match outcome {
                        Outcome::Ok => {
                            progress.acked.fetch_add(ids.len(), Ordering::SeqCst);
                            break;
                        }
                        Outcome::Failed => break,
                        Outcome::Unknown if Instant::now() > end => break,
                        Outcome::Unknown => {
                            // Back off (bounded) while the server restarts or drains.
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_millis(400));
                        }
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = clients.join_next().await {
        r??;
    }
    progress.done.store(true, Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_client_sequence_name_and_user() {
        let w = Workload {
            run: "r1".into(),
            clients: 2,
            batches: 3,
            batch: 4,
            users: 5,
            names: vec!["chaos_a".into(), "chaos_b".into()],
            give_up_after: Duration::from_secs(1),
        };
        let (body, ids) = w.body(1, 2);
        assert_eq!(ids[0], "r1-001-000000008");
        assert_eq!(body.lines().count(), 4);
        assert_eq!(w.name_of(&ids[0]), Some("chaos_b"));
        assert_eq!(w.user_of(&ids[0]).as_deref(), Some("r1-u2"));
        assert_eq!(w.name_of("other-001-000000001"), None);
        assert_eq!(w.total(), 24);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify(None, false), Outcome::Unknown);
        assert_eq!(classify(Some(200), true), Outcome::Ok);
        assert_eq!(classify(Some(200), false), Outcome::Unknown);
        assert_eq!(classify(Some(400), false), Outcome::Failed);
        assert_eq!(classify(Some(429), false), Outcome::Unknown);
        assert_eq!(classify(Some(503), false), Outcome::Unknown);
        assert_eq!(classify(Some(500), false), Outcome::Unknown);
    }
}
