//! What a simulated sidecar reports: `series` flag×variant entries per report, with request counts,
//! errors, timeouts and a sparse latency histogram drawn from a log-normal distribution per series.
//!
//! Drawing thousands of latencies per report would make the load tool, not the control plane, the
//! bottleneck; so a pool of variants per series is drawn and encoded once, and each report picks
//! one at random and is assembled from the encoded entries (a memcpy, no protobuf encoding).

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use rampart_proto::convert;
use rampart_proto::rampart::v1::{StatsReport, VariantStats};
use rampart_stats::{Delta, SparseHistogram};

/// Pre-drawn variants per series.
const POOL: usize = 32;
/// `ProxyMessage.report` and `StatsReport.stats` (see `proto/rampart/v1/control.proto`).
const REPORT_FIELD: u32 = 2;
const STATS_FIELD: u32 = 5;

/// The pre-drawn series entries: `pool[series][i]`.
#[derive(Debug)]
pub(crate) struct Pool {
    pool: Vec<Vec<VariantStats>>,
    /// `pool`, each entry encoded as a `StatsReport.stats` field (key, length, message).
    encoded: Vec<Vec<Bytes>>,
}

impl Pool {
    /// `series` entries, each with about `requests` requests per report (uniform in ±50%).
    pub(crate) fn new(series: usize, requests: u64) -> Pool {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let pool = (0..series)
            .map(|s| {
                let flag = format!("loadtest-flag-{:02}", s / 2);
                let variant = if s % 2 == 0 { "off" } else { "on" };
                // Per series: median latency 4–60 ms, error rate 0.2–2%.
                let median_us = 4_000.0 * (15.0f64).powf(rng.f64());
                let error_rate = 0.002 + 0.018 * rng.f64();
                (0..POOL).map(|_| draw(&mut rng, &flag, variant, requests, median_us, error_rate)).collect()
            })
            .collect::<Vec<Vec<VariantStats>>>();
        let encoded = pool
            .iter()
            .map(|variants| {
                variants
                    .iter()
                    .map(|v| {
                        let mut b = BytesMut::new();
                        encode_key(STATS_FIELD, WireType::LengthDelimited, &mut b);
                        encode_varint(v.encoded_len() as u64, &mut b);
                        v.encode_raw(&mut b);
                        b.freeze()
                    })
                    .collect()
            })
            .collect();
        Pool { pool, encoded }
    }

    /// One report, a random draw per series, encoded as a `ProxyMessage` (`report`).
    pub(crate) fn report(&self, rng: &mut fastrand::Rng, seq: u64, start_ms: i64, end_ms: i64) -> Bytes {
        let head = StatsReport {
            seq,
            first_seq: seq,
            window_start_ms: start_ms,
            window_end_ms: end_ms,
            stats: Vec::new(),
            overflow: 0,
            evaluated_flags: Vec::new(),
        };
        let picks: Vec<&Bytes> = self.encoded.iter().map(|v| &v[rng.usize(..v.len())]).collect();
        let len = head.encoded_len() + picks.iter().map(|b| b.len()).sum::<usize>();
        let mut out = BytesMut::with_capacity(len + 16);
        encode_key(REPORT_FIELD, WireType::LengthDelimited, &mut out);
        encode_varint(len as u64, &mut out);
        head.encode_raw(&mut out);
        for b in picks {
            out.put_slice(b);
        }
        out.freeze()
    }

    /// Mean number of non-empty histogram buckets per entry.
    pub(crate) fn mean_buckets(&self) -> f64 {
        let (sum, n) = self.pool.iter().flatten().fold((0usize, 0usize), |(sum, n), v| {
            let buckets = v.latency_histogram.as_ref().and_then(|h| SparseHistogram::try_from(h).ok());
            (sum + buckets.map_or(0, |h| h.iter().len()), n + 1)
        });
        if n == 0 { 0.0 } else { sum as f64 / n as f64 }
    }
}

fn draw(
    rng: &mut fastrand::Rng,
    flag: &str,
    variant: &str,
    requests: u64,
    median_us: f64,
    error_rate: f64,
) -> VariantStats {
    let requests = (requests as f64 * (0.5 + rng.f64())).round() as u64;
    let errors = (0..requests).filter(|_| rng.f64() < error_rate).count() as u64;
    let timeouts = (0..errors).filter(|_| rng.f64() < 0.1).count() as u64;
    let mut latency = SparseHistogram::new();
    // Timed-out requests have no latency, as in the sidecar.
    for _ in 0..requests - timeouts {
        // Log-normal (σ = 0.6) with a 1% slow tail ×5.
        let tail = if rng.f64() < 0.01 { 5.0 } else { 1.0 };
        latency.record((median_us * (0.6 * normal(rng)).exp() * tail) as u64);
    }
    // Synthetic reports carry no randomised (split) part.
    convert::variant_stats(flag, variant, &Delta { requests, errors, timeouts, latency, split: Default::default() })
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u = 1.0 - rng.f64();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_valid_and_sparse() {
        let pool = Pool::new(20, 100);
        let bytes = pool.report(&mut fastrand::Rng::with_seed(1), 7, 1, 2);
        let message = rampart_proto::rampart::v1::ProxyMessage::decode(bytes).unwrap();
        let Some(rampart_proto::rampart::v1::proxy_message::Msg::Report(report)) = message.msg else { panic!() };
        assert_eq!((report.seq, report.first_seq, report.window_start_ms, report.window_end_ms), (7, 7, 1, 2));
        let report = report.stats;
        assert_eq!(report.len(), 20);
        let mut names: Vec<_> = report.iter().map(|v| (v.flag.as_str(), v.variant.as_str())).collect();
        names.dedup();
        assert_eq!(names.len(), 20);
        for v in &report {
            let d = convert::delta(v).expect("valid as the control plane checks it");
            assert_eq!(d.latency.count(), d.requests - d.timeouts);
        }
        assert!((10.0..100.0).contains(&pool.mean_buckets()), "{}", pool.mean_buckets());
    }
}
