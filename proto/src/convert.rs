//! Conversions between the wire messages and `rampart-stats` values.

use rampart_stats::{BucketOutOfRange, Delta, SparseHistogram, Split};

use crate::rampart::v1::{Histogram, SplitStats, VariantStats};

/// Why a message cannot be turned into stats: only a structurally invalid histogram. Counts are
/// taken as sent, even `errors > requests` (see [`delta`]).
#[derive(Debug, thiserror::Error)]
pub enum InvalidStats {
    #[error("histogram has {buckets} bucket indices but {counts} counts")]
    Lengths { buckets: usize, counts: usize },
    #[error(transparent)]
    Bucket(#[from] BucketOutOfRange),
}

impl From<&Split> for SplitStats {
    fn from(s: &Split) -> Self {
        SplitStats {
            requests: s.requests,
            errors: s.errors,
            slow: s.slow,
            units: s.units,
            failing_units: s.failing_units,
            slow_units: s.slow_units,
            new_units: s.new_units,
        }
    }
}

impl From<&SplitStats> for Split {
    fn from(s: &SplitStats) -> Self {
        Split {
            requests: s.requests,
            errors: s.errors,
            slow: s.slow,
            units: s.units,
            failing_units: s.failing_units,
            slow_units: s.slow_units,
            new_units: s.new_units,
        }
    }
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

/// The wire form of one series' delta (`split` left out when all its counts are zero).
pub fn variant_stats(flag: &str, variant: &str, d: &Delta) -> VariantStats {
    VariantStats {
        flag: flag.to_owned(),
        variant: variant.to_owned(),
        requests: d.requests,
        errors: d.errors,
        timeouts: d.timeouts,
        latency_histogram: Some(Histogram::from(&d.latency)),
        split: (!d.split.is_empty()).then(|| SplitStats::from(&d.split)),
    }
}

/// The delta carried by a wire message. The counts are taken as sent: a sidecar drains its
/// counters one after the other while requests go on, so one delta may show `errors > requests`
/// or `timeouts > errors` (most often for a variant whose every request fails — the one to see);
/// sums over deltas are exact. Only a structurally invalid histogram is refused.
pub fn delta(v: &VariantStats) -> Result<Delta, InvalidStats> {
    let latency = match &v.latency_histogram {
        Some(h) => SparseHistogram::try_from(h)?,
        None => SparseHistogram::default(),
    };
    let split = v.split.as_ref().map(Split::from).unwrap_or_default();
    Ok(Delta { requests: v.requests, errors: v.errors, timeouts: v.timeouts, latency, split })
}

/// Whether [`merge_into`] can take `v` whole: its histogram is well formed.
///
/// # Errors
///
/// The same as [`delta`].
pub fn check(v: &VariantStats) -> Result<(), InvalidStats> {
    if let Some(h) = &v.latency_histogram {
        if h.buckets.len() != h.counts.len() {
            return Err(InvalidStats::Lengths { buckets: h.buckets.len(), counts: h.counts.len() });
        }
        if let Some(&index) = h.buckets.iter().find(|&&i| i as usize >= rampart_stats::NUM_BUCKETS) {
            return Err(BucketOutOfRange { index }.into());
        }
    }
    Ok(())
}

/// Adds the delta carried by `v` into `into`, as `into.merge(&delta(v)?)` does, without building
/// the delta (no histogram allocated per series): how the control plane applies reports.
///
/// # Errors
///
/// The same as [`delta`]; `into` is then unchanged.
pub fn merge_into(v: &VariantStats, into: &mut Delta) -> Result<(), InvalidStats> {
    check(v)?;
    into.requests = into.requests.saturating_add(v.requests);
    into.errors = into.errors.saturating_add(v.errors);
    into.timeouts = into.timeouts.saturating_add(v.timeouts);
    if let Some(h) = &v.latency_histogram {
        into.latency.merge_pairs(&h.buckets, &h.counts)?;
    }
    if let Some(split) = &v.split {
        into.split.merge(&Split::from(split));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let split = Split { requests: 8, errors: 2, slow: 1, units: 5, failing_units: 2, slow_units: 1, new_units: 4 };
        let mut d = Delta { requests: 10, errors: 2, timeouts: 1, latency: SparseHistogram::default(), split };
        d.latency.record(1500);
        d.latency.record(90_000);
        let wire = variant_stats("f", "on", &d);
        assert_eq!(wire.split.as_ref().map(|s| (s.units, s.failing_units)), Some((5, 2)));
        assert_eq!(delta(&wire).unwrap(), d);
        let mut into = d.clone();
        merge_into(&wire, &mut into).unwrap();
        let mut twice = d.clone();
        twice.merge(&d);
        assert_eq!(into, twice, "merging the wire form is merging its delta");
        let mut bad = wire;
        bad.latency_histogram.as_mut().unwrap().counts.pop();
        assert!(matches!(delta(&bad), Err(InvalidStats::Lengths { .. })));
        assert!(matches!(merge_into(&bad, &mut into), Err(InvalidStats::Lengths { .. })));
        assert_eq!(into, twice, "unchanged by what it refused");
        bad.latency_histogram.as_mut().unwrap().counts.push(1);
        bad.latency_histogram.as_mut().unwrap().buckets[0] = u32::MAX;
        assert!(matches!(check(&bad), Err(InvalidStats::Bucket(_))));
    }

    #[test]
    fn no_randomised_traffic_no_split_on_the_wire() {
        let d = Delta { requests: 3, ..Delta::default() };
        let wire = variant_stats("f", "on", &d);
        assert_eq!(wire.split, None);
        assert_eq!(delta(&wire).unwrap().split, Split::default());
    }

    #[test]
    fn skewed_counts_are_accepted_as_sent() {
        // Drained mid-request: the errors of requests counted in the previous report.
        let split = Split { requests: 1, errors: 3, failing_units: 2, units: 1, ..Split::default() };
        let d = Delta { requests: 1, errors: 3, timeouts: 4, latency: SparseHistogram::default(), split };
        assert_eq!(delta(&variant_stats("f", "on", &d)).unwrap(), d);
    }
}
