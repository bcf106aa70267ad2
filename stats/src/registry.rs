//! The bounded set of recorded series, keyed by (flag, variant): created at snapshot build, drained
//! into deltas at each report, with an overflow counter for what did not fit under the cap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::recent::Shared;
use crate::series::{Delta, SeriesStats};

/// Every recorded flag×variant series, at most `max_series` of them (each ≈ 21.5 KiB, see
/// [`SeriesStats`], so the cap bounds memory too).
///
/// The map sits behind a `std::sync::Mutex`: it is only locked to create series (at snapshot
/// build, rare, never per request) and to drain them (once per report), and no `.await` happens
/// while it is held. The hot path never touches it: a request records through the `Arc<SeriesStats>`
/// its snapshot resolved, i.e. atomics only. Series are never removed, so a handle stays valid and
/// counted for the registry's whole life.
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
    /// Per flag, the table of units seen that its variants' series share.
    seen: HashMap<String, Arc<Shared>>,
    len: usize,
}

impl Registry {
    /// An empty registry that will hold at most `max_series` series.
    pub fn new(max_series: usize) -> Self {
        Self { max_series, series: Mutex::default(), overflow: AtomicU64::new(0) }
    }

    /// The configured cap.
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Number of series created so far.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether no series has been created.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The series for `flag`×`variant`, created if needed; the same `Arc` for the same pair.
    /// `None` once `max_series` series exist and this pair is not one of them: the caller then
    /// counts each request it cannot record in [`overflow`](Self::overflow).
    pub fn get_or_create(&self, flag: &str, variant: &str) -> Option<Arc<SeriesStats>> {
        let mut series = self.lock();
        if let Some(existing) = series.by_flag.get(flag).and_then(|variants| variants.get(variant)) {
            return Some(Arc::clone(existing));
        }
        if series.len >= self.max_series {
            return None;
        }
        let seen = Arc::clone(series.seen.entry(flag.to_owned()).or_insert_with(|| Arc::new(Shared::new())));
        let created = Arc::new(SeriesStats::with_seen(seen));
        series.by_flag.entry(flag.to_owned()).or_default().insert(variant.to_owned(), Arc::clone(&created));
        series.len += 1;
        Some(created)
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
    /// `(flag, variant, delta)`, sorted by flag then variant. Recording goes on meanwhile; the
    /// lock only holds off series creation.
    pub fn take_all(&self) -> Vec<(String, String, Delta)> {
        let series = self.lock();
        let mut deltas: Vec<_> = series
            .by_flag
            .iter()
            .flat_map(|(flag, variants)| variants.iter().map(move |(variant, stats)| (flag, variant, stats.take())))
            .filter(|(_, _, delta)| !delta.is_empty())
            .map(|(flag, variant, delta)| (flag.clone(), variant.clone(), delta))
            .collect();
        drop(series);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Outcome;

    #[test]
    fn same_pair_same_series() {
        let registry = Registry::new(4);
        let a = registry.get_or_create("f", "on").unwrap();
        let b = registry.get_or_create("f", "on").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &registry.get_or_create("f", "off").unwrap()));
        assert!(!Arc::ptr_eq(&a, &registry.get_or_create("g", "on").unwrap()));
        assert_eq!(registry.len(), 3);
    }

    #[test]
    fn cap_refuses_new_series_and_overflow_is_counted_and_drained() {
        let registry = Registry::new(2);
        assert!(registry.is_empty());
        let on = registry.get_or_create("f", "on").unwrap();
        registry.get_or_create("f", "off").unwrap();
        assert!(registry.get_or_create("g", "on").is_none());
        assert!(registry.get_or_create("f", "other").is_none());
        // Existing series stay reachable at the cap.
        assert!(Arc::ptr_eq(&on, &registry.get_or_create("f", "on").unwrap()));
        assert_eq!((registry.len(), registry.max_series()), (2, 2));

        for _ in 0..3 {
            registry.overflow().fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(registry.take_overflow(), 3);
        assert_eq!(registry.take_overflow(), 0);
    }

    #[test]
    fn zero_cap_records_nothing() {
        let registry = Registry::new(0);
        assert!(registry.get_or_create("f", "on").is_none());
        assert!(registry.take_all().is_empty());
    }

    #[test]
    fn take_all_returns_only_non_empty_deltas_sorted() {
        let registry = Registry::new(10);
        let b_on = registry.get_or_create("b", "on").unwrap();
        let a_off = registry.get_or_create("a", "off").unwrap();
        let _idle = registry.get_or_create("a", "on").unwrap();
        b_on.record(Outcome::Error, Some(300));
        a_off.record(Outcome::Ok, Some(40));
        a_off.record(Outcome::Ok, None);

        let taken = registry.take_all();
        let keys: Vec<_> = taken.iter().map(|(f, v, d)| (f.as_str(), v.as_str(), d.requests, d.errors)).collect();
        assert_eq!(keys, [("a", "off", 2, 0), ("b", "on", 1, 1)]);
        assert!(registry.take_all().is_empty(), "a second take finds nothing new");

        a_off.record_split(Outcome::Ok, Some(40), 9, u64::MAX);
        let peeked = registry.peek_all();
        let keys: Vec<_> = peeked.iter().map(|(f, v, d)| (f.as_str(), v.as_str(), d.requests, d.split.units)).collect();
        assert_eq!(keys, [("a", "off", 1, 1), ("a", "on", 0, 0), ("b", "on", 0, 0)], "idle series too");
        assert_eq!(registry.take_all().len(), 1, "peeking drained nothing");
    }
}
