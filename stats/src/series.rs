//! One flag×variant series: RED counters (requests, errors, timeouts) and the latency histogram,
//! recorded lock-free by the proxy and drained into mergeable [`Delta`]s for the stats report.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::{AtomicHistogram, SparseHistogram};

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
/// allocation). Memory: 3 × 8 B counters plus one [`AtomicHistogram`] (≈ 15.5 KiB), ≈ 15.6 KiB per
/// series.
///
/// [`take`](Self::take) swaps every counter and bucket to zero. Each recorded request lands in
/// exactly one delta, but the counters and the histogram are drained one after the other, so a
/// request recorded during a `take` may have its request count in one delta and its error or
/// latency in the next: a single delta can be skewed by the requests in flight at that instant
/// (even `errors > requests` in a tiny delta); sums over deltas are exact.
#[derive(Debug, Default)]
pub struct SeriesStats {
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    latency: AtomicHistogram,
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

    /// Moves everything recorded since the last `take` into a [`Delta`] (see the type's docs for
    /// what a concurrent `record` sees).
    pub fn take(&self) -> Delta {
        Delta {
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            timeouts: self.timeouts.swap(0, Ordering::Relaxed),
            latency: self.latency.take(),
        }
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
}

impl Delta {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Delta) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.latency.merge(&other.latency);
    }

    /// Whether nothing was recorded (no counts and no latency samples).
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.errors == 0 && self.timeouts == 0 && self.latency.is_empty()
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
        b.record(Outcome::Timeout, Some(5_000_000));
        let mut sum = a.take();
        sum.merge(&b.take());
        let all = SeriesStats::new();
        all.record(Outcome::Ok, Some(10));
        all.record(Outcome::Timeout, Some(5_000_000));
        assert_eq!(sum, all.take());
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
