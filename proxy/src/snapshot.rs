//! The immutable, complete state the request path reads with one `ArcSwap` load: the compiled
//! flags, and per injected flag its header name and, per variant, the header value, the evaluation
//! counter and (for tracked flags) the stats series — all built once, so a request only copies
//! the header names and values (static, see `interned.rs`) and counts into the series.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use metrics::Counter;
use rampart_flags::{Flag, FlagSet};
use rampart_stats::{NO_SLOW_THRESHOLD, Registry, SeriesStats};

use crate::interned;
use crate::metrics::Metrics;
use crate::propagate::Prepared;

/// What the proxy precomputes for one variant of an injected flag.
#[derive(Debug)]
pub(crate) struct VariantOut {
    pub(crate) header: HeaderValue,
    pub(crate) evaluations: Counter,
    /// The stats series, when the flag is tracked and the series cap allowed one.
    pub(crate) stats: Option<Arc<SeriesStats>>,
}

/// One flag the proxy evaluates and injects.
#[derive(Debug)]
pub(crate) struct Injected {
    /// Index into `Snapshot::flags.flags()`.
    pub(crate) flag: usize,
    pub(crate) header: HeaderName,
    /// By variant index.
    pub(crate) variants: Vec<VariantOut>,
    /// Evaluations that chose no variant (disabled, no default, error).
    pub(crate) unresolved: Counter,
    /// Whether requests are recorded per variant (a ramp, or `metadata.track: true`).
    pub(crate) tracked: bool,
    /// Whether a route matches on this flag's variant (its assignment is then returned by
    /// `inject_flags` even when the flag is not tracked).
    pub(crate) routed: bool,
    /// The ramp's `slowUs`: a randomised request slower than this (µs) counts as slow;
    /// [`NO_SLOW_THRESHOLD`] without a ramp or a threshold.
    pub(crate) slow_us: u64,
}

/// A complete flag configuration as served.
#[derive(Debug)]
pub struct Snapshot {
    /// From the control plane: its version. From a local file: 1, 2, … per load (0 when a local
    /// file only bootstraps a sidecar that follows a control plane).
    pub version: u64,
    pub flags: FlagSet,
    pub(crate) injected: Vec<Injected>,
    /// Each route's flag condition resolved against these flags (set by `route::prepare`).
    pub(crate) routes: crate::route::Resolved,
    pub loaded_at: SystemTime,
    /// Signed assignments across hops, prepared for these flags (`[propagation]`).
    pub(crate) propagation: Option<Prepared>,
    /// Per flag (by position in `flags`), the flag queries (gRPC, OFREP) that evaluated it.
    pub(crate) queried: Vec<Counter>,
}

/// Why a snapshot could not be built from valid flags.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("flag \"{flag}\": variant \"{variant}\" cannot be sent as a header value")]
    HeaderValue { flag: String, variant: String },
    #[error("flag \"{flag}\": its key cannot be part of a header name")]
    HeaderName { flag: String },
}

/// Whether a flag's requests are recorded per variant.
pub(crate) fn tracked(flag: &Flag) -> bool {
    flag.ramp().is_some() || flag.metadata().get("track").and_then(|v| v.as_bool()) == Some(true)
}

/// What a snapshot is built with besides the flags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outputs<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) inject: Option<&'a [String]>,
    pub(crate) metrics: &'a Metrics,
    pub(crate) stats: &'a Registry,
}

impl Snapshot {
    /// Builds the snapshot of `flags`: every flag, or only those in `inject` when given.
    ///
    /// First retires the stats series these flags no longer track (an ended ramp, a removed flag
    /// or variant): they go on counting for the snapshot still served and are freed once their
    /// last counts are reported (see `rampart_stats::Registry`), and their live slots serve the
    /// series created here at once.
    pub(crate) fn build(version: u64, flags: FlagSet, out: Outputs<'_>) -> Result<Snapshot, SnapshotError> {
        let injects = |flag: &Flag| out.inject.is_none_or(|keys| keys.iter().any(|k| k == flag.key()));
        out.stats.retain(|key, variant| {
            flags.get(key).is_some_and(|f| injects(f) && tracked(f) && f.variant(variant).is_some())
        });
        let mut injected = Vec::new();
        for (index, flag) in flags.flags().iter().enumerate() {
            if !injects(flag) {
                continue;
            }
            let header = HeaderName::try_from(format!("{}{}", out.prefix, flag.key().to_ascii_lowercase()))
                .map(interned::name)
                .map_err(|_| SnapshotError::HeaderName { flag: flag.key().to_owned() })?;
            let tracked = tracked(flag);
            let variants = flag
                .variants()
                .iter()
                .map(|v| {
                    let header = HeaderValue::try_from(v.name()).map(interned::value).map_err(|_| {
                        SnapshotError::HeaderValue { flag: flag.key().to_owned(), variant: v.name().to_owned() }
                    })?;
                    Ok(VariantOut {
                        header,
                        evaluations: out.metrics.evaluations(flag.key(), v.name()),
                        stats: if tracked { out.stats.get_or_create(flag.key(), v.name()) } else { None },
                    })
                })
                .collect::<Result<_, _>>()?;
            injected.push(Injected {
                flag: index,
                header,
                variants,
                unresolved: out.metrics.evaluations(flag.key(), ""),
                tracked,
                routed: false,
                slow_us: flag.ramp().and_then(|r| r.slow_us()).unwrap_or(NO_SLOW_THRESHOLD),
            });
        }
        let queried =
            flags.flags().iter().map(|f| out.metrics.per_flag("rampart_flag_queries_total", f.key())).collect();
        Ok(Snapshot {
            version,
            queried,
            flags,
            injected,
            routes: Default::default(),
            loaded_at: SystemTime::now(),
            propagation: None,
        })
    }
}

impl Snapshot {
    /// Counts a flag query's evaluation of the flag at `position` in `flags`.
    pub(crate) fn count_query(&self, position: usize) {
        if let Some(c) = self.queried.get(position) {
            c.increment(1);
        }
    }
}

/// The live snapshot: swapped whole, read with one load.
pub(crate) type Current = Arc<ArcSwap<Snapshot>>;
