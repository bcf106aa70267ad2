//! The fan-in run's figures: totals over every stream, ack latency quantiles, the control plane's
//! CPU and memory over the reporting phase, its own histograms' change, as text and one JSON line.

use std::time::Duration;

use rampart_stats::SparseHistogram;
use serde_json::json;

use super::Args;
use super::sidecar::Tally;
use crate::procfs::Sample;
use crate::prometheus::Histogram;

const INGEST_DELAY: &str = "rampart_control_ingest_delay_seconds";
const BATCH: &str = "rampart_control_commit_batch_reports";

/// What the run collected.
#[derive(Debug)]
pub(super) struct Inputs {
    pub(super) tallies: Vec<Tally>,
    pub(super) open_time: Duration,
    /// The reporting phase: first report to last acknowledgement.
    pub(super) wall: Duration,
    /// The control plane at start, when reporting began, at the end.
    pub(super) control: Option<[Sample; 3]>,
    pub(super) load_tool: [Sample; 2],
    /// The control plane's `/metrics` when reporting began and at the end.
    pub(super) metrics: Option<(String, String)>,
    pub(super) mean_buckets: f64,
}

#[derive(Debug)]
pub(super) struct Summary {
    inputs: Inputs,
    streams: usize,
    sent: u64,
    acked: u64,
    intervals: u64,
    intervals_acked: u64,
    merged: u64,
    shed: u64,
    unacked: u64,
    failed_streams: usize,
    first_error: Option<String>,
    flags_pushed: u64,
    bytes_sent: u64,
    ack_latency: SparseHistogram,
    ingest_delay: Option<Histogram>,
    batch: Option<Histogram>,
}

impl Summary {
    pub(super) fn new(inputs: Inputs) -> Summary {
        let mut s = Summary {
            streams: inputs.tallies.len(),
            sent: 0,
            acked: 0,
            intervals: 0,
            intervals_acked: 0,
            merged: 0,
            shed: 0,
            unacked: 0,
            failed_streams: 0,
            first_error: None,
            flags_pushed: 0,
            bytes_sent: 0,
            ack_latency: SparseHistogram::new(),
            ingest_delay: None,
            batch: None,
            inputs,
        };
        for t in &s.inputs.tallies {
            s.sent += t.sent;
            s.acked += t.acked;
            s.intervals += t.intervals;
            s.intervals_acked += t.intervals_acked;
            s.merged += t.merged;
            s.shed += t.shed;
            s.unacked += t.unacked;
            s.flags_pushed += t.flags_pushed;
            s.bytes_sent += t.bytes_sent;
            s.ack_latency.merge(&t.ack_latency);
            if let Some(e) = &t.error {
                s.failed_streams += 1;
                s.first_error.get_or_insert_with(|| e.clone());
            }
        }
        if let Some((before, after)) = &s.inputs.metrics {
            let delta = |name| Histogram::parse(after, name).since(&Histogram::parse(before, name));
            s.ingest_delay = Some(delta(INGEST_DELAY));
            s.batch = Some(delta(BATCH));
        }
        s
    }

    /// Every interval made was acknowledged and no stream failed.
    pub(super) fn healthy(&self) -> bool {
        self.intervals > 0 && self.intervals_acked == self.intervals && self.unacked == 0 && self.failed_streams == 0
    }

    fn ack_ms(&self, q: f64) -> Option<f64> {
        self.ack_latency.quantile(q).map(|us| us / 1000.0)
    }

    pub(super) fn print(&self, args: &Args) {
        let i = &self.inputs;
        let wall = i.wall.as_secs_f64();
        println!(
            "fanin: {} streams × {} series every {:?} for {:?} ({} streams per connection); all open in {:.2} s",
            self.streams,
            args.series,
            args.interval,
            args.duration,
            args.streams_per_connection,
            i.open_time.as_secs_f64()
        );
        println!(
            "intervals: made {} acked {} unacked {} (merged into unsent reports {}); reports: sent {} acked {}; \
             shed {} times; failed streams {}{}; {:.0} reports/s acked, {:.1} KiB/report, {:.0} buckets/series",
            self.intervals,
            self.intervals_acked,
            self.unacked,
            self.merged,
            self.sent,
            self.acked,
            self.shed,
            self.failed_streams,
            self.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
            self.acked as f64 / wall,
            self.bytes_sent as f64 / self.sent.max(1) as f64 / 1024.0,
            i.mean_buckets
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
        println!(
            "ack latency (send → StatsAck): p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(self.ack_ms(0.5)),
            ms(self.ack_ms(0.9)),
            ms(self.ack_ms(0.99)),
            ms(self.ack_ms(0.999)),
            ms(self.ack_ms(1.0))
        );
        if let Some([start, before, after]) = i.control {
            let cpu = (after.cpu - before.cpu).as_secs_f64();
            println!(
                "control plane: CPU {:.2} s over {:.1} s = {:.1}% of one core (opening the streams: {:.2} s); peak RSS {:.1} MiB; \
                 waited {:.2} s for a CPU (run queue)",
                cpu,
                wall,
                100.0 * cpu / wall,
                (before.cpu - start.cpu).as_secs_f64(),
                after.peak_rss as f64 / (1 << 20) as f64,
                after.run_delay.saturating_sub(before.run_delay).as_secs_f64()
            );
        }
        let [sb, sa] = i.load_tool;
        let own = (sa.cpu - sb.cpu).as_secs_f64();
        println!("load tool: CPU {:.2} s = {:.1}% of one core", own, 100.0 * own / wall);
        if let Some(h) = &self.ingest_delay {
            println!(
                "control {INGEST_DELAY} (window end → commit): n {} mean {} p50 ≈{} p99 ≈{}; ≤10 ms {:.1}%",
                h.count,
                ms(h.mean().map(|s| s * 1e3)),
                ms(h.quantile(0.5).map(|s| s * 1e3)),
                ms(h.quantile(0.99).map(|s| s * 1e3)),
                100.0 * h.share_at_most(0.01).unwrap_or(f64::NAN)
            );
        }
        if let Some(h) = &self.batch {
            // Interpolated quantiles mean little for small integers: say how full the commits were.
            let pct = |le| 100.0 * h.share_at_most(le).unwrap_or(f64::NAN);
            let max = match h.buckets.iter().find(|&&(_, c)| c >= h.count) {
                Some(&(le, _)) if le.is_finite() => format!("≤{le}"),
                _ => format!(">{}", h.buckets.iter().rev().find(|b| b.0.is_finite()).map_or(0.0, |b| b.0)),
            };
            println!(
                "control {BATCH}: {} commits, mean {:.2} reports/commit; 1 report {:.1}%, ≤5 {:.1}%, largest {}",
                h.count,
                h.mean().unwrap_or(f64::NAN),
                pct(1.0),
                pct(5.0),
                max
            );
        }
        println!("{}", self.json(args));
    }

    fn json(&self, args: &Args) -> serde_json::Value {
        let i = &self.inputs;
        let wall = i.wall.as_secs_f64();
        let control = i.control.map(|[start, before, after]| {
            let cpu = (after.cpu - before.cpu).as_secs_f64();
            json!({
                "cpu_seconds": cpu,
                "cpu_percent_of_core": 100.0 * cpu / wall,
                "open_cpu_seconds": (before.cpu - start.cpu).as_secs_f64(),
                "peak_rss_bytes": after.peak_rss,
                "run_queue_wait_seconds": after.run_delay.saturating_sub(before.run_delay).as_secs_f64(),
            })
        });
        let hist = |h: &Option<Histogram>, scale: f64| {
            h.as_ref().map(|h| {
                json!({
                    "count": h.count,
                    "mean": h.mean().map(|v| v * scale),
                    "p50": h.quantile(0.5).map(|v| v * scale),
                    "p99": h.quantile(0.99).map(|v| v * scale),
                    "buckets": h.buckets.iter().map(|&(le, c)| json!([if le.is_finite() { json!(le) } else { json!("+Inf") }, c])).collect::<Vec<_>>(),
                })
            })
        };
        let [sb, sa] = i.load_tool;
        json!({
            "mode": "fanin",
            "streams": self.streams,
            "series": args.series,
            "interval_s": args.interval.as_secs_f64(),
            "duration_s": args.duration.as_secs_f64(),
            "streams_per_connection": args.streams_per_connection,
            "wall_s": wall,
            "open_s": i.open_time.as_secs_f64(),
            "reports": {
                "intervals": self.intervals, "intervals_acked": self.intervals_acked, "unacked_intervals": self.unacked,
                "merged_intervals": self.merged, "shed": self.shed, "sent": self.sent, "acked": self.acked,
                "failed_streams": self.failed_streams, "bytes_per_report": self.bytes_sent / self.sent.max(1),
            },
            "ack_latency_ms": {
                "p50": self.ack_ms(0.5), "p90": self.ack_ms(0.9), "p99": self.ack_ms(0.99),
                "p999": self.ack_ms(0.999), "max": self.ack_ms(1.0),
            },
            "control": control,
            "load_tool_cpu_seconds": (sa.cpu - sb.cpu).as_secs_f64(),
            "ingest_delay_ms": hist(&self.ingest_delay, 1e3),
            "commit_batch_reports": hist(&self.batch, 1.0),
        })
    }
}
