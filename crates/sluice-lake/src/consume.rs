//! [`run_batches`]: the run loop of a sink that delivers micro-batches of a journal topic to a
//! destination keeping its own exactly-once record of what landed (the typed tables' Delta
//! txns, the Postgres loader's positions table). A [`Destination`] says only how to open itself
//! — reading back how far it got — and how to deliver one batch. The loop opens with retries,
//! reads batches through a [`Batcher`], retries a failed batch after reopening (so the
//! destination's own record decides what is delivered again, and nothing lands twice), gives
//! up after `shutdown_attempts` once shutdown has begun, and publishes progress.

use std::future::Future;
use std::sync::Arc;

use sluice_journal::{Backoff, Journal, JournalError, Record, StageHealth};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DeliveryStatus;
use crate::batcher::{BatchLimits, Batcher};

/// A destination of micro-batches, with exactly-once bookkeeping of its own.
pub trait Destination: Send + Sync {
    /// What an open destination holds (connections, open tables, what it knows has landed).
    type Session: Send;
    /// Why opening or delivering failed.
    type Error: std::fmt::Display + From<JournalError> + Send;

    /// For logs: `typed tables`, `postgres loader`.
    const NAME: &'static str;

    /// Opens the destination; per partition, the first offset it does not hold yet.
    fn open(
        &self,
        partitions: u32,
    ) -> impl Future<Output = Result<(Self::Session, Vec<u64>), Self::Error>> + Send;

    /// Delivers `batch` (records with their partition, in offset order per partition), leaving
    /// out what the session knows has landed, together with the new positions.
    fn deliver(
        &self,
        session: &mut Self::Session,
        batch: &[(u32, Record)],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether a failure to open at start is worth waiting out (a schema mismatch is not).
    fn open_is_retryable(&self, _error: &Self::Error) -> bool {
        true
    }

    /// Whether a failure ends the run at once (the test hooks' injected crashes).
    fn is_fatal(&self, _error: &Self::Error) -> bool {
        false
    }

    /// The error the run ends with when shutdown's attempts ran out.
    fn gave_up(&self, attempts: u32, last: &Self::Error) -> Self::Error;
}

/// How [`run_batches`] reads and retries.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// Batch sizes and the flush interval.
    pub limits: BatchLimits,
    /// The retry policy of one open or one batch (cloned fresh for each).
    pub backoff: Backoff,
    /// Attempts per batch once shutdown has begun.
    pub shutdown_attempts: u32,
    /// Where each attempt's outcome is reported (`/health`).
    pub health: StageHealth,
}

/// Delivers `topic` of `journal` to `destination` until `shutdown`, then everything durable at
/// that moment. Publishes in `status` that it started, how far each partition is delivered,
/// and the batches and rows delivered.
pub async fn run_batches<D: Destination>(
    destination: &D,
    journal: &Arc<dyn Journal>,
    topic: &'static str,
    settings: &LoopSettings,
    status: &watch::Sender<DeliveryStatus>,
    shutdown: &CancellationToken,
) -> Result<(), D::Error> {
    let partitions = journal.partitions(topic)?;
    let (mut session, next) = open_at_start(destination, partitions, settings, shutdown).await?;
    status.send_modify(|s| {
        s.started = true;
        s.next_offsets = next.clone();
    });
    tracing::info!(resume_at = ?next, "{} delivery started", D::NAME);
    let mut batcher = Batcher::new(
        journal.clone(),
        topic,
        next,
        settings.limits,
        status.clone(),
    );
    while let Some(batch) = batcher.next_batch(shutdown).await {
        deliver_with_retries(
            destination,
            &mut session,
            &batch,
            partitions,
            settings,
            shutdown,
        )
        .await?;
        // The batcher publishes how far each partition is delivered.
        let rows = batch.len() as u64;
        status.send_modify(|s| {
            s.commits += 1;
            s.rows += rows;
        });
    }
    Ok(())
}

/// After a failed attempt: `Err(attempts)` when shutdown has begun and `limit` attempts (at
/// least one) were made, the caller then gives up (its stage could not drain); else `log`s the
/// attempts and the wait, and waits the backoff's next delay (cut short when shutdown begins:
/// its attempts then follow at the backoff's pace).
pub(crate) async fn pause_before_retry(
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    limit: u32,
    log: impl FnOnce(u32, std::time::Duration),
) -> Result<(), u32> {
    let attempts = backoff.attempts() + 1;
    let bounded = shutdown.is_cancelled();
    if bounded && attempts >= limit.max(1) {
        return Err(attempts);
    }
    let wait = backoff.next_delay();
    log(attempts, wait);
    tokio::select! {
        _ = shutdown.cancelled(), if !bounded => {}
        _ = tokio::time::sleep(wait) => {}
    }
    Ok(())
}

/// Opens `destination`, waiting out retryable failures; once shutdown has begun,
/// `shutdown_attempts` in all, then the destination's give-up error (the stage could not drain).
async fn open_at_start<D: Destination>(
    destination: &D,
    partitions: u32,
    settings: &LoopSettings,
    shutdown: &CancellationToken,
) -> Result<(D::Session, Vec<u64>), D::Error> {
    let mut backoff = settings.backoff.clone();
    loop {
        match destination.open(partitions).await {
            Ok(opened) => {
                settings.health.ok();
                debug_assert_eq!(opened.1.len(), partitions as usize);
                return Ok(opened);
            }
            Err(e) if destination.open_is_retryable(&e) => {
                settings.health.failing(&e);
                let log = |_, wait| {
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot open the {} yet", D::NAME);
                };
                pause_before_retry(&mut backoff, shutdown, settings.shutdown_attempts, log)
                    .await
                    .map_err(|attempts| destination.gave_up(attempts, &e))?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Delivers one batch, reopening the destination after each failure so that its own record
/// decides what is left to deliver. Once shutdown has begun, a batch gets `shutdown_attempts`.
async fn deliver_with_retries<D: Destination>(
    destination: &D,
    session: &mut D::Session,
    batch: &[(u32, Record)],
    partitions: u32,
    settings: &LoopSettings,
    shutdown: &CancellationToken,
) -> Result<(), D::Error> {
    let mut backoff = settings.backoff.clone();
    loop {
        let e = match destination.deliver(session, batch).await {
            Ok(()) => {
                settings.health.ok();
                return Ok(());
            }
            Err(e) if destination.is_fatal(&e) => return Err(e),
            Err(e) => e,
        };
        settings.health.failing(&e);
        let log = |attempts, wait| {
            tracing::warn!(attempt = attempts, error = %e, retry_in = ?wait, "{} delivery failed; will reopen and retry", D::NAME);
        };
        pause_before_retry(&mut backoff, shutdown, settings.shutdown_attempts, log)
            .await
            .map_err(|attempts| destination.gave_up(attempts, &e))?;
        match destination.open(partitions).await {
            Ok((reopened, _)) => *session = reopened,
            Err(e) => tracing::warn!(error = %e, "reopening the {} failed", D::NAME),
        }
    }
}
