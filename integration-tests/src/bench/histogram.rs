//! A fixed log-linear latency histogram, mergeable across client processes.
//!
//! Values (microseconds) below [`LINEAR`] get a bucket each; above, every
//! power of two is split into [`SUB_BUCKETS`] equal buckets, so a reported
//! percentile is at most 1/32 (about 3 %) above the true value. The bucket
//! array is fixed (about 9 KiB), recording is two shifts and an add, and
//! histograms from several processes merge by adding counts. On the wire
//! only the non-empty buckets are sent.

use serde::{Deserialize, Serialize};

/// Values below this are counted exactly.
const LINEAR: u64 = 64;
/// Buckets per power of two above [`LINEAR`].
const SUB_BUCKETS: u64 = 32;
/// log2 of [`SUB_BUCKETS`].
const SUB_BITS: u32 = 5;
/// log2 of [`LINEAR`].
const LINEAR_BITS: u32 = 6;
/// Total buckets: exact values, then 32 per power of two up to 2^64.
const BUCKETS: usize = (LINEAR + (64 - LINEAR_BITS as u64) * SUB_BUCKETS) as usize;

/// Counts of values in log-linear buckets, plus exact count, sum, min and max.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Sparse", from = "Sparse")]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

/// Index of the bucket holding `value`.
fn bucket(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let top = value >> (msb - SUB_BITS); // in [SUB_BUCKETS, 2 * SUB_BUCKETS)
    (LINEAR + u64::from(msb - LINEAR_BITS) * SUB_BUCKETS + (top - SUB_BUCKETS)) as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_high(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let rest = index - LINEAR;
    let msb = rest / SUB_BUCKETS + u64::from(LINEAR_BITS);
    let top = rest % SUB_BUCKETS + SUB_BUCKETS;
    let shift = msb - u64::from(SUB_BITS);
    ((top + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket(value)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min }
    }

    /// Largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket that
    /// holds it, capped at the maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(index).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

/// Wire form: only the non-empty buckets, as `[index, count]` pairs.
#[derive(Serialize, Deserialize)]
struct Sparse {
    buckets: Vec<(u32, u64)>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl From<Histogram> for Sparse {
    fn from(h: Histogram) -> Self {
        let buckets = h
            .counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u32, *n))
            .collect();
        Sparse {
            buckets,
            count: h.count,
            sum: h.sum,
            min: h.min,
            max: h.max,
        }
    }
}

impl From<Sparse> for Histogram {
    fn from(s: Sparse) -> Self {
        let mut h = Histogram {
            count: s.count,
            sum: s.sum,
            min: s.min,
            max: s.max,
            ..Histogram::default()
        };
        for (index, n) in s.buckets {
            if let Some(slot) = h.counts.get_mut(index as usize) {
                *slot += n;
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut previous_high = None;
        for index in 0..BUCKETS {
            let high = bucket_high(index);
            if let Some(prev) = previous_high {
                assert!(high > prev, "bucket {index} does not grow");
                assert_eq!(bucket(prev + 1), index, "value {} misplaced", prev + 1);
            }
            assert_eq!(bucket(high), index);
            previous_high = Some(high);
        }
        assert_eq!(previous_high, Some(u64::MAX));
        // Relative width stays within 1/32 above the linear range.
        for v in [100u64, 1_000, 12_345, 1_000_000, 987_654_321] {
            let high = bucket_high(bucket(v));
            assert!(
                high >= v && (high - v) as f64 <= v as f64 / 32.0,
                "{v} -> {high}"
            );
        }
    }

    #[test]
    fn quantiles_merge_and_round_trip() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 1..=1000 {
            a.record(v);
        }
        b.record(50_000);
        a.merge(&b);
        assert_eq!(a.count(), 1001);
        assert_eq!(a.max(), 50_000);
        let p50 = a.quantile(0.5);
        assert!((500..=516).contains(&p50), "{p50}");
        assert_eq!(a.quantile(1.0), 50_000);
        assert_eq!(a.quantile(0.0), 1);
        let json = serde_json::to_string(&a).expect("serialize");
        let back: Histogram = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, a);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
