//! [`Meter`]: pay-per-use metering of one function version — invocations, errors, a duration
//! histogram, GB-seconds — and what the same work would have cost on AWS Lambda.
//!
//! Billing follows Lambda's rules: each invocation's duration is rounded up to the millisecond,
//! and GB-seconds are `memory / 1024 × billed seconds` at the configured memory. The price is
//! Lambda's public on-demand price for x86 in us-east-1: $0.20 per million requests and
//! $0.0000166667 per GB-second (free tier not deducted).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// USD per request.
pub const LAMBDA_USD_PER_REQUEST: f64 = 0.20 / 1_000_000.0;
/// USD per GB-second.
pub const LAMBDA_USD_PER_GB_SECOND: f64 = 0.000_016_666_7;

/// Upper bounds of the duration histogram buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Error kinds counted separately.
const ERROR_KINDS: [&str; 7] = [
    "exception",
    "timeout",
    "out_of_memory",
    "bad_result",
    "init",
    "partial",
    "invalid_event",
];

/// Counters of one function version. All atomics: invocations update them from many tasks.
#[derive(Debug)]
pub struct Meter {
    name: String,
    version: u32,
    memory_mb: u32,
    invocations: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    events_in: AtomicU64,
    events_out: AtomicU64,
    events_failed: AtomicU64,
    events_expired: AtomicU64,
    retries: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    duration_nanos: AtomicU64,
    billed_ms: AtomicU64,
    max_memory: AtomicU64,
}

/// A [`Meter`] read at one moment, as `sluice functions stats` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MeterSnapshot {
    /// Function name.
    pub function: String,
    /// Version.
    pub version: u32,
    /// Memory setting, MiB.
    pub memory_mb: u32,
    /// Invocations (retries included).
    pub invocations: u64,
    /// Failed invocations, by kind.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Events passed in (retried events count again).
    pub events_in: u64,
    /// Events returned.
    pub events_out: u64,
    /// Events sent to `bad` after their retries.
    pub events_failed: u64,
    /// Events sent to `bad` for being older than the maximum record age.
    pub events_expired: u64,
    /// Retries of a batch or of its failed events.
    pub retries: u64,
    /// Total time in the code, seconds.
    pub duration_seconds: f64,
    /// Estimated duration percentiles from the histogram, milliseconds.
    pub duration_p50_ms: f64,
    /// See `duration_p50_ms`.
    pub duration_p99_ms: f64,
    /// Billed duration (rounded up per invocation), seconds.
    pub billed_seconds: f64,
    /// Memory × billed duration.
    pub gb_seconds: f64,
    /// What Lambda would have charged, USD.
    pub lambda_cost_usd: f64,
    /// Most memory a runtime held after an invocation (sampled), bytes — what Lambda reports as
    /// "Max Memory Used".
    pub max_memory_bytes: u64,
}

impl Meter {
    /// A zeroed meter.
    pub fn new(name: &str, version: u32, memory_mb: u32) -> Self {
        Self {
            name: name.to_string(),
            version,
            memory_mb,
            invocations: AtomicU64::new(0),
            errors: Default::default(),
            events_in: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            events_failed: AtomicU64::new(0),
            events_expired: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            buckets: Default::default(),
            duration_nanos: AtomicU64::new(0),
            billed_ms: AtomicU64::new(0),
            max_memory: AtomicU64::new(0),
        }
    }

    /// One invocation of `events` events that ran for `took`.
    pub fn invocation(&self, events: usize, took: Duration, memory_used: u64) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.events_in.fetch_add(events as u64, Ordering::Relaxed);
        self.duration_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        let billed = took.as_nanos().div_ceil(1_000_000).max(1) as u64;
        self.billed_ms.fetch_add(billed, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.max_memory.fetch_max(memory_used, Ordering::Relaxed);
    }

    /// A failed invocation (or a partly failed one: `partial`).
    pub fn error(&self, kind: &str) {
        let i = ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(ERROR_KINDS.len() - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Events the function returned.
    pub fn returned(&self, n: usize) {
        self.events_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Events given up on (sent to `bad`).
    pub fn failed(&self, n: usize) {
        self.events_failed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Events past the maximum record age.
    pub fn expired(&self, n: usize) {
        self.events_expired.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A retry.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MeterSnapshot {
        let invocations = self.invocations.load(Ordering::Relaxed);
        let billed_ms = self.billed_ms.load(Ordering::Relaxed);
        let billed_seconds = billed_ms as f64 / 1000.0;
        let gb_seconds = self.memory_mb as f64 / 1024.0 * billed_seconds;
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let quantile = |q: f64| -> f64 {
            let total: u64 = counts.iter().sum();
            if total == 0 {
                return 0.0;
            }
            let want = (q * total as f64).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return BUCKETS[i] * 1000.0;
                }
            }
            BUCKETS[BUCKETS.len() - 1] * 1000.0
        };
        MeterSnapshot {
            function: self.name.clone(),
            version: self.version,
            memory_mb: self.memory_mb,
            invocations,
            errors: ERROR_KINDS
                .iter()
                .zip(&self.errors)
                .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
                .filter(|(_, v)| *v > 0)
                .collect(),
            events_in: self.events_in.load(Ordering::Relaxed),
            events_out: self.events_out.load(Ordering::Relaxed),
            events_failed: self.events_failed.load(Ordering::Relaxed),
            events_expired: self.events_expired.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            duration_seconds: self.duration_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            duration_p50_ms: quantile(0.5),
            duration_p99_ms: quantile(0.99),
            billed_seconds,
            gb_seconds,
            lambda_cost_usd: invocations as f64 * LAMBDA_USD_PER_REQUEST
                + gb_seconds * LAMBDA_USD_PER_GB_SECOND,
            max_memory_bytes: self.max_memory.load(Ordering::Relaxed),
        }
    }

    /// Appends this meter's samples in the Prometheus text format (no `# TYPE` lines; see
    /// [`render_prometheus`]).
    fn render(&self, out: &mut Families) {
        let s = self.snapshot();
        let l = format!("function=\"{}\",version=\"{}\"", s.function, s.version);
        let _ = writeln!(
            out.invocations,
            "sluice_function_invocations_total{{{l}}} {}",
            s.invocations
        );
        for (kind, v) in &s.errors {
            let _ = writeln!(
                out.errors,
                "sluice_function_errors_total{{{l},kind=\"{kind}\"}} {v}"
            );
        }
        for (outcome, v) in [
            ("in", s.events_in),
            ("out", s.events_out),
            ("failed", s.events_failed),
            ("expired", s.events_expired),
        ] {
            let _ = writeln!(
                out.events,
                "sluice_function_events_total{{{l},outcome=\"{outcome}\"}} {v}"
            );
        }
        let _ = writeln!(
            out.retries,
            "sluice_function_retries_total{{{l}}} {}",
            s.retries
        );
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out.duration,
                "sluice_function_duration_seconds_bucket{{{l},le=\"{b}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out.duration,
            "sluice_function_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            s.invocations
        );
        let _ = writeln!(
            out.duration,
            "sluice_function_duration_seconds_sum{{{l}}} {}",
            s.duration_seconds
        );
        let _ = writeln!(
            out.duration,
            "sluice_function_duration_seconds_count{{{l}}} {}",
            s.invocations
        );
        let _ = writeln!(
            out.gb_seconds,
            "sluice_function_gb_seconds_total{{{l}}} {}",
            s.gb_seconds
        );
        let _ = writeln!(
            out.cost,
            "sluice_function_lambda_cost_usd_total{{{l}}} {}",
            s.lambda_cost_usd
        );
    }
}

#[derive(Default)]
struct Families {
    invocations: String,
    errors: String,
    events: String,
    retries: String,
    duration: String,
    gb_seconds: String,
    cost: String,
}

/// The Prometheus text of every meter.
pub fn render_prometheus<'a>(meters: impl Iterator<Item = &'a Meter>) -> String {
    let mut f = Families::default();
    for m in meters {
        m.render(&mut f);
    }
    let mut out = String::new();
    for (name, kind, help, body) in [
        (
            "sluice_function_invocations_total",
            "counter",
            "Invocations of a user function (retries included).",
            &f.invocations,
        ),
        (
            "sluice_function_errors_total",
            "counter",
            "Failed invocations by kind.",
            &f.errors,
        ),
        (
            "sluice_function_events_total",
            "counter",
            "Events into and out of a user function, and those given up on.",
            &f.events,
        ),
        (
            "sluice_function_retries_total",
            "counter",
            "Retried batches or events.",
            &f.retries,
        ),
        (
            "sluice_function_duration_seconds",
            "histogram",
            "Time in the function per invocation.",
            &f.duration,
        ),
        (
            "sluice_function_gb_seconds_total",
            "counter",
            "Memory setting times billed duration, as Lambda bills it.",
            &f.gb_seconds,
        ),
        (
            "sluice_function_lambda_cost_usd_total",
            "counter",
            "What the same invocations would cost on AWS Lambda (x86, us-east-1 on-demand price).",
            &f.cost,
        ),
    ] {
        if body.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        out.push_str(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bills_like_lambda() {
        let m = Meter::new("f", 2, 128);
        // 1000 invocations of 10.2 ms each: billed 11 ms each.
        for _ in 0..1000 {
            m.invocation(10, Duration::from_micros(10_200), 1 << 20);
        }
        m.error("timeout");
        let s = m.snapshot();
        assert_eq!(s.invocations, 1000);
        assert!((s.billed_seconds - 11.0).abs() < 1e-9);
        assert!((s.gb_seconds - 11.0 / 8.0).abs() < 1e-9);
        let cost = 1000.0 * 0.2 / 1e6 + 11.0 / 8.0 * 0.000_016_666_7;
        assert!((s.lambda_cost_usd - cost).abs() < 1e-12);
        assert_eq!(s.errors["timeout"], 1);
        assert_eq!(s.duration_p50_ms, 25.0);
        let text = render_prometheus([&m].into_iter());
        assert!(text.contains("# TYPE sluice_function_duration_seconds histogram"));
        assert!(text.contains(
            "sluice_function_duration_seconds_bucket{function=\"f\",version=\"2\",le=\"0.025\"} 1000"
        ));
        assert!(
            text.contains("sluice_function_invocations_total{function=\"f\",version=\"2\"} 1000")
        );
        assert!(text.contains(
            "sluice_function_errors_total{function=\"f\",version=\"2\",kind=\"timeout\"} 1"
        ));
    }
}
