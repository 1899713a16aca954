//! The hot tier: per-user profiles and windowed counters projected from `good`, exactly once,
//! for reads while the user is still on the page.
//!
//! - [`HotStore`]: the small backend trait (gets, stored positions, atomic batches), with
//!   [`EmbeddedStore`] (fjall, in the process) and `RedisStore` (feature `redis`).
//! - [`Projector`]: the delivery loop `good` → store; positions are written in the same atomic
//!   batch as the values (see `projector.rs` for the argument).
//! - [`Profile`] and [`CounterSpec`]: what an event does to the state.
//! - [`HotReader`]: what the HTTP API reads.
//! - [`EventHook`]: how the online models ride along the projection.
//!
//! Store keys: `p:<profile id>` for profiles (with the states of the counters keyed by `user`),
//! `e:<profile id>:<n>` for their recent events, `c:<counter>:<key>` for the states of the other
//! counters; positions per consumer as documented by each backend. Profiles and counter states
//! are stored in a compact binary form (`codec.rs`; JSON stored before still reads), recent
//! events as JSON.

mod cache;
mod codec;
mod config;
mod counter;
mod embedded;
mod error;
pub mod metrics;
mod profile;
mod projector;
mod reader;
#[cfg(feature = "redis")]
mod redis_store;
mod retrying;
mod store;

use std::sync::Arc;

pub use codec::{BINARY_V1, CodecError, decode_counter, decode_profile, encode_counter};
pub use config::{Backend, CounterConfig, HotConfig, HotSettings};
pub use counter::{
    Aggregate, CounterReading, CounterSpec, CounterState, FieldPath, Increment, KeptState,
    TopValue, WindowKind,
};
pub use embedded::EmbeddedStore;
pub use error::HotError;
pub use profile::{EventView, Prediction, Profile, RawJson, RecentEvent, RecentRange, Session};
pub use projector::{CONSUMER, EventHook, ProjectionProgress, ProjectionStatus, Projector};
pub use reader::{CounterAnswer, HotReader};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
pub use store::{BoxFuture, HotStore, Positions, WriteBatch};

/// Longest profile id or counter key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Opens the store `settings` names.
pub async fn open_store(settings: &HotSettings) -> Result<Arc<dyn HotStore>, HotError> {
    match settings.backend {
        Backend::Embedded => {
            let (dir, fsync) = (settings.dir.clone(), settings.fsync);
            let store = tokio::task::spawn_blocking(move || open_or_set_aside(&dir, fsync))
                .await
                .map_err(|e| HotError::Embedded(e.to_string()))??;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "redis")]
        Backend::Redis => Ok(Arc::new(
            RedisStore::connect(&settings.redis_url, &settings.redis_prefix).await?,
        )),
        #[cfg(not(feature = "redis"))]
        Backend::Redis => Err(HotError::Config(
            "this build has no redis backend (feature `redis`)".into(),
        )),
    }
}

/// Opens the embedded store in `dir`; if it cannot be opened (damaged files), moves the directory
/// aside to `<dir>.damaged-<ms since the epoch>` (kept for an operator), reports it (error log,
/// `sluice_hot_store_set_aside_total`) and starts an empty store. The hot tier is a projection of
/// `good`: with no stored positions the projection reads `good` again from the start the
/// journal still holds, so the state comes back up to what retention deleted before.
fn open_or_set_aside(dir: &std::path::Path, fsync: bool) -> Result<EmbeddedStore, HotError> {
    let error = match EmbeddedStore::open(dir, fsync) {
        Ok(store) => return Ok(store),
        Err(e) if !dir.exists() => return Err(e),
        Err(e) => e,
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".damaged-{stamp}"));
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(dir, &aside).map_err(|e| {
        HotError::Embedded(format!(
            "cannot open the hot store ({error}) nor move {} aside: {e}",
            dir.display()
        ))
    })?;
    tracing::error!(
        error = %error,
        dir = %dir.display(),
        moved_to = %aside.display(),
        "the hot store is damaged: moved it aside and started an empty one; the projection \
         rebuilds it from good"
    );
    metrics::store_set_aside();
    EmbeddedStore::open(dir, fsync)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overwrite_every_file(dir: &std::path::Path) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                overwrite_every_file(&path);
            } else {
                std::fs::write(&path, b"not what fjall wrote").unwrap();
            }
        }
    }

    #[test]
    fn a_damaged_embedded_store_is_moved_aside_and_an_empty_one_opens() {
        let dir = tempfile::tempdir().unwrap();
        let hot = dir.path().join("hot");
        drop(EmbeddedStore::open(&hot, false).unwrap());
        overwrite_every_file(&hot);
        let damaged = EmbeddedStore::open(&hot, false).err();
        assert!(
            matches!(damaged, Some(HotError::Embedded(_))),
            "damage detected: {damaged:?}"
        );
        drop(open_or_set_aside(&hot, false).unwrap());
        // The new store is a working one.
        drop(EmbeddedStore::open(&hot, false).unwrap());
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("hot.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }
}
