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
        let mut pairs = Vec::new();
        read_pairs(h, &mut pairs)?;
        Ok(SparseHistogram::from_pairs(pairs)?)
    }
}

/// Appends the `(bucket index, count)` pairs of a wire histogram to `into`, reading both fields
/// once, in place: how the control plane takes every report's histograms.
///
/// # Errors
///
/// Either field is not a run of whole varints, the two runs differ in length, or an index lies
/// outside the layout; `into` is then as it was.
pub fn read_pairs(h: &Histogram, into: &mut Vec<(u32, u64)>) -> Result<(), InvalidStats> {
    let start = into.len();
    let result = read_pairs_unchecked(h, into);
    if result.is_err() {
        into.truncate(start);
    }
    result
}

fn read_pairs_unchecked(h: &Histogram, into: &mut Vec<(u32, u64)>) -> Result<(), InvalidStats> {
    let varint =
        |buf: &mut &[u8], field| prost::encoding::decode_varint(buf).map_err(|_| InvalidStats::Encoding { field });
    let (mut buckets, mut counts) = (&h.buckets[..], &h.counts[..]);
    let mut n = 0usize;
    while !buckets.is_empty() && !counts.is_empty() {
        let index = varint(&mut buckets, "buckets")?;
        let count = varint(&mut counts, "counts")?;
        match u32::try_from(index) {
            Ok(index) if (index as usize) < NUM_BUCKETS => into.push((index, count)),
            _ => return Err(BucketOutOfRange { index: u32::try_from(index).unwrap_or(u32::MAX) }.into()),
        }
        n += 1;
    }
    if buckets.is_empty() && counts.is_empty() {
        return Ok(());
    }
    // One run is longer: say by how much, if it is well formed at all.
    let (mut rest, field) = if buckets.is_empty() { (counts, "counts") } else { (buckets, "buckets") };
    let mut more = 0usize;
    while !rest.is_empty() {
        varint(&mut rest, field)?;
        more += 1;
    }
    let (buckets, counts) = if field == "buckets" { (n + more, n) } else { (n, n + more) };
    Err(InvalidStats::Lengths { buckets, counts })
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
        let mut read = vec![(0, 9)];
        read_pairs(wire.latency_histogram.as_ref().unwrap(), &mut read).unwrap();
        assert_eq!(read[1..], d.latency.iter().collect::<Vec<_>>(), "appended, in order");
        let pairs: Vec<(u32, u64)> = d.latency.iter().collect();
        let (buckets, counts): (Vec<u32>, Vec<u64>) = pairs.iter().copied().unzip();
        let mut bad = wire;
        bad.latency_histogram = Some(histogram_of_lists(&buckets, &counts[..1]));
        assert!(matches!(delta(&bad), Err(InvalidStats::Lengths { buckets: 2, counts: 1 })));
        assert!(matches!(
            read_pairs(bad.latency_histogram.as_ref().unwrap(), &mut read),
            Err(InvalidStats::Lengths { .. })
        ));
        assert_eq!(read.len(), 3, "unchanged by what it refused");
        bad.latency_histogram = Some(histogram_of_lists(&[buckets[0], u32::MAX], &counts));
        assert!(matches!(delta(&bad), Err(InvalidStats::Bucket(BucketOutOfRange { index: u32::MAX }))));
        // A varint cut short.
        let truncated = Histogram::from(&SparseHistogram::from_pairs([(5, 300)]).unwrap());
        bad.latency_histogram = Some(Histogram { buckets: truncated.buckets, counts: truncated.counts.slice(..1) });
        assert!(matches!(delta(&bad), Err(InvalidStats::Encoding { field: "counts" })));
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
        let mut pairs = Vec::new();
        read_pairs(&read, &mut pairs).unwrap();
        assert_eq!(pairs, [(3, 1), (200, 70_000), (1983, u64::MAX)]);
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
