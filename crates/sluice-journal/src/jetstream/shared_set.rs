//! [`SharedSet`] and [`SharedMap`]: a set of keys, or keys with values, that every node holds
//! the same, kept in the NATS KV bucket `<prefix>_<name>` (file storage, the journal's
//! replicas, no expiry). A key once added to a set stays; a map's value is replaced by a
//! compare-and-set on the revision this node last saw, so two nodes changing the same key at
//! once cannot both succeed.
//!
//! A node learns the keys by pulling, not from a watch: `catch_up` asks the
//! bucket's stream for its last sequence (from its leader) and reads every entry after the last
//! one it applied, by sequence. So once `catch_up` returns, every key whose `add` was acked
//! before `catch_up` began is applied on this node. That is the ordering a caller needs when it
//! must act on a key everywhere from a known moment on (the suppression list of deletion
//! requests: a runner batch that starts after the request was answered drops the person's
//! events, on whichever node it runs).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

use super::{Inner, JetStreamJournal, on_runtime, stream_info, unavailable};
use crate::JournalError;

/// The shared sets and maps there are (each opened by name), so that
/// [`JetStreamJournal::delete_everything`] finds every bucket.
pub(super) const NAMES: &[&str] = &["suppressed", "functions", "schemas", "credentials"];

/// Called with each key of a set as it reaches this node: every stored key at first, then each
/// new one.
pub type OnAdd = Arc<dyn Fn(&str) + Send + Sync>;

/// Called with each change of a map as it reaches this node, in the order they were made: a key
/// and its value, or `None` once it was deleted.
pub type OnChange = Arc<dyn Fn(&str, Option<&[u8]>) + Send + Sync>;

/// A set of keys shared by every node of a journal (see the module doc).
#[derive(Clone)]
pub struct SharedSet {
    map: SharedMap,
}

/// Keys with values shared by every node of a journal (see the module doc).
#[derive(Clone)]
pub struct SharedMap {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
    store: kv::Store,
    /// The bucket's stream.
    stream: String,
    on_change: OnChange,
    /// Held while catching up, so that entries are applied once and in order.
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last sequence of the bucket's stream applied here.
    applied: u64,
    /// Each key's revision as last applied here (absent: never stored, or deleted).
    revisions: HashMap<String, u64>,
}

impl JetStreamJournal {
    /// Opens (creating) the shared set `name` and applies every key stored so far before it
    /// resolves.
    pub async fn shared_set(&self, name: &str, on_add: OnAdd) -> Result<SharedSet, JournalError> {
        let on_change: OnChange = Arc::new(move |key, value| {
            if value.is_some() {
                on_add(key);
            }
        });
        let map = self.shared_map(name, on_change).await?;
        Ok(SharedSet { map })
    }

    /// Opens (creating) the shared map `name` and applies every entry stored so far before it
    /// resolves.
    pub async fn shared_map(
        &self,
        name: &str,
        on_change: OnChange,
    ) -> Result<SharedMap, JournalError> {
        if !NAMES.contains(&name) {
            return Err(JournalError::Invalid(format!(
                "no shared set or map is named {name:?} (there are {NAMES:?})"
            )));
        }
        let inner = self.inner.clone();
        let name = name.to_string();
        let store = self
            .on_runtime(async move { bucket(&inner, &name).await })
            .await?;
        let map = SharedMap {
            shared: Arc::new(Shared {
                inner: self.inner.clone(),
                stream: store.stream_name.clone(),
                store,
                on_change,
                state: tokio::sync::Mutex::default(),
            }),
        };
        map.catch_up().await?;
        Ok(map)
    }
}

impl SharedSet {
    /// Adds `keys` (each a valid KV key: letters, digits, `-`, `_`, `=`, `.` inside), durably on
    /// the servers' quorum, and applies them here too; the bucket's sequence after the last.
    pub async fn add(&self, keys: Vec<String>) -> Result<u64, JournalError> {
        let shared = self.map.shared.clone();
        let last = on_runtime(&self.map.shared.inner, async move {
            let mut last = 0;
            for key in keys {
                last =
                    shared.store.put(&key, Bytes::new()).await.map_err(|e| {
                        unavailable(format!("adding {key} to {}", shared.stream), e)
                    })?;
            }
            Ok(last)
        })
        .await?;
        self.catch_up().await?;
        Ok(last)
    }

    /// Applies every key added anywhere before this call began (see the module doc).
    pub async fn catch_up(&self) -> Result<(), JournalError> {
        self.map.catch_up().await
    }
}

impl SharedMap {
    /// Stores `value` under `key` (`None`: deletes it) if the key is still as this node last
    /// applied it, then applies the change here too. `Ok(false)` if another node changed the
    /// key first: nothing was stored, and this node now holds the other node's change.
    pub async fn set(&self, key: &str, value: Option<Bytes>) -> Result<bool, JournalError> {
        let shared = self.shared.clone();
        let key = key.to_string();
        let stored = on_runtime(&self.shared.inner, async move {
            let seen = shared.state.lock().await.revisions.get(&key).copied();
            let what = format!("{key} in {}", shared.stream);
            match (value, seen) {
                (Some(v), Some(r)) => match shared.store.update(&key, v, r).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                    Err(e) => Err(unavailable(format!("storing {what}"), e)),
                },
                (Some(v), None) => match shared.store.create(&key, v).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(unavailable(format!("storing {what}"), e)),
                },
                (None, Some(r)) => match shared.store.delete_expect_revision(&key, Some(r)).await {
                    Ok(()) => Ok(true),
                    // A refused revision and a lost connection look alike here: catching up
                    // tells them apart.
                    Err(e) => {
                        shared.catch_up().await?;
                        let now = shared.state.lock().await.revisions.get(&key).copied();
                        match now == Some(r) {
                            true => Err(unavailable(format!("deleting {what}"), e)),
                            false => Ok(false),
                        }
                    }
                },
                (None, None) => Ok(true),
            }
        })
        .await?;
        self.catch_up().await?;
        Ok(stored)
    }

    /// The keys stored, as last applied here.
    pub async fn keys(&self) -> Vec<String> {
        let state = self.shared.state.lock().await;
        state.revisions.keys().cloned().collect()
    }

    /// Applies every change made anywhere before this call began (see the module doc).
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
        let mut state = self.state.lock().await;
        for seq in state.applied + 1..=last {
            match self.store.stream.get_raw_message(seq).await {
                Ok(m) => {
                    let deleted = m
                        .headers
                        .get("KV-Operation")
                        .is_some_and(|op| op.as_str() != "PUT");
                    if let Some(key) = m.subject.strip_prefix(&self.store.prefix) {
                        match deleted {
                            true => state.revisions.remove(key),
                            false => state.revisions.insert(key.to_string(), seq),
                        };
                        (self.on_change)(key, (!deleted).then_some(&m.payload[..]));
                    }
                }
                // Replaced by a later change of the same key, which this loop reaches too.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(unavailable(format!("reading {}", self.stream), e)),
            }
            state.applied = seq;
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
            description: format!("sluice shared {name}: every node holds the same entries"),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: inner.cfg.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("creating the bucket {bucket}"), e))
}
