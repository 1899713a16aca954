//! [`SharedSet`]: a set of keys that every node holds the same, kept in the NATS KV bucket
//! `<prefix>_<name>` (file storage, the journal's replicas, no expiry). A key once added stays.
//!
//! A node learns the keys by pulling, not from a watch: [`SharedSet::catch_up`] asks the
//! bucket's stream for its last sequence (from its leader) and reads every entry after the last
//! one it applied, by sequence. So once `catch_up` returns, every key whose `add` was acked
//! before `catch_up` began is applied on this node. That is the ordering a caller needs when it
//! must act on a key everywhere from a known moment on (the suppression list of deletion
//! requests: a runner batch that starts after the request was answered drops the person's
//! events, on whichever node it runs).

use std::sync::Arc;

use async_nats::jetstream::{self, kv, stream};

use super::{Inner, JetStreamJournal, on_runtime, stream_info, unavailable};
use crate::JournalError;

/// The shared sets there are (each opened by name), so that
/// [`JetStreamJournal::delete_everything`] finds every bucket.
pub(super) const NAMES: &[&str] = &["suppressed"];

/// Called with each key as it reaches this node: every stored key at first, then each new one.
pub type OnAdd = Arc<dyn Fn(&str) + Send + Sync>;

/// A set of keys shared by every node of a journal (see the module doc).
#[derive(Clone)]
pub struct SharedSet {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
    store: kv::Store,
    /// The bucket's stream.
    stream: String,
    on_add: OnAdd,
    /// The last sequence of the bucket's stream applied here; held while catching up, so that
    /// entries are applied once and in order.
    applied: tokio::sync::Mutex<u64>,
}

impl JetStreamJournal {
    /// Opens (creating) the shared set `name` and applies every key stored so far before it
    /// resolves.
    pub async fn shared_set(&self, name: &str, on_add: OnAdd) -> Result<SharedSet, JournalError> {
        if !NAMES.contains(&name) {
            return Err(JournalError::Invalid(format!(
                "no shared set is named {name:?} (there are {NAMES:?})"
            )));
        }
        let inner = self.inner.clone();
        let name = name.to_string();
        let store = self
            .on_runtime(async move { bucket(&inner, &name).await })
            .await?;
        let stream = store.stream_name.clone();
        let set = SharedSet {
            shared: Arc::new(Shared {
                inner: self.inner.clone(),
                store,
                stream,
                on_add,
                applied: tokio::sync::Mutex::new(0),
            }),
        };
        set.catch_up().await?;
        Ok(set)
    }
}

impl SharedSet {
    /// Adds `keys` (each a valid KV key: letters, digits, `-`, `_`, `=`, `.` inside), durably on
    /// the servers' quorum, and applies them here too; the bucket's sequence after the last.
    pub async fn add(&self, keys: Vec<String>) -> Result<u64, JournalError> {
        let shared = self.shared.clone();
        let last = on_runtime(&self.shared.inner, async move {
            let mut last = 0;
            for key in keys {
                last = shared
                    .store
                    .put(&key, bytes::Bytes::new())
                    .await
                    .map_err(|e| unavailable(format!("adding {key} to {}", shared.stream), e))?;
            }
            Ok(last)
        })
        .await?;
        self.catch_up().await?;
        Ok(last)
    }

    /// Applies every key added anywhere before this call began (see the module doc).
    pub async fn catch_up(&self) -> Result<(), JournalError> {
        let shared = self.shared.clone();
        on_runtime(&self.shared.inner, async move { shared.catch_up().await }).await
    }
}

impl Shared {
    async fn catch_up(&self) -> Result<(), JournalError> {
        let last = stream_info(&self.inner.js, &self.stream)
            .await?
            .state
            .last_sequence;
        let mut applied = self.applied.lock().await;
        if *applied >= last {
            return Ok(());
        }
        for seq in *applied + 1..=last {
            match self.store.stream.get_raw_message(seq).await {
                Ok(m) => {
                    let deleted = m
                        .headers
                        .get("KV-Operation")
                        .is_some_and(|op| op.as_str() != "PUT");
                    if let (false, Some(key)) =
                        (deleted, m.subject.strip_prefix(&self.store.prefix))
                    {
                        (self.on_add)(key);
                    }
                }
                // Replaced by a later put of the same key, which this loop reaches too.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(unavailable(format!("reading {}", self.stream), e)),
            }
            *applied = seq;
        }
        Ok(())
    }
}

/// The bucket `<prefix>_<name>`, created if missing.
async fn bucket(inner: &Inner, name: &str) -> Result<kv::Store, JournalError> {
    let bucket = format!("{}_{name}", inner.cfg.prefix);
    if let Ok(store) = inner.js.get_key_value(&bucket).await {
        return Ok(store);
    }
    inner
        .js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            description: format!("sluice shared set {name}: every node holds the same keys"),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: inner.cfg.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("creating the bucket {bucket}"), e))
}
