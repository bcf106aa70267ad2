//! When each request of an open-loop run is due: request `i` at `start + i / rate`, whatever
//! happened to the requests before it. Latency is measured from that intended time, so a stall
//! (in the target or in the generator) shows up in every request it delayed instead of hiding
//! behind the one request that was slow (coordinated omission).

use std::time::Duration;

/// A constant-rate schedule, bounded in count and in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OpenLoop {
    /// Nanoseconds between two intended starts.
    interval_ns: f64,
    /// Requests in the schedule: `min(max_requests, rate × duration)`.
    count: u64,
}

impl OpenLoop {
    /// `rate` requests per second for `duration`, at most `max_requests`.
    pub(crate) fn new(rate: f64, duration: Duration, max_requests: Option<u64>) -> Option<OpenLoop> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let by_time = (rate * duration.as_secs_f64()).floor() as u64;
        let count = max_requests.map_or(by_time, |m| m.min(by_time));
        Some(OpenLoop { interval_ns: 1e9 / rate, count })
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The intended start of request `i`, as an offset from the start of the run; `None` past the end.
    pub(crate) fn offset(&self, i: u64) -> Option<Duration> {
        (i < self.count).then(|| Duration::from_nanos((i as f64 * self.interval_ns).round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_and_bounded() {
        let s = OpenLoop::new(1000.0, Duration::from_secs(2), None).unwrap();
        assert_eq!(s.count(), 2000);
        assert_eq!(s.offset(0), Some(Duration::ZERO));
        assert_eq!(s.offset(1), Some(Duration::from_millis(1)));
        assert_eq!(s.offset(1999), Some(Duration::from_millis(1999)));
        assert_eq!(s.offset(2000), None);
        let third = OpenLoop::new(3.0, Duration::from_secs(1), None).unwrap();
        assert_eq!(third.offset(1), Some(Duration::from_nanos(333_333_333)));
    }

    #[test]
    fn the_count_bound_wins_when_smaller() {
        let s = OpenLoop::new(5000.0, Duration::from_secs(10), Some(7)).unwrap();
        assert_eq!(s.count(), 7);
        assert_eq!(s.offset(7), None);
        assert!(OpenLoop::new(0.0, Duration::from_secs(1), None).is_none());
        assert!(OpenLoop::new(f64::NAN, Duration::from_secs(1), None).is_none());
    }
}
