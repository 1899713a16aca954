//! [`RetryingStore`]: the projection's reads and writes of its [`HotStore`], each retried with
//! backoff while the error is retryable, and bounded once shutdown began.
//!
//! It is a handle of its own (cheap to clone) so that a batch's write can run as a task of its
//! own while the projection prepares the next batch.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_journal::{Backoff, StageHealth};
use tokio::sync::watch;

use crate::store::{HotStore, Positions, WriteBatch};
use crate::{HotError, metrics};

/// Retries: first wait, cap, and how many attempts during shutdown.
const RETRY_INITIAL: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);
const SHUTDOWN_ATTEMPTS: u32 = 10;

/// See the module docs.
#[derive(Clone)]
pub(crate) struct RetryingStore {
    pub(crate) store: Arc<dyn HotStore>,
    pub(crate) health: StageHealth,
    /// Set while the projection runs: becomes true at shutdown, so a retry loop can stop
    /// waiting.
    pub(crate) stop: Option<watch::Receiver<bool>>,
}

impl RetryingStore {
    pub(crate) fn new(store: Arc<dyn HotStore>) -> Self {
        Self {
            store,
            health: StageHealth::detached(),
            stop: None,
        }
    }

    /// A fresh backoff of the projection's retry policy.
    pub(crate) fn backoff() -> Backoff {
        Backoff::new(RETRY_INITIAL, RETRY_MAX)
    }

    /// Whether shutdown began: retries are then bounded.
    fn stopping(&self, shutting_down: bool) -> bool {
        shutting_down || self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Sleeps `wait`, or less when shutdown begins meanwhile.
    pub(crate) async fn pause(&self, wait: Duration) {
        match self.stop.clone() {
            Some(mut stop) => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }

    /// The stored values of `keys`, retrying store errors (bounded once shutdown began).
    pub(crate) async fn get_many(
        &self,
        keys: &[String],
        shutting_down: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, HotError> {
        self.read_with_retry("values", shutting_down, || self.store.get_many(keys))
            .await
    }

    /// The stored positions, retrying store errors: a store that goes away right after
    /// answering a write (a Redis restart) must not end the projection while it finds out
    /// whether the write landed.
    async fn positions(&self, consumer: &str, shutting_down: bool) -> Result<Positions, HotError> {
        self.read_with_retry("positions", shutting_down, || {
            self.store.positions(consumer)
        })
        .await
    }

    /// Runs `read` until it succeeds, waiting out retryable store errors with backoff (at most
    /// [`SHUTDOWN_ATTEMPTS`] once shutdown began).
    async fn read_with_retry<T, F: Future<Output = Result<T, HotError>>>(
        &self,
        what: &str,
        shutting_down: bool,
        mut read: impl FnMut() -> F,
    ) -> Result<T, HotError> {
        let mut backoff = Self::backoff();
        loop {
            let error = match read().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            self.health.failing(&error);
            metrics::error("store");
            let stopping = self.stopping(shutting_down);
            if !error.kind().is_retryable()
                || (stopping && backoff.attempts() + 1 >= SHUTDOWN_ATTEMPTS)
            {
                return Err(error);
            }
            let wait = backoff.next_delay();
            tracing::warn!(%error, what, retry_in = ?wait, "hot store read failed; retrying");
            self.pause(wait).await;
        }
    }

    /// Writes `batch`, retrying it whole. A conflict on a retry is checked against the stored
    /// positions: equal to the batch's new ones means the earlier attempt landed after all.
    pub(crate) async fn write(
        &self,
        batch: Arc<WriteBatch>,
        shutting_down: bool,
    ) -> Result<(), HotError> {
        let mut backoff = Self::backoff();
        loop {
            let attempts = backoff.attempts() + 1;
            let error = match self.store.write(batch.clone()).await {
                Ok(()) => {
                    self.health.ok();
                    return Ok(());
                }
                Err(e) => e,
            };
            if matches!(error, HotError::Conflict { .. }) && attempts > 1 {
                let stored = self.positions(&batch.consumer, shutting_down).await?;
                if batch
                    .positions
                    .iter()
                    .all(|(p, (_, new))| stored.get(p) == Some(new))
                {
                    self.health.ok();
                    return Ok(());
                }
                return Err(error);
            }
            if !error.kind().is_retryable() || matches!(error, HotError::Conflict { .. }) {
                return Err(error);
            }
            self.health.failing(&error);
            metrics::error("store");
            if self.stopping(shutting_down) && attempts >= SHUTDOWN_ATTEMPTS {
                return Err(error);
            }
            let wait = backoff.next_delay();
            tracing::warn!(%error, retry_in = ?wait, "hot store write failed; retrying the same batch");
            self.pause(wait).await;
        }
    }
}
