//! One flag×variant series: RED counters (requests, errors, timeouts), the latency histogram and the
//! randomised (ramp-split) part with its distinct units, recorded lock-free by the proxy and drained
//! into mergeable [`Delta`]s for the stats report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::histogram::{AtomicHistogram, SparseHistogram};
use crate::recent::{HORIZON_S, Recent, SMALL, Shared};
use crate::units::{Taken, UnitSetLarge, UnitSetSmall};

/// The `slow_us` of [`SeriesStats::record_split`] when the ramp has no latency threshold (yet):
/// nothing counts as slow, not even a timeout, because the latency guardrail is not active.
pub const NO_SLOW_THRESHOLD: u64 = u64::MAX;

/// How a request ended, as the proxy classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered and not an error.
    Ok,
    /// Failed (e.g. an upstream 5xx or a connection error).
    Error,
    /// Gave up waiting. A timeout is an error too: it counts in both `errors` and `timeouts`, so
    /// the error rate covers every failure.
    Timeout,
}

/// Counters and latency of one flag×variant, shared by every request task through an `Arc`.
///
/// [`record`](Self::record) touches only atomics (2–4 `fetch_add(Relaxed)`, no lock, no
/// allocation); [`record_split`](Self::record_split) adds one to three [`UnitSet`](crate::UnitSet)
/// inserts (lock-free, allocation-free). Memory: 3 × 8 B counters, one [`AtomicHistogram`]
/// (≈ 15.5 KiB), three unit sets (4.3 KiB + 2 × 0.8 KiB) and two recent-unit tables (2 × 4 KiB),
/// ≈ 30 KiB per series; plus, per ramped flag, one 256 KiB table of the units seen in the last
/// 10 minutes, shared by its variants.
///
/// [`take`](Self::take) swaps every counter, bucket and unit set to zero. Each recorded request
/// lands in exactly one delta, but the counters, the histogram and the sets are drained one after
/// the other, so a request recorded during a `take` may have its request count in one delta and
/// its error or latency in the next: a single delta can be skewed by the requests in flight at that
/// instant (even `errors > requests` in a tiny delta, and the same within [`Split`]); sums of the
/// counters over deltas are exact (distinct-unit counts are per window and do not sum to distinct
/// units, see [`Delta::merge`]).
#[derive(Debug)]
pub struct SeriesStats {
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    latency: AtomicHistogram,
    /// Every randomised request's unit; its inserts are `Split::requests`.
    split_units: UnitSetLarge,
    /// Units of randomised requests that failed; its inserts are `Split::errors`.
    split_failing: UnitSetSmall,
    /// Units of randomised requests that were slow; its inserts are `Split::slow`.
    split_slow: UnitSetSmall,
    /// Units counted as failing (as slow) within the last `HORIZON_S` seconds, which are not
    /// counted again in a later window (see `crate::HORIZON_S`).
    recent_failing: Recent,
    recent_slow: Recent,
    /// Units counted as new within the last `NEW_HORIZON_S` seconds, shared by every variant of
    /// the flag (see [`Registry`](crate::Registry)); `new_units` counts the others.
    seen: Arc<Shared>,
    new_units: AtomicU64,
}

impl Default for SeriesStats {
    fn default() -> Self {
        SeriesStats::with_seen(Arc::new(Shared::new()))
    }
}

impl SeriesStats {
    /// A series whose new units are told apart with `seen`, its flag's table.
    pub(crate) fn with_seen(seen: Arc<Shared>) -> Self {
        SeriesStats {
            requests: AtomicU64::default(),
            errors: AtomicU64::default(),
            timeouts: AtomicU64::default(),
            latency: AtomicHistogram::default(),
            split_units: UnitSetLarge::default(),
            split_failing: UnitSetSmall::default(),
            split_slow: UnitSetSmall::default(),
            recent_failing: Recent::new(SMALL, HORIZON_S),
            recent_slow: Recent::new(SMALL, HORIZON_S),
            seen,
            new_units: AtomicU64::default(),
        }
    }
}

/// `at` on the clock of the tables of units seen: whole seconds since this process first asked.
/// The `now_s` of [`SeriesStats::record_split`]; a caller recording one request in several
/// series reads it once (from a clock read it makes anyway), not once per series.
pub fn seconds_at(at: Instant) -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    // Wraps after 136 years; `Recent` compares modulo 2^16 s anyway.
    at.saturating_duration_since(*START.get_or_init(|| at)).as_secs() as u32
}

impl SeriesStats {
    /// A series with all counts at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request. `latency_micros` is recorded in the histogram when known; a request
    /// without one (say a timeout the caller chooses not to time) still counts as a request, so the
    /// histogram may hold fewer samples than `requests`.
    #[inline]
    pub fn record(&self, outcome: Outcome, latency_micros: Option<u64>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Ok => {}
            Outcome::Error => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Timeout => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(micros) = latency_micros {
            self.latency.record(micros);
        }
    }

    /// Counts one *randomised* request — its variant came from the ramp's split (reason `SPLIT`)
    /// — exactly as [`record`](Self::record) does, and also in [`Split`]: `unit` is its unit's
    /// hash (the flag's `Resolution::unit`). It is slow when `latency_micros > slow_us`, or when it
    /// timed out; with `slow_us` = [`NO_SLOW_THRESHOLD`] (the ramp has no `slowUs`) nothing is slow.
    /// `now_s` ([`seconds_at`] of when it was answered) dates the unit in the tables that count a
    /// unit once per horizon.
    #[inline]
    pub fn record_split(&self, outcome: Outcome, latency_micros: Option<u64>, unit: u64, slow_us: u64, now_s: u32) {
        self.record(outcome, latency_micros);
        self.split_units.insert(unit);
        if self.seen.first(unit, now_s) {
            self.new_units.fetch_add(1, Ordering::Relaxed);
        }
        let failed = outcome != Outcome::Ok;
        let slow = slow_us != NO_SLOW_THRESHOLD
            && (outcome == Outcome::Timeout || latency_micros.is_some_and(|micros| micros > slow_us));
        // A unit counts as failing (slow) once per horizon, so one user's retries over a few
        // seconds are one failing unit, not one per report window.
        if failed {
            if self.recent_failing.first(unit, now_s) {
                self.split_failing.insert(unit)
            } else {
                self.split_failing.sighting()
            }
        }
        if slow {
            if self.recent_slow.first(unit, now_s) { self.split_slow.insert(unit) } else { self.split_slow.sighting() }
        }
    }

    /// Reads where [`record_split`](Self::record_split) of `unit` will look in the flag's
    /// 256 KiB table of units seen, and nothing else. A request recorded in several ramped flags
    /// warms them all first: their cache misses then overlap, where each `record_split` alone
    /// would take its miss after the previous one's atomic increments.
    #[inline]
    pub fn warm(&self, unit: u64) {
        self.seen.warm(unit);
    }

    /// Moves everything recorded since the last `take` into a [`Delta`] (see the type's docs for
    /// what a concurrent `record` sees).
    pub fn take(&self) -> Delta {
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let timeouts = self.timeouts.swap(0, Ordering::Relaxed);
        let latency = self.latency.take();
        let mut split = Split::of(self.split_units.take(), self.split_failing.take(), self.split_slow.take());
        split.new_units = self.new_units.swap(0, Ordering::Relaxed);
        Delta { requests, errors, timeouts, latency, split }
    }

    /// What [`take`](Self::take) would return now, leaving everything in place: the window in
    /// progress, for inspection (the admin `/stats` endpoint). Reports use `take`.
    pub fn peek(&self) -> Delta {
        Delta {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            latency: self.latency.peek(),
            split: Split {
                new_units: self.new_units.load(Ordering::Relaxed),
                ..Split::of(self.split_units.peek(), self.split_failing.peek(), self.split_slow.peek())
            },
        }
    }
}

/// The randomised part of a series over one window: requests whose variant came from the ramp's
/// split (reason `SPLIT`, computed by this sidecar; not targeting, not a propagated assignment or
/// override, not a request without a bucketing key). Also counted in the [`Delta`]'s totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(default))]
pub struct Split {
    /// Randomised requests.
    pub requests: u64,
    /// Randomised requests that failed, timeouts included.
    pub errors: u64,
    /// Randomised requests slower than the ramp's `slowUs`, timeouts included (0 without `slowUs`).
    pub slow: u64,
    /// Distinct units among `requests`.
    pub units: u64,
    /// Distinct units with at least one error (timeouts included): one user's retries are one.
    pub failing_units: u64,
    /// Distinct units with at least one slow request.
    pub slow_units: u64,
    /// Units not counted in this series within the last 10 minutes (`NEW_HORIZON_S`): a user who
    /// stays for minutes is one new unit, not one per window, which is what the sample-ratio test
    /// needs (its units must be independent draws of the assignment).
    pub new_units: u64,
}

impl Split {
    /// The counts of the three unit sets: every randomised request's unit, the failing ones'
    /// and the slow ones' (each set's inserts are the matching request count).
    fn of(units: Taken, failing: Taken, slow: Taken) -> Split {
        Split {
            requests: units.inserts,
            errors: failing.inserts,
            slow: slow.inserts,
            units: units.units,
            failing_units: failing.units,
            slow_units: slow.units,
            new_units: 0,
        }
    }

    /// Adds `other` into `self`, saturating. Unit counts add up as *unit-windows*: a unit seen in
    /// two merged windows counts twice.
    pub fn merge(&mut self, other: &Split) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.slow = self.slow.saturating_add(other.slow);
        self.units = self.units.saturating_add(other.units);
        self.failing_units = self.failing_units.saturating_add(other.failing_units);
        self.slow_units = self.slow_units.saturating_add(other.slow_units);
        self.new_units = self.new_units.saturating_add(other.new_units);
    }

    /// Whether every count is zero.
    pub fn is_empty(&self) -> bool {
        *self == Split::default()
    }
}

/// What one series recorded over a window. Deltas merge by addition (commutative, associative,
/// saturating), so the proxy can fold unacknowledged reports together and the control plane can
/// sum proxies and windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Requests counted, whatever their outcome.
    pub requests: u64,
    /// Failed requests, timeouts included.
    pub errors: u64,
    /// Requests that timed out (also counted in `errors`).
    pub timeouts: u64,
    /// Latency of the requests that reported one, in µs.
    pub latency: SparseHistogram,
    /// The randomised requests among `requests`, with their distinct units.
    pub split: Split,
}

impl Delta {
    /// Adds `other` into `self`. The distinct-unit counts of [`Split`] add up as *unit-windows*:
    /// a unit seen in two merged windows counts twice, which is what a per-window comparison of the
    /// arms expects (the merged delta stands for the windows it covers).
    pub fn merge(&mut self, other: &Delta) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.latency.merge(&other.latency);
        self.split.merge(&other.split);
    }

    /// Whether nothing was recorded (no counts, no latency samples, no randomised requests).
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.errors == 0 && self.timeouts == 0 && self.latency.is_empty() && self.split.is_empty()
    }

    /// `errors / requests`, or `None` without requests. Not clamped: see [`SeriesStats`] on why a
    /// single small delta may exceed 1.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests != 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::thread;

    use super::*;

    #[test]
    fn outcomes_fill_the_right_counters() {
        let s = SeriesStats::new();
        s.record(Outcome::Ok, Some(100));
        s.record(Outcome::Error, Some(2_000));
        s.record(Outcome::Timeout, None);
        let d = s.take();
        assert_eq!((d.requests, d.errors, d.timeouts, d.latency.count()), (3, 2, 1, 2));
        assert_eq!(d.error_rate(), Some(2.0 / 3.0));
        assert!(!d.is_empty());
        let again = s.take();
        assert!(again.is_empty());
        assert_eq!(again.error_rate(), None);
    }

    #[test]
    fn merge_adds_every_field() {
        let (a, b) = (SeriesStats::new(), SeriesStats::new());
        a.record(Outcome::Ok, Some(10));
        a.record_split(Outcome::Error, Some(900), 7, 500, 0);
        b.record(Outcome::Timeout, Some(5_000_000));
        b.record_split(Outcome::Ok, Some(20), 8, 500, 0);
        let mut sum = a.take();
        sum.merge(&b.take());
        let all = SeriesStats::new();
        all.record(Outcome::Ok, Some(10));
        all.record_split(Outcome::Error, Some(900), 7, 500, 0);
        all.record(Outcome::Timeout, Some(5_000_000));
        all.record_split(Outcome::Ok, Some(20), 8, 500, 0);
        assert_eq!(sum, all.take());
    }

    #[test]
    fn randomised_requests_count_in_the_totals_and_by_unit() {
        let s = SeriesStats::new();
        s.record(Outcome::Error, Some(10)); // targeted, say: totals only
        for user in 1..=10u64 {
            for attempt in 0..3 {
                // Users 1 and 2 fail every attempt; user 3 is slow once; user 4 times out once.
                let outcome = match (user, attempt) {
                    (1 | 2, _) => Outcome::Error,
                    (4, 0) => Outcome::Timeout,
                    _ => Outcome::Ok,
                };
                let micros = if (user, attempt) == (3, 1) { 250_000 } else { 1_000 };
                s.record_split(outcome, (outcome != Outcome::Timeout).then_some(micros), user, 200_000, 0);
            }
        }
        let d = s.take();
        assert_eq!((d.requests, d.errors, d.timeouts), (31, 8, 1));
        let want =
            Split { requests: 30, errors: 7, slow: 2, units: 10, failing_units: 3, slow_units: 2, new_units: 10 };
        assert_eq!(d.split, want);
        assert!(s.take().is_empty());

        // Merged windows count unit-windows: the same unit in two windows counts twice.
        s.record_split(Outcome::Ok, Some(1), 5, NO_SLOW_THRESHOLD, 0);
        let mut merged = s.take();
        s.record_split(Outcome::Ok, Some(1), 5, NO_SLOW_THRESHOLD, 0);
        merged.merge(&s.take());
        assert_eq!((merged.split.requests, merged.split.units), (2, 2));
    }

    #[test]
    fn a_failing_unit_counts_once_across_windows_within_the_horizon() {
        let s = SeriesStats::new();
        // One user retries through three report windows; another fails once.
        for _ in 0..3 {
            s.record_split(Outcome::Error, Some(10), 7, 5, 0);
            s.record_split(Outcome::Error, Some(10), 7, 5, 0);
        }
        s.record_split(Outcome::Error, Some(10), 8, 5, 0);
        let first = s.take().split;
        s.record_split(Outcome::Error, Some(10), 7, 5, 0);
        let second = s.take().split;
        assert_eq!((first.errors, first.failing_units, first.slow_units), (7, 2, 2));
        assert_eq!((second.errors, second.failing_units, second.slow_units), (1, 0, 0), "counted in the first");
        assert_eq!(second.units, 1, "still a unit of the second window");
        assert_eq!((first.new_units, second.new_units), (2, 0), "but not a new one");
        // Past the horizon (on the clock the caller passes) it fails as a unit again; past the
        // longer horizon of new units it is new again.
        s.record_split(Outcome::Error, Some(10), 7, 5, crate::HORIZON_S + 1);
        let later = s.take().split;
        assert_eq!((later.failing_units, later.new_units), (1, 0));
        s.record_split(Outcome::Ok, Some(1), 7, 5, crate::NEW_HORIZON_S + 1);
        assert_eq!(s.take().split.new_units, 1);
    }

    #[test]
    fn seconds_at_counts_whole_seconds_from_the_first_call() {
        let start = std::time::Instant::now();
        let first = seconds_at(start);
        let later = seconds_at(start + std::time::Duration::from_millis(2_500));
        // 2 when the clock started at `start`, 2 or 3 when another test asked earlier.
        assert!((2..=3).contains(&(later - first)), "{first} → {later}");
        if let Some(before) = start.checked_sub(std::time::Duration::from_secs(1)) {
            assert!(seconds_at(before) <= first);
        }
    }

    #[test]
    fn without_a_threshold_nothing_is_slow() {
        let s = SeriesStats::new();
        s.record_split(Outcome::Timeout, None, 1, NO_SLOW_THRESHOLD, 0);
        s.record_split(Outcome::Ok, Some(u64::MAX - 1), 2, NO_SLOW_THRESHOLD, 0);
        let split = s.take().split;
        assert_eq!((split.slow, split.slow_units), (0, 0));
        assert_eq!((split.errors, split.failing_units, split.units), (1, 1, 2));
        // A zero threshold: anything measurable is slow, and so is a timeout.
        s.record_split(Outcome::Timeout, None, 1, 0, 0);
        s.record_split(Outcome::Ok, Some(1), 2, 0, 0);
        s.record_split(Outcome::Ok, Some(0), 3, 0, 0);
        let split = s.take().split;
        assert_eq!((split.slow, split.slow_units), (2, 2));
    }

    #[test]
    fn peek_shows_the_window_in_progress_without_draining() {
        let s = SeriesStats::new();
        s.record(Outcome::Error, Some(10));
        s.record_split(Outcome::Timeout, None, 3, 100, 0);
        let peeked = s.peek();
        assert_eq!(s.peek(), peeked);
        assert_eq!(
            (peeked.requests, peeked.latency.count(), peeked.split.units, peeked.split.slow_units),
            (2, 1, 1, 1)
        );
        assert_eq!(s.take(), peeked);
        assert!(s.peek().is_empty());
    }

    #[test]
    fn a_delta_with_only_split_counts_is_not_empty() {
        let d = Delta { split: Split { units: 1, ..Split::default() }, ..Delta::default() };
        assert!(!d.is_empty());
    }

    #[test]
    fn take_during_concurrent_records_loses_and_duplicates_nothing() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 100_000;
        let series = Arc::new(SeriesStats::new());
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let series = Arc::clone(&series);
                thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let outcome = match i % 10 {
                            0 => Outcome::Timeout,
                            1 | 2 => Outcome::Error,
                            _ => Outcome::Ok,
                        };
                        series.record(outcome, Some(t * 1_000 + i % 5_000));
                    }
                })
            })
            .collect();
        let reader = {
            let (series, done) = (Arc::clone(&series), Arc::clone(&done));
            thread::spawn(move || {
                let mut total = Delta::default();
                while !done.load(Ordering::Acquire) {
                    total.merge(&series.take());
                }
                total
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        let mut total = reader.join().unwrap();
        total.merge(&series.take());
        let n = THREADS * PER_THREAD;
        assert_eq!((total.requests, total.errors, total.timeouts), (n, n * 3 / 10, n / 10));
        assert_eq!(total.latency.count(), n);
    }
}
