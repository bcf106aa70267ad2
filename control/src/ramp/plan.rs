//! What a ramp can expect at the traffic seen so far: the time to detect a 2× regression at the
//! current step, and the time an equal treatment takes to reach 100%. Expected values from the
//! tests' mean log-likelihood drift per failing unit (the time an e-process takes to climb to its
//! threshold), so an operator knows at the start whether the traffic can carry the ramp.

use rampart_stats::{SparseHistogram, bucket_bounds};
use serde::Serialize;

use super::decide::{ERRORS_SHARE, LATENCY_SHARE, Policy};
use super::model::{MIN_THRESHOLD_SAMPLES, Ramp, SLOW_QUANTILE};
use super::window::units;

/// The slow threshold a histogram of control latencies gives (its `SLOW_QUANTILE` bucket's upper
/// bound), when it has enough samples.
pub fn threshold_of(h: &SparseHistogram) -> Option<u64> {
    if h.count() < MIN_THRESHOLD_SAMPLES {
        return None;
    }
    h.quantile_bucket(SLOW_QUANTILE).map(|b| bucket_bounds(b).1.saturating_sub(1))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Randomised units per second (both arms) and the control's failing and slow shares.
    pub units_per_second: f64,
    pub control_failing: f64,
    pub control_slow: f64,
    /// Expected seconds until a 2× error regression rolls back at the current step.
    pub detect_2x_errors_s: Option<f64>,
    /// Expected seconds until a 2× rise in slow units rolls back at the current step.
    pub detect_2x_latency_s: Option<f64>,
    /// Expected seconds from the current step to 100% for a treatment equal to the control.
    pub to_full_s: Option<f64>,
}

impl Plan {
    pub fn describe(&self) -> String {
        let s = |x: Option<f64>| x.map_or_else(|| "never at this traffic".to_owned(), human);
        format!(
            "at {:.1} units/s with {:.3}% of control units failing: a 2× error regression is expected to roll back in {}, \
             a 2× latency regression in {}; an equal treatment is expected to reach 100% in {}",
            self.units_per_second,
            self.control_failing * 100.0,
            s(self.detect_2x_errors_s),
            s(self.detect_2x_latency_s),
            s(self.to_full_s)
        )
    }
}

fn human(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

fn q(r: f64, rho: f64) -> f64 {
    r * rho / (r * rho + 1.0 - rho)
}

/// Mean log-likelihood ratio per failing unit of "risk `alt`" against "risk `null`" when the
/// truth is `truth`, at treatment share `rho`.
fn drift(truth: f64, alt: f64, null: f64, rho: f64) -> f64 {
    let (qt, qa, qn) = (q(truth, rho), q(alt, rho), q(null, rho));
    qt * (qa / qn).ln() + (1.0 - qt) * ((1.0 - qa) / (1.0 - qn)).ln()
}

const HARM: [(f64, f64); 8] =
    [(1.5, 0.1), (2.0, 0.1), (3.0, 0.1), (5.0, 0.15), (10.0, 0.2), (20.0, 0.15), (50.0, 0.1), (100.0, 0.1)];
/// The bound tests' weight on relative risk 1 (see `sequential.rs`).
const EQUAL_WEIGHT: f64 = 0.6;

/// Seconds for the harm test to reach `1/level` under a 2× risk: the fastest component.
fn detect(units_per_s: f64, p: f64, rho: f64, level: f64) -> Option<f64> {
    let events = units_per_s * p * (1.0 - rho + 2.0 * rho);
    HARM.iter()
        .filter_map(|&(r, w)| {
            let d = drift(2.0, r, 1.0, rho);
            (d > 0.0 && events > 0.0).then(|| ((1.0 / level).ln() - w.ln()) / (events * d))
        })
        .min_by(f64::total_cmp)
}

/// The plan for `steps[from..]` at this traffic.
pub fn plan(policy: &Policy, steps: &[f64], from: usize, units_per_s: f64, p_fail: f64, p_slow: f64) -> Plan {
    let detect_at = steps.get(from).copied().unwrap_or(1.0) / 100.0;
    let bound = 1.0 + policy.delta;
    let needed = |share: f64| (1.0 / (policy.alpha * share)).ln() - EQUAL_WEIGHT.ln();
    // Nats still to gather per guardrail, and the nats per second each step brings.
    let mut remaining = [needed(ERRORS_SHARE), needed(LATENCY_SHARE)];
    let mut total = 0.0;
    let mut feasible = units_per_s > 0.0;
    for &percent in steps.iter().skip(from).take(steps.len().saturating_sub(from + 1)) {
        let rho = percent / 100.0;
        let rates: Vec<f64> = [p_fail, p_slow].iter().map(|&p| units_per_s * p * drift(1.0, 1.0, bound, rho)).collect();
        let mut t = policy.min_dwell.as_secs_f64().max(policy.min_samples as f64 / (units_per_s * rho).max(1e-12));
        for (left, rate) in remaining.iter().zip(&rates) {
            if *left > 0.0 {
                if *rate <= 0.0 {
                    feasible = false;
                } else {
                    t = t.max(left / rate);
                }
            }
        }
        for (left, rate) in remaining.iter_mut().zip(&rates) {
            *left -= rate * t;
        }
        total += t;
    }
    Plan {
        units_per_second: units_per_s,
        control_failing: p_fail,
        control_slow: p_slow,
        detect_2x_errors_s: detect(units_per_s, p_fail, detect_at, policy.alpha * ERRORS_SHARE),
        detect_2x_latency_s: detect(units_per_s, p_slow, detect_at, policy.alpha * LATENCY_SHARE),
        to_full_s: (feasible && total.is_finite()).then_some(total),
    }
}

/// The plan of a running ramp from the traffic it saw; `None` before any.
pub fn from_ramp(ramp: &Ramp, now_ms: i64) -> Option<Plan> {
    let since = ramp.first_exposure_ms.unwrap_or(ramp.started_ms);
    let secs = (now_ms - since) as f64 / 1000.0;
    let (t, c) = (&ramp.sums.0, &ramp.sums.1);
    let n = (units(t) + units(c)) as f64;
    if secs <= 0.0 || n == 0.0 || units(c) == 0 {
        return None;
    }
    let (uc, fc, sc) = (units(c) as f64, c.failing_units as f64, c.slow_units as f64);
    // Before the threshold is set nothing is slow: assume the quantile's share.
    let p_slow = if sc > 0.0 { sc / uc } else { 1.0 - SLOW_QUANTILE };
    Some(plan(&ramp.policy, &ramp.steps, ramp.step, n / secs, fc / uc, p_slow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_traffic_detects_sooner_and_finishes_sooner() {
        let p = Policy::default();
        let steps = [1.0, 5.0, 25.0, 50.0, 95.0, 100.0];
        let slow = plan(&p, &steps, 0, 100.0, 0.005, 0.01);
        let fast = plan(&p, &steps, 0, 10_000.0, 0.005, 0.01);
        assert!(fast.detect_2x_errors_s.unwrap() < slow.detect_2x_errors_s.unwrap());
        assert!(fast.to_full_s.unwrap() < slow.to_full_s.unwrap());
        // Five testing steps of at least a minute each.
        assert!(fast.to_full_s.unwrap() >= 300.0);
        assert_eq!(plan(&p, &steps, 0, 100.0, 0.0, 0.01).to_full_s, None, "no failures, no bound");
    }
}
