//! Ramp bucketing, the same algorithm as flagd's `fractional` (released flagd, integer weights):
//! `h = murmur3_x86_32(flagKey + unit, 0)`, `bucket = (h × 100 000) >> 32`, treatment iff
//! `bucket < threshold` with `threshold = percent × 1000`. A ramp is therefore exactly
//! `{"fractional": [[treatment, threshold], [control, 100000 − threshold]]}` for a flagd client
//! synced from the sidecar: the same units get the treatment in-process and in the header.
//! Raising the percent only moves units from control to treatment (monotonic), and a unit's bucket
//! never changes (sticky).
//!
//! The unit's *id* (what the sidecar counts distinct units with) is a separate 64-bit
//! `xxh3_64_with_seed(unit, xxh3_64(flagKey))`: it only names the unit, it decides nothing.

use std::io::Read as _;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of ramp buckets: 0.001 % granularity.
pub const BUCKETS: u32 = 100_000;

/// The per-flag bucketing function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucketer {
    flag_key: Box<[u8]>,
    seed: u64,
}

impl Bucketer {
    /// The bucketer of the flag `flag_key`.
    pub fn for_flag(flag_key: &str) -> Self {
        Bucketer { flag_key: flag_key.as_bytes().into(), seed: xxh3_64(flag_key.as_bytes()) }
    }

    /// flagd's `fractional` hash of the unit: `murmur3_x86_32(flagKey + unit, 0)`, hashed as one
    /// byte stream without building the concatenation.
    #[inline]
    pub fn murmur(&self, unit: &[u8]) -> u32 {
        // Reading from two byte slices cannot fail.
        murmur3::murmur3_32(&mut (&self.flag_key[..]).chain(unit), 0).unwrap_or(0)
    }

    /// The unit's 64-bit id within this flag (for distinct-unit counts); not used to bucket.
    #[inline]
    pub fn unit_id(&self, unit: &[u8]) -> u64 {
        xxh3_64_with_seed(unit, self.seed)
    }

    /// The unit's bucket in `0..BUCKETS`.
    #[inline]
    pub fn bucket(&self, unit: &[u8]) -> u32 {
        bucket_of_murmur(self.murmur(unit))
    }

    /// Whether the unit is in treatment at `threshold` (see [`percent_to_threshold`]).
    #[inline]
    pub fn treated(&self, unit: &[u8], threshold: u32) -> bool {
        self.bucket(unit) < threshold
    }
}

/// The bucket in `0..BUCKETS` of a `fractional` hash: `(h × BUCKETS) >> 32`, as flagd scales a
/// hash into a total weight of `BUCKETS`.
#[inline]
pub fn bucket_of_murmur(hash: u32) -> u32 {
    // (2^32 − 1) × 100 000 >> 32 < 100 000: fits in u32.
    ((u64::from(hash) * u64::from(BUCKETS)) >> 32) as u32
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
    fn same_bucket_as_flagd_fractional() {
        // flagd: murmur3_x86_32("headerColor" + "rachel@faas.com") scaled into 4 × 25 picks blue
        // (the second quarter); the same hash scaled into 100 000 lands in 25 000..50 000.
        let b = Bucketer::for_flag("headerColor");
        let bucket = b.bucket(b"rachel@faas.com");
        assert!((25_000..50_000).contains(&bucket), "{bucket}");
        let mut joined = Vec::from(&b"headerColor"[..]);
        joined.extend_from_slice(b"monica@faas.com");
        let whole = murmur3::murmur3_32(&mut std::io::Cursor::new(joined), 0).unwrap();
        assert_eq!(b.murmur(b"monica@faas.com"), whole, "chained bytes hash as their concatenation");
        assert!(b.bucket(b"monica@faas.com") >= 75_000, "monica is yellow: the last quarter");
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
