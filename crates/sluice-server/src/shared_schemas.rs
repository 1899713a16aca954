//! The schema registry on a shared journal: every node validates with the same schemas,
//! whichever node took the push.
//!
//! Each schema is one entry of the journal's shared map `schemas` (a NATS KV bucket), keyed by
//! the hex of its path (`vendor/name/jsonschema/M-R-A`), its text as pushed. A push on any node
//! first catches up with the map (so an addition is checked against the others' schemas), then
//! stores the schema here, then in the map; if another node stored the same address with other
//! content at the same moment, the push is answered 409 and this node takes the other node's
//! schema (versions are immutable). Every node catches up every [`FOLLOW_EVERY`], so a schema
//! validates events on every node within about a second of its push. At start, the map's
//! schemas are added to this node's registry, and this node's own to the map.

use std::sync::Arc;

use sluice_functions::Registry;
use sluice_functions::registry::SchemaKey;
use sluice_journal::{JetStreamJournal, OnChange, SharedMap};
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
pub(crate) use crate::shared_functions::FOLLOW_EVERY;

/// The journal's shared map of schemas.
const MAP: &str = "schemas";

/// The schemas every node validates with, as this node shares them.
#[derive(Clone)]
pub(crate) struct SharedSchemas {
    map: SharedMap,
    registry: Arc<Registry>,
}

/// Opens the shared map, adds the schemas it holds to `registry` and this node's own to it.
pub(crate) async fn open(
    journal: &JetStreamJournal,
    registry: Arc<Registry>,
) -> Result<SharedSchemas, ServerError> {
    let fail = |e: &dyn std::fmt::Display| ServerError::stage("schemas", e.to_string());
    let map = journal
        .shared_map(MAP, adopter(registry.clone()))
        .await
        .map_err(|e| fail(&e))?;
    let this = SharedSchemas { map, registry };
    let shared = this.map.keys().await;
    let r = this.registry.clone();
    let local = tokio::task::spawn_blocking(move || r.list())
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))?;
    for uri in local {
        let key = SchemaKey::parse_uri(&uri).map_err(|e| fail(&e))?;
        if !shared.contains(&map_key(&key)) {
            this.publish(&key).await.map_err(|e| fail(&e))?;
        }
    }
    Ok(this)
}

fn map_key(key: &SchemaKey) -> String {
    hex::encode(key.path())
}

/// What stores another node's schema in this node's registry.
fn adopter(registry: Arc<Registry>) -> OnChange {
    Arc::new(move |key, value| {
        let (Some(path), Some(body)) = (
            hex::decode(key)
                .ok()
                .and_then(|p| String::from_utf8(p).ok()),
            value,
        ) else {
            return;
        };
        let taken = tokio::task::block_in_place(|| registry.adopt(&path, body));
        crate::shared_functions::log_taken("schema", &path, taken);
    })
}

impl SharedSchemas {
    /// Takes every schema other nodes pushed, before a push here.
    pub(crate) async fn catch_up(&self) -> Result<(), String> {
        self.map.catch_up().await.map_err(|e| e.to_string())
    }

    /// Stores schema `key`, as this node's registry holds it, in the map. `Ok(false)`: another
    /// node stored other content under the same address first; this node now holds theirs.
    pub(crate) async fn publish(&self, key: &SchemaKey) -> Result<bool, String> {
        let (r, k) = (self.registry.clone(), key.clone());
        let body = tokio::task::spawn_blocking(move || r.get(&k))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} is not stored here", key.uri()))?;
        if self
            .map
            .set(&map_key(key), Some(body.clone().into()))
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(true);
        }
        // Stored by another node too: the same schema is no conflict.
        let (r, k) = (self.registry.clone(), key.clone());
        let now = tokio::task::spawn_blocking(move || r.get(&k))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(now.as_deref() == Some(body.as_str()))
    }
}

/// Catches up with the other nodes' pushes every [`FOLLOW_EVERY`] until `stop`.
pub(crate) async fn follow(
    shared: SharedSchemas,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    loop {
        if let Err(e) = shared.catch_up().await {
            tracing::warn!(error = %e, "cannot catch up with the schemas pushed on other nodes; trying again");
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}
