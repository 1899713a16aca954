//! [`Lease`]: which node runs what (`pipeline`: the stages after `good`; `runner.<p>`: a runner
//! partition), kept in the NATS KV bucket `<prefix>_leases` (`max_age` = the lease's TTL, so a
//! key its holder stops renewing expires), beside the nodes' announcements (`node.<name>`).
//!
//! - **Acquire**: `create(key, holder)` succeeds only while the key does not exist; otherwise
//!   the node stands by, trying again when the key changes (a release) and every quarter of the
//!   TTL (an expiry makes no event). [`try_acquire`] makes one attempt (the runner's partitions
//!   are taken that way, and [`watch_releases`] says when one is worth another).
//! - **Renew**: every third of the TTL, `update(key, holder, revision)`, which fails if anyone
//!   else wrote the key since.
//! - **Lost**: when a renew is refused, or when the local deadline passes — the send time of the
//!   last successful renew plus the TTL, minus a fifth of it — without one. The deadline is
//!   measured on this node's monotonic clock from before the server could have stored the
//!   renew, so it falls before the server expires the key: a node that was paused (GC, SIGSTOP,
//!   a slow disk) learns it lost the lease before another node can hold it.
//! - **Release**: a delete expecting the held revision, on a clean stop, so a standby takes
//!   over at once instead of after the TTL.
//!
//! The lease alone never protects a write: a holder that lost it may still have a write in
//! flight. Every write after the journal is fenced in the data too (the journal's expected last
//! sequence, Delta `txn` versions, the hot store's position compare-and-set); the lease keeps
//! two nodes from working on the same partitions at once, which those fences would otherwise
//! turn into failures.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inner, stream_info, unavailable};
use crate::{Backoff, JournalError};

/// A lease this node holds; see the module documentation. Dropping it stops renewing it (it
/// then expires after its TTL); [`Lease::release`] gives it up at once.
pub struct Lease {
    name: String,
    /// `true` once the lease is lost.
    lost: watch::Receiver<bool>,
    renew: tokio::task::JoinHandle<()>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Lease {
    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves once the lease is lost (a renew refused, or its local deadline passed).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Whether the lease is still held.
    pub fn is_held(&self) -> bool {
        !*self.lost.borrow()
    }

    /// Gives the lease up: deletes it (if still held) so another node takes it at once.
    pub async fn release(mut self) {
        if let (Some(release), Some(done)) = (self.release.take(), self.done.take())
            && release.send(()).is_ok()
        {
            let _ = done.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// A node as it announced itself ([`announce`]): its name, what it said about itself and how
/// long ago it last said so.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeEntry {
    /// The node's name (`journal.jetstream.node`).
    pub name: String,
    /// What the node says about itself (the server writes JSON).
    pub details: String,
    /// Since its last announcement; a node that stopped announcing leaves after the TTL.
    pub age: Duration,
}

/// The key of node `name`'s announcement: `node.` and the name with every character a key may
/// not hold written as `_`.
fn node_key(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '=' => c,
            _ => '_',
        })
        .collect();
    format!("node.{safe}")
}

/// Puts this node's details under `node.<name>` every third of the TTL (so it expires a TTL
/// after the node stops), with the newest `details`, until `details` is dropped.
pub(super) async fn announce(
    inner: Arc<Inner>,
    name: String,
    ttl: Duration,
    mut details: watch::Receiver<String>,
) -> Result<(), JournalError> {
    let store = bucket(&inner, ttl).await?;
    let key = node_key(&name);
    loop {
        let value = Bytes::from(details.borrow_and_update().clone());
        if let Err(e) = store.put(&key, value).await {
            tracing::debug!(node = %name, error = %e, "cannot announce this node; trying again");
        }
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            changed = details.changed() => {
                if changed.is_err() {
                    let _ = store.delete(&key).await;
                    return Ok(());
                }
            }
        }
    }
}

/// Every live key of the lease bucket (a put, not expired or deleted) with its entry, by key;
/// none while the bucket does not exist.
async fn entries(inner: &Inner) -> Result<Vec<kv::Entry>, JournalError> {
    let bucket = format!("{}_leases", inner.cfg.prefix);
    let Ok(store) = inner.js.get_key_value(&bucket).await else {
        return Ok(Vec::new());
    };
    let reading = |e: &dyn std::fmt::Display| unavailable("reading the lease bucket", e);
    let mut keys = store.keys().await.map_err(|e| reading(&e))?;
    let mut found = Vec::new();
    while let Some(key) = futures::StreamExt::next(&mut keys).await {
        let key = key.map_err(|e| reading(&e))?;
        if let Some(entry) = store.entry(&key).await.map_err(|e| reading(&e))?
            && entry.operation == kv::Operation::Put
        {
            found.push(entry);
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

/// Every node that announced itself within the TTL, by name.
pub(super) async fn nodes(inner: &Inner) -> Result<Vec<NodeEntry>, JournalError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128;
    Ok(entries(inner)
        .await?
        .into_iter()
        .filter_map(|entry| {
            let name = entry.key.strip_prefix("node.")?.to_string();
            let age_ns = (now - entry.created.unix_timestamp_nanos()).max(0);
            Some(NodeEntry {
                name,
                details: String::from_utf8_lossy(&entry.value).into_owned(),
                age: Duration::from_nanos(u64::try_from(age_ns).unwrap_or(u64::MAX)),
            })
        })
        .collect())
}

/// The bucket holding the leases, created with `max_age` = `ttl` if absent; an existing one
/// with another `max_age` is refused (every node must use the same TTL).
async fn bucket(inner: &Inner, ttl: Duration) -> Result<kv::Store, JournalError> {
    let name = format!("{}_leases", inner.cfg.prefix);
    let store = match inner.js.get_key_value(&name).await {
        Ok(store) => store,
        Err(_) => inner
            .js
            .create_key_value(kv::Config {
                bucket: name.clone(),
                description: "sluice leases: which node runs the stages after the journal".into(),
                history: 1,
                max_age: ttl,
                storage: stream::StorageType::File,
                num_replicas: inner.cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("creating the lease bucket {name}"), e))?,
    };
    let info = stream_info(&inner.js, &format!("KV_{name}")).await?;
    if info.config.max_age != ttl {
        return Err(JournalError::Invalid(format!(
            "the lease bucket {name} expires leases after {:?}, the config says {ttl:?} \
             (journal.jetstream lease_ttl must be the same on every node; delete the bucket to \
             change it)",
            info.config.max_age
        )));
    }
    Ok(store)
}

/// The lease bucket, waited for: a cluster that is still electing its leaders cannot create it
/// yet. A bucket with another TTL is a configuration error.
async fn open_bucket(inner: &Inner, name: &str, ttl: Duration) -> Result<kv::Store, JournalError> {
    let mut backoff = Backoff::new(ttl / 8, ttl);
    loop {
        match bucket(inner, ttl).await {
            Ok(store) => return Ok(store),
            Err(e @ JournalError::Invalid(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "cannot open the lease bucket; trying again");
                backoff.wait().await;
            }
        }
    }
}

/// Waits until `holder` holds lease `name`, then keeps renewing it on the journal's runtime.
pub(super) async fn acquire(
    inner: Arc<Inner>,
    name: String,
    holder: String,
    ttl: Duration,
) -> Result<Lease, JournalError> {
    let store = open_bucket(&inner, &name, ttl).await?;
    let mut backoff = Backoff::new(ttl / 8, ttl);
    let mut told = None;
    // A release (a delete) wakes a standby at once; an expiry makes no event, so it also looks
    // again every quarter of the TTL.
    let mut changes = store.watch(&name).await.ok();
    let taken = loop {
        let sent = Instant::now();
        match store.create(&name, Bytes::from(holder.clone())).await {
            Ok(revision) => break (revision, sent),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                backoff.reset();
                let current = store
                    .get(&name)
                    .await
                    .ok()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(&v).into_owned());
                if current != told {
                    tracing::info!(lease = %name, held_by = ?current,
                        "standing by: another node holds the lease");
                    told = current;
                }
                let changed = async {
                    match changes.as_mut() {
                        Some(watch) => {
                            let _ = futures::StreamExt::next(watch).await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let _ = tokio::time::timeout(ttl / 4, changed).await;
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "cannot take the lease; trying again");
                backoff.wait().await;
            }
        }
    };
    Ok(hold(&inner, store, (name, holder, ttl), taken))
}

/// Takes lease `name` for `holder` if no node holds it now (one attempt), then keeps renewing
/// it on the journal's runtime; `None` while another node holds it.
pub(super) async fn try_acquire(
    inner: Arc<Inner>,
    name: String,
    holder: String,
    ttl: Duration,
) -> Result<Option<Lease>, JournalError> {
    let store = bucket(&inner, ttl).await?;
    let sent = Instant::now();
    match store.create(&name, Bytes::from(holder.clone())).await {
        Ok(revision) => Ok(Some(hold(
            &inner,
            store,
            (name, holder, ttl),
            (revision, sent),
        ))),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(unavailable(format!("taking lease {name}"), e)),
    }
}

/// Starts renewing lease `name`, created at `revision` by a request sent at `sent`.
fn hold(
    inner: &Inner,
    store: kv::Store,
    (name, holder, ttl): (String, String, Duration),
    (revision, sent): (u64, Instant),
) -> Lease {
    tracing::info!(lease = %name, %holder, "lease taken");
    let (lost_tx, lost) = watch::channel(false);
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let held = Held {
        store,
        name: name.clone(),
        holder,
        ttl,
        revision,
        renewed: sent,
    };
    let renew = inner.runtime.spawn(held.keep(lost_tx, release_rx, done_tx));
    Lease {
        name,
        lost,
        renew,
        release: Some(release),
        done: Some(done),
    }
}

/// A lease taken, as its renewing task knows it.
struct Held {
    store: kv::Store,
    name: String,
    holder: String,
    ttl: Duration,
    /// The key's revision this node wrote last.
    revision: u64,
    /// When the last successful renew (or the create) was sent.
    renewed: Instant,
}

impl Held {
    /// Renews the lease until it is lost (`lost` set) or released (on `release`; `done` then).
    async fn keep(
        mut self,
        lost: watch::Sender<bool>,
        mut release: tokio::sync::oneshot::Receiver<()>,
        done: tokio::sync::oneshot::Sender<()>,
    ) {
        let (name, ttl) = (self.name.clone(), self.ttl);
        loop {
            let deadline = self.renewed + ttl - ttl / 5;
            // A third of the TTL after the last renew; after a failed one, again soon.
            let next = (self.renewed + ttl / 3)
                .max(Instant::now() + ttl / 20)
                .min(deadline);
            tokio::select! {
                _ = &mut release => {
                    self.release().await;
                    let _ = lost.send(true);
                    let _ = done.send(());
                    return;
                }
                () = tokio::time::sleep_until(next) => {}
            }
            if Instant::now() >= deadline {
                tracing::error!(lease = %name, "the lease could not be renewed in time: lost");
                let _ = lost.send(true);
                return;
            }
            if !self.renew(deadline).await {
                tracing::error!(lease = %name, "another node took the lease: lost");
                let _ = lost.send(true);
                return;
            }
        }
    }

    /// One renew, given up at `deadline`; `false` when another node wrote the key since.
    async fn renew(&mut self, deadline: Instant) -> bool {
        let sent = Instant::now();
        let value = Bytes::from(self.holder.clone());
        let update = self.store.update(&self.name, value, self.revision);
        match tokio::time::timeout(deadline.saturating_duration_since(sent), update).await {
            Ok(Ok(revision)) => {
                debug_assert!(revision > self.revision, "a key's revisions only grow");
                self.revision = revision;
                self.renewed = sent;
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return false,
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "cannot renew the lease; trying again");
            }
            Err(_) => {}
        }
        true
    }

    async fn release(&self) {
        match self
            .store
            .delete_expect_revision(&self.name, Some(self.revision))
            .await
        {
            Ok(()) => tracing::info!(lease = %self.name, "lease released"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e,
                "cannot release the lease; it expires after its TTL"),
        }
    }
}

/// Who holds lease `name` now, if anyone.
pub(super) async fn holder(
    js: &jetstream::Context,
    prefix: &str,
    name: &str,
) -> Result<Option<String>, JournalError> {
    let bucket = format!("{prefix}_leases");
    let Ok(store) = js.get_key_value(&bucket).await else {
        return Ok(None);
    };
    let value = store
        .get(name)
        .await
        .map_err(|e| unavailable(format!("reading lease {name}"), e))?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Every lease held now (not the nodes' announcements), as (name, holder), by name.
pub(super) async fn holders(inner: &Inner) -> Result<Vec<(String, String)>, JournalError> {
    Ok(entries(inner)
        .await?
        .into_iter()
        .filter(|entry| !entry.key.starts_with("node."))
        .map(|entry| {
            let holder = String::from_utf8_lossy(&entry.value).into_owned();
            (entry.key, holder)
        })
        .collect())
}

/// Wakes `released` whenever a lease is released (deleted), not a node's announcement, until
/// the watch ends.
pub(super) async fn watch_releases(
    inner: Arc<Inner>,
    ttl: Duration,
    released: Arc<tokio::sync::Notify>,
) -> Result<(), JournalError> {
    let store = open_bucket(&inner, "(releases)", ttl).await?;
    let mut changes = store
        .watch_all()
        .await
        .map_err(|e| unavailable("watching the leases", e))?;
    while let Some(entry) = futures::StreamExt::next(&mut changes).await {
        let Ok(entry) = entry else { continue };
        if entry.operation != kv::Operation::Put && !entry.key.starts_with("node.") {
            released.notify_one();
        }
    }
    Ok(())
}
