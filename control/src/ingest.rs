//! Applying stats reports exactly once, with group commit: one task takes every submitted report
//! in arrival order, drops each whose `(proxy_id, epoch, seq)` is already applied, refuses one
//! that jumps past the next sequence number (no sidecar does: see `proxy/src/reporter/pending.rs`),
//! and commits the new totals with the new sequences in one transaction per batch. Only after the
//! commit does it answer on the report's stream, so a sidecar's report is acknowledged exactly when
//! it is durable, and only then do the reports' randomised windows reach the ramp engine (once,
//! like the totals). Only series of defined flags and variants are kept, at most
//! [`MAX_SERIES_PER_REPORT`] per report and [`MAX_SERIES`] in all; the rest are dropped and counted.
//!
//! What waits here is bounded (see [`Ingest`]): past it a stream waits for room, reading nothing
//! more, so the sidecars hold and merge their next reports themselves.
//!
//! With replicas (a shared PostgreSQL store) the store checks that each sidecar's sequence is
//! still the one this replica read; when another replica applied some of its reports meanwhile,
//! nothing is written, the replica rereads those sequences and decides the batch again. The
//! randomised windows then go through the store to the leader's engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rampart_flags::MAX_NAME_BYTES;
use rampart_proto::convert;
use rampart_proto::rampart::v1::{ControlMessage, StatsAck, StatsReport, control_message};
use rampart_stats::{Delta, DenseHistogram, SparseHistogram, Split};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::{Shared, lock, now_ms};
use crate::store::{Batch, ProxyKey, SeqRow, StoreError, TotalRow, WindowRow};

/// Most reports committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Most series one report may bring (a sidecar records 1 000 by default); the rest are dropped
/// and counted.
const MAX_SERIES_PER_REPORT: usize = 10_000;
/// Most series kept in all; new ones past it are dropped and counted.
pub(crate) const MAX_SERIES: usize = 100_000;

/// What one stream may send back: a message, or the status that ends it.
pub(crate) type Outbound = Result<ControlMessage, tonic::Status>;

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Applied,
    /// Already applied earlier: acknowledged, not counted again.
    Duplicate,
    /// Malformed: acknowledged and dropped (it can never apply), counted.
    Invalid,
    /// Past the next sequence number, which no sidecar sends: refused (not acknowledged, the stream
    /// ends), counted; the sequence stays where it was.
    Jump {
        expected: u64,
    },
    /// The store failed: not acknowledged, the stream ends, the sidecar resends.
    Failed,
}

/// The stream a report came on, shared by all its reports: where the answer goes.
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) key: ProxyKey,
    /// The service the reporting sidecar serves (bound to its credential when tokens say so).
    pub(crate) service: String,
    /// Identifies the stream in `Shared::proxies`.
    pub(crate) stream: u64,
    /// The stream's outbound messages; acknowledgements go in with `try_send` (a stream keeps at
    /// most [`MAX_IN_FLIGHT_PER_STREAM`] reports unanswered and its channel has room for them).
    pub(crate) out: mpsc::Sender<Outbound>,
    /// Reports submitted and not yet answered.
    pub(crate) in_flight: AtomicUsize,
    /// Cancelled when ingest ends the stream (a refused jump, a failed commit).
    pub(crate) ended: CancellationToken,
}

/// Most reports one stream may have unanswered (a sidecar keeps 16 in flight).
pub(crate) const MAX_IN_FLIGHT_PER_STREAM: usize = 32;

#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) origin: Arc<Origin>,
    pub(crate) report: StatsReport,
    /// The report's share of the ingest budget, given back once it is answered.
    pub(crate) _budget: OwnedSemaphorePermit,
}

/// The way into ingest, bounded twice: in reports (the queue's length) and in bytes (the encoded
/// size of the reports queued or being applied). A report that does not fit waits for room, and
/// its stream reads nothing more meanwhile: HTTP/2 flow control then holds the sidecar's next
/// reports on its side, where unsent intervals merge (`proxy/src/reporter/pending.rs`). What the
/// control plane holds stays bounded — the queue, one decoded report per waiting stream, and the
/// streams' flow-control windows — and no report is decoded only to be dropped.
#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    tx: mpsc::Sender<Submission>,
    /// KiB of reports queued or being applied.
    budget: Arc<Semaphore>,
    /// The budget's size, in KiB.
    budget_kib: u32,
}

/// Why a report was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The stream has more reports unanswered than any sidecar sends: shed.
    Saturated,
    /// Ingest has stopped.
    Closed,
}

impl Ingest {
    /// A queue of at most `reports` reports and `bytes` bytes (a larger report still fits alone
    /// in an empty queue), and its receiving end for [`run`].
    pub(crate) fn new(reports: usize, bytes: usize) -> (Ingest, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(reports.max(1));
        let kib = u32::try_from((bytes / 1024).clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        (Ingest { tx, budget: Arc::new(Semaphore::new(kib as usize)), budget_kib: kib }, rx)
    }

    /// Queues `report` (of `size` encoded bytes), waiting for room when ingest is full (first
    /// come, first served). Cancel-safe: dropped while waiting, it leaves nothing behind.
    pub(crate) async fn submit(
        &self,
        origin: &Arc<Origin>,
        report: StatsReport,
        size: usize,
        metrics: &Metrics,
    ) -> Result<(), Refused> {
        if origin.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT_PER_STREAM {
            return Err(Refused::Saturated);
        }
        // A report larger than the whole budget may still go alone, taking all of it.
        let want = u32::try_from(size / 1024 + 1).unwrap_or(u32::MAX).min(self.budget_kib);
        let mut waiting = None;
        let budget = match self.budget.clone().try_acquire_many_owned(want) {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(Refused::Closed),
            Err(TryAcquireError::NoPermits) => {
                waiting = Some(metrics.wait_for_room());
                self.budget.clone().acquire_many_owned(want).await.map_err(|_| Refused::Closed)?
            }
        };
        let slot = match self.tx.try_reserve() {
            Ok(slot) => slot,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(Refused::Closed),
            Err(mpsc::error::TrySendError::Full(())) => {
                if waiting.is_none() {
                    waiting = Some(metrics.wait_for_room());
                }
                self.tx.reserve().await.map_err(|_| Refused::Closed)?
            }
        };
        drop(waiting);
        origin.in_flight.fetch_add(1, Ordering::Relaxed);
        slot.send(Submission { origin: origin.clone(), report, _budget: budget });
        Ok(())
    }
}

/// Runs until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Submission>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut pool = DensePool::default();
    let mut last_commit = tokio::time::Instant::now();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Group commit: a commit writes every series the batch touched, whether one report or a
        // thousand brought it, so under load commits are spaced at least MIN_COMMIT_INTERVAL apart
        // and the reports that arrive meanwhile join the batch. An idle control plane (the last
        // commit long ago) commits at once.
        let since = last_commit.elapsed();
        if batch.len() < MAX_BATCH && since < MIN_COMMIT_INTERVAL {
            tokio::time::sleep(MIN_COMMIT_INTERVAL - since).await;
            while batch.len() < MAX_BATCH
                && let Ok(s) = rx.try_recv()
            {
                batch.push(s);
            }
        }
        last_commit = tokio::time::Instant::now();
        shared.metrics.ingest_queue.set(rx.len() as f64);
        apply(&shared, std::mem::take(&mut batch), &mut pool).await;
        // The ingest histograms are recorded here, so their upkeep is done here too.
        shared.metrics.upkeep();
    }
}

/// Least time between the starts of two commits while reports keep coming.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(5);

/// Dense histograms kept between batches: one per series a batch touches (twice for a ramp's),
/// allocated once.
#[derive(Debug, Default)]
struct DensePool(Vec<DenseHistogram>);

impl DensePool {
    /// Most kept between batches (15.5 KiB each).
    const KEEP: usize = 512;

    fn take(&mut self) -> DenseHistogram {
        self.0.pop().unwrap_or_default()
    }

    fn give(&mut self, h: DenseHistogram) {
        if self.0.len() < Self::KEEP {
            self.0.push(h);
        }
    }
}

/// Per (flag, variant) named by the batch's reports, borrowed from them.
type Series<'a, T> = HashMap<(&'a str, &'a str), T>;

/// One series' sum over a batch: its total so far plus the batch's counts, the batch's latency
/// pairs summed densely and merged into the total once.
#[derive(Debug)]
struct Sum {
    total: Delta,
    latency: DenseHistogram,
}

async fn apply(shared: &Arc<Shared>, batch: Vec<Submission>, pool: &mut DensePool) {
    let outcomes = match decide_and_commit(shared, &batch, pool).await {
        Ok(outcomes) => outcomes,
        Err(Stale) => {
            // A sidecar's reports were applied at another replica since this one read its
            // sequence: reread the batch's sequences and decide again.
            refresh_seqs(shared, &batch).await;
            decide_and_commit(shared, &batch, pool).await.unwrap_or_else(|Stale| {
                shared.metrics.commit_failures.increment(1);
                vec![Outcome::Failed; batch.len()]
            })
        }
    };
    answer(shared, batch, outcomes);
}

/// The store said a sequence this replica read had moved on elsewhere.
#[derive(Debug)]
struct Stale;

/// Rereads the stored sequences of the batch's sidecars.
async fn refresh_seqs(shared: &Arc<Shared>, batch: &[Submission]) {
    let keys: std::collections::HashSet<ProxyKey> = batch.iter().map(|s| s.origin.key.clone()).collect();
    let shared2 = shared.clone();
    let fresh = tokio::task::spawn_blocking(move || {
        keys.into_iter().map(|k| shared2.store.seq(&k).map(|seq| (k, seq))).collect::<Result<Vec<_>, _>>()
    })
    .await;
    match fresh {
        Ok(Ok(fresh)) => lock(&shared.seqs).extend(fresh),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot reread sidecar sequences"),
        Err(e) => tracing::warn!(error = %e, "rereading sidecar sequences failed"),
    }
}

/// Decides what becomes of each report and commits the applied ones; `Err(Stale)` when the store
/// refused the batch for a stale sequence (nothing was written).
async fn decide_and_commit(
    shared: &Arc<Shared>,
    batch: &[Submission],
    pool: &mut DensePool,
) -> Result<Vec<Outcome>, Stale> {
    let mut outcomes = Vec::with_capacity(batch.len());
    // Borrowed from the batch: no name is copied per report, only once per series per batch.
    let mut seqs: HashMap<&ProxyKey, (u64, &Arc<Origin>)> = HashMap::new();
    // The sequence applied before this batch, per sidecar (checked by a shared store).
    let mut priors: HashMap<&ProxyKey, u64> = HashMap::new();
    // When the batch's reports last saw each flag evaluated.
    let mut evaluated: HashMap<&str, i64> = HashMap::new();
    let mut totals: Series<'_, Sum> = HashMap::new();
    let mut windows: Series<'_, (Split, DenseHistogram)> = HashMap::new();
    // One report's latency pairs, read off the wire once, and each series' range of them.
    let mut pairs: Vec<(u32, u64)> = Vec::new();
    let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
    let current_flags = shared.flags.borrow().clone();
    let scopes = scopes(&current_flags.definition);
    let defined = defined_series(&current_flags.definition);
    {
        let mut new_series = 0usize;
        let current = lock(&shared.totals);
        let applied = lock(&shared.seqs);
        for s in batch {
            let key = &s.origin.key;
            let last = seqs.get(key).map(|&(seq, _)| seq).or_else(|| applied.get(key).copied()).unwrap_or(0);
            if s.report.seq <= last {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            if s.report.seq > last + 1 {
                tracing::warn!(proxy = %key.0, seq = s.report.seq, expected = last + 1, "sequence jump refused");
                outcomes.push(Outcome::Jump { expected: last + 1 });
                continue;
            }
            pairs.clear();
            spans.clear();
            let valid = s.report.stats.iter().all(|v| {
                let start = pairs.len();
                let read = v.latency_histogram.as_ref().map_or(Ok(()), |h| convert::read_pairs(h, &mut pairs));
                spans.push(start..pairs.len());
                read.is_ok()
            });
            if !valid {
                tracing::warn!(proxy = %key.0, seq = s.report.seq, "invalid stats report dropped");
                outcomes.push(Outcome::Invalid);
                continue;
            }
            for (i, v) in s.report.stats.iter().enumerate() {
                // Names no flag file can hold (see `rampart_flags::MAX_NAME_BYTES`), and series
                // past a report's share: dropped, so a stream cannot grow the control plane's maps.
                if i >= MAX_SERIES_PER_REPORT || v.flag.len() > MAX_NAME_BYTES || v.variant.len() > MAX_NAME_BYTES {
                    shared.metrics.series_refused.increment(1);
                    continue;
                }
                // Only series of the flags and variants the control plane distributes.
                if !defined.get(v.flag.as_str()).is_some_and(|variants| variants.contains(&v.variant.as_str())) {
                    shared.metrics.series_unknown.increment(1);
                    continue;
                }
                // Evidence about a flag counts only from the services that serve it.
                if scopes.get(v.flag.as_str()).is_some_and(|services| !services.contains(&s.origin.service.as_str())) {
                    shared.metrics.series_out_of_scope.increment(1);
                    continue;
                }
                let series = (v.flag.as_str(), v.variant.as_str());
                let sum = match totals.get_mut(&series) {
                    Some(sum) => sum,
                    None => {
                        // First time in this batch: start from the totals so far.
                        let owned = (v.flag.clone(), v.variant.clone());
                        let total = match current.get(&owned) {
                            Some(t) => t.clone(),
                            None if current.len() + new_series >= MAX_SERIES => {
                                shared.metrics.series_refused.increment(1);
                                continue;
                            }
                            None => {
                                new_series += 1;
                                Delta::default()
                            }
                        };
                        totals.entry(series).or_insert(Sum { total, latency: pool.take() })
                    }
                };
                sum.total.requests = sum.total.requests.saturating_add(v.requests);
                sum.total.errors = sum.total.errors.saturating_add(v.errors);
                sum.total.timeouts = sum.total.timeouts.saturating_add(v.timeouts);
                let latency = &pairs[spans[i].clone()];
                // Read above: every index is in range.
                for &(index, count) in latency {
                    let _ = sum.latency.add(index, count);
                }
                if let Some(split) = v.split.as_ref().map(Split::from).filter(|s| !s.is_empty()) {
                    sum.total.split.merge(&split);
                    let (arm, window) = windows.entry(series).or_insert_with(|| (Split::default(), pool.take()));
                    arm.merge(&split);
                    for &(index, count) in latency {
                        let _ = window.add(index, count);
                    }
                }
            }
            // When flags were last evaluated (defined flags only, at most a report's share).
            let at = s.report.window_end_ms.min(now_ms());
            for flag in s.report.evaluated_flags.iter().take(MAX_SERIES_PER_REPORT) {
                if defined.contains_key(flag.as_str()) {
                    let last = evaluated.entry(flag.as_str()).or_insert(at);
                    *last = (*last).max(at);
                }
            }
            priors.entry(key).or_insert(last);
            seqs.insert(key, (s.report.seq, &s.origin));
            outcomes.push(Outcome::Applied);
        }
    }
    // The batch's latency sums go into the totals, once per series; the dense sums go back.
    let totals: Vec<((String, String), Delta)> = totals
        .into_iter()
        .map(|((f, v), mut sum)| {
            sum.latency.drain_into(&mut sum.total.latency);
            pool.give(sum.latency);
            ((f.to_owned(), v.to_owned()), sum.total)
        })
        .collect();
    let windows: Vec<((String, String), (Split, SparseHistogram))> = windows
        .into_iter()
        .map(|((f, v), (arm, mut dense))| {
            let mut latency = SparseHistogram::new();
            dense.drain_into(&mut latency);
            pool.give(dense);
            ((f.to_owned(), v.to_owned()), (arm, latency))
        })
        .collect();
    if seqs.is_empty() {
        return Ok(outcomes);
    }
    let usage = usage_to_write(shared, &evaluated);
    let replicated = shared.replicas.is_some();
    let store = shared.store.clone();
    let rows_totals = totals;
    let rows_seqs: Vec<(Arc<Origin>, u64, u64)> =
        seqs.iter().map(|(key, &(seq, o))| (o.clone(), priors.get(key).copied().unwrap_or(0), seq)).collect();
    let rows_windows = windows;
    let committed = tokio::task::spawn_blocking(move || {
        let batch = Batch {
            totals: rows_totals.iter().map(|((flag, variant), totals)| TotalRow { flag, variant, totals }).collect(),
            seqs: rows_seqs.iter().map(|(o, prior, last)| SeqRow { key: &o.key, prior: *prior, last: *last }).collect(),
            // With replicas, the windows go through the store to the leader's engine.
            windows: if replicated {
                rows_windows
                    .iter()
                    .map(|((flag, variant), (arm, latency))| WindowRow { flag, variant, arm, latency })
                    .collect()
            } else {
                Vec::new()
            },
        };
        let result = store.commit_batch(&batch);
        // When flags were last evaluated: for their lifecycle, not for counting (best effort).
        if result.is_ok()
            && !usage.is_empty()
            && let Err(e) = store.touch_flags(&usage)
        {
            tracing::warn!(error = %e, "cannot record when flags were last evaluated");
        }
        (result, rows_totals, rows_seqs, rows_windows)
    })
    .await;
    match committed {
        Ok((Ok(()), new_totals, new_seqs, new_windows)) => {
            lock(&shared.totals).extend(new_totals);
            let mut applied = lock(&shared.seqs);
            for (origin, _, seq) in new_seqs {
                match applied.get_mut(&origin.key) {
                    Some(last) => *last = seq,
                    None => {
                        applied.insert(origin.key.clone(), seq);
                    }
                }
            }
            drop(applied);
            if !replicated {
                let mut pending = lock(&shared.windows);
                for (key, (arm, latency)) in new_windows {
                    let (a, l) = pending.entry(key).or_default();
                    a.merge(&arm);
                    l.merge(&latency);
                }
            }
        }
        Ok((Err(StoreError::Conflict(why)), ..)) => {
            tracing::info!(%why, "batch refused by the store; rereading sequences");
            return Err(Stale);
        }
        Ok((Err(e), ..)) => {
            tracing::error!(error = %e, "committing stats failed; sidecars will resend");
            fail_applied(shared, &mut outcomes);
        }
        Err(e) => {
            tracing::error!(error = %e, "commit task failed; sidecars will resend");
            fail_applied(shared, &mut outcomes);
        }
    }
    Ok(outcomes)
}

/// How often a flag's last evaluation time is written to the store, at most.
const USAGE_WRITE_MS: i64 = 60_000;

/// The flags whose last evaluation time is worth writing (not written within [`USAGE_WRITE_MS`]),
/// noted as written.
fn usage_to_write(shared: &Shared, evaluated: &HashMap<&str, i64>) -> Vec<(String, i64)> {
    if evaluated.is_empty() {
        return Vec::new();
    }
    let mut written = lock(&shared.usage_written);
    let mut out = Vec::new();
    for (&flag, &at) in evaluated {
        if written.get(flag).is_none_or(|w| at - w >= USAGE_WRITE_MS) {
            written.insert(flag.to_owned(), at);
            out.push((flag.to_owned(), at));
        }
    }
    // Flags no longer defined do not stay in memory.
    if written.len() > 2 * crate::ingest::MAX_SERIES {
        written.clear();
    }
    out
}

/// Answers every report of the batch on its stream, in order: acknowledged (applied, duplicate or
/// invalid) or the stream ends (a jump, a failed commit).
fn answer(shared: &Shared, batch: Vec<Submission>, outcomes: Vec<Outcome>) {
    let now = now_ms();
    shared.metrics.batch_size.record(batch.len() as f64);
    let mut proxies = lock(&shared.proxies);
    for (s, outcome) in batch.into_iter().zip(outcomes) {
        let (origin, seq) = (&s.origin, s.report.seq);
        let reply = match outcome {
            Outcome::Applied | Outcome::Duplicate | Outcome::Invalid => {
                match outcome {
                    Outcome::Applied => {
                        shared.metrics.reports_applied.increment(1);
                        // The window end is the sidecar's word: saturating, so no value of it can overflow.
                        let delay = now.saturating_sub(s.report.window_end_ms).max(0) as f64 / 1000.0;
                        shared.metrics.ingest_delay.record(delay);
                    }
                    Outcome::Duplicate => shared.metrics.reports_duplicate.increment(1),
                    _ => shared.metrics.reports_invalid.increment(1),
                }
                if let Some(p) = proxies.get_mut(&origin.key.0).filter(|p| p.stream == origin.stream) {
                    p.last_report_ms = Some(now);
                    p.last_seq = p.last_seq.max(seq);
                }
                Ok(ControlMessage { msg: Some(control_message::Msg::Ack(StatsAck { seq })) })
            }
            Outcome::Jump { expected } => {
                shared.metrics.sequence_jumps.increment(1);
                origin.ended.cancel();
                Err(tonic::Status::failed_precondition(format!(
                    "report {seq} jumps past the next sequence number, {expected}"
                )))
            }
            // Not durable: end the stream; the sidecar reconnects and resends.
            Outcome::Failed => {
                origin.ended.cancel();
                Err(tonic::Status::unavailable("stats store unavailable; resend"))
            }
        };
        // The stream keeps room for every report it has in flight; one that went away no longer
        // waits for its answer (a report it does not hear of is resent and then a duplicate).
        if !origin.ended.is_cancelled() || reply.is_err() {
            let _ = origin.out.try_send(reply);
        }
        origin.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per defined flag, its variants' names.
fn defined_series(definition: &serde_json::Value) -> HashMap<&str, Vec<&str>> {
    let Some(flags) = definition.get("flags").and_then(serde_json::Value::as_object) else { return HashMap::new() };
    flags
        .iter()
        .map(|(key, def)| {
            let variants = def.get("variants").and_then(serde_json::Value::as_object);
            (key.as_str(), variants.into_iter().flatten().map(|(v, _)| v.as_str()).collect())
        })
        .collect()
}

/// Per flag with `metadata.services` (a comma-separated list), the services whose sidecars may
/// report about it; a flag without it takes reports from any service.
fn scopes(definition: &serde_json::Value) -> HashMap<&str, Vec<&str>> {
    let Some(flags) = definition.get("flags").and_then(serde_json::Value::as_object) else { return HashMap::new() };
    flags
        .iter()
        .filter_map(|(key, def)| {
            let list = def.get("metadata")?.get("services")?.as_str()?;
            Some((key.as_str(), list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()))
        })
        .collect()
}

fn fail_applied(shared: &Shared, outcomes: &mut [Outcome]) {
    shared.metrics.commit_failures.increment(1);
    for o in outcomes.iter_mut().filter(|o| **o == Outcome::Applied) {
        *o = Outcome::Failed;
    }
}
