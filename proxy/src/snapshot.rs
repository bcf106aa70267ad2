//! The immutable, complete state the request path reads with one `ArcSwap` load: the compiled
//! flags, and per injected flag its header name, the header value of each variant and the metric
//! handle of each variant — all built once, so a request only clones reference-counted values.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use metrics::Counter;
use rampart_flags::FlagSet;

use crate::metrics::Metrics;

/// One flag the proxy evaluates and injects.
#[derive(Debug)]
pub(crate) struct Injected {
    /// Index into `Snapshot::flags.flags()`.
    pub(crate) flag: usize,
    pub(crate) header: HeaderName,
    /// Per variant index: the header value and the evaluation counter.
    pub(crate) variants: Vec<(HeaderValue, Counter)>,
    /// Evaluations that chose no variant (disabled, no default, error).
    pub(crate) unresolved: Counter,
}

/// A complete flag configuration as served.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every snapshot this proxy builds.
    pub version: u64,
    pub flags: FlagSet,
    pub(crate) injected: Vec<Injected>,
    pub loaded_at: SystemTime,
}

/// Why a snapshot could not be built from valid flags.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("flag \"{flag}\": variant \"{variant}\" cannot be sent as a header value")]
    HeaderValue { flag: String, variant: String },
    #[error("flag \"{flag}\": its key cannot be part of a header name")]
    HeaderName { flag: String },
}

impl Snapshot {
    /// Builds the snapshot of `flags`: every flag, or only those in `inject` when given.
    pub(crate) fn build(
        version: u64,
        flags: FlagSet,
        prefix: &str,
        inject: Option<&[String]>,
        metrics: &Metrics,
    ) -> Result<Snapshot, SnapshotError> {
        let mut injected = Vec::new();
        for (index, flag) in flags.flags().iter().enumerate() {
            if inject.is_some_and(|keys| !keys.iter().any(|k| k == flag.key())) {
                continue;
            }
            let header = HeaderName::try_from(format!("{prefix}{}", flag.key().to_ascii_lowercase()))
                .map_err(|_| SnapshotError::HeaderName { flag: flag.key().to_owned() })?;
            let variants = flag
                .variants()
                .iter()
                .map(|v| {
                    let value = HeaderValue::try_from(v.name()).map_err(|_| SnapshotError::HeaderValue {
                        flag: flag.key().to_owned(),
                        variant: v.name().to_owned(),
                    })?;
                    Ok((value, metrics.evaluations(flag.key(), v.name())))
                })
                .collect::<Result<_, _>>()?;
            injected.push(Injected { flag: index, header, variants, unresolved: metrics.evaluations(flag.key(), "") });
        }
        Ok(Snapshot { version, flags, injected, loaded_at: SystemTime::now() })
    }
}

/// The live snapshot: swapped whole, read with one load.
pub(crate) type Current = Arc<ArcSwap<Snapshot>>;
