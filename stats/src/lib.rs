//! Rampart's request statistics: per flag×variant RED counters and a mergeable log-linear latency
//! histogram, recorded lock-free by the proxy's request tasks and merged by the control plane.
//!
//! Pure: std only, no I/O, no async runtime. The wire encoding lives with the protocol; this crate
//! exposes what it needs ([`SparseHistogram::iter`], [`SparseHistogram::from_pairs`]).
//!
//! ```
//! use rampart_stats::{Outcome, Registry};
//!
//! let registry = Registry::new(1_000);
//! // Snapshot build (rare): resolve the handle once per flag×variant.
//! let series = registry.get_or_create("new-checkout", "on").expect("under the cap");
//! // Per request (hot path): atomics only.
//! series.record(Outcome::Ok, Some(1_250));
//! series.record(Outcome::Timeout, None);
//! // Report tick: drain every series into deltas.
//! let deltas = registry.take_all();
//! assert_eq!(deltas.len(), 1);
//! let (flag, variant, delta) = &deltas[0];
//! assert_eq!((flag.as_str(), variant.as_str()), ("new-checkout", "on"));
//! assert_eq!((delta.requests, delta.errors, delta.timeouts), (2, 1, 1));
//! assert_eq!(delta.latency.count(), 1);
//! ```

mod histogram;
mod registry;
mod series;

pub use histogram::{
    AtomicHistogram, BucketOutOfRange, MAX_TRACKABLE_MICROS, NUM_BUCKETS, SparseHistogram, bucket_bounds, bucket_index,
};
pub use registry::Registry;
pub use series::{Delta, Outcome, SeriesStats};
