//! The simulated sidecar: the percent and slow threshold it applies, and its counting of the
//! randomised requests per report window and arm, as the real one counts them (`rampart_stats`
//! `SeriesStats::record_split`): distinct units per window, a unit failing (slow) at most once per
//! failure horizon and new at most once per new-unit horizon, per variant series. Exact where the
//! real one uses bounded sketches.

use rampart_control::ramp::window::{Arm, Window};
use rampart_flags::percent_to_threshold;
use rampart_stats::{NUM_BUCKETS, SparseHistogram, bucket_index};

use super::SECOND_US;

pub(super) const CONTROL: usize = 0;
pub(super) const TREATMENT: usize = 1;
const FAIL_HORIZON_US: u64 = rampart_stats::HORIZON_S as u64 * SECOND_US;
const NEW_HORIZON_US: u64 = rampart_stats::NEW_HORIZON_S as u64 * SECOND_US;
/// Sidecar windows close this long before an engine tick (their clocks are not aligned), so a
/// report waits half a second for the tick that reads it (half the interval if that is shorter):
/// window `k` ends at `(k + 1) × report_interval − phase` and is read at the first tick after.
const REPORT_PHASE_US: u64 = 500_000;

/// What the sidecar applies: the ramp's percent and slow threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Applied {
    pub(super) percent: f64,
    pub(super) slow_us: Option<u64>,
}

/// What the sidecar remembers of one unit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Memory {
    /// `2 × window + arm + 1` of the last window that counted it.
    seen: u64,
    /// When the flag last counted it as new (one table for all variants, as the sidecar's: a
    /// unit that moves to the treatment at a step is not a new draw), and when each variant's
    /// series last counted it as failing, slow.
    new_at: Option<u64>,
    failed_at: [Option<u64>; 2],
    slow_at: [Option<u64>; 2],
}

#[derive(Debug)]
pub(super) struct Sidecar {
    applied: Applied,
    /// `percent_to_threshold(applied.percent)`: treatment iff a unit's bucket is below.
    threshold: u32,
    interval_us: u64,
    /// The window being counted: its index, when it ends, per arm counts.
    index: u64,
    pub(super) window_end_us: u64,
    arms: [Arm; 2],
    /// The control's latencies this window, per histogram bucket, and the buckets touched.
    latency: Vec<u64>,
    touched: Vec<u32>,
}

impl Sidecar {
    pub(super) fn new(interval_us: u64) -> Sidecar {
        Sidecar {
            applied: Applied { percent: 0.0, slow_us: None },
            threshold: 0,
            interval_us,
            index: 0,
            window_end_us: interval_us - REPORT_PHASE_US.min(interval_us / 2),
            arms: [Arm::default(); 2],
            latency: vec![0; NUM_BUCKETS],
            touched: Vec::new(),
        }
    }

    pub(super) fn apply(&mut self, applied: Applied) {
        self.applied = applied;
        self.threshold = percent_to_threshold(applied.percent);
    }

    /// The arm of a unit with this bucket at the applied percent.
    pub(super) fn arm(&self, bucket: u32) -> usize {
        if bucket < self.threshold { TREATMENT } else { CONTROL }
    }

    /// Counts one randomised request at `t_us`.
    pub(super) fn record(
        &mut self,
        unit: &mut Memory,
        arm: usize,
        t_us: u64,
        failed: bool,
        timed_out: bool,
        latency_us: u64,
    ) {
        // Nothing is slow until the engine has set a threshold.
        let slow = self.applied.slow_us.is_some_and(|s| timed_out || latency_us > s);
        let stamp = 2 * self.index + arm as u64 + 1;
        let a = &mut self.arms[arm];
        a.requests += 1;
        a.errors += u64::from(failed);
        a.slow += u64::from(slow);
        if unit.seen != stamp {
            unit.seen = stamp;
            a.units += 1;
        }
        // 1 when not counted within the horizon (and then remembers now), else 0.
        let first = |at: &mut Option<u64>, horizon: u64| {
            let fresh = at.is_none_or(|at| t_us.saturating_sub(at) >= horizon);
            if fresh {
                *at = Some(t_us);
            }
            u64::from(fresh)
        };
        a.new_units += first(&mut unit.new_at, NEW_HORIZON_US);
        if failed {
            a.failing_units += first(&mut unit.failed_at[arm], FAIL_HORIZON_US);
        }
        if slow {
            a.slow_units += first(&mut unit.slow_at[arm], FAIL_HORIZON_US);
        }
        if arm == CONTROL {
            let b = bucket_index(latency_us);
            let count = &mut self.latency[b as usize];
            if *count == 0 {
                self.touched.push(b);
            }
            *count += 1;
        }
    }

    /// Ends the current window: when it ended, and what it counted.
    pub(super) fn close(&mut self) -> (u64, Window) {
        let mut pairs = Vec::with_capacity(self.touched.len());
        for &b in &self.touched {
            pairs.push((b, std::mem::take(&mut self.latency[b as usize])));
        }
        self.touched.clear();
        let [control, treatment] = std::mem::take(&mut self.arms);
        let window =
            Window { treatment, control, control_latency: SparseHistogram::from_pairs(pairs).unwrap_or_default() };
        let end = self.window_end_us;
        self.index += 1;
        self.window_end_us = end.saturating_add(self.interval_us);
        (end, window)
    }
}
