//! Applying stats reports exactly once, with group commit: one task takes every submitted report
//! in arrival order, drops each whose `(proxy_id, epoch, seq)` is already applied, refuses one
//! that jumps past the next sequence number (no sidecar does: see `proxy/src/reporter/pending.rs`),
//! and commits the new totals with the new sequences in one transaction per batch. Only after the
//! commit does it answer, so a sidecar's report is acknowledged exactly when it is durable, and
//! only then do the reports' randomised windows reach the ramp engine (once, like the totals).
//! Only series of defined flags and variants are kept, at most [`MAX_SERIES_PER_REPORT`] per
//! report and [`MAX_SERIES`] in all; the rest are dropped and counted.

use std::collections::HashMap;
use std::sync::Arc;

use rampart_flags::MAX_NAME_BYTES;
use rampart_proto::convert;
use rampart_proto::rampart::v1::StatsReport;
use rampart_stats::Delta;
use tokio::sync::{mpsc, oneshot};

use crate::state::{Shared, Windows, lock, now_ms};
use crate::store::{Batch, ProxyKey, SeqRow, StoreError, TotalRow, WindowRow};

/// Most reports committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Most series one report may bring (a sidecar records 1 000 by default); the rest are dropped
/// and counted.
const MAX_SERIES_PER_REPORT: usize = 10_000;
/// Most series kept in all; new ones past it are dropped and counted.
pub(crate) const MAX_SERIES: usize = 100_000;

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
    /// The store failed: not acknowledged, the sidecar resends it.
    Failed,
}

#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) key: ProxyKey,
    /// The service the reporting sidecar serves (bound to its credential when tokens say so).
    pub(crate) service: String,
    pub(crate) report: StatsReport,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// Runs until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Submission>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        apply(&shared, std::mem::take(&mut batch)).await;
        // The ingest histograms are recorded here, so their upkeep is done here too.
        shared.metrics.upkeep();
    }
}

async fn apply(shared: &Arc<Shared>, batch: Vec<Submission>) {
    let outcomes = match decide_and_commit(shared, &batch).await {
        Ok(outcomes) => outcomes,
        Err(Stale) => {
            // A sidecar's reports were applied at another replica since this one read its
            // sequence: reread the batch's sequences and decide again.
            refresh_seqs(shared, &batch).await;
            decide_and_commit(shared, &batch).await.unwrap_or_else(|Stale| {
                shared.metrics.commit_failures.increment(1);
                vec![Outcome::Failed; batch.len()]
            })
        }
    };
    let now = now_ms();
    shared.metrics.batch_size.record(batch.len() as f64);
    for (s, outcome) in batch.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Applied => {
                shared.metrics.reports_applied.increment(1);
                // The window end is the sidecar's word: saturating, so no value of it can overflow.
                let delay = now.saturating_sub(s.report.window_end_ms).max(0) as f64 / 1000.0;
                shared.metrics.ingest_delay.record(delay);
            }
            Outcome::Duplicate => shared.metrics.reports_duplicate.increment(1),
            Outcome::Invalid => shared.metrics.reports_invalid.increment(1),
            Outcome::Jump { .. } => shared.metrics.sequence_jumps.increment(1),
            Outcome::Failed => {}
        }
        // A stream that went away no longer waits for its answer.
        let _ = s.reply.send(outcome);
    }
}

/// The store said a sequence this replica read had moved on elsewhere.
#[derive(Debug)]
struct Stale;

/// Rereads the stored sequences of the batch's sidecars.
async fn refresh_seqs(shared: &Arc<Shared>, batch: &[Submission]) {
    let keys: std::collections::HashSet<ProxyKey> = batch.iter().map(|s| s.key.clone()).collect();
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

/// Decides what becomes of each report and commits the applied ones; `Err(Stale)` when the
/// store refused the batch for a stale sequence (nothing was written).
async fn decide_and_commit(shared: &Arc<Shared>, batch: &[Submission]) -> Result<Vec<Outcome>, Stale> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut priors: HashMap<ProxyKey, u64> = HashMap::new();
    let mut seqs: HashMap<ProxyKey, u64> = HashMap::new();
    let mut totals: HashMap<(String, String), Delta> = HashMap::new();
    let mut windows = Windows::new();
    let current_flags = shared.flags.borrow().clone();
    let scopes = scopes(&current_flags.definition);
    let defined = defined_series(&current_flags.definition);
    {
        let mut new_series = 0usize;
        let current = lock(&shared.totals);
        let applied = lock(&shared.seqs);
        for s in batch {
            let last = seqs.get(&s.key).or_else(|| applied.get(&s.key)).copied().unwrap_or(0);
            if s.report.seq <= last {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            if s.report.seq > last + 1 {
                tracing::warn!(proxy = %s.key.0, seq = s.report.seq, expected = last + 1, "sequence jump refused");
                outcomes.push(Outcome::Jump { expected: last + 1 });
                continue;
            }
            let deltas: Result<Vec<_>, _> = s.report.stats.iter().map(|v| convert::delta(v).map(|d| (v, d))).collect();
            let Ok(deltas) = deltas else {
                tracing::warn!(proxy = %s.key.0, seq = s.report.seq, "invalid stats report dropped");
                outcomes.push(Outcome::Invalid);
                continue;
            };
            for (i, (v, d)) in deltas.into_iter().enumerate() {
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
                if scopes.get(v.flag.as_str()).is_some_and(|services| !services.contains(&s.service.as_str())) {
                    shared.metrics.series_out_of_scope.increment(1);
                    continue;
                }
                let key = (v.flag.clone(), v.variant.clone());
                if !totals.contains_key(&key) && !current.contains_key(&key) && current.len() + new_series >= MAX_SERIES
                {
                    shared.metrics.series_refused.increment(1);
                    continue;
                }
                if d.split != rampart_stats::Split::default() {
                    let (arm, latency) = windows.entry(key.clone()).or_default();
                    arm.merge(&d.split);
                    latency.merge(&d.latency);
                }
                let entry = totals.entry(key).or_insert_with_key(|k| {
                    current.get(k).cloned().unwrap_or_else(|| {
                        new_series += 1;
                        Delta::default()
                    })
                });
                entry.merge(&d);
            }
            priors.entry(s.key.clone()).or_insert(last);
            seqs.insert(s.key.clone(), s.report.seq);
            outcomes.push(Outcome::Applied);
        }
    }
    if seqs.is_empty() {
        return Ok(outcomes);
    }
    // With replicas, the windows go through the store to the leader's engine; one control plane
    // keeps them in memory.
    let replicated = shared.replicas.is_some();
    let shared2 = shared.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let batch = Batch {
            totals: totals.iter().map(|((flag, variant), totals)| TotalRow { flag, variant, totals }).collect(),
            seqs: seqs
                .iter()
                .map(|(key, last)| SeqRow { key, prior: priors.get(key).copied().unwrap_or(0), last: *last })
                .collect(),
            windows: if replicated {
                windows
                    .iter()
                    .map(|((flag, variant), (arm, latency))| WindowRow { flag, variant, arm, latency })
                    .collect()
            } else {
                Vec::new()
            },
        };
        let result = shared2.store.commit_batch(&batch);
        (result, totals, seqs, windows)
    })
    .await;
    match committed {
        Ok((Ok(()), new_totals, new_seqs, windows)) => {
            lock(&shared.totals).extend(new_totals);
            lock(&shared.seqs).extend(new_seqs);
            if !replicated {
                let mut pending = lock(&shared.windows);
                for (key, (arm, latency)) in windows {
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
