//! What a ramp's tests read: per report window and arm, the randomised requests and units (as the
//! sidecars count them: distinct per window, failures once per unit), and the strata the tests
//! compare. A stratum is one window, or at low traffic the consecutive windows it takes to see both
//! arms (the boundary depends on units served, never on failures, so the tests stay valid).

use rampart_stats::SparseHistogram;
use serde::{Deserialize, Serialize};

use super::sequential::Cell;

/// One arm of one window: only requests whose variant came from the ramp's split, as the
/// sidecars count them (requests, errors, slow; distinct units, failing units, slow units; new
/// units for the sample-ratio test). Windows add up with `merge`.
pub type Arm = rampart_stats::Split;

/// Everything one engine tick learned about a ramp's flag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub treatment: Arm,
    pub control: Arm,
    /// Latencies of the control variant this window (any request of it): the next step's slow
    /// threshold is read from the recent ones.
    pub control_latency: SparseHistogram,
}

/// Most time a stratum may stay open waiting for both arms; older evidence is dropped (one arm
/// alone says nothing about the comparison).
pub const MAX_STRATUM_MS: i64 = 600_000;

/// The stratum being filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Open {
    pub treatment: Arm,
    pub control: Arm,
    /// When it began (the end of the previous one).
    pub since_ms: i64,
}

impl Open {
    /// Adds a window; returns the closed stratum once both arms have units.
    pub fn push(&mut self, now_ms: i64, window: &Window) -> Option<(Arm, Arm)> {
        if now_ms - self.since_ms > MAX_STRATUM_MS && (self.treatment.units == 0 || self.control.units == 0) {
            *self = Open { since_ms: now_ms, ..Open::default() };
        }
        self.treatment.merge(&window.treatment);
        self.control.merge(&window.control);
        if self.treatment.units.max(self.treatment.requests) == 0 || self.control.units.max(self.control.requests) == 0
        {
            return None;
        }
        let closed = (self.treatment, self.control);
        *self = Open { since_ms: now_ms, ..Open::default() };
        Some(closed)
    }
}

/// The failing-units cell of a stratum. Units fall back to requests when a sidecar sent none.
pub fn errors_cell(t: &Arm, c: &Arm) -> Cell {
    Cell { x_t: t.failing_units, u_t: units(t), x_c: c.failing_units, u_c: units(c) }
}

/// The slow-units cell of a stratum.
pub fn slow_cell(t: &Arm, c: &Arm) -> Cell {
    Cell { x_t: t.slow_units, u_t: units(t), x_c: c.slow_units, u_c: units(c) }
}

pub fn units(a: &Arm) -> u64 {
    if a.units == 0 { a.requests } else { a.units }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(t_units: u64, c_units: u64) -> Window {
        Window {
            treatment: Arm { requests: t_units, units: t_units, ..Arm::default() },
            control: Arm { requests: c_units, units: c_units, failing_units: 1, ..Arm::default() },
            control_latency: SparseHistogram::default(),
        }
    }

    #[test]
    fn a_stratum_closes_once_both_arms_have_units() {
        let mut open = Open::default();
        assert_eq!(open.push(1_000, &w(0, 3)), None);
        assert_eq!(open.push(2_000, &w(0, 2)), None);
        let (t, c) = open.push(3_000, &w(1, 4)).unwrap();
        assert_eq!((t.units, c.units, c.failing_units), (1, 9, 3));
        assert_eq!(open.since_ms, 3_000);
        assert_eq!(open.push(4_000, &w(2, 2)).map(|(t, _)| t.units), Some(2));
    }

    #[test]
    fn a_one_armed_stratum_is_dropped_when_too_old() {
        let mut open = Open::default();
        assert_eq!(open.push(1_000, &w(0, 3)), None);
        assert_eq!(open.push(MAX_STRATUM_MS + 2_000, &w(0, 1)), None);
        assert_eq!(open.control.units, 1, "the stale control units were dropped");
    }
}
