use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;

use proptest::prelude::*;

use super::*;

/// Upper bound on the relative error of a reported quantile: half a bucket over its lower bound.
const MAX_REL_ERROR: f64 = 1.0 / 128.0;
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Seeded xorshift64* so the accuracy data is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp()
    }

    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

const TEN_SECONDS: f64 = 10_000_000.0;

fn to_micros(x: f64) -> u64 {
    x.round().clamp(1.0, TEN_SECONDS) as u64
}

/// Draws one latency in µs.
type Sampler = fn(&mut XorShift) -> u64;

/// Latency shapes spanning 1 µs ..= 10 s.
fn shapes() -> Vec<(&'static str, Sampler)> {
    vec![
        ("log-uniform 1us..10s", |r| to_micros(r.log_uniform(1.0, TEN_SECONDS))),
        ("pareto alpha=1.1 from 50us", |r| to_micros(50.0 / r.unit().powf(1.0 / 1.1))),
        ("pareto alpha=0.8 from 5us", |r| to_micros(5.0 / r.unit().powf(1.0 / 0.8))),
        ("lognormal median 2ms sigma 2", |r| to_micros(2_000.0 * (2.0 * r.normal()).exp())),
        ("bimodal 97% ~500us, 3% 1s..10s", |r| {
            if r.unit() < 0.97 {
                to_micros(300.0 + 500.0 * r.unit())
            } else {
                to_micros(r.log_uniform(1e6, TEN_SECONDS))
            }
        }),
        ("small integers 1..300us", |r| 1 + r.next_u64() % 300),
    ]
}

/// Largest relative error of `hist`'s quantiles against the exact nearest-rank quantiles of `values`.
fn max_rel_error(values: &mut [u64], hist: &SparseHistogram, quantiles: &[f64]) -> f64 {
    values.sort_unstable();
    quantiles
        .iter()
        .map(|&q| {
            let exact = values[(nearest_rank(q, values.len() as u64) - 1) as usize] as f64;
            let estimate = hist.quantile(q).unwrap();
            (estimate - exact).abs() / exact
        })
        .fold(0.0, f64::max)
}

#[test]
fn quantiles_are_within_one_percent_of_exact() {
    let mut worst = (0.0, "");
    for (name, sample) in shapes() {
        for seed in [1u64, 0x9E37_79B9_7F4A_7C15, 0xDEAD_BEEF] {
            let mut rng = XorShift(seed);
            let mut values: Vec<u64> = (0..100_000).map(|_| sample(&mut rng)).collect();
            let atomic = AtomicHistogram::new();
            values.iter().for_each(|&v| atomic.record(v));
            let hist = atomic.take();
            assert_eq!(hist.count(), values.len() as u64);
            let err = max_rel_error(&mut values, &hist, &QUANTILES);
            assert!(err <= 0.01, "{name} seed {seed:#x}: relative error {err}");
            assert!(err <= MAX_REL_ERROR, "{name} seed {seed:#x}: relative error {err} above the layout's bound");
            if err > worst.0 {
                worst = (err, name);
            }
        }
    }
    println!("max relative quantile error: {:.4}% ({})", worst.0 * 100.0, worst.1);
}

#[test]
fn small_values_are_exact() {
    let mut hist = SparseHistogram::new();
    (0..128).for_each(|v| hist.record(v));
    for v in 0..128u64 {
        let q = (v + 1) as f64 / 128.0;
        assert_eq!(hist.quantile(q), Some(v as f64));
    }
}

#[test]
fn bucket_layout_round_trips_and_tiles_the_whole_range() {
    assert_eq!(NUM_BUCKETS, 1_984);
    assert_eq!(bucket_bounds(0), (0, 1));
    let mut expected_lo = 0;
    for index in 0..NUM_BUCKETS as u32 {
        let (lo, hi) = bucket_bounds(index);
        assert_eq!(lo, expected_lo, "bucket {index} starts where the previous one ended");
        assert!(hi > lo);
        assert!((hi - lo) * 64 <= lo.max(64), "bucket {index} [{lo}, {hi}) wider than 1/64 of its lower bound");
        assert_eq!(bucket_index(lo), index);
        assert_eq!(bucket_index(hi - 1), index);
        assert_eq!(bucket_index((lo + hi) / 2), index);
        expected_lo = hi;
    }
    assert_eq!(expected_lo, MAX_TRACKABLE_MICROS + 1, "the last bucket ends at the trackable maximum");
}

#[test]
fn huge_values_are_clamped_into_the_last_bucket() {
    let last = NUM_BUCKETS as u32 - 1;
    for v in [MAX_TRACKABLE_MICROS, MAX_TRACKABLE_MICROS + 1, 1 << 40, u64::MAX] {
        assert_eq!(bucket_index(v), last, "{v}");
    }
    let atomic = AtomicHistogram::new();
    atomic.record(u64::MAX);
    atomic.record(0);
    let hist = atomic.take();
    assert_eq!(hist.iter().collect::<Vec<_>>(), [(0, 1), (last, 1)]);
    let (lo, hi) = bucket_bounds(last);
    assert_eq!(hist.quantile(1.0), Some((lo + hi - 1) as f64 / 2.0));
}

#[test]
#[should_panic(expected = "out of range")]
fn bounds_of_an_unknown_bucket_panic() {
    bucket_bounds(NUM_BUCKETS as u32);
}

#[test]
fn quantile_of_empty_or_with_invalid_q_is_none() {
    let mut hist = SparseHistogram::new();
    assert_eq!(hist.quantile(0.5), None);
    hist.record(1_000);
    assert_eq!(hist.quantile(-0.1), None);
    assert_eq!(hist.quantile(1.1), None);
    assert_eq!(hist.quantile(f64::NAN), None);
    assert!(hist.quantile(0.0).is_some());
}

#[test]
fn share_above_counts_buckets_strictly_past_the_threshold_bucket() {
    let mut hist = SparseHistogram::new();
    for v in [100, 127, 128, 129, 130, 1_000, 1_000_000] {
        hist.record(v);
    }
    assert_eq!(hist.share_above(0), 7);
    assert_eq!(hist.share_above(127), 5);
    // 128 and 129 share a bucket [128, 130): 128 sits in the threshold's bucket and 129 > 128 is
    // not counted either.
    assert_eq!(hist.share_above(128), 3);
    assert_eq!(hist.share_above(129), 3, "exact at a bucket's last value");
    assert_eq!(hist.share_above(1_000_000), 0);
    assert_eq!(hist.share_above(u64::MAX), 0);
    // Against a quantile (as with the control's p99): any threshold in its bucket gives the same count.
    let median = hist.quantile(0.5).unwrap();
    let (lo, hi) = bucket_bounds(hist.quantile_bucket(0.5).unwrap());
    assert_eq!(hist.share_above(median as u64), hist.share_above(lo));
    assert_eq!(hist.share_above(lo), hist.share_above(hi - 1));
}

#[test]
fn from_pairs_normalises_and_rejects_foreign_indices() {
    let hist = SparseHistogram::from_pairs([(7, 2), (3, 1), (7, 1), (5, 0)]).unwrap();
    assert_eq!(hist.iter().collect::<Vec<_>>(), [(3, 1), (7, 3)]);
    let round_trip = SparseHistogram::from_pairs(hist.iter()).unwrap();
    assert_eq!(round_trip, hist);
    let err = SparseHistogram::from_pairs([(1, 1), (NUM_BUCKETS as u32, 1)]).unwrap_err();
    assert_eq!(err, BucketOutOfRange { index: NUM_BUCKETS as u32 });
    assert!(err.to_string().contains("out of range"));
}

#[test]
fn take_under_four_recording_threads_loses_nothing() {
    const THREADS: u64 = 4;
    const PER_THREAD: usize = 200_000;
    let atomic = Arc::new(AtomicHistogram::new());
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let atomic = Arc::clone(&atomic);
            thread::spawn(move || {
                let mut rng = XorShift(t + 1);
                let mut expected = SparseHistogram::new();
                for _ in 0..PER_THREAD {
                    let v = to_micros(rng.log_uniform(1.0, TEN_SECONDS));
                    atomic.record(v);
                    expected.record(v);
                }
                expected
            })
        })
        .collect();
    let reader = {
        let (atomic, done) = (Arc::clone(&atomic), Arc::clone(&done));
        thread::spawn(move || {
            let (mut total, mut deltas) = (SparseHistogram::new(), 0);
            while !done.load(Ordering::Acquire) {
                total.merge(&atomic.take());
                deltas += 1;
            }
            (total, deltas)
        })
    };
    let mut expected = SparseHistogram::new();
    for w in writers {
        expected.merge(&w.join().unwrap());
    }
    done.store(true, Ordering::Release);
    let (mut total, deltas) = reader.join().unwrap();
    total.merge(&atomic.take());
    assert!(deltas > 0);
    assert_eq!(total.count(), THREADS * PER_THREAD as u64);
    assert_eq!(total, expected, "bucket by bucket, the deltas add up to what was recorded");
}

fn values() -> impl Strategy<Value = Vec<u64>> {
    // Log-spread over the whole range: a random bit length, then random low bits.
    prop::collection::vec((0u32..=36, any::<u64>()).prop_map(|(bits, r)| r.checked_shr(64 - bits).unwrap_or(0)), 0..200)
}

fn histogram_of(values: &[u64]) -> SparseHistogram {
    let mut hist = SparseHistogram::new();
    values.iter().for_each(|&v| hist.record(v));
    hist
}

proptest! {
    #[test]
    fn merge_is_commutative_and_associative(a in values(), b in values(), c in values()) {
        let (ha, hb, hc) = (histogram_of(&a), histogram_of(&b), histogram_of(&c));
        let mut ab = ha.clone();
        ab.merge(&hb);
        let mut ba = hb.clone();
        ba.merge(&ha);
        prop_assert_eq!(&ab, &ba);

        let mut ab_c = ab.clone();
        ab_c.merge(&hc);
        let mut bc = hb.clone();
        bc.merge(&hc);
        let mut a_bc = ha.clone();
        a_bc.merge(&bc);
        prop_assert_eq!(&ab_c, &a_bc);

        let all: Vec<u64> = a.iter().chain(&b).chain(&c).copied().collect();
        prop_assert_eq!(&ab_c, &histogram_of(&all));
        prop_assert_eq!(ab_c.count(), all.len() as u64);
    }

    #[test]
    fn summing_pairs_densely_equals_merging_histograms(
        a in values(),
        pairs in prop::collection::vec((0u32..NUM_BUCKETS as u32, 0u64..5), 0..100),
    ) {
        // Pairs as reports bring them: any order, an index more than once, zero counts.
        let mut dense = crate::DenseHistogram::new();
        for &(index, count) in &pairs {
            dense.add(index, count).unwrap();
        }
        let mut merged = histogram_of(&a);
        dense.drain_into(&mut merged);
        let mut expected = histogram_of(&a);
        expected.merge(&SparseHistogram::from_pairs(pairs.iter().copied()).unwrap());
        prop_assert_eq!(&merged, &expected);
        // Sorted, unique, no zero counts: what `from_pairs` of its own pairs leaves unchanged.
        prop_assert_eq!(&SparseHistogram::from_pairs(merged.iter()).unwrap(), &merged);
        prop_assert!(merged.iter().all(|(_, c)| c > 0));
        prop_assert!(dense.is_empty());
    }

    #[test]
    fn every_value_lies_in_its_bucket(v in any::<u64>()) {
        let index = bucket_index(v);
        let (lo, hi) = bucket_bounds(index);
        prop_assert!(lo <= v.min(MAX_TRACKABLE_MICROS) && v.min(MAX_TRACKABLE_MICROS) < hi);
        prop_assert!(bucket_index(v.saturating_add(1)) >= index, "monotonic");
    }

    #[test]
    fn any_quantile_is_within_the_bucket_error(
        values in values(),
        q in 0.0f64..=1.0,
    ) {
        prop_assume!(!values.is_empty());
        // Relative error is undefined at 0.
        let mut values: Vec<u64> = values.into_iter().map(|v| v.max(1)).collect();
        let hist = histogram_of(&values);
        let err = max_rel_error(&mut values, &hist, &[q]);
        prop_assert!(err <= MAX_REL_ERROR, "q {} error {}", q, err);
    }
}
