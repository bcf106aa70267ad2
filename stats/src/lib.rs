//! Rampart's request statistics: per flag×variant RED counters, a mergeable log-linear latency
//! histogram and the randomised (ramp-split) requests with their distinct units per window,
//! recorded lock-free by the proxy's request tasks and merged by the control plane.
//!
//! Pure: std only (serde behind the `serde` feature), no I/O, no async runtime. The wire encoding lives with the protocol; this crate
//! exposes what it needs ([`SparseHistogram::iter`], [`SparseHistogram::from_pairs`]).
//!
//! ```
//! use rampart_stats::{Outcome, Registry, Split};
//!
//! let registry = Registry::new(1_000);
//! // Snapshot build (rare): resolve the handle once per flag×variant.
//! let series = registry.get_or_create("new-checkout", "on").expect("under the cap");
//! // Per request (hot path): atomics only. A request assigned by targeting (not randomised):
//! series.record(Outcome::Ok, Some(1_250));
//! // Randomised requests (reason SPLIT): the unit's hash, the ramp's slow threshold in µs, and
//! // when it was answered (read once per request, for every series it is recorded in).
//! let (alice, bob, slow_us) = (0x5eed_a11ce, 0x5eed_b0b, 200_000);
//! let now_s = rampart_stats::seconds_at(std::time::Instant::now());
//! series.record_split(Outcome::Timeout, None, alice, slow_us, now_s);
//! series.record_split(Outcome::Ok, Some(900), alice, slow_us, now_s);
//! series.record_split(Outcome::Ok, Some(300_000), bob, slow_us, now_s);
//! // Report tick: drain every series into deltas.
//! let deltas = registry.take_all();
//! assert_eq!(deltas.len(), 1);
//! let (flag, variant, delta) = &deltas[0];
//! assert_eq!((flag.as_str(), variant.as_str()), ("new-checkout", "on"));
//! assert_eq!((delta.requests, delta.errors, delta.timeouts), (4, 1, 1));
//! assert_eq!(delta.latency.count(), 3);
//! let split = Split { requests: 3, errors: 1, slow: 2, units: 2, failing_units: 1, slow_units: 2, new_units: 2 };
//! assert_eq!(delta.split, split);
//! ```

mod dense;
mod histogram;
mod recent;
mod registry;
mod series;
mod units;

pub use dense::DenseHistogram;
pub use histogram::{
    AtomicHistogram, BucketOutOfRange, MAX_TRACKABLE_MICROS, NUM_BUCKETS, SparseHistogram, bucket_bounds, bucket_index,
};
pub use recent::{HORIZON_S, NEW_HORIZON_S};
pub use registry::Registry;
pub use series::{Delta, NO_SLOW_THRESHOLD, Outcome, SeriesStats, Split, seconds_at};
pub use units::{EXACT_SLOTS, Taken, UnitSet, UnitSetLarge, UnitSetSmall};
