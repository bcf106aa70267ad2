//! Fuzz target for stats reports as the control plane receives them: arbitrary bytes decoded as a
//! `StatsReport` (and as a whole `ProxyMessage`), then every `VariantStats` through
//! [`rampart_proto::convert::delta`]; decoding and conversion fail or succeed, never panic, and
//! whatever converts keeps its counts. Bounded case counts, so it runs in seconds in CI.

use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;
use rampart_proto::convert::{InvalidStats, delta, histogram_of_lists};
use rampart_proto::rampart::v1::{Histogram, ProxyMessage, SplitStats, StatsReport, VariantStats, proxy_message};
use rampart_stats::NUM_BUCKETS;

/// Checks every series of `report` converts or is refused as structurally invalid.
fn convert_all(report: &StatsReport) -> Result<(), TestCaseError> {
    for v in &report.stats {
        match delta(v) {
            Ok(d) => {
                prop_assert_eq!((d.requests, d.errors, d.timeouts), (v.requests, v.errors, v.timeouts));
                let counts: u64 = d.latency.iter().map(|(_, c)| c).fold(0u64, u64::saturating_add);
                prop_assert_eq!(d.latency.count(), counts);
            }
            Err(InvalidStats::Lengths { buckets, counts }) => {
                prop_assert!(v.latency_histogram.is_some(), "a length mismatch needs a histogram");
                prop_assert_ne!(buckets, counts);
            }
            Err(InvalidStats::Bucket(_) | InvalidStats::Encoding { .. }) => {}
        }
    }
    Ok(())
}

/// Buckets in range, at the edges and far outside it.
fn bucket() -> impl Strategy<Value = u32> {
    let n = NUM_BUCKETS as u32;
    prop_oneof![6 => 0..n, 1 => Just(n - 1), 1 => Just(n), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..1000, 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn histogram() -> impl Strategy<Value = Histogram> {
    prop_oneof![
        4 => vec((bucket(), count()), 0..24).prop_map(|pairs| {
            let (buckets, counts): (Vec<u32>, Vec<u64>) = pairs.into_iter().unzip();
            histogram_of_lists(&buckets, &counts)
        }),
        1 => (vec(bucket(), 0..8), vec(count(), 0..8)).prop_map(|(buckets, counts)| histogram_of_lists(&buckets, &counts)),
        // Not runs of whole varints, or runs of other lengths.
        1 => (vec(any::<u8>(), 0..24), vec(any::<u8>(), 0..24))
            .prop_map(|(buckets, counts)| Histogram { buckets: buckets.into(), counts: counts.into() }),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z-]{0,12}", 1 => "\\PC{0,40}", 1 => Just("x".repeat(70_000))]
}

fn variant_stats() -> impl Strategy<Value = VariantStats> {
    let split = proptest::option::of((count(), count(), count(), count(), count(), count(), count()).prop_map(
        |(requests, errors, slow, units, failing_units, slow_units, new_units)| SplitStats {
            requests,
            errors,
            slow,
            units,
            failing_units,
            slow_units,
            new_units,
        },
    ));
    (name(), name(), count(), count(), count(), proptest::option::of(histogram()), split).prop_map(
        |(flag, variant, requests, errors, timeouts, latency_histogram, split)| VariantStats {
            flag,
            variant,
            requests,
            errors,
            timeouts,
            latency_histogram,
            split,
        },
    )
}

fn report() -> impl Strategy<Value = StatsReport> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        any::<i64>(),
        vec(variant_stats(), 0..6),
        any::<u64>(),
        vec(".{0,8}", 0..4),
    )
        .prop_map(|(seq, first_seq, window_start_ms, window_end_ms, stats, overflow, evaluated_flags)| {
            StatsReport { seq, first_seq, window_start_ms, window_end_ms, stats, overflow, evaluated_flags }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes: a decode error or a report whose every series converts or is refused.
    #[test]
    fn arbitrary_bytes_decode_or_fail(bytes in vec(any::<u8>(), 0..2048)) {
        if let Ok(report) = StatsReport::decode(bytes.as_slice()) {
            convert_all(&report)?;
        }
        if let Ok(ProxyMessage { msg: Some(proxy_message::Msg::Report(report)) }) = ProxyMessage::decode(bytes.as_slice()) {
            convert_all(&report)?;
        }
    }

    /// Generated reports (out-of-range buckets, mismatched lengths, extreme counts), encoded, then
    /// damaged: they round-trip when intact and never panic when not.
    #[test]
    fn generated_reports_round_trip_or_fail(report in report(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
        let bytes = report.encode_to_vec();
        let decoded = StatsReport::decode(bytes.as_slice()).expect("an encoded report decodes");
        prop_assert_eq!(&decoded, &report);
        convert_all(&decoded)?;
        if !bytes.is_empty() {
            let at = cut.index(bytes.len());
            let mut damaged = bytes.clone();
            damaged[at] ^= flip | 1;
            if let Ok(r) = StatsReport::decode(damaged.as_slice()) {
                convert_all(&r)?;
            }
            if let Ok(r) = StatsReport::decode(&bytes[..at]) {
                convert_all(&r)?;
            }
        }
    }
}

/// Attack inputs from issue 14 (kept as regression cases): the largest sequence number and window
/// ends, a 1 MB flag name, a histogram naming the last possible bucket with the largest count.
/// The wire layer takes them as sent (bounds are the control plane's ingest), and nothing panics.
#[test]
fn attack_reports_decode_cleanly() {
    let huge = VariantStats {
        flag: "f".repeat(1 << 20),
        variant: "on".to_owned(),
        requests: u64::MAX,
        errors: u64::MAX,
        timeouts: u64::MAX,
        latency_histogram: Some(histogram_of_lists(&[u32::MAX, 0], &[u64::MAX, u64::MAX])),
        split: Some(SplitStats { requests: u64::MAX, units: u64::MAX, ..SplitStats::default() }),
    };
    let report = StatsReport {
        seq: u64::MAX,
        first_seq: u64::MAX,
        window_start_ms: i64::MIN,
        window_end_ms: i64::MAX,
        stats: vec![huge],
        overflow: u64::MAX,
        evaluated_flags: vec![String::new(); 3],
    };
    let decoded = StatsReport::decode(report.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.seq, u64::MAX);
    assert!(matches!(delta(&decoded.stats[0]), Err(InvalidStats::Bucket(_))), "an out-of-range bucket is refused");

    let mut in_range = decoded.stats[0].clone();
    in_range.latency_histogram =
        Some(histogram_of_lists(&[0, NUM_BUCKETS as u32 - 1, 0], &[u64::MAX, u64::MAX, u64::MAX]));
    let d = delta(&in_range).expect("in-range buckets convert");
    assert_eq!(d.latency.count(), u64::MAX, "counts saturate instead of overflowing");

    // A length prefix announcing 2^63 bytes, and a varint longer than ten bytes.
    assert!(StatsReport::decode(&[0x2a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..]).is_err());
    assert!(
        StatsReport::decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..]).is_err()
    );
}
