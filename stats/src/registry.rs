//! The bounded set of recorded series, keyed by (flag, variant): created at snapshot build, drained
//! into deltas at each report, retired when the flags no longer track them and freed once their
//! last counts are taken, with an overflow counter for what did not fit under the cap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::recent::Shared;
use crate::series::{Delta, SeriesStats};

/// Every recorded flag×variant series: at most `max_series` live ones, and at most
/// `2 × max_series` with the retired ones awaiting their last report (each ≈ 21.5 KiB, see
/// [`SeriesStats`], so the caps bound memory too). Retired series do not count against the live
/// cap: a snapshot that ends one ramp and starts another gets the new ramp's series at once, while
/// the old ramp's are still being reported.
///
/// The map sits behind a `std::sync::Mutex`: it is only locked to retire and create series (at
/// snapshot build, rare, never per request) and to drain them (once per report), and no `.await`
/// happens while it is held. The hot path never touches it: a request records through the
/// `Arc<SeriesStats>` its snapshot resolved, i.e. atomics only.
///
/// A series the flags no longer track (its ramp ended, the flag went) is [retired](Self::retain):
/// it keeps counting for whoever still holds it (a request on the previous snapshot), is drained
/// with the others, and is freed by the first [`take_all`](Self::take_all) that finds no handle
/// left but the registry's, after taking its last counts: nothing recorded is lost, and its slot
/// serves a new series. A retired pair tracked again before that is revived, counts and all.
#[derive(Debug)]
pub struct Registry {
    max_series: usize,
    series: Mutex<Series>,
    overflow: AtomicU64,
}

/// flag → variant → series; nested so lookups take `&str` without building a key.
#[derive(Debug, Default)]
struct Series {
    by_flag: HashMap<String, HashMap<String, Arc<SeriesStats>>>,
    /// Series no longer tracked, drained until no handle but this one is left.
    retired: Vec<Retired>,
    /// Per flag, the table of units seen that its variants' series share (dropped with the
    /// flag's last series).
    seen: HashMap<String, Arc<Shared>>,
    /// Live series (in `by_flag`).
    live: usize,
}

#[derive(Debug)]
struct Retired {
    flag: String,
    variant: String,
    stats: Arc<SeriesStats>,
}

impl Registry {
    /// An empty registry that will hold at most `max_series` live series (and `2 × max_series`
    /// with the retired ones).
    pub fn new(max_series: usize) -> Self {
        Self { max_series, series: Mutex::default(), overflow: AtomicU64::new(0) }
    }

    /// The configured cap.
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Number of series held: live, and retired but not yet freed.
    pub fn len(&self) -> usize {
        let series = self.lock();
        series.live + series.retired.len()
    }

    /// Number of retired series not yet freed (their last counts not taken, or a handle left).
    pub fn retired(&self) -> usize {
        self.lock().retired.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The series for `flag`×`variant`, created if needed; the same `Arc` for the same pair.
    /// `None` when `max_series` live series exist (or `2 × max_series` with the retired ones
    /// waiting to be freed) and this pair is not one of them: the caller then counts each request
    /// it cannot record in [`overflow`](Self::overflow).
    pub fn get_or_create(&self, flag: &str, variant: &str) -> Option<Arc<SeriesStats>> {
        let mut series = self.lock();
        if let Some(existing) = series.by_flag.get(flag).and_then(|variants| variants.get(variant)) {
            return Some(Arc::clone(existing));
        }
        if series.live >= self.max_series {
            return None;
        }
        if let Some(at) = series.retired.iter().position(|r| r.flag == flag && r.variant == variant) {
            // Tracked again before it was freed: the same series, live again.
            let Retired { flag, variant, stats } = series.retired.swap_remove(at);
            series.by_flag.entry(flag).or_default().insert(variant, Arc::clone(&stats));
            series.live += 1;
            return Some(stats);
        }
        if series.live + series.retired.len() >= self.max_series.saturating_mul(2) {
            return None;
        }
        let seen = Arc::clone(series.seen.entry(flag.to_owned()).or_insert_with(|| Arc::new(Shared::new())));
        let created = Arc::new(SeriesStats::with_seen(seen));
        series.by_flag.entry(flag.to_owned()).or_default().insert(variant.to_owned(), Arc::clone(&created));
        series.live += 1;
        Some(created)
    }

    /// Retires every live series for which `keep(flag, variant)` is false: called with the pairs
    /// new flags track, before their snapshot's series are resolved. A retired series keeps
    /// counting (the snapshot being served may still hold it) and is drained until freed (see
    /// [`Registry`]); [`get_or_create`](Self::get_or_create) revives it.
    pub fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut guard = self.lock();
        let series = &mut *guard;
        for (flag, variants) in &mut series.by_flag {
            let gone: Vec<String> = variants.keys().filter(|v| !keep(flag, v)).cloned().collect();
            for variant in gone {
                if let Some(stats) = variants.remove(&variant) {
                    series.retired.push(Retired { flag: flag.clone(), variant, stats });
                    series.live -= 1;
                }
            }
        }
        series.by_flag.retain(|_, variants| !variants.is_empty());
    }

    /// Frees the retired series no one else holds, without taking their counts: for a registry
    /// nobody drains (a sidecar without a control plane), whose counts go nowhere anyway.
    pub fn forget_retired(&self) {
        let mut series = self.lock();
        series.retired.retain_mut(|r| Arc::get_mut(&mut r.stats).is_none());
        series.drop_unused_seen();
    }

    /// Requests that could not be recorded because their series did not fit under the cap. The
    /// registry owns the counter; callers `fetch_add(1, Relaxed)` it per unrecorded request and
    /// [`take_overflow`](Self::take_overflow) drains it.
    pub fn overflow(&self) -> &AtomicU64 {
        &self.overflow
    }

    /// Drains the overflow counter: the unrecorded requests since the last call.
    pub fn take_overflow(&self) -> u64 {
        self.overflow.swap(0, Ordering::Relaxed)
    }

    /// Drains every series ([`SeriesStats::take`]) and returns the non-empty deltas as
    /// `(flag, variant, delta)`, sorted by flag then variant. Recording goes on meanwhile; the lock
    /// only holds off series creation. Retired series that no one else holds are freed after
    /// their last counts are taken here.
    pub fn take_all(&self) -> Vec<(String, String, Delta)> {
        let mut guard = self.lock();
        let series = &mut *guard;
        let mut deltas: Vec<_> = series
            .by_flag
            .iter()
            .flat_map(|(flag, variants)| variants.iter().map(move |(variant, stats)| (flag, variant, stats.take())))
            .filter(|(_, _, delta)| !delta.is_empty())
            .map(|(flag, variant, delta)| (flag.clone(), variant.clone(), delta))
            .collect();
        let before = series.retired.len();
        series.retired.retain_mut(|r| {
            // Alone (checked with acquire ordering, so every record of a dropped handle is seen,
            // and under the lock, so no new handle appears): this take is its last.
            let last = Arc::get_mut(&mut r.stats).is_some();
            let delta = r.stats.take();
            if !delta.is_empty() {
                deltas.push((r.flag.clone(), r.variant.clone(), delta));
            }
            !last
        });
        if series.retired.len() < before {
            series.drop_unused_seen();
        }
        drop(guard);
        deltas.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        deltas
    }

    /// Every series as [`SeriesStats::peek`] shows it — the window in progress, left in place —
    /// as `(flag, variant, delta)` sorted by flag then variant, idle series included.
    pub fn peek_all(&self) -> Vec<(String, String, Delta)> {
        let series = self.lock();
        let mut deltas: Vec<_> = series
            .by_flag
            .iter()
            .flat_map(|(flag, variants)| variants.iter().map(move |(variant, stats)| (flag, variant, stats.peek())))
            .map(|(flag, variant, delta)| (flag.clone(), variant.clone(), delta))
            .collect();
        deltas.extend(series.retired.iter().map(|r| (r.flag.clone(), r.variant.clone(), r.stats.peek())));
        drop(series);
        deltas.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        deltas
    }

    /// The map is consistent after any panic (an insert either happened or not), so a poisoned
    /// lock is recovered rather than propagated.
    fn lock(&self) -> MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Series {
    /// Drops the shared units table of every flag with no series left.
    fn drop_unused_seen(&mut self) {
        let (by_flag, retired) = (&self.by_flag, &self.retired);
        self.seen.retain(|flag, _| by_flag.contains_key(flag) || retired.iter().any(|r| &r.flag == flag));
    }
}

#[cfg(test)]
mod tests;
