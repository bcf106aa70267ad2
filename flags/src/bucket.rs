//! Ramp bucketing, the same algorithm as flagd's `fractional` (released flagd, integer weights):
//! `h = murmur3_x86_32(flagKey + unit, 0)`, `bucket = (h × 100 000) >> 32`, treatment iff
//! `bucket < threshold` with `threshold = percent × 1000`. A ramp is therefore exactly
//! `{"fractional": [[treatment, threshold], [control, 100000 − threshold]]}` for a flagd client
//! synced from the sidecar: the same units get the treatment in-process and in the header.
//! Raising the percent only moves units from control to treatment (monotonic), and a unit's bucket
//! never changes (sticky).
//!
//! flagd's `fractional` hashing is in transition: newer in-process evaluators (e.g. the Python
//! `openfeature-flagd-core` 2.x, the testbed's `@fractional-v3`) hash the canonical CBOR encoding
//! of the bucketing key — `[flagKey, targetingKey]` for the shorthand, the `cat` string otherwise —
//! instead of the UTF-8 bytes. A flag set chooses with `metadata.fractionalVersion: v3` ([`Hashing`]);
//! the default is the released behaviour.
//!
//! The unit's *id* (what the sidecar counts distinct units with) is a separate 64-bit
//! `xxh3_64_with_seed(unit, xxh3_64(flagKey))`: it only names the unit, it decides nothing.

use std::hash::Hasher as _;

use ciborium_ll::{Encoder, Header};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of ramp buckets: 0.001 % granularity.
pub const BUCKETS: u32 = 100_000;

/// How `fractional` turns a bucketing key into the bytes it hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hashing {
    /// Released flagd (`@fractional-v2`): the UTF-8 bytes of `flagKey + key`.
    #[default]
    Utf8,
    /// `@fractional-v3`: the canonical CBOR of `[flagKey, targetingKey]` (shorthand) or of the
    /// string `flagKey + key` (an explicit bucketing attribute).
    Cbor,
}

impl Hashing {
    /// The choice of a flag set's `metadata.fractionalVersion` (`"v3"` → CBOR; anything else,
    /// or nothing, the released behaviour).
    pub fn of_metadata(metadata: &serde_json::Map<String, serde_json::Value>) -> Hashing {
        match metadata.get("fractionalVersion").and_then(|v| v.as_str()) {
            Some("v3") => Hashing::Cbor,
            _ => Hashing::Utf8,
        }
    }
}

/// The per-flag bucketing function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucketer {
    flag_key: Box<[u8]>,
    seed: u64,
    hashing: Hashing,
    /// CBOR only: the key is `[flagKey, targetingKey]`; this holds its bytes up to the unit's.
    pair_prefix: Option<Box<[u8]>>,
}

/// The canonical CBOR header of a text string of `len` bytes, in `buf`; returns its length.
fn text_header(len: usize, buf: &mut [u8; 9]) -> usize {
    let mut w: &mut [u8] = &mut buf[..];
    // Nine bytes hold any header; writing to a slice that long cannot fail.
    let _ = Encoder::from(&mut w).push(Header::Text(Some(len)));
    9 - w.len()
}

impl Bucketer {
    /// The bucketer of the flag `flag_key`, bucketing on the targeting key, released hashing.
    pub fn for_flag(flag_key: &str) -> Self {
        Bucketer::new(flag_key, Hashing::Utf8, true)
    }

    /// The bucketer of `flag_key` with `hashing`; `by_targeting_key` when the unit is the
    /// targeting key (flagd's shorthand), else an attribute joined to the key (`cat`).
    pub fn new(flag_key: &str, hashing: Hashing, by_targeting_key: bool) -> Self {
        let pair_prefix = (hashing == Hashing::Cbor && by_targeting_key).then(|| {
            let mut out = vec![0x82]; // a definite array of two items
            let mut buf = [0u8; 9];
            let n = text_header(flag_key.len(), &mut buf);
            out.extend_from_slice(&buf[..n]);
            out.extend_from_slice(flag_key.as_bytes());
            out.into_boxed_slice()
        });
        Bucketer { flag_key: flag_key.as_bytes().into(), seed: xxh3_64(flag_key.as_bytes()), hashing, pair_prefix }
    }

    /// flagd's `fractional` hash of the unit, hashed as one byte stream without building the
    /// key: `murmur3_x86_32(flagKey + unit, 0)`, or of its CBOR encoding ([`Hashing::Cbor`]).
    #[inline]
    pub fn murmur(&self, unit: &[u8]) -> u32 {
        let mut header = [0u8; 9];
        match (self.hashing, &self.pair_prefix) {
            (Hashing::Utf8, _) => murmur(&[&self.flag_key, unit]),
            (Hashing::Cbor, Some(prefix)) => {
                let n = text_header(unit.len(), &mut header);
                murmur(&[prefix, &header[..n], unit])
            }
            (Hashing::Cbor, None) => {
                let n = text_header(self.flag_key.len() + unit.len(), &mut header);
                murmur(&[&header[..n], &self.flag_key, unit])
            }
        }
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

/// flagd's hash, `murmur3_x86_32(·, 0)`, of the concatenation of `parts`, fed piece by piece
/// (nothing is copied to build the key).
#[inline]
pub(crate) fn murmur(parts: &[&[u8]]) -> u32 {
    let mut hasher = mur3::Hasher32::with_seed(0);
    for part in parts {
        hasher.write(part);
    }
    hasher.finish32()
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
        let whole = mur3::murmurhash3_x86_32(&joined, 0);
        assert_eq!(b.murmur(b"monica@faas.com"), whole, "chained bytes hash as their concatenation");
        // Pieces that split the 4-byte blocks anywhere hash as the whole.
        for cut in 0..joined.len() {
            assert_eq!(murmur(&[&joined[..cut], &joined[cut..cut], &joined[cut..]]), whole, "cut at {cut}");
        }
        // The reference implementation's values (MurmurHash3_x86_32, seed 0).
        assert_eq!(murmur(&[b"hello"]), 0x248b_fa47);
        assert_eq!(murmur(&[b"hello", b" ", b"world"]), 0x5e92_8f0f);
        assert!(b.bucket(b"monica@faas.com") >= 75_000, "monica is yellow: the last quarter");
    }

    /// The testbed's `@fractional-v3` vectors for the shorthand flag (`[["heads", 50], ["tails",
    /// 50]]`, bucket by `[flagKey, targetingKey]`): jon and jane both land in tails.
    #[test]
    fn cbor_hashing_matches_fractional_v3() {
        let b = Bucketer::new("fractional-flag-shorthand", Hashing::Cbor, true);
        for user in ["jon@company.com", "jane@company.com"] {
            let bucket = (u64::from(b.murmur(user.as_bytes())) * 100) >> 32;
            assert!(bucket >= 50, "{user} is tails under v3");
        }
        let v2 = Bucketer::for_flag("fractional-flag-shorthand");
        assert!((u64::from(v2.murmur(b"jon@company.com")) * 100) >> 32 < 50, "jon is heads under v2");
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
            // Within 5 standard deviations of a binomial share of 100 000 draws (0.16 points at
            // 1%, 0.79 at 50%): a fixed ±0.5 points was 3.2σ at 50% and failed about one run in 60.
            for (c, p) in counts.iter().zip(ps) {
                let share = f64::from(*c) / 1000.0;
                let sigma = (p / 100.0 * (1.0 - p / 100.0) / 100_000.0).sqrt() * 100.0;
                prop_assert!((share - p).abs() <= 5.0 * sigma, "{}% gave {}% (5σ = {:.3})", p, share, 5.0 * sigma);
            }
        }
    }
}
