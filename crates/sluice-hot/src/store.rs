//! [`HotStore`]: the small trait every hot-tier backend implements, and [`WriteBatch`], the one
//! atomic write a projection makes per batch of events.
//!
//! The contract every backend keeps: a [`WriteBatch`] lands entirely or not at all, values and
//! positions together, and only if the consumer's stored positions still equal the ones the
//! batch expects (a compare-and-set, so two writers can never both advance one partition).
//! Positions are *next offsets*: every journal offset below a stored position is reflected in
//! the values.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::HotError;

/// A boxed future, so that the trait stays object safe (`Arc<dyn HotStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Journal partition → next offset not yet reflected in the store.
pub type Positions = BTreeMap<u32, u64>;

/// One atomic write: values (set or removed) and the positions they bring the consumer to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    /// Whose positions these are (`"hot/good"` for the projection of `good`).
    pub consumer: String,
    /// For each partition the batch advances: the stored position it expects to find (`None`:
    /// nothing stored yet) and the new one.
    pub positions: BTreeMap<u32, (Option<u64>, u64)>,
    /// Keys and their new values.
    pub puts: Vec<(String, Vec<u8>)>,
    /// Keys to remove (a profile's recent events that fell out of its last N).
    pub deletes: Vec<String>,
}

/// A hot-tier backend: gets by key, the stored positions, and atomic batches.
pub trait HotStore: Send + Sync + 'static {
    /// `embedded` or `redis`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// The values of `keys`, in order; `None` where a key has no value.
    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, HotError>>;

    /// The positions stored for `consumer`.
    fn positions<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<Positions, HotError>>;

    /// Applies a batch atomically; [`HotError::Conflict`] (and nothing written) when a stored
    /// position differs from the one the batch expects. Shared, so that a retry sends the same
    /// batch again without copying its values.
    fn write(&self, batch: Arc<WriteBatch>) -> BoxFuture<'_, Result<(), HotError>>;

    /// Deletes `keys` (a person's profile and counters, on a deletion request) and, where the
    /// backend can, the old values from its files; how many of them existed.
    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<usize, HotError>>;

    /// Every key that starts with `prefix`. A scan of the whole store where the backend keeps
    /// no order (Redis): for rare requests only (a deletion whose profile does not decode).
    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, HotError>>;

    /// How many [`HotStore::delete`] calls finished through this handle (or its clones) so
    /// far: the projection drops the values it caches when this moves.
    fn deletions(&self) -> u64;
}

/// Checks `batch`'s expectations against `stored` and returns the positions after the batch.
pub(crate) fn check_positions(
    batch: &WriteBatch,
    stored: &Positions,
) -> Result<Positions, HotError> {
    let mut next = stored.clone();
    for (partition, (expected, new)) in &batch.positions {
        let found = stored.get(partition).copied();
        if found != *expected {
            return Err(HotError::Conflict {
                consumer: batch.consumer.clone(),
                detail: format!(
                    "partition {partition}: expected position {expected:?}, found {found:?}"
                ),
            });
        }
        next.insert(*partition, *new);
    }
    Ok(next)
}
