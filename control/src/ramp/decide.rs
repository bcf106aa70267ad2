//! One decision for one ramp at one tick, from the state of its tests (see `sequential.rs`):
//! ROLLBACK as soon as a guardrail's harm test crosses its threshold (at any sample size), PAUSE on
//! a sample-ratio mismatch, ADVANCE when the dwell is over, the step has its units and every
//! guardrail shows a relative risk under `1 + δ` (or fits the error budget at the next step), else
//! HOLD. The false-rollback rate `α` is split 60/40 between errors and latency; advancing a worse
//! treatment has its own `α`, split the same way. Pure: no clock, no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sequential::{Harm, Ratio, RiskBound, e_of, proportion_upper};
use super::window::{Arm, units};

/// A ramp's decision rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// The ramp's false-rollback rate (and, separately, its rate of advancing a treatment whose
    /// relative risk is at least `1 + δ`).
    pub alpha: f64,
    /// Least time at each step before advancing.
    #[serde(with = "humantime_serde")]
    pub min_dwell: Duration,
    /// Least treatment units at the current step before advancing.
    pub min_samples: u64,
    /// Advance when the relative risk (treatment ÷ control, failing units) is shown below `1 + δ`.
    pub delta: f64,
    /// Or when the excess failing (or slow) units per hour the next step could add stay under
    /// this many; `None`: only the relative-risk bound advances.
    pub error_budget: Option<f64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { alpha: 0.05, min_dwell: Duration::from_secs(60), min_samples: 200, delta: 0.5, error_budget: None }
    }
}

/// Shares of `α` for the two guardrails.
pub const ERRORS_SHARE: f64 = 0.6;
pub const LATENCY_SHARE: f64 = 0.4;
/// Level of the sample-ratio test, as a share of `α` (it only pauses).
pub const RATIO_SHARE: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Advance,
    Hold,
    Rollback,
    /// Stop deciding until an operator looks (sample-ratio mismatch).
    Pause,
}

/// The evidence of one guardrail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guard {
    /// Failing (or slow) units of each arm over the ramp.
    pub treatment_units: u64,
    pub control_units: u64,
    /// Their shares of the arms' units.
    pub treatment_rate: f64,
    pub control_rate: f64,
    /// The stratified (Mantel–Haenszel) relative risk.
    pub relative_risk: Option<f64>,
    /// The upper end of its confidence sequence (`None`: not bounded yet).
    pub relative_risk_upper: Option<f64>,
    /// The harm e-value and the threshold that rolls back.
    pub harm_e: f64,
    pub harm_threshold: f64,
    /// The e-value against "relative risk ≥ 1 + δ" and the threshold that lets it advance.
    pub bound_e: f64,
    pub bound_threshold: f64,
    /// With an error budget: the upper bound on excess units per hour at the next step.
    pub excess_per_hour: Option<f64>,
}

/// The numbers behind a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Numbers {
    /// Randomised treatment units at the current step, and over the ramp per arm.
    pub step_units: u64,
    pub treatment_units: u64,
    pub control_units: u64,
    pub errors: Guard,
    pub latency: Guard,
    /// The slow threshold of this step (µs), from the control's recent latencies.
    pub slow_threshold_us: Option<u64>,
    /// The sample-ratio test: configured and observed treatment share of units, e-value.
    pub expected_share: f64,
    pub observed_share: Option<f64>,
    pub ratio_e: f64,
    pub ratio_threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    pub numbers: Numbers,
}

/// A guardrail's state as the engine carries it.
#[derive(Debug, Clone, Copy)]
pub struct GuardState<'a> {
    pub harm: &'a Harm,
    pub bound: &'a RiskBound,
    /// Failing (or slow) units of each arm over the ramp.
    pub failing: (u64, u64),
    /// The current step's treatment and control: (failing or slow units, units).
    pub step: ((u64, u64), (u64, u64)),
}

/// What the engine observed for a ramp.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub errors: GuardState<'a>,
    pub latency: GuardState<'a>,
    pub ratio: &'a Ratio,
    /// Randomised units over the ramp and at this step.
    pub ramp: (&'a Arm, &'a Arm),
    pub step_units: u64,
    /// Time at the current step, and the step's units of both arms per hour.
    pub dwell: Duration,
    pub units_per_hour: f64,
    pub percent: f64,
    /// The next step's percent (100 when the next move completes).
    pub next_percent: f64,
    pub slow_threshold_us: Option<u64>,
}

fn guard(policy: &Policy, g: GuardState<'_>, share: f64, obs: &Observation<'_>) -> Guard {
    let level = policy.alpha * share;
    let (ut, uc) = (units(obs.ramp.0), units(obs.ramp.1));
    let rate = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let excess_per_hour = policy.error_budget.map(|_| {
        let ((xt, nt), (xc, nc)) = g.step;
        let upper = proportion_upper(xt, nt, level);
        (upper - rate(xc, nc)).max(0.0) * obs.units_per_hour * obs.next_percent / 100.0
    });
    Guard {
        treatment_units: g.failing.0,
        control_units: g.failing.1,
        treatment_rate: rate(g.failing.0, ut),
        control_rate: rate(g.failing.1, uc),
        relative_risk: g.bound.estimate(),
        relative_risk_upper: g.bound.upper(level),
        harm_e: e_of(g.harm.log_e()),
        harm_threshold: 1.0 / level,
        bound_e: e_of(g.bound.log_e()),
        bound_threshold: 1.0 / level,
        excess_per_hour,
    }
}

fn risk(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}×"))
}

/// An e-value as a reader takes it in: plain up to a million, then in scientific notation.
fn ev(e: f64) -> String {
    if e < 1e6 { format!("{e:.1}") } else { format!("{e:.1e}") }
}

fn upper(r: Option<f64>) -> String {
    r.map_or_else(|| "unbounded".to_owned(), |r| format!("< {r}×"))
}

pub fn decide(policy: &Policy, obs: Observation<'_>) -> Decision {
    let errors = guard(policy, obs.errors, ERRORS_SHARE, &obs);
    let latency = guard(policy, obs.latency, LATENCY_SHARE, &obs);
    let ratio_threshold = 1.0 / (policy.alpha * RATIO_SHARE);
    let numbers = Numbers {
        step_units: obs.step_units,
        treatment_units: units(obs.ramp.0),
        control_units: units(obs.ramp.1),
        errors,
        latency,
        slow_threshold_us: obs.slow_threshold_us,
        expected_share: obs.percent / 100.0,
        observed_share: obs.ratio.share(),
        ratio_e: e_of(obs.ratio.log_e()),
        ratio_threshold,
    };
    let decision = |action, reason: String| Decision { action, reason, numbers: numbers.clone() };
    let (e, l) = (&numbers.errors, &numbers.latency);

    if e.harm_e >= e.harm_threshold {
        return decision(
            Action::Rollback,
            format!(
                "errors worse: {} of treatment units failed ({:.3}%) vs {} of control ({:.3}%), relative risk {}, e-value {} ≥ {:.0}",
                e.treatment_units,
                e.treatment_rate * 100.0,
                e.control_units,
                e.control_rate * 100.0,
                risk(e.relative_risk),
                ev(e.harm_e),
                e.harm_threshold
            ),
        );
    }
    if l.harm_e >= l.harm_threshold {
        return decision(
            Action::Rollback,
            format!(
                "latency worse: {:.2}% of treatment units slower than {} µs vs {:.2}% of control, relative risk {}, e-value {} ≥ {:.0}",
                l.treatment_rate * 100.0,
                obs.slow_threshold_us.unwrap_or(0),
                l.control_rate * 100.0,
                risk(l.relative_risk),
                ev(l.harm_e),
                l.harm_threshold
            ),
        );
    }
    if numbers.ratio_e >= ratio_threshold {
        return decision(
            Action::Pause,
            format!(
                "sample_ratio_mismatch: treatment has {:.3}% of units, configured {}%, e-value {} ≥ {:.0}",
                numbers.observed_share.unwrap_or(0.0) * 100.0,
                obs.percent,
                ev(numbers.ratio_e),
                ratio_threshold
            ),
        );
    }
    if obs.dwell < policy.min_dwell {
        return decision(Action::Hold, format!("dwell {}s of {}s", obs.dwell.as_secs(), policy.min_dwell.as_secs()));
    }
    if obs.step_units < policy.min_samples {
        return decision(
            Action::Hold,
            format!("{} of {} treatment units at this step", obs.step_units, policy.min_samples),
        );
    }
    let bound = 1.0 + policy.delta;
    let mut shown = Vec::with_capacity(2);
    for (name, g) in [("errors", e), ("latency", l)] {
        if g.bound_e >= g.bound_threshold {
            shown.push(format!("{name} relative risk {} (< {bound}×)", upper(g.relative_risk_upper)));
            continue;
        }
        match (g.excess_per_hour, policy.error_budget) {
            (Some(excess), Some(budget)) if excess <= budget => {
                shown.push(format!(
                    "{name}: at most {excess:.1} excess units/h at {}% (budget {budget})",
                    obs.next_percent
                ));
            }
            (None, None) if g.treatment_units + g.control_units == 0 => {
                // Nothing failed (or was slow) in either arm: there is no risk to compare, and
                // only an absolute bound (the error budget) can show the treatment is safe.
                return decision(
                    Action::Hold,
                    format!(
                        "{name}: no failing units in either arm yet, nothing to compare (an error budget advances on an absolute bound)"
                    ),
                );
            }
            (excess, _) => {
                let budget =
                    excess.map_or_else(String::new, |x| format!("; at most {x:.1} excess units/h at the next step"));
                return decision(
                    Action::Hold,
                    format!(
                        "{name} relative risk {} (estimate {}), not yet shown below {bound}×{budget}",
                        upper(g.relative_risk_upper),
                        risk(g.relative_risk)
                    ),
                );
            }
        }
    }
    decision(Action::Advance, format!("non-inferior: {}", shown.join(", ")))
}
