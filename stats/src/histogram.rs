//! The latency histogram: one fixed log-linear bucket layout known to proxy and control plane, the
//! lock-free [`AtomicHistogram`] the proxy records into, and the sparse, mergeable
//! [`SparseHistogram`] that travels on the wire and is summed by the control plane.
//!
//! # Layout (in microseconds)
//!
//! - Values `0..128` each have their own bucket (index = value): exact.
//! - From 128 up, each power-of-two octave `[2^k, 2^(k+1))`, `k = 7..36`, is split into 64 equal
//!   sub-buckets of width `2^(k-6)`, so a bucket's width is at most 1/64 of its lower bound.
//! - Values above [`MAX_TRACKABLE_MICROS`] (`2^36 − 1` µs ≈ 19 h) are clamped into the last bucket.
//!
//! That is [`NUM_BUCKETS`] = 128 + 29 × 64 = 1 984 buckets. A quantile is reported as the midpoint
//! of the integers its bucket holds, so its relative error is below `(w/2) / (64·w)` = 1/128 ≈ 0.78%
//! (0 below 128 µs). The layout is part of the wire format: changing any constant here changes the
//! meaning of every bucket index a peer sends.

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(test)]
mod tests;

/// log2 of the number of sub-buckets per octave.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: u32 = 1 << SUB_BUCKET_BITS;
/// Values below this have a bucket each; it is also where the first split octave starts.
const LINEAR_LIMIT: u64 = 2 << SUB_BUCKET_BITS;
const FIRST_OCTAVE: u32 = SUB_BUCKET_BITS + 1;
/// One past the last octave: values reach up to `2^END_OCTAVE − 1`.
const END_OCTAVE: u32 = 36;

/// The largest value with its own bucket; anything larger is counted in the last bucket.
pub const MAX_TRACKABLE_MICROS: u64 = (1 << END_OCTAVE) - 1;

/// Number of buckets in the layout; valid indices are `0..NUM_BUCKETS`.
pub const NUM_BUCKETS: usize = LINEAR_LIMIT as usize + ((END_OCTAVE - FIRST_OCTAVE) * SUB_BUCKETS) as usize;

/// The bucket a value falls in. Monotonic (non-decreasing) in `micros`; values above
/// [`MAX_TRACKABLE_MICROS`] map to the last bucket, `NUM_BUCKETS − 1`.
#[inline]
pub fn bucket_index(micros: u64) -> u32 {
    let v = micros.min(MAX_TRACKABLE_MICROS);
    if v < LINEAR_LIMIT {
        return v as u32;
    }
    let octave = u64::BITS - 1 - v.leading_zeros();
    let sub = (v >> (octave - SUB_BUCKET_BITS)) as u32 & (SUB_BUCKETS - 1);
    LINEAR_LIMIT as u32 + (octave - FIRST_OCTAVE) * SUB_BUCKETS + sub
}

/// The half-open value range `[lo, hi)` of bucket `index`. Consecutive buckets tile
/// `0..=MAX_TRACKABLE_MICROS` without gaps: `bucket_bounds(i).1 == bucket_bounds(i + 1).0`.
///
/// # Panics
///
/// If `index >= NUM_BUCKETS`. Indices from a peer go through [`SparseHistogram::from_pairs`],
/// which rejects those.
pub fn bucket_bounds(index: u32) -> (u64, u64) {
    assert!((index as usize) < NUM_BUCKETS, "histogram bucket index {index} out of range 0..{NUM_BUCKETS}");
    if u64::from(index) < LINEAR_LIMIT {
        return (u64::from(index), u64::from(index) + 1);
    }
    let rel = index - LINEAR_LIMIT as u32;
    let octave = FIRST_OCTAVE + rel / SUB_BUCKETS;
    let width = 1u64 << (octave - SUB_BUCKET_BITS);
    let lo = (1u64 << octave) + u64::from(rel % SUB_BUCKETS) * width;
    (lo, lo + width)
}

/// The value reported for a bucket: the midpoint of the integers `lo..hi` it holds.
fn bucket_midpoint(index: u32) -> f64 {
    let (lo, hi) = bucket_bounds(index);
    (lo + hi - 1) as f64 / 2.0
}

/// Nearest-rank position (1-based) of quantile `q` among `n > 0` samples: `⌈q·n⌉`, at least 1.
pub(crate) fn nearest_rank(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n)
}

/// A histogram the proxy's request tasks record into concurrently, without a lock.
///
/// Every bucket is an `AtomicU64`, allocated once as a boxed slice: [`NUM_BUCKETS`] × 8 B ≈ 15.5 KiB
/// per histogram, whatever it holds. [`record`](Self::record) is one `fetch_add(Relaxed)`.
///
/// [`take`](Self::take) drains it: each non-zero bucket is swapped to 0 and its count moved into the
/// returned delta. Every recorded value lands in exactly one taken delta: a `record` racing with a
/// `take` is either in that delta or in the next one, never in both and never lost (each bucket is
/// a single atomic read-modify-write location). A delta is therefore not an instantaneous snapshot
/// across buckets; only the sum of deltas is exact, which is all the reports need.
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
}

impl AtomicHistogram {
    /// An empty histogram (allocates all buckets now; recording never allocates).
    pub fn new() -> Self {
        Self { buckets: (0..NUM_BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Counts one value. Lock-free and wait-free; `Relaxed` suffices because the counts are
    /// independent and only their eventual totals are read.
    #[inline]
    pub fn record(&self, micros: u64) {
        self.buckets[bucket_index(micros) as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Moves everything recorded since the last `take` into a [`SparseHistogram`] (see the type's
    /// docs for what a concurrent `record` sees). Cost: one load per bucket plus one swap per
    /// non-zero bucket.
    pub fn take(&self) -> SparseHistogram {
        let mut buckets = Vec::new();
        for (index, bucket) in self.buckets.iter().enumerate() {
            // Load first: most buckets are empty, and a load does not take the cache line exclusively.
            if bucket.load(Ordering::Relaxed) != 0 {
                let count = bucket.swap(0, Ordering::Relaxed);
                if count != 0 {
                    buckets.push((index as u32, count));
                }
            }
        }
        SparseHistogram { buckets }
    }

    /// What has been recorded since the last `take`, left in place (for inspection; a report
    /// uses `take`). Not an instantaneous snapshot across buckets under concurrent records.
    pub fn peek(&self) -> SparseHistogram {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(index, bucket)| (index as u32, bucket.load(Ordering::Relaxed)))
            .filter(|&(_, count)| count != 0)
            .collect();
        SparseHistogram { buckets }
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recorded: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        f.debug_struct("AtomicHistogram").field("recorded", &recorded).finish_non_exhaustive()
    }
}

/// A histogram as it travels and is merged: the non-zero buckets as `(bucket index, count)`,
/// sorted by index, each index once, no zero counts, every index below [`NUM_BUCKETS`].
///
/// Merging adds counts bucket by bucket, so it is commutative and associative and the merge of
/// deltas equals the histogram of all their values. Counts saturate at `u64::MAX` rather than wrap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseHistogram {
    buckets: Vec<(u32, u64)>,
}

impl SparseHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self { buckets: Vec::new() }
    }

    /// Builds a histogram from `(bucket index, count)` pairs, e.g. decoded from the wire. Pairs may
    /// come in any order; repeated indices are added up and zero counts dropped.
    ///
    /// # Errors
    ///
    /// [`BucketOutOfRange`] if an index is not below [`NUM_BUCKETS`] (a peer with another layout).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, u64)>) -> Result<Self, BucketOutOfRange> {
        let mut buckets = Vec::new();
        for (index, count) in pairs {
            if index as usize >= NUM_BUCKETS {
                return Err(BucketOutOfRange { index });
            }
            if count != 0 {
                buckets.push((index, count));
            }
        }
        if !buckets.is_sorted_by(|a, b| a.0 < b.0) {
            buckets.sort_unstable_by_key(|&(index, _)| index);
            buckets.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 = kept.1.saturating_add(later.1);
                }
                same
            });
        }
        Ok(Self { buckets })
    }

    /// The non-zero buckets as `(bucket index, count)`, by increasing index.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u32, u64)> + '_ {
        self.buckets.iter().copied()
    }

    /// Whether no value has been counted.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |sum, &(_, count)| sum.saturating_add(count))
    }

    /// Counts one value (for tests and simulations; the proxy records into [`AtomicHistogram`]).
    pub fn record(&mut self, micros: u64) {
        let index = bucket_index(micros);
        match self.buckets.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(pos) => self.buckets[pos].1 = self.buckets[pos].1.saturating_add(1),
            Err(pos) => self.buckets.insert(pos, (index, 1)),
        }
    }

    /// Adds `other`'s counts into `self`.
    pub fn merge(&mut self, other: &SparseHistogram) {
        merge_sorted(&mut self.buckets, other.buckets.len(), |j| other.buckets[j]);
    }

    /// Adds the `len` pairs `other(0..len)`, indices strictly increasing and in range, in place.
    pub(crate) fn merge_sorted_from(&mut self, len: usize, other: impl Fn(usize) -> (u32, u64)) {
        merge_sorted(&mut self.buckets, len, other);
    }

    /// The nearest-rank `q`-quantile in µs (the value of rank `⌈q·n⌉` of `n` samples), reported as
    /// its bucket's midpoint: within 1/128 of the true sample value (exact below 128 µs). A value
    /// clamped above [`MAX_TRACKABLE_MICROS`] reads as the last bucket's midpoint.
    ///
    /// `None` when empty or when `q` is not within `0.0..=1.0` (NaN included).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantile_bucket(q).map(bucket_midpoint)
    }

    /// The bucket index holding the nearest-rank `q`-quantile (see [`quantile`](Self::quantile)).
    pub fn quantile_bucket(&self, q: f64) -> Option<u32> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = nearest_rank(q, total);
        let mut seen = 0u64;
        self.buckets.iter().find_map(|&(index, count)| {
            seen = seen.saturating_add(count);
            (seen >= rank).then_some(index)
        })
    }

    /// Number of samples in buckets lying entirely above `threshold_micros`, i.e. whose lower bound
    /// is `> threshold_micros`: every bucket after the one containing the threshold.
    ///
    /// Samples in the threshold's own bucket are never counted, so this is a lower bound on the
    /// samples `> threshold_micros`, exact when the threshold is a bucket's last value (`hi − 1`).
    /// Every threshold inside one bucket gives the same answer; in particular, passing another
    /// histogram's quantile (say the control's p99, truncated to `u64`) counts the samples in
    /// buckets strictly above that quantile's bucket. Thresholds at or above the last bucket's
    /// lower bound give 0.
    pub fn share_above(&self, threshold_micros: u64) -> u64 {
        let first_above = bucket_index(threshold_micros) + 1;
        let start = self.buckets.partition_point(|&(index, _)| index < first_above);
        self.buckets[start..].iter().fold(0, |sum, &(_, count)| sum.saturating_add(count))
    }
}

/// Adds the `len` pairs `other(0..len)` (indices strictly increasing) into `into` (sorted, unique,
/// no zero counts), keeping those invariants, in place: no allocation unless `other` brings
/// indices `into` lacks, and then one `resize` and a merge from the back.
fn merge_sorted(into: &mut Vec<(u32, u64)>, len: usize, other: impl Fn(usize) -> (u32, u64)) {
    // Indices `other` brings that `into` lacks (zero counts bring nothing).
    let (mut fresh, mut i) = (0usize, 0usize);
    for j in 0..len {
        let (index, count) = other(j);
        if count == 0 {
            continue;
        }
        while i < into.len() && into[i].0 < index {
            i += 1;
        }
        if i < into.len() && into[i].0 == index {
            into[i].1 = into[i].1.saturating_add(count);
        } else {
            fresh += 1;
        }
    }
    if fresh == 0 {
        return;
    }
    // Existing indices are already added up; place the fresh ones, from the back.
    let old = into.len();
    into.resize(old + fresh, (0, 0));
    let (mut i, mut j, mut k) = (old, len, old + fresh);
    while j > 0 {
        let (index, count) = other(j - 1);
        if count == 0 {
            j -= 1;
            continue;
        }
        if i > 0 && into[i - 1].0 > index {
            into[k - 1] = into[i - 1];
            i -= 1;
            k -= 1;
        } else if i > 0 && into[i - 1].0 == index {
            // Added up in the first pass.
            into[k - 1] = into[i - 1];
            i -= 1;
            j -= 1;
            k -= 1;
        } else {
            into[k - 1] = (index, count);
            j -= 1;
            k -= 1;
        }
    }
}

/// A bucket index outside this build's layout (`>= NUM_BUCKETS`), e.g. from a peer whose
/// histogram layout differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketOutOfRange {
    /// The offending index.
    pub index: u32,
}

impl fmt::Display for BucketOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "histogram bucket index {} out of range (the layout has {NUM_BUCKETS} buckets)", self.index)
    }
}

impl Error for BucketOutOfRange {}
