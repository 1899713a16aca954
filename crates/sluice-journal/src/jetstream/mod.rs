//! [`JetStreamJournal`]: the journal on NATS JetStream, for running Sluice on servers it does not
//! own (`[journal] backend = "jetstream"`).
//!
//! Mapping. Each topic partition is one stream, `<prefix>_<topic>_<partition>` (in the topic a
//! `.` is written `_d` and a `_` is written `_u`, so names never collide), holding the one
//! subject `<prefix>.<topic>.<partition>`; its metadata carries `sluice_topic`,
//! `sluice_partition` and `sluice_partitions`. Only one stream per partition gives dense
//! offsets: **offset = stream sequence − 1**. Streams are created with file storage, the
//! configured replicas, limits retention (`max_age` = `retention_age`, `max_bytes` =
//! `retention_bytes`), `deny_delete` and `deny_purge` (no holes), `allow_atomic` and no
//! per-message TTL; an existing stream with other settings is refused at start
//! (`check.rs`). Consumer-group positions are keys `<group>.<topic>.<partition>`
//! (value: the next offset, in decimal) of the KV bucket `<prefix>_positions`, so they live in
//! NATS, not on the node.
//!
//! Appends. One writer task per partition takes every queued append (up to
//! [`MAX_BATCH`] records) and publishes them as one JetStream *atomic batch*: the server stores
//! all of them, consecutively, or none. The first message carries `Nats-Expected-Last-Sequence`
//! (the writer's last known sequence), so the writer always knows which records before a batch
//! are whose. After an `append`, another writer's records mean the partition has another owner
//! (its lease moved while this node was cut off or paused): the append is refused with
//! `Fenced`, and the caller reads the partition again (`sync`) before anything more; the
//! next batch is fenced on the very sequence that `sync` read, so a batch whose ack was lost
//! and that is stored only after the caller's read (a leader change, a client's reconnect
//! buffer) refuses the caller's retry instead of being written twice. After an
//! `append_shared` (partitions every node's collector writes), the writer takes the last
//! sequence the refusal names and publishes again, and a conditional append (`seen`) whose
//! caller had not read up to the other writers' records is answered `Contended` unpublished
//! (`writer.rs`, `Fence::foreign_end`). A batch is
//! acknowledged only by the server's ack of its commit, which under `sync_interval: always`
//! means fsynced on every replica in the quorum. An append larger than [`MAX_BATCH`] records
//! (the server's atomic batch limit is 1000 messages) is published as several fenced batches:
//! if a later one fails, the earlier ones stay stored but the append fails, like any ack lost on
//! the network. A lost ack (timeout, dropped connection) is settled before the append answers
//! (`writer.rs`: a fenced probe tells whether the batch is stored); if that is impossible the
//! append fails and the writer reads the stream's last sequence again before its next batch. Nothing is published
//! while the client is disconnected: the client would buffer the batch and deliver it after
//! reconnecting, after its append had failed, where the next batch's fence would take it for
//! another writer's.
//!
//! Reads: the async seam. The trait's `read`, `end` and `start` are synchronous and are called
//! from tokio workers, so the hot path does no network IO: each partition has a *tail cache*
//! (the newest records, up to `tail_cache_bytes`) fed by an ordered consumer from the end of the
//! stream (started again at every reconnection), and the watermark `end` is published from it.
//! An append resolves once its ack came and the tail has the batch (at most `TAIL_WAIT`; after
//! that `end` moves on without it), so a consumer woken by `wait_for` reads the new records
//! from memory. A read below the cache (a
//! consumer catching up, or started after a restart) fetches from the stream with a short-lived
//! ordered consumer on the journal's own runtime, and the calling thread waits for it; on a tokio
//! multi-thread worker it waits inside `block_in_place`, so other tasks move to other workers.
//! `start` and `size_bytes` come from the stream state, refreshed every [`REFRESH_EVERY`];
//! `commit` writes through to the bucket the same way a cache miss reads. All NATS IO runs on a
//! small runtime owned by the journal (two threads), never on the caller's.
//!
//! Retention. JetStream removes records by its own limits (`max_age`, `max_bytes`), whether a
//! consumer read them or not. Every refresh compares each partition's first offset with every
//! committed position: records removed before a group read them are counted in
//! `sluice_journal_retention_unread_deleted_total{topic}` and logged at error level, once per
//! removal.
//!
//! What an ack means: see `docs/jetstream.md`. Sluice checks the server version (≥ 2.12.3),
//! JetStream, every stream and the positions bucket at start (`check.rs`), and the servers'
//! `sync_always` only where `monitor_urls` are configured.

mod check;
mod config;
mod lease;
mod shared_set;
mod tail;
mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use config::{JetStreamConfig, JournalBackend};
pub use lease::{Lease, NodeEntry};
pub use shared_set::{OnAdd, OnChange, SharedMap, SharedSet};

use crate::config::MAX_PARTITIONS;
use crate::{Journal, JournalConfig, JournalError, Record, TopicInfo, is_valid_topic_name};
use tail::Tail;
use writer::{Append, Mode};

/// Most records in one atomic batch (the server's default `max_msgs` per batch is 1000).
pub const MAX_BATCH: usize = 1000;
/// Room left in the server's `max_payload` for the batch headers of one message.
const HEADER_ROOM: usize = 512;
/// Longest an acked append waits for the tail cache to hold its records.
const TAIL_WAIT: Duration = Duration::from_secs(2);
/// How often stream state (`start`, `size_bytes`, records removed unread) is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Pause before an ordered consumer that failed is started again.
const FEED_RETRY: Duration = Duration::from_millis(250);

/// The journal on NATS JetStream. See the module documentation.
pub struct JetStreamJournal {
    inner: Arc<Inner>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

/// What the tasks share.
struct Inner {
    cfg: JetStreamConfig,
    max_record_bytes: usize,
    max_age: Duration,
    max_bytes: i64,
    client: async_nats::Client,
    /// Bumped at every (re)connection.
    connections: watch::Sender<u64>,
    js: jetstream::Context,
    kv: kv::Store,
    runtime: tokio::runtime::Handle,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Every committed position, by (group, topic, partition).
    commits: Mutex<HashMap<CommitKey, u64>>,
    /// Per committed position, the start up to which removed records were already reported.
    reported: Mutex<HashMap<CommitKey, u64>>,
    failed: AtomicBool,
    /// Records removed before a group read them, since open (as counted in the metric).
    removed_unread: AtomicU64,
    /// Creating and deleting topics, one at a time.
    admin: tokio::sync::Mutex<()>,
    /// Makes batch ids unique to this journal.
    batch_ids: (u64, AtomicU64),
}

type CommitKey = (String, String, u32);

struct Topic {
    partitions: Vec<Arc<Partition>>,
}

/// One partition: its stream, tail cache, watermark and writer.
struct Partition {
    topic: String,
    index: u32,
    stream: String,
    subject: String,
    tail: Mutex<Tail>,
    /// The durable watermark, published from the tail (and from acks after `TAIL_WAIT`).
    end: watch::Sender<u64>,
    start: AtomicU64,
    size: AtomicU64,
    appends: mpsc::UnboundedSender<Append>,
    /// Set by `sync` to the stream's last sequence it read: the writer's next batch is fenced
    /// on exactly that, so it is stored only if nothing was stored after what the caller saw.
    resync: Mutex<Option<u64>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// `<prefix>_<topic>_<partition>`, with `.` → `_d` and `_` → `_u` in the topic.
fn stream_name(prefix: &str, topic: &str, partition: u32) -> String {
    let mut name = format!("{prefix}_");
    for c in topic.chars() {
        match c {
            '.' => name.push_str("_d"),
            '_' => name.push_str("_u"),
            c => name.push(c),
        }
    }
    name.push_str(&format!("_{partition}"));
    name
}

fn unavailable(what: impl std::fmt::Display, e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(format!("{what}: {e}"))
}

impl JetStreamJournal {
    /// Connects to JetStream, checks the server, finds the topics Sluice created before (each
    /// stream checked) and loads the committed positions. Fails with a message naming what is
    /// wrong: an unreachable server, an old version, no JetStream, a server that acks before it
    /// fsyncs (when `monitor_urls` say so), an unsafe stream or bucket.
    pub async fn open(config: JournalConfig) -> Result<Arc<Self>, JournalError> {
        config.jetstream.validate()?;
        crate::metrics::describe();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-jetstream")
            .enable_all()
            .build()
            .map_err(|source| JournalError::Io {
                context: "starting the JetStream journal's runtime".into(),
                source,
            })?;
        let handle = runtime.handle().clone();
        let opened = handle.spawn(Inner::connect(config, handle.clone())).await;
        let inner = match opened {
            Ok(Ok(inner)) => inner,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(e);
            }
            Err(e) => {
                runtime.shutdown_background();
                return Err(JournalError::Failed(format!("opening the journal: {e}")));
            }
        };
        handle.spawn(refresh(Arc::downgrade(&inner)));
        handle.spawn(watch_commits(Arc::downgrade(&inner)));
        Ok(Arc::new(Self {
            inner,
            runtime: Mutex::new(Some(runtime)),
        }))
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, JournalError> {
        self.inner.partition(topic, partition)
    }

    /// Waits until this node holds the lease `name` (see [`Lease`]), standing by while another
    /// node holds it; the TTL and this node's name come from the configuration
    /// (`lease_ttl`, `node`).
    pub async fn acquire_lease(&self, name: &str) -> Result<Lease, JournalError> {
        let inner = self.inner.clone();
        let (holder, ttl) = (inner.cfg.node_name(), inner.cfg.lease_ttl);
        self.on_runtime(lease::acquire(inner, name.to_string(), holder, ttl))
            .await
    }

    /// Takes the lease `name` if no node holds it now (one attempt; see [`Lease`]); `None`
    /// while another node holds it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<Lease>, JournalError> {
        let inner = self.inner.clone();
        let (holder, ttl) = (inner.cfg.node_name(), inner.cfg.lease_ttl);
        self.on_runtime(lease::try_acquire(inner, name.to_string(), holder, ttl))
            .await
    }

    /// Notified each time a node releases a lease (not when one expires: that makes no event),
    /// from now on.
    pub fn lease_releases(&self) -> Arc<tokio::sync::Notify> {
        let released = Arc::new(tokio::sync::Notify::new());
        let (inner, ttl, wake) = (
            self.inner.clone(),
            self.inner.cfg.lease_ttl,
            released.clone(),
        );
        self.inner.runtime.spawn(async move {
            if let Err(e) = lease::watch_releases(inner, ttl, wake).await {
                tracing::warn!(error = %e, "cannot watch the leases; released ones are seen later");
            }
        });
        released
    }

    /// Deletes everything under this journal's prefix: every topic's streams and the positions,
    /// lease and shared-set buckets. For a pipeline that is gone for good (`sluice bench`
    /// cleaning up after itself); nothing of it can be read afterwards.
    pub fn delete_everything(&self) -> Result<(), JournalError> {
        for t in self.topics() {
            self.delete_topic(&t.name)?;
        }
        let inner = self.inner.clone();
        self.wait_on(async move {
            let sets = shared_set::NAMES.iter().copied();
            for bucket in ["positions", "leases"].into_iter().chain(sets) {
                let name = format!("{}_{bucket}", inner.cfg.prefix);
                if let Err(e) = inner.js.delete_key_value(&name).await
                    && inner.js.get_key_value(&name).await.is_ok()
                {
                    return Err(unavailable(format!("deleting the bucket {name}"), e));
                }
            }
            Ok(())
        })
    }

    /// Every lease held now, as (name, holder), by name.
    pub async fn leases(&self) -> Result<Vec<(String, String)>, JournalError> {
        let inner = self.inner.clone();
        self.on_runtime(async move { lease::holders(&inner).await })
            .await
    }

    /// The lease TTL every node uses (`journal.jetstream.lease_ttl`).
    pub fn lease_ttl(&self) -> Duration {
        self.inner.cfg.lease_ttl
    }

    /// This node's name among the nodes (`journal.jetstream.node`).
    pub fn node_name(&self) -> String {
        self.inner.cfg.node_name()
    }

    /// Announces this node (`journal.jetstream.node`) to the others, with the newest
    /// `details`, until `details`' sender is dropped ([`Self::nodes`] lists it meanwhile).
    pub fn announce(&self, details: watch::Receiver<String>) {
        let inner = self.inner.clone();
        let (name, ttl) = (inner.cfg.node_name(), inner.cfg.lease_ttl);
        self.inner.runtime.spawn(async move {
            if let Err(e) = lease::announce(inner, name, ttl, details).await {
                tracing::warn!(error = %e, "cannot announce this node to the others");
            }
        });
    }

    /// Every node that announced itself within the lease TTL.
    pub async fn nodes(&self) -> Result<Vec<NodeEntry>, JournalError> {
        let inner = self.inner.clone();
        self.on_runtime(async move { lease::nodes(&inner).await })
            .await
    }

    /// Runs `f` on the journal's runtime, where all NATS IO runs, and awaits it from any other.
    async fn on_runtime<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, JournalError>> + Send + 'static,
    ) -> Result<T, JournalError> {
        on_runtime(&self.inner, f).await
    }

    /// The node holding the lease `name`, if any.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, JournalError> {
        let inner = self.inner.clone();
        let name = name.to_string();
        self.on_runtime(async move { lease::holder(&inner.js, &inner.cfg.prefix, &name).await })
            .await
    }

    /// Records the streams' limits removed before a consumer group read them, since open: the
    /// sum of what `sluice_journal_retention_unread_deleted_total` counted.
    pub fn removed_unread(&self) -> u64 {
        self.inner.removed_unread.load(Ordering::Relaxed)
    }

    /// Queues an append for the partition's writer.
    fn queue(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
        mode: Mode,
    ) -> BoxFuture<'_, Result<u64, JournalError>> {
        let queued = (|| {
            let p = self.partition(topic, partition)?;
            if self.inner.failed.load(Ordering::Acquire) {
                return Err(JournalError::Failed(
                    "another writer appended to a partition of this journal".into(),
                ));
            }
            if records.is_empty() {
                return Ok(Err(*p.end.borrow()));
            }
            let limit = self.inner.max_record_bytes;
            if let Some(r) = records.iter().find(|r| r.len() > limit) {
                return Err(JournalError::RecordTooLarge {
                    size: r.len(),
                    limit,
                });
            }
            let (done, rx) = oneshot::channel();
            p.appends
                .send(Append {
                    records,
                    mode,
                    done,
                })
                .map_err(|_| JournalError::Closed)?;
            Ok(Ok(rx))
        })();
        async move {
            match queued? {
                Err(end) => Ok(end),
                Ok(rx) => rx.await.unwrap_or(Err(JournalError::Closed)),
            }
        }
        .boxed()
    }

    /// Runs `f` on the journal's runtime and waits for it on this thread (see the module doc:
    /// only cache misses, `commit` and topic administration come here).
    fn wait_on<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, JournalError>> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        let wait = move || rx.recv().unwrap_or(Err(JournalError::Closed));
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl Drop for JetStreamJournal {
    fn drop(&mut self) {
        // Stops every writer, feeder and refresh task; safe inside an async context.
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    async fn connect(
        config: JournalConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, JournalError> {
        let cfg = config.jetstream.clone();
        let urls = cfg.urls.join(", ");
        let addrs: Vec<async_nats::ServerAddr> =
            cfg.urls.iter().filter_map(|u| u.parse().ok()).collect();
        // Every (re)connection bumps this, so the tail consumers start again at once instead
        // of waiting for their heartbeats to time out.
        let connections = watch::Sender::new(0u64);
        let bump = connections.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let bump = bump.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        bump.send_modify(|n| *n += 1);
                    }
                }
            })
            .name("sluice")
            .connection_timeout(cfg.timeout)
            .request_timeout(Some(cfg.timeout))
            .connect(addrs)
            .await
            .map_err(|e| unavailable(format!("cannot connect to NATS at {urls}"), e))?;
        let info = client.server_info();
        check::server_version(&info.version).map_err(JournalError::Unavailable)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.timeout)
            .build(client.clone());
        js.query_account().await.map_err(|e| {
            unavailable(
                format!("JetStream is not available on {urls} (is it enabled?)"),
                e,
            )
        })?;
        if cfg.monitor_urls.is_empty() {
            tracing::warn!(
                "journal.jetstream monitor_urls is not set: Sluice cannot check that the NATS \
                 servers fsync before they ack; an ack is durable on disk only if every server \
                 runs with `jetstream {{ sync_interval: always }}`"
            );
        }
        for url in &cfg.monitor_urls {
            check::sync_always(url, cfg.timeout)
                .await
                .map_err(JournalError::Unavailable)?;
        }
        let max_record_bytes = usize::try_from(config.max_record_bytes)
            .unwrap_or(usize::MAX)
            .min(info.max_payload.saturating_sub(HEADER_ROOM));
        let kv = open_positions(&js, &cfg).await?;
        let inner = Arc::new(Self {
            max_record_bytes,
            max_age: config.retention_age,
            max_bytes: config
                .retention_bytes
                .and_then(|b| i64::try_from(b).ok())
                .unwrap_or(-1),
            client,
            connections,
            js,
            kv,
            runtime,
            topics: RwLock::new(BTreeMap::new()),
            commits: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            failed: AtomicBool::new(false),
            removed_unread: AtomicU64::new(0),
            admin: tokio::sync::Mutex::new(()),
            batch_ids: (
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish(),
                AtomicU64::new(0),
            ),
            cfg,
        });
        inner.load_commits().await?;
        inner.load_topics().await?;
        tracing::info!(servers = %urls, version = %info.version, max_record_bytes,
            "journal on NATS JetStream");
        Ok(inner)
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, JournalError> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let t = topics
            .get(topic)
            .ok_or_else(|| JournalError::TopicNotFound(topic.to_string()))?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| JournalError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
            })
    }

    /// Reads every key of the positions bucket.
    async fn load_commits(&self) -> Result<(), JournalError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| unavailable("listing consumer positions", e))?;
        let mut found = HashMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable("listing consumer positions", e))?;
            let Some(parsed) = parse_commit_key(&key) else {
                tracing::warn!(%key, "ignoring a key of the positions bucket Sluice did not write");
                continue;
            };
            let value = self
                .kv
                .get(key.as_str())
                .await
                .map_err(|e| unavailable(format!("reading position {key}"), e))?;
            let Some(next) = value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            found.insert(parsed, next);
        }
        *self.commits.lock().unwrap_or_else(|e| e.into_inner()) = found;
        Ok(())
    }

    /// Finds the streams Sluice created (by their metadata) and opens every complete topic.
    async fn load_topics(self: &Arc<Self>) -> Result<(), JournalError> {
        let mut streams = self.js.streams();
        let mut found: BTreeMap<String, (u32, Vec<u32>)> = BTreeMap::new();
        let prefix = format!("{}_", self.cfg.prefix);
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| unavailable("listing streams", e))?;
            let meta = &info.config.metadata;
            let (Some(topic), Some(p), Some(n)) = (
                meta.get("sluice_topic"),
                meta.get("sluice_partition")
                    .and_then(|p| p.parse::<u32>().ok()),
                meta.get("sluice_partitions")
                    .and_then(|p| p.parse::<u32>().ok()),
            ) else {
                continue;
            };
            if !info.config.name.starts_with(&prefix)
                || info.config.name != stream_name(&self.cfg.prefix, topic, p)
            {
                continue;
            }
            let entry = found.entry(topic.clone()).or_insert((n, Vec::new()));
            entry.1.push(p);
        }
        for (topic, (n, mut parts)) in found {
            parts.sort_unstable();
            // A cluster lists only the streams whose info it could gather in time (a server
            // catching up after a restart answers late): ask for the others by name.
            for p in (0..n)
                .filter(|p| parts.binary_search(p).is_err())
                .collect::<Vec<_>>()
            {
                if self
                    .js
                    .get_stream(stream_name(&self.cfg.prefix, &topic, p))
                    .await
                    .is_ok()
                {
                    parts.push(p);
                }
            }
            parts.sort_unstable();
            if parts != (0..n).collect::<Vec<_>>() {
                tracing::warn!(%topic, partitions = n, found = parts.len(),
                    "topic is incomplete (its creation was interrupted); creating it again completes it");
                continue;
            }
            self.open_topic(&topic, n).await?;
        }
        Ok(())
    }

    /// Creates or checks every stream of a topic and starts its partitions.
    async fn open_topic(
        self: &Arc<Self>,
        topic: &str,
        partitions: u32,
    ) -> Result<(), JournalError> {
        let mut opened = Vec::new();
        for p in 0..partitions {
            let state = self.ensure_stream(topic, p, partitions).await?;
            opened.push(self.start_partition(topic, p, state));
        }
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), Arc::new(Topic { partitions: opened }));
        Ok(())
    }

    /// The stream of one partition: checked (and its limits brought in line with the config) if
    /// it exists, created otherwise. Its state.
    async fn ensure_stream(
        &self,
        topic: &str,
        partition: u32,
        partitions: u32,
    ) -> Result<stream::State, JournalError> {
        let name = stream_name(&self.cfg.prefix, topic, partition);
        let subject = format!("{}.{topic}.{partition}", self.cfg.prefix);
        let want = check::Wanted {
            subject: &subject,
            replicas: self.cfg.replicas,
        };
        match self.js.get_stream(&name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| unavailable(format!("reading stream {name}"), e))?
                    .clone();
                let recorded = info
                    .config
                    .metadata
                    .get("sluice_partitions")
                    .and_then(|n| n.parse::<u32>().ok());
                if let Some(existing) = recorded
                    && existing != partitions
                {
                    return Err(JournalError::TopicExists {
                        topic: topic.to_string(),
                        existing,
                    });
                }
                check::stream_settings(&info.config, &want).map_err(|bad| {
                    JournalError::Invalid(format!(
                        "JetStream stream {name} (topic {topic}, partition {partition}) has \
                         settings the journal cannot use safely: {bad}; fix or delete the stream"
                    ))
                })?;
                if info.config.max_age != self.max_age || info.config.max_bytes != self.max_bytes {
                    let mut config = info.config.clone();
                    config.max_age = self.max_age;
                    config.max_bytes = self.max_bytes;
                    self.js
                        .update_stream(config)
                        .await
                        .map_err(|e| unavailable(format!("updating the limits of {name}"), e))?;
                    tracing::info!(stream = %name, max_age = ?self.max_age, max_bytes = self.max_bytes,
                        "stream limits set from retention_age and retention_bytes");
                }
                Ok(info.state)
            }
            Err(e) if stream_not_found(&e) => {
                let config = stream::Config {
                    name: name.clone(),
                    subjects: vec![subject.clone()],
                    retention: stream::RetentionPolicy::Limits,
                    storage: stream::StorageType::File,
                    num_replicas: self.cfg.replicas,
                    max_age: self.max_age,
                    max_bytes: self.max_bytes,
                    max_messages: -1,
                    max_messages_per_subject: -1,
                    discard: stream::DiscardPolicy::Old,
                    deny_delete: true,
                    deny_purge: true,
                    allow_atomic_publish: true,
                    description: Some(format!(
                        "sluice journal: topic {topic}, partition {partition}"
                    )),
                    metadata: HashMap::from([
                        ("sluice_topic".to_string(), topic.to_string()),
                        ("sluice_partition".to_string(), partition.to_string()),
                        ("sluice_partitions".to_string(), partitions.to_string()),
                    ]),
                    ..Default::default()
                };
                let mut created = self
                    .js
                    .create_stream(config)
                    .await
                    .map_err(|e| unavailable(format!("creating stream {name}"), e))?;
                let info = created
                    .info()
                    .await
                    .map_err(|e| unavailable(format!("reading stream {name}"), e))?;
                Ok(info.state.clone())
            }
            Err(e) => Err(unavailable(format!("reading stream {name}"), e)),
        }
    }

    fn start_partition(
        self: &Arc<Self>,
        topic: &str,
        index: u32,
        state: stream::State,
    ) -> Arc<Partition> {
        let end = state.last_sequence;
        let (tx, rx) = mpsc::unbounded_channel();
        let p = Arc::new(Partition {
            topic: topic.to_string(),
            index,
            stream: stream_name(&self.cfg.prefix, topic, index),
            subject: format!("{}.{topic}.{index}", self.cfg.prefix),
            tail: Mutex::new(Tail {
                records: VecDeque::new(),
                lo: end,
                bytes: 0,
                cap: usize::try_from(self.cfg.tail_cache_bytes).unwrap_or(usize::MAX),
            }),
            end: watch::Sender::new(end),
            start: AtomicU64::new(first_offset(&state)),
            size: AtomicU64::new(state.bytes),
            appends: tx,
            resync: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            self.runtime.spawn(tail::feed(
                p.clone(),
                self.js.clone(),
                self.connections.subscribe(),
            )),
            self.runtime
                .spawn(writer::write(p.clone(), Arc::downgrade(self), rx, end)),
        ];
        *p.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        p
    }

    async fn create_topic(
        self: Arc<Self>,
        name: String,
        partitions: u32,
    ) -> Result<TopicInfo, JournalError> {
        if !is_valid_topic_name(&name) {
            return Err(JournalError::Invalid(format!(
                "topic name {name:?} must be 1 to 128 of A-Z a-z 0-9 . _ - and not start with a dot"
            )));
        }
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(JournalError::Invalid(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        let _admin = self.admin.lock().await;
        let existing = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .map(|t| t.partitions.len() as u32);
        match existing {
            Some(n) if n == partitions => {}
            Some(existing) => {
                return Err(JournalError::TopicExists {
                    topic: name,
                    existing,
                });
            }
            None => self.open_topic(&name, partitions).await?,
        }
        Ok(TopicInfo { name, partitions })
    }

    async fn delete_topic(self: Arc<Self>, name: String) -> Result<(), JournalError> {
        let _admin = self.admin.lock().await;
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name)
            .ok_or_else(|| JournalError::TopicNotFound(name.clone()))?;
        for p in &topic.partitions {
            for task in p.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                task.abort();
            }
            match self.js.delete_stream(&p.stream).await {
                Ok(_) => {}
                Err(e) if stream_not_found(&e) => {}
                Err(e) => return Err(unavailable(format!("deleting stream {}", p.stream), e)),
            }
        }
        let keys: Vec<CommitKey> = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|(_, t, _)| *t == name)
            .cloned()
            .collect();
        for key in keys {
            self.kv
                .purge(commit_key(&key.0, &key.1, key.2))
                .await
                .map_err(|e| unavailable("deleting a consumer position", e))?;
            self.commits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        Ok(())
    }

    /// Refreshes every partition's start, size and end from its stream, then reports records
    /// removed before a consumer group read them.
    async fn refresh(&self) {
        let partitions: Vec<Arc<Partition>> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect();
        for p in &partitions {
            match stream_info(&self.js, &p.stream).await {
                Ok(info) => {
                    p.start.store(first_offset(&info.state), Ordering::Release);
                    p.size.store(info.state.bytes, Ordering::Release);
                }
                Err(e) => {
                    tracing::debug!(stream = %p.stream, error = %e, "cannot read stream state")
                }
            }
        }
        self.report_unread();
    }

    fn report_unread(&self) {
        let commits = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for (key, next) in commits {
            let Ok(p) = self.partition(&key.1, key.2) else {
                continue;
            };
            let start = p.start.load(Ordering::Acquire);
            let from = reported.get(&key).copied().unwrap_or(next).max(next);
            if start <= from {
                continue;
            }
            let removed = start - from;
            crate::metrics::retention_unread_deleted(&key.1, removed);
            self.removed_unread.fetch_add(removed, Ordering::Relaxed);
            tracing::error!(consumer = %key.0, topic = %key.1, partition = key.2, committed = next,
                first_offset = start, removed,
                "the stream's limits (max_age or max_bytes) removed records this consumer had \
                 not read: they are lost to it; raise retention_age or retention_bytes, or \
                 keep the consumer running");
            reported.insert(key, start);
        }
    }
}

fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A stream's configuration and state, read from the server.
/// Runs `f` on the journal's runtime, where all NATS IO runs, and awaits it from any other.
async fn on_runtime<T: Send + 'static>(
    inner: &Inner,
    f: impl Future<Output = Result<T, JournalError>> + Send + 'static,
) -> Result<T, JournalError> {
    inner
        .runtime
        .spawn(f)
        .await
        .unwrap_or(Err(JournalError::Closed))
}

async fn stream_info(js: &jetstream::Context, stream: &str) -> Result<stream::Info, JournalError> {
    let info = match js.get_stream_no_info(stream).await {
        Ok(s) => s.get_info().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    info.map_err(|e| unavailable(format!("reading stream {stream}"), e))
}

/// The first offset still stored.
fn first_offset(state: &stream::State) -> u64 {
    if state.messages == 0 {
        state.last_sequence
    } else {
        state.first_sequence.saturating_sub(1)
    }
}

fn commit_key(group: &str, topic: &str, partition: u32) -> String {
    format!("{group}.{topic}.{partition}")
}

/// `group.topic.partition`, where the topic may contain dots and the group may not.
fn parse_commit_key(key: &str) -> Option<CommitKey> {
    let (group, rest) = key.split_once('.')?;
    let (topic, partition) = rest.rsplit_once('.')?;
    Some((
        group.to_string(),
        topic.to_string(),
        partition.parse().ok()?,
    ))
}

/// Opens (creating if needed) the positions bucket and checks its stream.
async fn open_positions(
    js: &jetstream::Context,
    cfg: &JetStreamConfig,
) -> Result<kv::Store, JournalError> {
    let bucket = format!("{}_positions", cfg.prefix);
    let store = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "sluice consumer-group positions".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("creating the positions bucket {bucket}"), e))?,
    };
    let info = stream_info(js, &format!("KV_{bucket}")).await?;
    check::bucket_settings(&info.config, cfg.replicas).map_err(|bad| {
        JournalError::Invalid(format!(
            "the positions bucket {bucket} cannot keep positions safely: {bad}; fix or delete it"
        ))
    })?;
    Ok(store)
}

/// Refreshes stream state every [`REFRESH_EVERY`] while the journal lives.
async fn refresh(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.refresh().await;
    }
}

/// Follows the positions bucket, so that `committed` answers with what other nodes commit too
/// (the collector's backlog, records removed unread). A position moves only forward here: a
/// value older than the one known is ignored.
async fn watch_commits(inner: Weak<Inner>) {
    let mut backoff = crate::Backoff::new(FEED_RETRY, Duration::from_secs(5));
    loop {
        let Some(i) = inner.upgrade() else {
            return;
        };
        let watch = i.kv.watch_with_history(">").await;
        drop(i);
        match watch {
            Ok(mut watch) => {
                while let Some(Ok(entry)) = watch.next().await {
                    backoff.reset();
                    let Some(i) = inner.upgrade() else {
                        return;
                    };
                    let next = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    if let (kv::Operation::Put, Some(key), Some(next)) =
                        (entry.operation, parse_commit_key(&entry.key), next)
                    {
                        let mut commits = i.commits.lock().unwrap_or_else(|e| e.into_inner());
                        let known = commits.entry(key).or_insert(next);
                        *known = (*known).max(next);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch the positions bucket"),
        }
        backoff.wait().await;
    }
}

impl Journal for JetStreamJournal {
    fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicInfo, JournalError> {
        let inner = self.inner.clone();
        self.wait_on(inner.create_topic(name.to_string(), partitions))
    }

    fn delete_topic(&self, name: &str) -> Result<(), JournalError> {
        let inner = self.inner.clone();
        self.wait_on(inner.delete_topic(name.to_string()))
    }

    fn topics(&self) -> Vec<TopicInfo> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, t)| TopicInfo {
                name: name.clone(),
                partitions: t.partitions.len() as u32,
            })
            .collect()
    }

    fn partitions(&self, topic: &str) -> Result<u32, JournalError> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .map(|t| t.partitions.len() as u32)
            .ok_or_else(|| JournalError::TopicNotFound(topic.to_string()))
    }

    fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> BoxFuture<'_, Result<u64, JournalError>> {
        self.queue(topic, partition, records, Mode::Exclusive)
    }

    fn shared(&self) -> bool {
        true
    }

    fn append_shared(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
        seen: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, JournalError>> {
        self.queue(topic, partition, records, Mode::Shared { seen })
    }

    fn sync(&self, topic: &str, partition: u32) -> BoxFuture<'_, Result<u64, JournalError>> {
        let (p, inner) = match self.partition(topic, partition) {
            Ok(p) => (p, self.inner.clone()),
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        let synced = self.on_runtime(async move {
            let last = stream_info(&inner.js, &p.stream).await?.state.last_sequence;
            // The next batch is fenced on this very sequence, not on a later reading: a batch
            // whose ack was lost may be stored after this one (a leader change, a client's
            // buffer), and the caller, resuming from what it saw, would then write it again.
            *p.resync.lock().unwrap_or_else(|e| e.into_inner()) = Some(last);
            let mut end = p.end.subscribe();
            tokio::time::timeout(inner.cfg.timeout, end.wait_for(|e| *e >= last))
                .await
                .map_err(|_| {
                    JournalError::Unavailable(format!(
                        "{}: the tail did not reach sequence {last} in time",
                        p.stream
                    ))
                })?
                .map_err(|_| JournalError::Closed)?;
            Ok(last)
        });
        synced.boxed()
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let p = self.partition(topic, partition)?;
        let end = *p.end.borrow();
        let from = from.max(p.start.load(Ordering::Acquire));
        if from >= end || max_records == 0 {
            return Ok(Vec::new());
        }
        if let Some(records) =
            p.tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(from, max_records, max_bytes)
        {
            return Ok(records);
        }
        let (js, stream, timeout) = (
            self.inner.js.clone(),
            p.stream.clone(),
            self.inner.cfg.timeout,
        );
        self.wait_on(tail::fetch(
            js,
            stream,
            from,
            end,
            max_records,
            max_bytes,
            timeout,
        ))
    }

    fn end(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        Ok(*self.partition(topic, partition)?.end.borrow())
    }

    fn start(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        Ok(self
            .partition(topic, partition)?
            .start
            .load(Ordering::Acquire))
    }

    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, ()> {
        let watermark = self
            .partition(topic, partition)
            .ok()
            .map(|p| p.end.subscribe());
        // An unknown partition resolves at once, as in the file journal: the caller's next read
        // says why.
        async move {
            if let Some(mut rx) = watermark {
                let _ = tokio::time::timeout(timeout, rx.wait_for(|&end| end > offset)).await;
            }
        }
        .boxed()
    }

    fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next: u64,
    ) -> Result<(), JournalError> {
        let end = *self.partition(topic, partition)?.end.borrow();
        if next > end {
            return Err(JournalError::Invalid(format!(
                "cannot commit offset {next} for group {group}: {topic}/{partition} ends at {end}"
            )));
        }
        if group.is_empty()
            || !group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(JournalError::Invalid(format!(
                "consumer group {group:?} must be A-Z a-z 0-9 _ - (it names a NATS KV key)"
            )));
        }
        let key = commit_key(group, topic, partition);
        let kv = self.inner.kv.clone();
        self.wait_on(async move {
            kv.put(key.as_str(), Bytes::from(next.to_string()))
                .await
                .map_err(|e| unavailable(format!("committing position {key}"), e))
        })?;
        self.inner
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((group.to_string(), topic.to_string(), partition), next);
        Ok(())
    }

    fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, JournalError> {
        self.partition(topic, partition)?;
        Ok(self
            .inner
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(group.to_string(), topic.to_string(), partition))
            .copied())
    }

    fn size_bytes(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        Ok(self
            .partition(topic, partition)?
            .size
            .load(Ordering::Acquire))
    }

    fn is_failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_never_collide_and_keys_parse_back() {
        let names = [
            stream_name("sluice", "a.b", 0),
            stream_name("sluice", "a_b", 0),
            stream_name("sluice", "a_db", 0),
            stream_name("sluice", "a", 10),
            stream_name("sluice", "a_1", 0),
        ];
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(stream_name("sluice", "raw", 3), "sluice_raw_3");
        assert_eq!(
            parse_commit_key("lake-events.my.topic.12"),
            Some(("lake-events".into(), "my.topic".into(), 12))
        );
        assert_eq!(parse_commit_key("nodots"), None);
        assert_eq!(parse_commit_key("g.t.x"), None);
    }
}
