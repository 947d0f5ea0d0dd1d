//! A token bucket, small enough to live in every connection (8 bytes) and
//! refilled lazily from the caller's clock: no timer, no task.
//!
//! The bucket holds at most `burst` tokens and gains `per_second` tokens a
//! second. Taking `n` tokens succeeds when the bucket holds `n`; otherwise
//! nothing is taken and the caller learns how long until it would succeed.
//! Refill is computed on each call from the milliseconds elapsed since the
//! last refill: `added = elapsed_ms * per_second / 1000` whole tokens, and
//! the refill time advances by the time those tokens took
//! (`added * 1000 / per_second` ms), so fractions of a token are not lost
//! between calls. A full bucket does not save up: its clock restarts.
//!
//! Times are milliseconds on the caller's monotonic clock, kept as `u32`
//! (wrapping after 49 days, which at worst refills one call less).

use std::time::Duration;

/// The rate a [`TokenBucket`] enforces. `per_second == 0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second; 0 disables the limit.
    pub per_second: u32,
    /// The most tokens the bucket holds: how many may be taken at once
    /// after a quiet period.
    pub burst: u32,
}

impl Rate {
    /// Whether this rate limits anything.
    pub fn is_limited(self) -> bool {
        self.per_second > 0
    }
}

/// Tokens left and when they were last refilled. The rate is not stored
/// here (it is the same for every bucket of a kind): pass it on each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    tokens: u32,
    refilled_ms: u32,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Self {
            tokens: rate.burst,
            refilled_ms: now_ms as u32,
        }
    }

    /// Tokens in the bucket after refilling it up to `now_ms`.
    pub fn available(&mut self, rate: Rate, now_ms: u64) -> u32 {
        self.refill(rate, now_ms as u32);
        self.tokens
    }

    /// Takes `n` tokens at `now_ms`; when the bucket holds fewer, takes
    /// nothing and says how long until it would hold `n` (never, when `n`
    /// is over the burst: [`Duration::MAX`]).
    pub fn try_take(&mut self, n: u32, rate: Rate, now_ms: u64) -> Result<(), Duration> {
        if !rate.is_limited() {
            return Ok(());
        }
        let now = now_ms as u32;
        self.refill(rate, now);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        if n > rate.burst {
            return Err(Duration::MAX);
        }
        let missing = u64::from(n - self.tokens);
        let needed_ms = (missing * 1000).div_ceil(u64::from(rate.per_second));
        let waited = now.wrapping_sub(self.refilled_ms);
        let waited_ms = if waited > u32::MAX / 2 {
            0
        } else {
            u64::from(waited)
        };
        Err(Duration::from_millis(
            needed_ms.saturating_sub(waited_ms).max(1),
        ))
    }

    fn refill(&mut self, rate: Rate, now: u32) {
        if !rate.is_limited() {
            return;
        }
        if self.tokens >= rate.burst {
            self.tokens = rate.burst;
            self.refilled_ms = now;
            return;
        }
        let elapsed = now.wrapping_sub(self.refilled_ms);
        if elapsed > u32::MAX / 2 {
            // `now` is behind the last refill (a caller's stale clock
            // reading), not 25 days ahead: nothing to add.
            return;
        }
        let elapsed = u64::from(elapsed);
        let per_second = u64::from(rate.per_second);
        let added = elapsed * per_second / 1000;
        if added == 0 {
            return;
        }
        let tokens = u64::from(self.tokens) + added;
        if tokens >= u64::from(rate.burst) {
            self.tokens = rate.burst;
            self.refilled_ms = now;
        } else {
            self.tokens = tokens as u32;
            // The time the added tokens took; the rest carries over.
            let used = (added * 1000 / per_second) as u32;
            self.refilled_ms = self.refilled_ms.wrapping_add(used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PER_SECOND: Rate = Rate {
        per_second: 10,
        burst: 5,
    };

    #[test]
    fn a_clock_behind_the_last_refill_adds_nothing() {
        let mut bucket = TokenBucket::full(TEN_PER_SECOND, 1_000);
        for _ in 0..5 {
            assert!(bucket.try_take(1, TEN_PER_SECOND, 1_000).is_ok());
        }
        // Empty at t = 1000 ms; a reading of 999 ms must not refill.
        assert!(bucket.try_take(1, TEN_PER_SECOND, 999).is_err());
        assert!(bucket.try_take(1, TEN_PER_SECOND, 1_100).is_ok());
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let rate = TEN_PER_SECOND;
        let mut bucket = TokenBucket::full(rate, 1_000);
        for _ in 0..5 {
            assert_eq!(bucket.try_take(1, rate, 1_000), Ok(()));
        }
        assert_eq!(
            bucket.try_take(1, rate, 1_000),
            Err(Duration::from_millis(100))
        );
        // 40 ms later: still 60 ms to wait.
        assert_eq!(
            bucket.try_take(1, rate, 1_040),
            Err(Duration::from_millis(60))
        );
        // Fractions are kept: 40 + 60 ms make one token.
        assert_eq!(bucket.try_take(1, rate, 1_100), Ok(()));
        assert!(bucket.try_take(1, rate, 1_100).is_err());
        // A long pause refills up to the burst, no further.
        assert_eq!(bucket.available(rate, 60_000), 5);
    }

    #[test]
    fn many_small_steps_add_up() {
        let rate = Rate {
            per_second: 3,
            burst: 100,
        };
        let mut bucket = TokenBucket::full(rate, 0);
        assert_eq!(bucket.try_take(100, rate, 0), Ok(()));
        // One call per ms for ten seconds: 30 tokens, not 0.
        for now in 0..10_000 {
            bucket.available(rate, now);
        }
        assert_eq!(bucket.available(rate, 10_000), 30);
    }

    #[test]
    fn over_the_burst_never_fits_and_unlimited_always_does() {
        let rate = TEN_PER_SECOND;
        let mut bucket = TokenBucket::full(rate, 0);
        assert_eq!(bucket.try_take(6, rate, 0), Err(Duration::MAX));
        assert_eq!(bucket.try_take(5, rate, 0), Ok(()));
        let unlimited = Rate {
            per_second: 0,
            burst: 0,
        };
        let mut bucket = TokenBucket::full(unlimited, 0);
        for _ in 0..1000 {
            assert_eq!(bucket.try_take(1_000, unlimited, 0), Ok(()));
        }
    }

    #[test]
    fn clock_wrap_is_harmless() {
        let rate = TEN_PER_SECOND;
        let start = u64::from(u32::MAX) - 50;
        let mut bucket = TokenBucket::full(rate, start);
        assert_eq!(bucket.try_take(5, rate, start), Ok(()));
        // 250 ms later, across the wrap of the u32 clock: two tokens.
        assert_eq!(bucket.available(rate, start + 250), 2);
    }

    #[test]
    fn stays_small() {
        assert_eq!(std::mem::size_of::<TokenBucket>(), 8);
    }
}
