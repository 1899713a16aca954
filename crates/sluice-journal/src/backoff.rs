//! [`Backoff`]: the one retry delay every stage uses — capped exponential with jitter.
//!
//! Each wait is the current base delay with "equal jitter" (uniform in `[base/2, base]`), after
//! which the base doubles up to the cap. The jitter keeps sinks that failed together (a store
//! that went away for all of them) from retrying in lockstep. It needs no random-number crate:
//! the standard library's per-instance hash keys are random enough to spread retries.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Capped exponential backoff with jitter. See the module docs.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// A backoff whose first wait is about `initial` and whose waits never exceed `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempts: 0,
        }
    }

    /// How many delays were handed out since the start or the last [`Backoff::reset`]: the
    /// failed attempts so far, when called once per failure.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt; doubles the base for the one after (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.delay_before(self.attempts)
    }

    /// The wait before retry number `attempt` (1 for the first), for callers that count their
    /// attempts themselves (one count per piece of work): what the `attempt`-th
    /// [`Backoff::next_delay`] of this backoff waits, leaving its own count alone.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let base = self.initial.saturating_mul(1 << doublings).min(self.max);
        let half = base / 2;
        let spread = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = match spread {
            0 => 0,
            s => RandomState::new().hash_one(attempt) % (s + 1),
        };
        half + Duration::from_nanos(jitter)
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure waits about `initial` again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        for base in [100, 200, 400, 800, 1000, 1000] {
            let d = backoff.next_delay();
            assert!(
                d >= ms(base / 2) && d <= ms(base),
                "{d:?} for a base of {base} ms"
            );
        }
        assert_eq!(backoff.attempts(), 6);
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        assert!(backoff.next_delay() <= ms(100));
        // A cap below the first wait is raised to it; a zero wait stays zero.
        assert!(Backoff::new(ms(10), ms(1)).next_delay() <= ms(10));
        assert_eq!(Backoff::new(ms(0), ms(0)).next_delay(), ms(0));
    }

    #[test]
    fn a_counted_attempt_waits_what_the_same_next_delay_would() {
        let ms = Duration::from_millis;
        let backoff = Backoff::new(ms(100), ms(10_000));
        for (attempt, base) in [
            (0, 100),
            (1, 100),
            (2, 200),
            (5, 1600),
            (8, 10_000),
            (900, 10_000),
        ] {
            let d = backoff.delay_before(attempt);
            assert!(
                d >= ms(base / 2) && d <= ms(base),
                "{d:?} before attempt {attempt}, for a base of {base} ms"
            );
        }
        assert_eq!(backoff.attempts(), 0, "its own count is left alone");
    }
}
