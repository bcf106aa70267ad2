//! Conversions between the wire messages and `rampart-stats` values.

use rampart_stats::{BucketOutOfRange, Delta, SparseHistogram};

use crate::rampart::v1::{Histogram, VariantStats};

/// Why a message cannot be turned into stats.
#[derive(Debug, thiserror::Error)]
pub enum InvalidStats {
    #[error("histogram has {buckets} bucket indices but {counts} counts")]
    Lengths { buckets: usize, counts: usize },
    #[error(transparent)]
    Bucket(#[from] BucketOutOfRange),
    #[error("errors ({errors}) or timeouts ({timeouts}) exceed requests ({requests})")]
    Counts { requests: u64, errors: u64, timeouts: u64 },
}

impl From<&SparseHistogram> for Histogram {
    fn from(h: &SparseHistogram) -> Self {
        let (buckets, counts) = h.iter().unzip();
        Histogram { buckets, counts }
    }
}

impl TryFrom<&Histogram> for SparseHistogram {
    type Error = InvalidStats;

    fn try_from(h: &Histogram) -> Result<Self, InvalidStats> {
        if h.buckets.len() != h.counts.len() {
            return Err(InvalidStats::Lengths { buckets: h.buckets.len(), counts: h.counts.len() });
        }
        Ok(SparseHistogram::from_pairs(h.buckets.iter().copied().zip(h.counts.iter().copied()))?)
    }
}

/// The wire form of one series' delta.
pub fn variant_stats(flag: &str, variant: &str, d: &Delta) -> VariantStats {
    VariantStats {
        flag: flag.to_owned(),
        variant: variant.to_owned(),
        requests: d.requests,
        errors: d.errors,
        timeouts: d.timeouts,
        latency_histogram: Some(Histogram::from(&d.latency)),
    }
}

/// The delta carried by a wire message, checked for consistency.
pub fn delta(v: &VariantStats) -> Result<Delta, InvalidStats> {
    if v.errors > v.requests || v.timeouts > v.errors {
        return Err(InvalidStats::Counts { requests: v.requests, errors: v.errors, timeouts: v.timeouts });
    }
    let latency = match &v.latency_histogram {
        Some(h) => SparseHistogram::try_from(h)?,
        None => SparseHistogram::default(),
    };
    Ok(Delta { requests: v.requests, errors: v.errors, timeouts: v.timeouts, latency })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let mut d = Delta { requests: 10, errors: 2, timeouts: 1, latency: SparseHistogram::default() };
        d.latency.record(1500);
        d.latency.record(90_000);
        let wire = variant_stats("f", "on", &d);
        assert_eq!(delta(&wire).unwrap(), d);
        let mut bad = wire.clone();
        bad.errors = 11;
        assert!(delta(&bad).is_err());
        let mut bad = wire;
        bad.latency_histogram.as_mut().unwrap().counts.pop();
        assert!(matches!(delta(&bad), Err(InvalidStats::Lengths { .. })));
    }
}
