//! Ramp bucketing: a unit's bucket is `xxh3_64_with_seed(key, seed) % 100_000`, the seed derived once
//! from the flag key. Treatment iff `bucket < threshold` with `threshold = percent × 1000`, so
//! raising the percent only moves units from control to treatment (monotonic), and a unit's bucket
//! never changes (sticky). The 64-bit hash itself identifies the unit within the flag (the sidecar
//! counts distinct units with it).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of ramp buckets: 0.001 % granularity.
pub const BUCKETS: u32 = 100_000;

/// The per-flag bucketing function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucketer {
    seed: u64,
}

impl Bucketer {
    /// The bucketer of the flag `flag_key`.
    pub fn for_flag(flag_key: &str) -> Self {
        Bucketer { seed: xxh3_64(flag_key.as_bytes()) }
    }

    /// The unit's 64-bit hash under this flag's seed: its bucket is [`bucket_of_hash`] of it.
    #[inline]
    pub fn hash(&self, unit: &[u8]) -> u64 {
        xxh3_64_with_seed(unit, self.seed)
    }

    /// The unit's bucket in `0..BUCKETS`.
    #[inline]
    pub fn bucket(&self, unit: &[u8]) -> u32 {
        bucket_of_hash(self.hash(unit))
    }

    /// Whether the unit is in treatment at `threshold` (see [`percent_to_threshold`]).
    #[inline]
    pub fn treated(&self, unit: &[u8], threshold: u32) -> bool {
        self.bucket(unit) < threshold
    }
}

/// The bucket in `0..BUCKETS` of a unit hash ([`Bucketer::hash`]): its low-order residue.
#[inline]
pub fn bucket_of_hash(hash: u64) -> u32 {
    // The remainder is < BUCKETS, so it fits in u32.
    (hash % u64::from(BUCKETS)) as u32
}

/// The bucket threshold of a percentage in `0.0..=100.0`, at 0.001 % granularity.
/// Values outside the range are clamped; NaN is 0.
pub fn percent_to_threshold(percent: f64) -> u32 {
    if percent.is_nan() {
        return 0;
    }
    // Clamped to 0..=100_000 first, so the cast cannot truncate.
    (percent * 1000.0).round().clamp(0.0, f64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(percent_to_threshold(0.0), 0);
        assert_eq!(percent_to_threshold(5.0), 5_000);
        assert_eq!(percent_to_threshold(0.001), 1);
        assert_eq!(percent_to_threshold(100.0), BUCKETS);
        assert_eq!(percent_to_threshold(250.0), BUCKETS);
        assert_eq!(percent_to_threshold(-1.0), 0);
        assert_eq!(percent_to_threshold(f64::NAN), 0);
    }

    #[test]
    fn seeds_differ_per_flag() {
        let a = Bucketer::for_flag("a");
        let b = Bucketer::for_flag("b");
        let differ = (0..100).filter(|i| a.bucket(format!("u{i}").as_bytes()) != b.bucket(format!("u{i}").as_bytes()));
        assert!(differ.count() > 90, "flags must bucket independently");
    }

    #[test]
    fn uniform_within_half_a_point() {
        let b = Bucketer::for_flag("new-checkout");
        for percent in [1.0, 5.0, 25.0, 50.0] {
            let t = percent_to_threshold(percent);
            let n = 100_000;
            let treated = (0..n).filter(|i| b.treated(format!("user-{i}").as_bytes(), t)).count();
            let share = treated as f64 * 100.0 / f64::from(n);
            assert!((share - percent).abs() <= 0.5, "{percent}% gave {share}%");
        }
    }

    proptest! {
        #[test]
        fn monotonic(flag in "[a-z-]{1,20}", unit in proptest::collection::vec(any::<u8>(), 0..64),
                     p in 0.0f64..=100.0, q in 0.0f64..=100.0) {
            let (lo, hi) = if p <= q { (p, q) } else { (q, p) };
            let b = Bucketer::for_flag(&flag);
            if b.treated(&unit, percent_to_threshold(lo)) {
                prop_assert!(b.treated(&unit, percent_to_threshold(hi)));
            }
        }

        #[test]
        fn sticky(flag in "\\PC{0,30}", unit in "\\PC{0,60}", p in 0.0f64..=100.0) {
            let t = percent_to_threshold(p);
            let first = Bucketer::for_flag(&flag).treated(unit.as_bytes(), t);
            let again = Bucketer::for_flag(&flag).treated(unit.as_bytes(), t);
            prop_assert_eq!(first, again);
            prop_assert!(Bucketer::for_flag(&flag).bucket(unit.as_bytes()) < BUCKETS);
        }

    }

    proptest! {
        // Each case hashes 100 000 random keys; a handful of cases suffices.
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn uniform_random_keys(flag in "[a-z]{1,12}", seed in any::<u64>()) {
            let b = Bucketer::for_flag(&flag);
            let mut x = seed | 1;
            let mut counts = [0u32; 4];
            let ps = [1.0, 5.0, 25.0, 50.0];
            for _ in 0..100_000 {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                let bucket = b.bucket(&x.to_le_bytes());
                for (c, p) in counts.iter_mut().zip(ps) {
                    if bucket < percent_to_threshold(p) { *c += 1; }
                }
            }
            for (c, p) in counts.iter().zip(ps) {
                let share = f64::from(*c) / 1000.0;
                prop_assert!((share - p).abs() <= 0.5, "{}% gave {}%", p, share);
            }
        }
    }
}
