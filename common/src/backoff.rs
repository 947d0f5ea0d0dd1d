//! Capped exponential backoff with jitter, for the loops that reconnect to
//! etcd (edge registration, ingress's edge watch).
//!
//! Each wait is drawn uniformly from the upper half of the current step, so
//! many processes that lost the same server at the same moment do not all
//! come back in the same instant.

use std::time::Duration;

/// Default first wait.
pub const DEFAULT_MIN: Duration = Duration::from_millis(200);
/// Default longest wait.
pub const DEFAULT_MAX: Duration = Duration::from_secs(5);

/// The waits between attempts: `min`, doubling up to `max`, each jittered
/// into `[step / 2, step]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_MIN, DEFAULT_MAX)
    }
}

impl Backoff {
    /// Starts at `min`, never waits longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            step: min,
        }
    }

    /// The wait before the next attempt; doubles the step for the one
    /// after.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to the first step, after an attempt succeeded.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_up_to_the_cap_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(700));
        let mut backoff = Backoff::new(min, max);
        let steps = [100, 200, 400, 700, 700];
        for step in steps {
            let step = Duration::from_millis(step);
            let wait = backoff.next_wait();
            assert!(
                wait >= step / 2 && wait <= step,
                "{wait:?} not in [{step:?}/2, {step:?}]"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= min);
    }
}
