//! User functions on a shared journal: every runner node runs the same ones, whichever node
//! took the deploy.
//!
//! Each function is one entry of the journal's shared map `functions` (a NATS KV bucket): its
//! every version with code and settings, and its activation history ([`Bundle`], JSON). A
//! deploy, rollback or delete on any node first catches up with the map, then changes this
//! node's store, then stores the function's new state in the map by a compare-and-set on the
//! revision this node last saw ([`SharedFunctions::publish`]): if another node changed the same
//! function at the same moment, the request is answered 409 and this node takes the other
//! node's state. A change that could not be stored (NATS unreachable) is answered 503 and
//! stored again until it is (or another node's change of the function wins). Every node
//! catches up with the map every [`FOLLOW_EVERY`] and imports what changed, so a deploy runs
//! on every runner node from its next batch after that. At start, the map's functions replace
//! this node's, and functions only this node has (deployed before it joined) are added to the
//! map.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_functions::Functions;
use sluice_functions::udf::Bundle;
use sluice_journal::{JetStreamJournal, OnChange, SharedMap};
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;

/// The journal's shared map of functions.
const MAP: &str = "functions";

/// How often a node catches up with the other nodes' deploys.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The functions every runner node runs, as this node shares them.
#[derive(Clone)]
pub(crate) struct SharedFunctions {
    map: SharedMap,
    functions: Arc<Functions>,
    /// Functions changed here whose change is not stored in the map yet.
    pending: Arc<Mutex<BTreeSet<String>>>,
    /// Held by a change from catching up to publishing, and by each round of [`follow`], so
    /// that another node's change is never taken between a change here and its publishing.
    changing: Arc<tokio::sync::Mutex<()>>,
}

/// Opens the shared map, applies the functions it holds to this node's and adds this node's
/// own (those the map lacks).
pub(crate) async fn open(
    journal: &JetStreamJournal,
    functions: Arc<Functions>,
) -> Result<SharedFunctions, ServerError> {
    let map = journal
        .shared_map(MAP, importer(functions.clone()))
        .await
        .map_err(|e| ServerError::stage("runner", e))?;
    // A node that cannot run what the others run (sealed secrets without this node's key, say)
    // does not start: it would run its partitions without those functions.
    let f = functions.clone();
    let local = tokio::task::spawn_blocking(move || f.run_stored().and_then(|()| f.names()))
        .await
        .map_err(|e| ServerError::stage("runner", e))?
        .map_err(|e| ServerError::stage("runner", e))?;
    let shared = map.keys().await;
    let this = SharedFunctions {
        map,
        functions,
        pending: Arc::default(),
        changing: Arc::default(),
    };
    for name in local.into_iter().filter(|n| !shared.contains(n)) {
        this.publish(&name)
            .await
            .map_err(|e| ServerError::stage("runner", e))?;
    }
    Ok(this)
}

/// What applies another node's change of a function to this node's store.
fn importer(functions: Arc<Functions>) -> OnChange {
    Arc::new(move |name, value| {
        let bundle = match value.map(serde_json::from_slice::<Bundle>) {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                tracing::error!(function = name, error = %e, "a shared function that does not decode; left as it is here");
                return;
            }
        };
        // File writes and fresh runtimes: off the runtime's workers.
        let taken = tokio::task::block_in_place(|| functions.import(name, bundle.as_ref()));
        log_taken("function", name, taken);
    })
}

/// Logs what taking another node's change of `what` `name` did.
pub(crate) fn log_taken(what: &str, name: &str, taken: Result<bool, impl std::fmt::Display>) {
    match taken {
        Ok(true) => tracing::info!(what, name, "taken from another node"),
        Ok(false) => {}
        Err(e) => tracing::error!(what, name, error = %e, "cannot take another node's change"),
    }
}

impl SharedFunctions {
    /// Waits for the right to change functions here (see `changing`); held until dropped.
    pub(crate) async fn changing(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.changing.clone().lock_owned().await
    }

    /// Takes every change other nodes made, before a change here.
    pub(crate) async fn catch_up(&self) -> Result<(), String> {
        self.map.catch_up().await.map_err(|e| e.to_string())
    }

    /// Stores function `name` in the map as this node has it now (deleted there if it is not
    /// deployed here). `Ok(false)`: another node changed it first; this node now holds theirs.
    /// An error leaves it to be stored again by [`follow`].
    pub(crate) async fn publish(&self, name: &str) -> Result<bool, String> {
        self.lock_pending().insert(name.to_string());
        let stored = self.try_publish(name).await;
        if stored.is_ok() {
            self.lock_pending().remove(name);
        }
        stored
    }

    async fn try_publish(&self, name: &str) -> Result<bool, String> {
        let (f, n) = (self.functions.clone(), name.to_string());
        let bundle = tokio::task::spawn_blocking(move || f.export(&n))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let value = match bundle {
            Some(b) => Some(serde_json::to_vec(&b).map_err(|e| e.to_string())?.into()),
            None => None,
        };
        self.map.set(name, value).await.map_err(|e| e.to_string())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Catches up with the other nodes' deploys every [`FOLLOW_EVERY`], and stores again the changes
/// made here that could not be stored, until `stop`.
pub(crate) async fn follow(
    shared: SharedFunctions,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    loop {
        let changing = shared.changing().await;
        let pending: Vec<String> = shared.lock_pending().iter().cloned().collect();
        for name in pending {
            match shared.publish(&name).await {
                Ok(true) => tracing::info!(function = name, "a change made here is shared now"),
                Ok(false) => tracing::warn!(
                    function = name,
                    "a change made here lost to another node's change of the same function"
                ),
                Err(_) => {}
            }
        }
        if let Err(e) = shared.catch_up().await {
            tracing::warn!(error = %e, "cannot catch up with the functions deployed on other nodes; trying again");
        }
        drop(changing);
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}
