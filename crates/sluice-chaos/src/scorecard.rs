//! The scorecard: one JSON object per scenario (reliability plan §6), printed on stdout as a
//! `SCORECARD {...}` line and appended to `$SLUICE_CHAOS_SCORECARD` when that is set, so runs
//! can be compared over time.

use std::io::Write;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::checker::SinkReport;

/// One scenario's results.
#[derive(Clone, Debug, Serialize)]
pub struct Scorecard {
    /// Scenario name (the test's).
    pub test: String,
    /// The reliability-plan tests it covers (`T1`, …).
    pub covers: Vec<String>,
    /// `quick` or `full`.
    pub profile: String,
    /// Seed of anything random in it.
    pub seed: u64,
    /// Events the clients sent (distinct ids).
    pub events_sent: usize,
    /// Events acked.
    pub acked: usize,
    /// Events every request for which was refused.
    pub failed: usize,
    /// Events of unknown outcome.
    pub indeterminate: usize,
    /// Faults injected (kills, power cuts, …).
    pub faults: usize,
    /// Per sink: rows, lost, duplicated, phantom.
    pub sinks: Vec<SinkReport>,
    /// Anything else measured (restart times, 5xx counts, …).
    pub extra: Map<String, Value>,
    /// Invariant violations, in words; empty when the scenario passed.
    pub violations: Vec<String>,
}

impl Scorecard {
    /// An empty card for `test`.
    pub fn new(test: &str, covers: &[&str], profile: crate::Profile, seed: u64) -> Self {
        Self {
            test: test.to_string(),
            covers: covers.iter().map(|s| s.to_string()).collect(),
            profile: profile.name().to_string(),
            seed,
            events_sent: 0,
            acked: 0,
            failed: 0,
            indeterminate: 0,
            faults: 0,
            sinks: Vec::new(),
            extra: Map::new(),
            violations: Vec::new(),
        }
    }

    /// Adds a sink's report, and a violation when it broke an invariant.
    pub fn sink(&mut self, r: SinkReport) {
        if r.violated() {
            self.violations.push(format!(
                "{}: lost {}, duplicated {}, phantom {}, refused but present {} (examples {:?})",
                r.sink, r.lost, r.duplicated, r.phantom, r.failed_present, r.examples
            ));
        }
        self.sinks.push(r);
    }

    /// Records a measured figure.
    pub fn note(&mut self, key: &str, value: impl Into<Value>) {
        self.extra.insert(key.to_string(), value.into());
    }

    /// Prints the card and appends it to `$SLUICE_CHAOS_SCORECARD`.
    pub fn emit(&self) {
        let line = serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        eprintln!("SCORECARD {line}");
        if let Ok(path) = std::env::var("SLUICE_CHAOS_SCORECARD")
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Prints the card, then fails when an invariant was broken.
    pub fn finish(self) -> anyhow::Result<()> {
        self.emit();
        anyhow::ensure!(
            self.violations.is_empty(),
            "{}: {}",
            self.test,
            self.violations.join("; ")
        );
        Ok(())
    }
}
