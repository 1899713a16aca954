//! [`ConsumerProgress`]: the one way to watch how far a consumer of a topic has got, and to
//! wait until it has caught up. The lake sinks, the typed tables, the Postgres loader and the
//! hot projection each publish their own status type (with their own counters) through a
//! `watch` channel; [`ConsumerStatus`] is what they share: started, stopped, and per partition
//! the next offset not yet delivered (everything below it is delivered, or never existed).

use tokio::sync::watch;

use crate::{Journal, JournalError};

/// What every consumer's status says about its position.
pub trait ConsumerStatus: Clone + Send + Sync + 'static {
    /// The consumer knows where every partition stands.
    fn started(&self) -> bool;
    /// The consumer's loop has returned.
    fn stopped(&self) -> bool;
    /// Per partition: the next offset not yet delivered.
    fn next_offsets(&self) -> &[u64];

    /// Partition `p`'s next offset not yet delivered (0 before the consumer knows).
    fn next_offset(&self, p: u32) -> u64 {
        self.next_offsets().get(p as usize).copied().unwrap_or(0)
    }

    /// Whether every partition `p` has delivered everything below `targets[p]`.
    fn reached(&self, targets: &[u64]) -> bool {
        self.started()
            && targets
                .iter()
                .enumerate()
                .all(|(p, target)| self.next_offsets().get(p).is_some_and(|n| n >= target))
    }
}

/// Why a wait on a consumer's progress ended without reaching its targets.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// The consumer stopped first.
    #[error("{0} stopped before reaching the awaited positions")]
    Stopped(&'static str),
    /// The journal could not say where the topic ends.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A handle to watch a consumer's progress; cheap to clone, usable after the consumer is moved
/// into its task.
#[derive(Clone, Debug)]
pub struct ConsumerProgress<S> {
    name: &'static str,
    topic: &'static str,
    rx: watch::Receiver<S>,
}

impl<S: ConsumerStatus> ConsumerProgress<S> {
    /// A handle on the status channel of consumer `name` (a table, a store) of `topic`.
    pub fn new(name: &'static str, topic: &'static str, rx: watch::Receiver<S>) -> Self {
        Self { name, topic, rx }
    }

    /// What the consumer delivers into (a table, a store).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current status.
    pub fn status(&self) -> S {
        self.rx.borrow().clone()
    }

    /// Partition `p`'s next offset not yet delivered (0 before the consumer knows).
    pub fn next_offset(&self, p: u32) -> u64 {
        self.rx.borrow().next_offset(p)
    }

    /// Whether everything below the journal's current durable end of every partition is
    /// delivered.
    pub fn is_caught_up(&self, journal: &dyn Journal) -> bool {
        let status = self.rx.borrow();
        status.started()
            && status.next_offsets().iter().enumerate().all(|(p, next)| {
                journal
                    .end(self.topic, p as u32)
                    .is_ok_and(|end| *next >= end)
            })
    }

    /// Waits until every partition `p` has delivered everything below `targets[p]`; fails if
    /// the consumer stops first. Callers add their own deadline.
    pub async fn wait_for_offsets(&self, targets: &[u64]) -> Result<S, ProgressError> {
        let mut rx = self.rx.clone();
        let status = rx
            .wait_for(|s| s.stopped() || s.reached(targets))
            .await
            .map_err(|_| ProgressError::Stopped(self.name))?
            .clone();
        if status.reached(targets) {
            Ok(status)
        } else {
            Err(ProgressError::Stopped(self.name))
        }
    }

    /// Waits until `pred` holds for the status; fails if the consumer stops first. Callers add
    /// their own deadline.
    pub async fn wait_until(&self, mut pred: impl FnMut(&S) -> bool) -> Result<S, ProgressError> {
        let mut rx = self.rx.clone();
        let status = rx
            .wait_for(|s| s.stopped() || pred(s))
            .await
            .map_err(|_| ProgressError::Stopped(self.name))?
            .clone();
        if pred(&status) {
            Ok(status)
        } else {
            Err(ProgressError::Stopped(self.name))
        }
    }

    /// Waits until everything below the journal's durable end *as of this call* is delivered.
    pub async fn wait_caught_up(&self, journal: &dyn Journal) -> Result<S, ProgressError> {
        let partitions = journal.partitions(self.topic)?;
        let targets = (0..partitions)
            .map(|p| journal.end(self.topic, p))
            .collect::<Result<Vec<_>, _>>()?;
        self.wait_for_offsets(&targets).await
    }
}
