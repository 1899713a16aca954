//! [`Health`]: what each stage says about its last attempt, for `/health` and back-pressure.
//!
//! Every stage that does I/O (the collector's appends, the runner, each lake sink, the typed
//! sink, the loader, the hot projection) holds a [`StageHealth`] and calls
//! [`StageHealth::failing`] when an attempt fails (it will retry with [`crate::Backoff`]) and
//! [`StageHealth::ok`] when one succeeds. The first failure is remembered as `since`, the last
//! one as `error`; a success clears both. [`Health::snapshot`] reads every stage at once.
//! `ok` is an atomic load while nothing failed, so stages may call it after every batch. A stage
//! that runs in parts (the runner's partitions) gives each part its own handle
//! ([`StageHealth::part`]): the stage is failing while any part is, and one part's success does
//! not clear another's failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// A failing stage: its last error, when the failures began and how many attempts failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The last attempt's error.
    pub error: String,
    /// When the first failed attempt of this run of failures happened.
    pub since: SystemTime,
    /// Failed attempts since the last success.
    pub attempts: u64,
    /// When the last failed attempt happened.
    pub last: SystemTime,
}

/// One stage's state as of [`Health::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageReport {
    /// The stage's name (`journal`, `runner`, `lake/events`, …).
    pub name: String,
    /// `None` while the last attempt succeeded.
    pub failing: Option<Failure>,
}

#[derive(Debug)]
struct Cell {
    name: String,
    /// Whether any part is failing (the fast path of `ok`).
    failing: AtomicBool,
    /// Part → its failure.
    failures: Mutex<BTreeMap<u32, Failure>>,
}

impl Cell {
    fn failures(&self) -> MutexGuard<'_, BTreeMap<u32, Failure>> {
        // The guarded value is plain data, always consistent: a panic elsewhere cannot tear it.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stage's failure: the latest error, the earliest start, every part's attempts.
    fn failure(&self) -> Option<Failure> {
        let failures = self.failures();
        let latest = failures.values().max_by_key(|f| f.last)?;
        Some(Failure {
            error: latest.error.clone(),
            since: failures.values().map(|f| f.since).min()?,
            attempts: failures.values().map(|f| f.attempts).sum(),
            last: latest.last,
        })
    }
}

/// The registry of every stage's health. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Health {
    cells: Arc<Mutex<Vec<Arc<Cell>>>>,
}

impl Health {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers stage `name` (healthy) and returns its handle. A name registered twice shares
    /// one state.
    pub fn stage(&self, name: &str) -> StageHealth {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let cell = match cells.iter().find(|c| c.name == name) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(Cell {
                    name: name.to_string(),
                    failing: AtomicBool::new(false),
                    failures: Mutex::new(BTreeMap::new()),
                });
                cells.push(c.clone());
                c
            }
        };
        StageHealth { cell, part: 0 }
    }

    /// Every registered stage, in registration order.
    pub fn snapshot(&self) -> Vec<StageReport> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .iter()
            .map(|c| StageReport {
                name: c.name.clone(),
                failing: c.failure(),
            })
            .collect()
    }
}

/// One stage's side of [`Health`]. Cheap to clone. [`StageHealth::detached`] (the default)
/// belongs to no registry, for stages run alone (tests, tools).
#[derive(Clone, Debug)]
pub struct StageHealth {
    cell: Arc<Cell>,
    part: u32,
}

impl Default for StageHealth {
    fn default() -> Self {
        Self::detached()
    }
}

impl StageHealth {
    /// A handle that no registry reads.
    pub fn detached() -> Self {
        Health::new().stage("detached")
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.cell.name
    }

    /// The handle of part `part` of this stage (a partition): it fails and recovers on its own,
    /// and the stage is failing while any part is.
    pub fn part(&self, part: u32) -> StageHealth {
        StageHealth {
            cell: self.cell.clone(),
            part,
        }
    }

    /// The last attempt succeeded: clears this part's failure.
    pub fn ok(&self) {
        if !self.cell.failing.load(Ordering::Acquire) {
            return;
        }
        let mut failures = self.cell.failures();
        if let Some(f) = failures.remove(&self.part) {
            tracing::info!(stage = %self.cell.name, part = self.part, attempts = f.attempts,
                last_error = %f.error, "stage recovered");
        }
        self.cell
            .failing
            .store(!failures.is_empty(), Ordering::Release);
    }

    /// The last attempt failed with `error` (the stage retries).
    pub fn failing(&self, error: &dyn std::fmt::Display) {
        let mut failures = self.cell.failures();
        let now = SystemTime::now();
        let f = failures.entry(self.part).or_insert_with(|| Failure {
            error: String::new(),
            since: now,
            attempts: 0,
            last: now,
        });
        f.error = error.to_string();
        f.attempts += 1;
        f.last = now;
        self.cell.failing.store(true, Ordering::Release);
    }

    /// Whether the stage (any part of it) is failing.
    pub fn is_failing(&self) -> bool {
        self.cell.failing.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_remembered_from_its_start_until_a_success() {
        let health = Health::new();
        let runner = health.stage("runner");
        let lake = health.stage("lake/events");
        runner.ok();
        assert!(health.snapshot().iter().all(|s| s.failing.is_none()));

        lake.failing(&"disk full");
        let first = health.snapshot()[1].failing.clone().expect("failing");
        lake.failing(&"still full");
        let second = health.snapshot()[1].failing.clone().expect("failing");
        assert_eq!(second.error, "still full");
        assert_eq!(second.attempts, 2);
        assert_eq!(second.since, first.since, "since is the first failure");
        assert!(lake.is_failing() && !runner.is_failing());
        assert_eq!(health.snapshot()[0].failing, None);

        lake.ok();
        assert!(!lake.is_failing());
        assert_eq!(health.snapshot()[1].failing, None);
        // One name, one state.
        health.stage("lake/events").failing(&"again");
        assert!(lake.is_failing());
        assert_eq!(health.snapshot().len(), 2);
        // Parts fail and recover on their own; the stage fails while any part does.
        let p0 = runner.part(0);
        let p1 = runner.part(1);
        p0.failing(&"full");
        p1.failing(&"full too");
        p0.ok();
        assert!(runner.is_failing());
        let stage = health.snapshot()[0]
            .failing
            .clone()
            .expect("part 1 still fails");
        assert_eq!((stage.error.as_str(), stage.attempts), ("full too", 1));
        p1.ok();
        assert!(!runner.is_failing());
        assert_eq!(health.snapshot()[0].failing, None);
        // A detached handle works and is read by no one.
        let alone = StageHealth::detached();
        alone.failing(&"x");
        assert!(alone.is_failing());
    }
}
