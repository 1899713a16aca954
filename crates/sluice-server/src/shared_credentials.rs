//! Write keys and tokens on a shared journal: a key or token created on any node is accepted by
//! every node, and one revoked on any node is refused by every node, within about two seconds.
//!
//! `sluice keys` and `sluice tokens` edit the data directory's `keys.json` and `tokens.json`,
//! whichever node's it is. Every [`FOLLOW_EVERY`] each node merges those files with the
//! journal's shared map `credentials` (entries `key.<id>` and `token.<id>`, each one entry of a
//! file, hashes only): entries are never removed and their fields never change except
//! `revoked_at`, so the merge is a union by id in which a revocation wins (the earliest time is
//! kept). This node's entries the map lacks, or whose revocation it lacks, are stored there (by
//! compare-and-set, again at the next round when another node got in first); the map's entries
//! this node lacks are written to its files, which the running server reloads as it does after
//! `sluice keys`. The merge holds the data directory's credentials lock, as `sluice keys` and
//! `sluice tokens` do, so neither writes over the other's change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_journal::{JetStreamJournal, OnChange, SharedMap};
use tokio_util::sync::CancellationToken;

use crate::access::TokenFile;
use crate::auth::{KeyFile, Revocable, load_json, lock_credentials, store_private};
use crate::error::ServerError;
use crate::shared_functions::FOLLOW_EVERY;

/// The journal's shared map of key and token entries.
const MAP: &str = "credentials";

/// The map's entries as this node last applied them.
type Mirror = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// The keys and tokens every node honours, as this node shares them.
#[derive(Clone)]
pub(crate) struct SharedCredentials {
    map: SharedMap,
    mirror: Mirror,
    dir: PathBuf,
    keys: PathBuf,
    tokens: PathBuf,
}

/// Opens the shared map of keys and tokens for the data directory `data_dir`.
pub(crate) async fn open(
    journal: &JetStreamJournal,
    data_dir: &Path,
) -> Result<SharedCredentials, ServerError> {
    let mirror: Mirror = Arc::default();
    let m = mirror.clone();
    let on_change: OnChange = Arc::new(move |key, value| {
        let mut mirror = m.lock().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(v) => mirror.insert(key.to_string(), v.to_vec()),
            None => mirror.remove(key),
        };
    });
    let map = journal
        .shared_map(MAP, on_change)
        .await
        .map_err(|e| ServerError::stage("credentials", e))?;
    let shared = SharedCredentials {
        map,
        mirror,
        dir: data_dir.to_path_buf(),
        keys: KeyFile::path(data_dir),
        tokens: TokenFile::path(data_dir),
    };
    if let Err(e) = shared.round().await {
        return Err(ServerError::stage("credentials", e));
    }
    Ok(shared)
}

/// Merges this node's keys and tokens with the other nodes' every [`FOLLOW_EVERY`] until `stop`.
pub(crate) async fn follow(
    shared: SharedCredentials,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        if let Err(e) = shared.round().await {
            tracing::warn!(error = %e, "cannot share keys and tokens with the other nodes now; trying again");
        }
    }
}

impl SharedCredentials {
    /// One merge of both files with the map.
    async fn round(&self) -> Result<(), String> {
        self.map.catch_up().await.map_err(|e| e.to_string())?;
        // File IO under the lock `sluice keys` and `sluice tokens` take: off the workers.
        let this = self.clone();
        let publish = tokio::task::spawn_blocking(move || {
            let _lock = lock_credentials(&this.dir)?;
            let mut publish = this.merge_file::<KeyFile, _>(&this.keys, "key", |f| &mut f.keys)?;
            let tokens = this.merge_file::<TokenFile, _>(&this.tokens, "token", |f| &mut f.tokens);
            publish.extend(tokens?);
            Ok::<_, String>(publish)
        })
        .await
        .map_err(|e| e.to_string())??;
        for (key, value) in publish {
            // Refused when another node got in first: merged again at the next round.
            self.map
                .set(&key, Some(value.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Writes the map's entries this file lacks into it (unless it changed meanwhile); the
    /// entries of this file the map lacks, as (map key, value), to store there.
    fn merge_file<F, E>(
        &self,
        path: &Path,
        kind: &str,
        entries: impl Fn(&mut F) -> &mut Vec<E>,
    ) -> Result<Vec<(String, Vec<u8>)>, String>
    where
        F: Default + Serialize + DeserializeOwned,
        E: Revocable + Serialize + DeserializeOwned,
    {
        let seen = modified(path);
        let mut file: F = load_json(path)?;
        let prefix = format!("{kind}.");
        let shared: Vec<E> = {
            let mirror = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
            mirror
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                .collect()
        };
        let local = entries(&mut file);
        let changed = merge_into(local, shared.clone());
        let mut publish = Vec::new();
        for e in local.iter() {
            let value = serde_json::to_vec(e).map_err(|e| e.to_string())?;
            let there = shared.iter().find(|s| s.id() == e.id());
            let same = there
                .map(|s| serde_json::to_vec(s).map_err(|e| e.to_string()))
                .transpose()?
                .is_some_and(|s| s == value);
            if !same {
                publish.push((format!("{prefix}{}", e.id()), value));
            }
        }
        if changed && modified(path) == seen {
            store_private(path, &file)?;
            tracing::info!(path = %path.display(), "keys or tokens taken from another node");
        }
        Ok(publish)
    }
}

/// Merges `shared` into `local`: entries `local` lacks are added, and a revocation either side
/// has is kept (the earliest). Whether `local` changed.
fn merge_into<E: Revocable>(local: &mut Vec<E>, shared: Vec<E>) -> bool {
    let mut changed = false;
    for mut s in shared {
        match local.iter_mut().find(|l| l.id() == s.id()) {
            None => {
                local.push(s);
                changed = true;
            }
            Some(l) => {
                let theirs = s.revoked_at().clone();
                let earliest = match (l.revoked_at().clone(), theirs) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if *l.revoked_at() != earliest {
                    *l.revoked_at() = earliest;
                    changed = true;
                }
            }
        }
    }
    changed
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyEntry;

    fn key(id: &str, revoked: Option<&str>) -> KeyEntry {
        KeyEntry {
            id: id.into(),
            source: "web".into(),
            sha256: format!("{id}-hash"),
            created_at: "2026-12-06T00:00:00Z".into(),
            revoked_at: revoked.map(str::to_string),
        }
    }

    #[test]
    fn a_merge_is_a_union_by_id_in_which_the_earliest_revocation_wins() {
        let mut local = vec![key("a", None), key("b", Some("2026-12-06T02:00:00Z"))];
        let shared = vec![
            key("a", Some("2026-12-06T03:00:00Z")),
            key("b", Some("2026-12-06T01:00:00Z")),
            key("c", None),
        ];
        assert!(merge_into(&mut local, shared.clone()));
        let got: Vec<_> = local
            .iter()
            .map(|k| (k.id.as_str(), k.revoked_at.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", Some("2026-12-06T03:00:00Z")),
                ("b", Some("2026-12-06T01:00:00Z")),
                ("c", None)
            ]
        );
        assert!(
            !merge_into(&mut local, shared),
            "merging again changes nothing"
        );
    }

    #[test]
    fn the_credentials_lock_is_held_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_credentials(dir.path()).unwrap().expect("a lock");
        let other = std::fs::File::open(dir.path().join("credentials.lock")).unwrap();
        assert!(other.try_lock().is_err(), "a second holder waits");
        drop(held);
        assert!(other.try_lock().is_ok());
        let missing = dir.path().join("not-yet");
        assert!(lock_credentials(&missing).unwrap().is_none());
    }
}
