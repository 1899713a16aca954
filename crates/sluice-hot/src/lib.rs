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
//! Store keys: `p:<profile id>` for profiles, `c:<counter>:<key>` for counter states, both JSON;
//! positions per consumer as documented by each backend.

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
mod store;

use std::sync::Arc;

pub use config::{Backend, CounterConfig, HotConfig, HotSettings};
pub use counter::{
    Aggregate, CounterReading, CounterSpec, CounterState, FieldPath, Increment, TopValue,
    WindowKind,
};
pub use embedded::EmbeddedStore;
pub use error::HotError;
pub use profile::{EventView, Prediction, Profile, RecentEvent, Session};
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
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, fsync))
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
