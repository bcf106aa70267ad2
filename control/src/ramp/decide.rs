//! One decision for one ramp at one tick: compare the treatment with the concurrent control over
//! the ramp so far, and answer ROLLBACK as soon as a test shows harm, ADVANCE when the dwell is
//! over, the step has its minimum samples and every bound shows non-inferiority, else HOLD.
//! Bonferroni: each of the three tests runs at α/3. Pure: no clock, no I/O.

use std::time::Duration;

use rampart_stats::{Delta, bucket_bounds};
use serde::Serialize;

use super::sequential::{Counts, Difference, ErrorShare, difference, non_inferiority};

/// A ramp's decision rules.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Policy {
    /// Family-wise error rate of the ramp, split across the tests.
    pub alpha: f64,
    /// Least time at each step before advancing.
    #[serde(with = "humantime_serde")]
    pub min_dwell: Duration,
    /// Least treatment requests at the current step before advancing.
    pub min_samples: u64,
    /// Non-inferiority margin on the error rate (absolute: 0.01 = one percentage point). Larger
    /// regressions than this never advance; smaller ones are caught by the harm tests, which need
    /// no margin.
    pub max_error_increase: f64,
    /// Non-inferiority margin on the share of requests slower than the control's p99.
    pub max_slow_share_increase: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            alpha: 0.05,
            min_dwell: Duration::from_secs(60),
            min_samples: 200,
            max_error_increase: 0.01,
            max_slow_share_increase: 0.02,
        }
    }
}

/// Fewest treatment requests before any test may roll back: too little traffic never does.
const MIN_ROLLBACK_SAMPLES: u64 = 30;
/// Fewest treatment errors before the error-share e-process may roll back.
const MIN_ROLLBACK_ERRORS: u64 = 3;
/// Mixing variance of the mSPRTs: effects of about one point are expected.
const TAU2: f64 = 1e-4;
/// Tests sharing α (Bonferroni).
const TESTS: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Advance,
    Hold,
    Rollback,
}

/// The numbers behind a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Numbers {
    pub treatment_requests: u64,
    pub control_requests: u64,
    pub step_treatment_requests: u64,
    pub treatment_error_rate: f64,
    pub control_error_rate: f64,
    /// mSPRT on the error-rate difference (the harm test).
    pub error_diff: Option<Difference>,
    /// The confidence sequence at the margin (the non-inferiority bound).
    pub error_bound: Option<Difference>,
    /// The error-share e-process.
    pub error_share_e: f64,
    /// The control's p99 bucket boundary, µs.
    pub slow_threshold_us: Option<u64>,
    /// mSPRT on the slow-share difference (the harm test).
    pub slow_diff: Option<Difference>,
    /// The slow-share confidence sequence at the margin.
    pub slow_bound: Option<Difference>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    pub numbers: Numbers,
}

/// What the engine observed for a ramp.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Since the ramp started.
    pub treatment: &'a Delta,
    pub control: &'a Delta,
    /// Treatment requests since the current step started.
    pub step_treatment_requests: u64,
    /// Time at the current step.
    pub dwell: Duration,
    /// The error-share e-process, updated with every window so far.
    pub error_share: &'a ErrorShare,
}

pub fn decide(policy: &Policy, obs: Observation<'_>) -> Decision {
    let level = policy.alpha / TESTS;
    let (t, c) = (obs.treatment, obs.control);
    let errors = Counts { x_t: t.errors, n_t: t.requests, x_c: c.errors, n_c: c.requests };
    let error_diff = difference(errors, TAU2, level);
    let error_bound = non_inferiority(errors, policy.max_error_increase, TAU2, level);
    // The latency guardrail: the share of requests above the control's p99 bucket.
    let slow_threshold_us = c.latency.quantile_bucket(0.99).map(|b| bucket_bounds(b).1.saturating_sub(1));
    let slow = slow_threshold_us.map(|th| Counts {
        x_t: t.latency.share_above(th),
        n_t: t.latency.count(),
        x_c: c.latency.share_above(th),
        n_c: c.latency.count(),
    });
    let slow_diff = slow.and_then(|counts| difference(counts, TAU2, level));
    let slow_bound = slow.and_then(|counts| non_inferiority(counts, policy.max_slow_share_increase, TAU2, level));
    let numbers = Numbers {
        treatment_requests: t.requests,
        control_requests: c.requests,
        step_treatment_requests: obs.step_treatment_requests,
        treatment_error_rate: t.error_rate().unwrap_or(0.0),
        control_error_rate: c.error_rate().unwrap_or(0.0),
        error_diff,
        error_bound,
        error_share_e: obs.error_share.e_value(),
        slow_threshold_us,
        slow_diff,
        slow_bound,
    };
    let decision = |action, reason: String| Decision { action, reason, numbers: numbers.clone() };
    let threshold = 1.0 / level;

    if t.requests >= MIN_ROLLBACK_SAMPLES {
        if let Some(d) = error_diff.filter(|d| d.estimate > 0.0 && d.e_value >= threshold) {
            return decision(
                Action::Rollback,
                format!(
                    "error rate worse: treatment {:.3}% vs control {:.3}%, mSPRT e-value {:.1} ≥ {threshold:.0}",
                    numbers.treatment_error_rate * 100.0,
                    numbers.control_error_rate * 100.0,
                    d.e_value
                ),
            );
        }
        if t.errors >= MIN_ROLLBACK_ERRORS && numbers.error_share_e >= threshold {
            return decision(
                Action::Rollback,
                format!(
                    "errors concentrate in treatment beyond its traffic share: e-value {:.1} ≥ {threshold:.0}",
                    numbers.error_share_e
                ),
            );
        }
        if let Some(d) = slow_diff.filter(|d| d.estimate > 0.0 && d.e_value >= threshold) {
            return decision(
                Action::Rollback,
                format!(
                    "latency worse: {:.1}% more treatment requests above the control's p99 ({} µs), e-value {:.1} ≥ {threshold:.0}",
                    d.estimate * 100.0,
                    slow_threshold_us.unwrap_or(0),
                    d.e_value
                ),
            );
        }
    }
    if obs.dwell < policy.min_dwell {
        return decision(Action::Hold, format!("dwell {}s of {}s", obs.dwell.as_secs(), policy.min_dwell.as_secs()));
    }
    if obs.step_treatment_requests < policy.min_samples {
        return decision(
            Action::Hold,
            format!("{} of {} treatment samples at this step", obs.step_treatment_requests, policy.min_samples),
        );
    }
    let Some(err) = error_bound.filter(|d| d.upper < policy.max_error_increase) else {
        let upper = error_bound.map_or(f64::INFINITY, |d| d.upper);
        return decision(
            Action::Hold,
            format!(
                "error-rate bound {:.3} points not yet below the {:.3}-point margin",
                upper * 100.0,
                policy.max_error_increase * 100.0
            ),
        );
    };
    let Some(slow) = slow_bound.filter(|d| d.upper < policy.max_slow_share_increase) else {
        let upper = slow_bound.map_or(f64::INFINITY, |d| d.upper);
        return decision(
            Action::Hold,
            format!(
                "slow-share bound {:.3} points not yet below the {:.3}-point margin",
                upper * 100.0,
                policy.max_slow_share_increase * 100.0
            ),
        );
    };
    decision(
        Action::Advance,
        format!(
            "non-inferior: error-rate difference ≤ {:.3} points, slow share ≤ {:.3} points",
            err.upper * 100.0,
            slow.upper * 100.0
        ),
    )
}

#[cfg(test)]
mod tests {
    use rampart_stats::SparseHistogram;

    use super::*;

    fn delta(requests: u64, errors: u64, latency_us: u64) -> Delta {
        let mut latency = SparseHistogram::default();
        for i in 0..requests.min(5_000) {
            latency.record(latency_us + i % 100);
        }
        Delta { requests, errors, timeouts: 0, latency }
    }

    fn obs<'a>(t: &'a Delta, c: &'a Delta, e: &'a ErrorShare, dwell: u64, step: u64) -> Observation<'a> {
        Observation {
            treatment: t,
            control: c,
            step_treatment_requests: step,
            dwell: Duration::from_secs(dwell),
            error_share: e,
        }
    }

    #[test]
    fn holds_advances_and_rolls_back() {
        let p = Policy::default();
        let e = ErrorShare::default();
        let (t, c) = (delta(5_000, 25, 1000), delta(100_000, 500, 1000));
        assert_eq!(decide(&p, obs(&t, &c, &e, 10, 5_000)).action, Action::Hold, "dwell");
        assert_eq!(decide(&p, obs(&t, &c, &e, 61, 50)).action, Action::Hold, "samples");
        let d = decide(&p, obs(&t, &c, &e, 61, 5_000));
        assert_eq!(d.action, Action::Advance, "{}", d.reason);
        let bad = delta(5_000, 250, 1000);
        let d = decide(&p, obs(&bad, &c, &e, 0, 10));
        assert_eq!(d.action, Action::Rollback, "{}", d.reason);
        assert!(d.reason.starts_with("error rate worse"), "{}", d.reason);
        let slow = delta(5_000, 25, 3000);
        let d = decide(&p, obs(&slow, &c, &e, 0, 10));
        assert_eq!(d.action, Action::Rollback, "{}", d.reason);
        assert!(d.reason.starts_with("latency worse"), "{}", d.reason);
    }

    #[test]
    fn too_little_traffic_never_rolls_back_nor_advances() {
        let p = Policy::default();
        let e = ErrorShare::default();
        let (t, c) = (delta(20, 20, 1000), delta(50, 0, 1000));
        assert_eq!(decide(&p, obs(&t, &c, &e, 3600, 20)).action, Action::Hold);
    }
}
