//! [`Stages`]: every stage this node runs, with its health and its lag. `/health` reports it;
//! the collector's gate asks it whether a consumer of `good`/`bad` is further behind than
//! `collector.max_backlog_events`, so that a stalled sink slows intake instead of growing the
//! journal without bound (the runner's backlog of `raw` is the collector's own check).
//!
//! A stage is *failing* while its last attempt failed (it retries; [`StageHealth`]), *lagging*
//! while the events it has not delivered exceed the bound, else *ok*.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use sluice_event::topic;
use sluice_journal::{Health, Journal, StageHealth};

use crate::warnings::Warnings;

/// Per partition, the next offset a consumer has not delivered; `None` until it knows.
type NextOffsets = Box<dyn Fn() -> Option<Vec<u64>> + Send + Sync>;

struct Consumer {
    name: &'static str,
    topic: &'static str,
    next: NextOffsets,
}

struct Inner {
    journal: Arc<dyn Journal>,
    health: Health,
    warnings: Warnings,
    consumers: Mutex<Vec<Consumer>>,
    max_lag: u64,
}

/// The stages of this node. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Stages {
    inner: Arc<Inner>,
}

/// One stage in the `/health` answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct StageState {
    /// `ok`, `failing` or `lagging`.
    pub(crate) state: &'static str,
    /// Events not yet delivered, for a consumer of a topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lag: Option<u64>,
    /// The last attempt's error, while failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// When the failures began (RFC 3339), while failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<String>,
    /// Seconds since then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failing_for_s: Option<f64>,
    /// Failed attempts since the last success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<u64>,
}

impl Stages {
    /// No stage yet; a consumer is lagging beyond `max_lag` undelivered events.
    pub(crate) fn new(journal: Arc<dyn Journal>, max_lag: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                journal,
                health: Health::new(),
                warnings: Warnings::default(),
                consumers: Mutex::new(Vec::new()),
                max_lag,
            }),
        }
    }

    /// What `/health` reports beside the stages (held retention, recovery losses).
    pub(crate) fn warnings(&self) -> &Warnings {
        &self.inner.warnings
    }

    /// Registers stage `name` and returns the handle it reports its attempts through.
    pub(crate) fn stage(&self, name: &'static str) -> StageHealth {
        self.inner.health.stage(name)
    }

    /// Registers stage `name` as a consumer of `topic` whose position `next` reads.
    pub(crate) fn consumer(
        &self,
        name: &'static str,
        topic: &'static str,
        next: impl Fn() -> Option<Vec<u64>> + Send + Sync + 'static,
    ) -> StageHealth {
        self.consumers().push(Consumer {
            name,
            topic,
            next: Box::new(next),
        });
        self.stage(name)
    }

    fn consumers(&self) -> std::sync::MutexGuard<'_, Vec<Consumer>> {
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Undelivered events of a consumer: the sum over partitions of end − next.
    fn lag(&self, c: &Consumer) -> Option<u64> {
        let next = (c.next)()?;
        let mut lag = 0u64;
        for (p, next) in next.iter().enumerate() {
            // A partition whose end cannot be read (quarantined) has no lag to speak of.
            if let Ok(end) = self.inner.journal.end(c.topic, p as u32) {
                lag = lag.saturating_add(end.saturating_sub(*next));
            }
        }
        Some(lag)
    }

    /// The first consumer of `topic` that has not delivered everything below `ends` (per
    /// partition), or has not started; `None` when all have.
    pub(crate) fn behind(&self, topic: &str, ends: &[u64]) -> Option<String> {
        self.consumers()
            .iter()
            .filter(|c| c.topic == topic)
            .find_map(|c| {
                let caught_up = (c.next)().is_some_and(|next| {
                    ends.iter()
                        .enumerate()
                        .all(|(p, end)| next.get(p).is_some_and(|n| n >= end))
                });
                (!caught_up).then(|| format!("{} ({topic})", c.name))
            })
    }

    /// The reason intake should wait: the first consumer of `good`/`bad` beyond the bound.
    pub(crate) fn pressure(&self) -> Option<String> {
        let max = self.inner.max_lag;
        self.consumers()
            .iter()
            .filter(|c| c.topic != topic::RAW)
            .find_map(|c| {
                let lag = self.lag(c).filter(|lag| *lag > max)?;
                Some(format!(
                    "{} is {lag} events behind {} (limit {max}); retry later",
                    c.name, c.topic
                ))
            })
    }

    /// Every stage's state, in registration order, and whether any is failing.
    pub(crate) fn report(&self) -> (Vec<(String, StageState)>, bool) {
        let lags: Vec<(&'static str, Option<u64>)> = self
            .consumers()
            .iter()
            .map(|c| (c.name, self.lag(c)))
            .collect();
        let now = SystemTime::now();
        let mut failing = false;
        let stages = self
            .inner
            .health
            .snapshot()
            .into_iter()
            .map(|s| {
                let lag = lags
                    .iter()
                    .find(|(name, _)| *name == s.name)
                    .and_then(|(_, lag)| *lag);
                let state = match (&s.failing, lag) {
                    (Some(_), _) => "failing",
                    (None, Some(lag)) if lag > self.inner.max_lag => "lagging",
                    _ => "ok",
                };
                failing |= s.failing.is_some();
                let f = s.failing.as_ref();
                let since_micros = |t: SystemTime| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
                };
                let stage = StageState {
                    state,
                    lag,
                    error: f.map(|f| f.error.clone()),
                    since: f.map(|f| sluice_event::format_micros(since_micros(f.since))),
                    failing_for_s: f.map(|f| {
                        now.duration_since(f.since)
                            .map_or(0.0, |d| (d.as_secs_f64() * 10.0).round() / 10.0)
                    }),
                    attempts: f.map(|f| f.attempts),
                };
                (s.name, stage)
            })
            .collect();
        (stages, failing)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use sluice_testkit::mem_journal::MemJournal;

    use super::*;

    #[tokio::test]
    async fn a_consumer_past_the_bound_presses_and_a_failing_stage_is_reported() {
        let journal = MemJournal::with_topics(&[(topic::GOOD, 1), (topic::RAW, 1)]);
        for _ in 0..5 {
            journal
                .append_now(topic::GOOD, 0, vec![Bytes::from_static(b"{}")])
                .unwrap();
            journal
                .append_now(topic::RAW, 0, vec![Bytes::from_static(b"{}")])
                .unwrap();
        }
        let stages = Stages::new(journal, 3);
        let journal_health = stages.stage("journal");
        let runner_next = Arc::new(AtomicU64::new(0));
        let r = runner_next.clone();
        stages.consumer("runner", topic::RAW, move || {
            Some(vec![r.load(Ordering::SeqCst)])
        });
        let lake_next = Arc::new(AtomicU64::new(0));
        let l = lake_next.clone();
        let lake = stages.consumer("lake/events", topic::GOOD, move || {
            Some(vec![l.load(Ordering::SeqCst)])
        });
        stages.consumer("hot", topic::GOOD, || None);

        // The lake is 5 behind a bound of 3: intake waits, and says why.
        let reason = stages.pressure().expect("pressure");
        assert!(
            reason.contains("lake/events is 5 events behind good (limit 3)"),
            "{reason}"
        );
        let (report, failing) = stages.report();
        assert!(!failing);
        let state = |name: &str| report.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(state("lake/events").state, "lagging");
        assert_eq!(state("lake/events").lag, Some(5));
        // The runner's raw backlog is the collector's own check, not the gate's.
        assert_eq!(state("runner").state, "lagging");
        assert_eq!(state("hot").lag, None, "not started: no lag");
        assert_eq!(state("journal").state, "ok");

        lake_next.store(4, Ordering::SeqCst);
        assert_eq!(stages.pressure(), None);
        lake.failing(&"disk full");
        journal_health.failing(&"disk full: no space left on device");
        let (report, failing) = stages.report();
        assert!(failing);
        let journal_state = &report.iter().find(|(n, _)| n == "journal").unwrap().1;
        assert_eq!(journal_state.state, "failing");
        assert_eq!(
            journal_state.error.as_deref(),
            Some("disk full: no space left on device")
        );
        assert!(journal_state.since.is_some() && journal_state.attempts == Some(1));
        journal_health.ok();
        lake.ok();
        runner_next.store(5, Ordering::SeqCst);
        let (report, failing) = stages.report();
        assert!(!failing);
        assert!(report.iter().all(|(_, s)| s.state == "ok"), "{report:?}");
    }
}
