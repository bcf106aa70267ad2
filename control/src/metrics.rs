//! The control plane's Prometheus metrics, on a recorder of its own (no global registry).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

const META: Metadata<'static> = Metadata::new("rampart_control", Level::INFO, Some(module_path!()));
const INGEST_DELAY: &str = "rampart_control_ingest_delay_seconds";
const BATCH: &str = "rampart_control_commit_batch_reports";

#[derive(Clone)]
pub(crate) struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    pub(crate) reports_applied: Counter,
    pub(crate) reports_duplicate: Counter,
    pub(crate) reports_invalid: Counter,
    pub(crate) commit_failures: Counter,
    /// Series of stats reports dropped for names longer than any flag file allows.
    pub(crate) series_refused: Counter,
    /// Series about a flag from a service not in its `metadata.services`, dropped.
    pub(crate) series_out_of_scope: Counter,
    /// Series about flags or variants not in the current definitions, dropped.
    pub(crate) series_unknown: Counter,
    /// Streams refused because their Hello contradicts their credential.
    pub(crate) streams_refused: Counter,
    /// Reports refused because their sequence jumps past the next one.
    pub(crate) sequence_jumps: Counter,
    /// Sidecars that did not confirm a rollback's flags version within the deadline.
    pub(crate) unresponsive_sidecars: Counter,
    /// Reports shed: their stream had more unanswered than any sidecar sends (each ends its stream
    /// with a pushback).
    reports_shed: Counter,
    /// Reports that found ingest full and waited for room (their stream reading nothing meanwhile).
    reports_waited: Counter,
    /// Streams waiting for room in ingest now, and its gauge (set when rendered).
    streams_waiting: Arc<AtomicI64>,
    waiting: Gauge,
    /// 1 while ingest is saturated (a stream waits for room, or one was shed in the last second),
    /// else 0.
    saturated: Gauge,
    /// When the last report was shed, in ms since the epoch.
    last_shed_ms: Arc<AtomicI64>,
    /// Reports waiting for ingest when it took its last batch.
    pub(crate) ingest_queue: Gauge,
    /// From a report's window end to its commit.
    pub(crate) ingest_delay: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) connected: Gauge,
    pub(crate) flags_version: Gauge,
    /// 1 while this replica leads (always 1 for one control plane on SQLite).
    pub(crate) leader: Gauge,
    /// DORA over the last 30 days: frequency/day, lead time s, failure rate, recovery s, detect s,
    /// bad-variant requests.
    dora: [Gauge; 6],
    /// The (stage, owner) pairs of `rampart_flags` set last, so pairs that emptied go to 0.
    flag_stages: Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full(INGEST_DELAY.to_owned()),
                &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(BATCH.to_owned()), &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0])
            });
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let counter = |n: &'static str| recorder.register_counter(&Key::from_name(n), &META);
        Metrics {
            reports_applied: counter("rampart_control_reports_applied_total"),
            reports_duplicate: counter("rampart_control_reports_duplicate_total"),
            reports_invalid: counter("rampart_control_reports_invalid_total"),
            commit_failures: counter("rampart_control_commit_failures_total"),
            unresponsive_sidecars: counter("rampart_control_unresponsive_sidecars_total"),
            series_refused: counter("rampart_control_series_refused_total"),
            series_out_of_scope: counter("rampart_control_series_out_of_scope_total"),
            series_unknown: counter("rampart_control_series_unknown_total"),
            streams_refused: counter("rampart_control_streams_refused_total"),
            sequence_jumps: counter("rampart_control_sequence_jumps_total"),
            reports_shed: counter("rampart_control_reports_shed_total"),
            reports_waited: counter("rampart_control_reports_waited_total"),
            streams_waiting: Arc::new(AtomicI64::new(0)),
            waiting: recorder.register_gauge(&Key::from_name("rampart_control_streams_waiting_for_ingest"), &META),
            saturated: recorder.register_gauge(&Key::from_name("rampart_control_ingest_saturated"), &META),
            last_shed_ms: Arc::new(AtomicI64::new(i64::MIN)),
            ingest_queue: recorder.register_gauge(&Key::from_name("rampart_control_ingest_queue_reports"), &META),
            ingest_delay: recorder.register_histogram(&Key::from_name(INGEST_DELAY), &META),
            batch_size: recorder.register_histogram(&Key::from_name(BATCH), &META),
            connected: recorder.register_gauge(&Key::from_name("rampart_control_connected_proxies"), &META),
            flags_version: recorder.register_gauge(&Key::from_name("rampart_control_flags_version"), &META),
            leader: recorder.register_gauge(&Key::from_name("rampart_control_leader"), &META),
            dora: [
                "rampart_dora_deployment_frequency_per_day",
                "rampart_dora_lead_time_seconds",
                "rampart_dora_change_failure_rate",
                "rampart_dora_recovery_time_seconds",
                "rampart_dora_time_to_detect_seconds",
                "rampart_dora_bad_variant_requests",
            ]
            .map(|n| recorder.register_gauge(&Key::from_name(n), &META)),
            flag_stages: Arc::default(),
            recorder: Arc::new(recorder),
        }
    }

    pub(crate) fn set_dora(&self, d: &crate::dora::Dora) {
        let values = [
            Some(d.deployment_frequency_per_day),
            d.lead_time_s,
            d.change_failure_rate,
            d.recovery_time_s,
            d.time_to_detect_s,
            Some(d.bad_variant_requests as f64),
        ];
        for (gauge, value) in self.dora.iter().zip(values) {
            gauge.set(value.unwrap_or(0.0));
        }
    }

    /// `rampart_flags{stage, owner}`: how many flags are in each lifecycle stage, per owner.
    pub(crate) fn set_flag_stages(
        &self,
        counts: &std::collections::BTreeMap<(crate::lifecycle::Stage, String), usize>,
    ) {
        let now: std::collections::BTreeSet<(String, String)> =
            counts.keys().map(|(stage, owner)| (stage.as_str().to_owned(), owner.clone())).collect();
        let mut last = crate::state::lock(&self.flag_stages);
        let gauge = |stage: &str, owner: &str| {
            let labels = vec![Label::new("stage", stage.to_owned()), Label::new("owner", owner.to_owned())];
            self.recorder.register_gauge(&Key::from_parts("rampart_flags", labels), &META)
        };
        for (stage, owner) in last.difference(&now) {
            gauge(stage, owner).set(0.0);
        }
        for ((stage, owner), n) in counts {
            gauge(stage.as_str(), owner).set(*n as f64);
        }
        *last = now;
    }

    /// Folds recorded histogram samples into buckets (they are kept raw until then).
    pub(crate) fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// A report was shed: counted, and the control plane reads as saturated for a second.
    pub(crate) fn shed(&self) {
        self.reports_shed.increment(1);
        self.last_shed_ms.store(crate::state::now_ms(), Ordering::Relaxed);
        self.saturated.set(1.0);
    }

    /// A report found ingest full: counted, and the control plane reads as saturated until the
    /// returned guard is dropped (the report is queued, or its stream ended).
    pub(crate) fn wait_for_room(&self) -> Waiting {
        self.reports_waited.increment(1);
        self.streams_waiting.fetch_add(1, Ordering::Relaxed);
        self.saturated.set(1.0);
        Waiting(self.streams_waiting.clone())
    }

    pub(crate) fn render(&self) -> String {
        let recent = crate::state::now_ms().saturating_sub(self.last_shed_ms.load(Ordering::Relaxed)) < 1000;
        let waiting = self.streams_waiting.load(Ordering::Relaxed);
        self.saturated.set(if recent || waiting > 0 { 1.0 } else { 0.0 });
        self.waiting.set(waiting as f64);
        self.recorder.handle().render()
    }
}

/// A stream waiting for room in ingest; see [`Metrics::wait_for_room`].
#[derive(Debug)]
pub(crate) struct Waiting(Arc<AtomicI64>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
