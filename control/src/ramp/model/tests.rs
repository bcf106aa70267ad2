//! The state machine on hand-made windows: steps, the holdback, rollback at any sample size, the
//! sample-ratio pause, the slow threshold fixed at a step.

use rampart_stats::{Delta, SparseHistogram};

use super::*;
use crate::ramp::window::Arm;

fn arm(units: u64, failing: u64, slow: u64) -> Arm {
    Arm { requests: units, errors: failing, slow, units, failing_units: failing, slow_units: slow, new_units: units }
}

fn latency(n: u64, us: u64) -> SparseHistogram {
    let mut h = SparseHistogram::default();
    for i in 0..n {
        h.record(us + i % 50);
    }
    h
}

fn window(t: Arm, c: Arm) -> Window {
    Window { treatment: t, control: c, control_latency: latency(c.requests, 20_000) }
}

fn ramp(policy: Policy) -> Ramp {
    Ramp::new(1, "f", "on", "off", DEFAULT_STEPS.to_vec(), policy, 0, &Delta::default())
}

#[test]
fn ten_failing_of_ten_roll_back_at_once() {
    let mut r = ramp(Policy::default());
    let d = r.observe(1_000, &window(arm(10, 10, 0), arm(990, 5, 0)));
    assert_eq!(d.action, Action::Rollback, "{}", d.reason);
    assert_eq!(r.apply(&d, 1_000), Some(Transition::RolledBack));
    assert_eq!(r.percent(), 0.0);
    let mut r = ramp(Policy::default());
    let d = r.observe(1_000, &window(arm(2, 1, 0), arm(200, 1, 0)));
    assert_eq!(d.action, Action::Hold, "1 of 2 is not enough: {}", d.reason);
}

#[test]
fn an_equal_treatment_advances_through_the_holdback_to_completion() {
    let policy = Policy { min_dwell: std::time::Duration::from_secs(5), min_samples: 10, ..Policy::default() };
    let mut r = ramp(policy);
    let mut now = 0;
    let mut seen = vec![r.percent()];
    while r.state == State::Running && now < 3_600_000 {
        now += 1_000;
        let p = r.percent() / 100.0;
        let n = 20_000.0;
        let (ut, uc) = ((n * p) as u64, (n * (1.0 - p)) as u64);
        // 2% failing and 1% slow in both arms, exactly at their shares.
        let d = r.observe(now, &window(arm(ut, ut / 50, ut / 100), arm(uc, uc / 50, uc / 100)));
        if let Some(Transition::Percent(p)) = r.apply(&d, now) {
            seen.push(p);
        }
    }
    assert_eq!(r.state, State::Completed, "at {}%", r.percent());
    assert_eq!(seen, [1.0, 5.0, 25.0, 50.0, 95.0], "95% is the last tested step");
    assert_eq!(r.percent(), 100.0);
    assert!(r.slow_threshold_us.is_some());
}

#[test]
fn a_treatment_that_loses_its_units_pauses_the_ramp() {
    let mut r = ramp(Policy::default());
    let mut now = 0;
    let mut last = None;
    while r.state == State::Running && now < 600_000 {
        now += 1_000;
        // 5% configured, half of the treatment's units never reach the sidecar.
        let d = r.observe(now, &window(arm(5, 0, 0), arm(990, 5, 10)));
        last = r.apply(&d, now).map(|t| (t, d.reason));
    }
    let (t, reason) = last.unwrap();
    assert_eq!(t, Transition::Paused);
    assert!(reason.starts_with("sample_ratio_mismatch"), "{reason}");
    assert_eq!(r.state, State::Paused);
}

#[test]
fn the_slow_threshold_comes_from_the_control_and_is_fixed_at_a_step() {
    let mut r = ramp(Policy::default());
    assert_eq!(r.slow_threshold_us, None);
    r.observe(1_000, &window(arm(10, 0, 0), arm(990, 0, 0)));
    let first = r.slow_threshold_us.expect("990 control latencies set it");
    assert!((20_000..21_000).contains(&first), "{first}");
    // Slower control traffic does not move it within the step.
    r.observe(2_000, &Window { control_latency: latency(5_000, 90_000), ..window(arm(10, 0, 0), arm(990, 0, 0)) });
    assert_eq!(r.slow_threshold_us, Some(first));
}
