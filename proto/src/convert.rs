//! Conversions between the wire messages and `rampart-stats` values.

use rampart_stats::{BucketOutOfRange, Delta, NUM_BUCKETS, SparseHistogram, Split};

use crate::rampart::v1::{Histogram, SplitStats, VariantStats};

/// Why a message cannot be turned into stats: only a structurally invalid histogram. Counts are
/// taken as sent, even `errors > requests` (see [`delta`]).
#[derive(Debug, thiserror::Error)]
pub enum InvalidStats {
    #[error("histogram has {buckets} bucket indices but {counts} counts")]
    Lengths { buckets: usize, counts: usize },
    #[error(transparent)]
    Bucket(#[from] BucketOutOfRange),
    #[error("histogram {field} is not a run of varints")]
    Encoding { field: &'static str },
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
        // Indices below 1 984 take two bytes at most; most counts one or two.
        let n = h.iter().len();
        let (mut buckets, mut counts) = (Vec::with_capacity(2 * n), Vec::with_capacity(2 * n));
        for (index, count) in h.iter() {
            prost::encoding::encode_varint(u64::from(index), &mut buckets);
            prost::encoding::encode_varint(count, &mut counts);
        }
        Histogram { buckets: buckets.into(), counts: counts.into() }
    }
}

/// The wire form of raw index and count lists, valid or not (the lists' lengths may differ): for
/// tests, and for peers that hold their histograms that way.
pub fn histogram_of_lists(buckets: &[u32], counts: &[u64]) -> Histogram {
    let mut b = Vec::with_capacity(2 * buckets.len());
    let mut c = Vec::with_capacity(2 * counts.len());
    buckets.iter().for_each(|&i| prost::encoding::encode_varint(u64::from(i), &mut b));
    counts.iter().for_each(|&n| prost::encoding::encode_varint(n, &mut c));
    Histogram { buckets: b.into(), counts: c.into() }
}

impl TryFrom<&Histogram> for SparseHistogram {
    type Error = InvalidStats;

    fn try_from(h: &Histogram) -> Result<Self, InvalidStats> {
        check_histogram(h)?;
        Ok(SparseHistogram::from_pairs(pairs(h))?)
    }
}

/// Checks a wire histogram: both fields runs of whole varints, as many counts as indices, every
/// index inside the layout. Returns the number of pairs.
///
/// # Errors
///
/// What is wrong, first found first.
pub fn check_histogram(h: &Histogram) -> Result<usize, InvalidStats> {
    let mut buckets = &h.buckets[..];
    let mut n = 0usize;
    while !buckets.is_empty() {
        let index =
            prost::encoding::decode_varint(&mut buckets).map_err(|_| InvalidStats::Encoding { field: "buckets" })?;
        if index >= NUM_BUCKETS as u64 {
            return Err(BucketOutOfRange { index: u32::try_from(index).unwrap_or(u32::MAX) }.into());
        }
        n += 1;
    }
    let mut counts = &h.counts[..];
    let mut m = 0usize;
    while !counts.is_empty() {
        prost::encoding::decode_varint(&mut counts).map_err(|_| InvalidStats::Encoding { field: "counts" })?;
        m += 1;
    }
    if n != m {
        return Err(InvalidStats::Lengths { buckets: n, counts: m });
    }
    Ok(n)
}

/// The `(bucket index, count)` pairs of a wire histogram, read in place (no allocation). Meant for
/// a histogram [`check_histogram`] accepted: on a malformed one it stops at the first fault.
pub fn pairs(h: &Histogram) -> Pairs<'_> {
    Pairs { buckets: &h.buckets, counts: &h.counts }
}

/// See [`pairs`].
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    buckets: &'a [u8],
    counts: &'a [u8],
}

impl Iterator for Pairs<'_> {
    type Item = (u32, u64);

    #[inline]
    fn next(&mut self) -> Option<(u32, u64)> {
        if self.buckets.is_empty() || self.counts.is_empty() {
            return None;
        }
        let index = prost::encoding::decode_varint(&mut self.buckets).ok()?;
        let count = prost::encoding::decode_varint(&mut self.counts).ok()?;
        Some((u32::try_from(index).ok()?, count))
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
    match &v.latency_histogram {
        Some(h) => check_histogram(h).map(drop),
        None => Ok(()),
    }
}

/// Adds the delta carried by `v` into `into`, as `into.merge(&delta(v)?)` does, without building
/// the delta: how the control plane applies reports. `scratch` holds the histogram's pairs while
/// they are merged (cleared first; reused across calls, so nothing is allocated per series).
///
/// # Errors
///
/// The same as [`delta`]; `into` is then unchanged.
pub fn merge_into(v: &VariantStats, into: &mut Delta, scratch: &mut Vec<(u32, u64)>) -> Result<(), InvalidStats> {
    check(v)?;
    into.requests = into.requests.saturating_add(v.requests);
    into.errors = into.errors.saturating_add(v.errors);
    into.timeouts = into.timeouts.saturating_add(v.timeouts);
    if let Some(h) = &v.latency_histogram {
        scratch.clear();
        scratch.extend(pairs(h));
        into.latency.merge_pairs(scratch)?;
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
        let mut scratch = Vec::new();
        merge_into(&wire, &mut into, &mut scratch).unwrap();
        let mut twice = d.clone();
        twice.merge(&d);
        assert_eq!(into, twice, "merging the wire form is merging its delta");
        let pairs: Vec<(u32, u64)> = d.latency.iter().collect();
        let (buckets, counts): (Vec<u32>, Vec<u64>) = pairs.iter().copied().unzip();
        let mut bad = wire;
        bad.latency_histogram = Some(histogram_of_lists(&buckets, &counts[..1]));
        assert!(matches!(delta(&bad), Err(InvalidStats::Lengths { buckets: 2, counts: 1 })));
        assert!(matches!(merge_into(&bad, &mut into, &mut scratch), Err(InvalidStats::Lengths { .. })));
        assert_eq!(into, twice, "unchanged by what it refused");
        bad.latency_histogram = Some(histogram_of_lists(&[u32::MAX, buckets[1]], &counts));
        assert!(matches!(check(&bad), Err(InvalidStats::Bucket(BucketOutOfRange { index: u32::MAX }))));
        // A varint cut short.
        let truncated = Histogram::from(&SparseHistogram::from_pairs([(5, 300)]).unwrap());
        bad.latency_histogram = Some(Histogram { buckets: truncated.buckets, counts: truncated.counts.slice(..1) });
        assert!(matches!(check(&bad), Err(InvalidStats::Encoding { field: "counts" })));
    }

    #[test]
    fn the_wire_form_is_the_packed_repeated_fields() {
        // What an encoder of `repeated uint32 buckets = 1; repeated uint64 counts = 2;` writes.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Packed {
            #[prost(uint32, repeated, tag = "1")]
            buckets: Vec<u32>,
            #[prost(uint64, repeated, tag = "2")]
            counts: Vec<u64>,
        }
        use prost::Message as _;
        let h = SparseHistogram::from_pairs([(3, 1), (200, 70_000), (1983, u64::MAX)]).unwrap();
        let packed = Packed { buckets: vec![3, 200, 1983], counts: vec![1, 70_000, u64::MAX] };
        assert_eq!(Histogram::from(&h).encode_to_vec(), packed.encode_to_vec());
        let read = Histogram::decode(&packed.encode_to_vec()[..]).unwrap();
        assert_eq!(SparseHistogram::try_from(&read).unwrap(), h);
        assert_eq!(pairs(&read).collect::<Vec<_>>(), [(3, 1), (200, 70_000), (1983, u64::MAX)]);
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
