//! The sidecar's Prometheus metrics: one recorder per proxy instance (no global registry), with
//! every per-request handle registered up front so recording never looks a metric up. Series
//! labelled by flag live in [`PerFlag`] instead, so those of flags a reload removed are dropped
//! (the recorder never forgets a series) while the others keep counting across reloads.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

const META: Metadata<'static> = Metadata::new("rampart_proxy", Level::INFO, Some(module_path!()));

/// Upstream latency buckets: upper bounds in microseconds (rendered in seconds).
const LATENCY_BOUNDS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];

const UPSTREAM_LATENCY: &str = "rampart_upstream_latency_seconds";

/// The proxy's metrics registry and its fixed handles.
#[derive(Clone)]
pub(crate) struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    /// Responses by status class: index 0 is 1xx … 4 is 5xx.
    pub(crate) responses: [Counter; 5],
    pub(crate) upstream_latency: Arc<LatencyHistogram>,
    pub(crate) upstream_failures: Counter,
    pub(crate) upstream_timeouts: Counter,
    pub(crate) reloads: Counter,
    pub(crate) reload_failures: Counter,
    pub(crate) tls_reloads: Counter,
    /// TLS handshakes that failed (bad client certificate, protocol errors, timeouts).
    pub(crate) tls_handshake_failures: Counter,
    pub(crate) flags_version: Gauge,
    /// Flags of the served snapshot kept out of service: their rules did not compile.
    pub(crate) flags_out_of_service: Gauge,
    pub(crate) connections: Gauge,
    pub(crate) control_connected: Gauge,
    pub(crate) pending_reports: Gauge,
    /// Requests of tracked flags not recorded because the series cap was reached.
    pub(crate) stats_overflow: Counter,
    per_flag: Arc<PerFlag>,
    /// Requests refused for their head (two Host headers, none in HTTP/1.1).
    pub(crate) requests_refused: Counter,
    /// Request headers dropped because their names contain `_`.
    pub(crate) underscore_headers_dropped: Counter,
    /// `Upgrade: h2c` requests served without upgrading.
    pub(crate) h2c_upgrades_refused: Counter,
    /// Connections closed for staying quiet past their state's timeout.
    pub(crate) connections_timed_out: Counter,
    /// Connections refused because their address held `max_per_address` already.
    pub(crate) connections_refused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        let counter = |name: &'static str| recorder.register_counter(&Key::from_name(name), &META);
        let class = |c: &'static str| {
            recorder.register_counter(&Key::from_parts("rampart_responses_total", vec![Label::new("class", c)]), &META)
        };
        Metrics {
            responses: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            upstream_latency: Arc::default(),
            upstream_failures: counter("rampart_upstream_failures_total"),
            requests_refused: counter("rampart_requests_refused_total"),
            underscore_headers_dropped: counter("rampart_underscore_headers_dropped_total"),
            h2c_upgrades_refused: counter("rampart_h2c_upgrades_refused_total"),
            connections_timed_out: counter("rampart_connections_timed_out_total"),
            connections_refused: counter("rampart_connections_refused_total"),
            upstream_timeouts: counter("rampart_upstream_timeouts_total"),
            reloads: counter("rampart_config_reloads_total"),
            reload_failures: counter("rampart_config_reload_failures_total"),
            tls_reloads: counter("rampart_tls_reloads_total"),
            tls_handshake_failures: counter("rampart_tls_handshake_failures_total"),
            flags_version: recorder.register_gauge(&Key::from_name("rampart_flags_version"), &META),
            flags_out_of_service: recorder.register_gauge(&Key::from_name("rampart_flags_out_of_service"), &META),
            connections: recorder.register_gauge(&Key::from_name("rampart_open_connections"), &META),
            control_connected: recorder.register_gauge(&Key::from_name("rampart_control_stream_connected"), &META),
            pending_reports: recorder.register_gauge(&Key::from_name("rampart_stats_pending_reports"), &META),
            stats_overflow: counter("rampart_stats_overflow_total"),
            recorder: Arc::new(recorder),
            per_flag: Arc::default(),
        }
    }

    /// The counter of evaluations of `flag` that chose `variant` (`""`: no variant).
    pub(crate) fn evaluations(&self, flag: &str, variant: &str) -> Counter {
        self.per_flag.counter("rampart_flag_evaluations_total", flag, Some(variant))
    }

    /// The counter `name` of `flag` (propagation: reused assignments, applied overrides).
    pub(crate) fn per_flag(&self, name: &'static str, flag: &str) -> Counter {
        self.per_flag.counter(name, flag, None)
    }

    /// The flags evaluated (for requests or flag queries) since the last call.
    pub(crate) fn evaluated_flags(&self) -> Vec<String> {
        self.per_flag.evaluated()
    }

    /// Drops the per-flag series of every flag not in `flags` (after a reload removed them).
    pub(crate) fn retain_flags<'a>(&self, flags: impl IntoIterator<Item = &'a str>) {
        self.per_flag.retain(&flags.into_iter().collect());
    }

    /// The counter `name` with one `label = value` (per rejection reason and the like).
    pub(crate) fn labelled(&self, name: &'static str, label: &'static str, value: &str) -> Counter {
        let key = Key::from_parts(name, vec![Label::new(label, value.to_owned())]);
        self.recorder.register_counter(&key, &META)
    }

    /// The counter `name` with `labels` (per cluster endpoint and the like).
    pub(crate) fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    /// The gauge `name` with `labels`.
    pub(crate) fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
    }

    /// Counts a response by its status class.
    pub(crate) fn response(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].increment(1);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut text = self.recorder.handle().render();
        self.upstream_latency.render(UPSTREAM_LATENCY, &mut text);
        self.per_flag.render(&mut text);
        text
    }
}

/// A latency histogram with fixed buckets, in atomics: recording is two relaxed increments, with
/// nothing allocated and nothing kept per sample. The recorder's own histogram keeps every sample
/// until an upkeep folds them into buckets: at 43 000 requests a second and an upkeep every 5 s,
/// that was 1.7 MiB held at the peak, and a block allocated per 64 requests.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// Per bucket, the samples above the previous bound and up to this one; the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one latency in microseconds.
    #[inline]
    pub(crate) fn record(&self, micros: u64) {
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the histogram `name` in the Prometheus text format (buckets cumulative, in seconds).
    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut count = 0u64;
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BOUNDS_US) {
            count += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {count}", bound as f64 / 1e6);
        }
        count += self.buckets[LATENCY_BOUNDS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}\n");
    }
}

/// A per-flag series: metric name, flag, variant (if labelled by one).
type SeriesKey = (&'static str, String, Option<String>);

/// Counters labelled by flag (and variant).
#[derive(Debug, Default)]
struct PerFlag(Mutex<BTreeMap<SeriesKey, Arc<AtomicU64>>>, Mutex<BTreeMap<String, u64>>);

/// The per-flag counters that count a flag's evaluations (requests, flag queries).
const EVALUATIONS: [&str; 2] = ["rampart_flag_evaluations_total", "rampart_flag_queries_total"];

impl PerFlag {
    fn counter(&self, name: &'static str, flag: &str, variant: Option<&str>) -> Counter {
        let mut series = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (name, flag.to_owned(), variant.map(str::to_owned));
        Counter::from_arc(series.entry(key).or_default().clone())
    }

    /// The flags evaluated since the last call (their evaluation counters moved).
    fn evaluated(&self) -> Vec<String> {
        let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
        let series = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((name, flag, _), count) in series.iter() {
            if EVALUATIONS.contains(name) {
                *sums.entry(flag.as_str()).or_default() += count.load(Ordering::Relaxed);
            }
        }
        let mut last = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let moved = sums
            .iter()
            .filter(|(flag, n)| **n > last.get(**flag).copied().unwrap_or(0))
            .map(|(f, _)| (*f).to_owned())
            .collect();
        *last = sums.into_iter().map(|(f, n)| (f.to_owned(), n)).collect();
        moved
    }

    fn retain(&self, flags: &BTreeSet<&str>) {
        let mut series = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        series.retain(|(_, flag, _), _| flags.contains(flag.as_str()));
    }

    fn render(&self, out: &mut String) {
        let series = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut last = "";
        for ((name, flag, variant), count) in series.iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = write!(out, "{name}{{flag=\"{}\"", Escaped(flag));
            if let Some(v) = variant {
                let _ = write!(out, ",variant=\"{}\"", Escaped(v));
            }
            let _ = writeln!(out, "}} {}", count.load(Ordering::Relaxed));
        }
    }
}

/// A label value escaped for the Prometheus text format.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|&(k, v)| Label::new(k, v.to_owned())).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_count_as_evaluated_when_a_request_or_a_query_evaluated_them_since_the_last_report() {
        let m = Metrics::new();
        let (request, query) = (m.evaluations("a", "on"), m.per_flag("rampart_flag_queries_total", "b"));
        let _untouched = m.evaluations("c", "on");
        assert!(m.evaluated_flags().is_empty());
        request.increment(2);
        query.increment(1);
        assert_eq!(m.evaluated_flags(), ["a", "b"]);
        assert!(m.evaluated_flags().is_empty(), "nothing since the last report");
        query.increment(1);
        assert_eq!(m.evaluated_flags(), ["b"]);
    }

    #[test]
    fn latency_buckets_are_cumulative_and_bounds_inclusive() {
        let h = LatencyHistogram::default();
        for micros in [0, 500, 501, 1_000, 2_000_000, 31_000_000] {
            h.record(micros);
        }
        let mut text = String::new();
        h.render("lat", &mut text);
        for line in [
            "# TYPE lat histogram",
            "lat_bucket{le=\"0.0005\"} 2",
            "lat_bucket{le=\"0.001\"} 4",
            "lat_bucket{le=\"2.5\"} 5",
            "lat_bucket{le=\"30\"} 5",
            "lat_bucket{le=\"+Inf\"} 6",
            "lat_sum 33.002001",
            "lat_count 6",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
    }
}
