//! The simulation harness runs the real decision engine over seeded synthetic traffic on a
//! simulated clock, and checks the ramp engine's promises. Deterministic: fixed seeds. The figures
//! are printed (`cargo test -p rampart-control --test simulation -- --nocapture`).

use rampart_control::ramp::model::State;
use rampart_control::ramp::sim::{Outcome, Scenario, run};

fn runs(scenario: &Scenario, n: u64, seed: u64) -> Vec<Outcome> {
    (0..n).map(|i| run(scenario, seed * 1_000_003 + i)).collect()
}

fn quantile(mut xs: Vec<u64>, q: f64) -> u64 {
    xs.sort_unstable();
    xs[((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len()) - 1]
}

fn rollback_seconds(outcomes: &[Outcome]) -> Vec<u64> {
    outcomes.iter().filter(|o| o.state == State::RolledBack).map(|o| o.seconds).collect()
}

#[test]
fn a_a_false_rollback_rate_is_within_alpha() {
    // 1 000 ramps, 1 000 rps, 0.5% errors and the same latency on both sides.
    let s = Scenario { max_seconds: 900, ..Scenario::default() };
    let outcomes = runs(&s, 1000, 1);
    let rolled_back = outcomes.iter().filter(|o| o.state == State::RolledBack).count();
    let completed = outcomes.iter().filter(|o| o.state == State::Completed).count();
    let rate = rolled_back as f64 / outcomes.len() as f64;
    println!("A/A: {rolled_back} of {} rolled back ({:.2}%), {completed} completed", outcomes.len(), rate * 100.0);
    assert!(rate <= s.policy.alpha, "false-rollback rate {rate} > alpha {}", s.policy.alpha);
}

#[test]
fn error_regression_is_rolled_back_within_a_minute_and_faster_at_five_percent() {
    let at_1 =
        Scenario { control_error_rate: 0.001, treatment_error_rate: 0.01, max_seconds: 600, ..Scenario::default() };
    let at_5 = Scenario { steps: vec![5.0, 25.0, 50.0, 100.0], ..at_1.clone() };
    let o1 = runs(&at_1, 200, 2);
    let o5 = runs(&at_5, 200, 3);
    assert!(o1.iter().all(|o| o.state == State::RolledBack && o.max_percent <= 5.0), "all rolled back by 5%");
    let at_first_step = o1.iter().filter(|o| o.max_percent == 1.0).count();
    // The regression (0.9 points) is inside the default 1-point non-inferiority margin, so a rare
    // unlucky run may advance to 5% before the harm tests fire; it is rolled back there.
    println!("rolled back without leaving 1%: {at_first_step} of {}", o1.len());
    assert!(at_first_step * 100 >= o1.len() * 95);
    assert!(o5.iter().all(|o| o.state == State::RolledBack && o.max_percent == 5.0), "all rolled back at 5%");
    let (t1, t5) = (rollback_seconds(&o1), rollback_seconds(&o5));
    let (m1, p90_1) = (quantile(t1.clone(), 0.5), quantile(t1, 0.9));
    let (m5, p90_5) = (quantile(t5.clone(), 0.5), quantile(t5, 0.9));
    println!("0.1% → 1% errors at 1%: median {m1} s, p90 {p90_1} s; at 5%: median {m5} s, p90 {p90_5} s");
    assert!(m1 <= 60, "median time to rollback at 1% is {m1} s");
    assert!(m5 < m1, "faster at 5%: {m5} s vs {m1} s");
    let exposed: Vec<u64> = o1.iter().map(|o| o.treatment_requests).collect();
    println!("treatment requests before rollback at 1%: median {}", quantile(exposed, 0.5));
}

#[test]
fn a_doubled_latency_is_rolled_back() {
    let s = Scenario { treatment_latency_factor: 2.0, max_seconds: 600, ..Scenario::default() };
    let o = runs(&s, 100, 4);
    assert!(o.iter().all(|o| o.state == State::RolledBack), "every 2× latency regression is rolled back");
    let t = rollback_seconds(&o);
    println!("2× latency: median {} s, p90 {} s to rollback", quantile(t.clone(), 0.5), quantile(t, 0.9));
}

#[test]
fn a_good_change_goes_to_100_percent_within_ten_minutes() {
    let s = Scenario { treatment_error_rate: 0.004, max_seconds: 1200, ..Scenario::default() };
    let o = runs(&s, 100, 5);
    assert!(o.iter().all(|o| o.state == State::Completed && o.max_percent == 100.0), "all complete");
    let t: Vec<u64> = o.iter().map(|o| o.seconds).collect();
    let (median, max) = (quantile(t.clone(), 0.5), quantile(t, 1.0));
    println!("good change 1% → 100%: median {median} s, slowest {max} s");
    assert!(max <= 600, "slowest took {max} s");
}

#[test]
fn near_zero_traffic_neither_rolls_back_nor_promotes() {
    for (name, treatment_error_rate) in [("equal", 0.005), ("bad", 0.5)] {
        let s = Scenario { rps: 0.5, treatment_error_rate, max_seconds: 3600, ..Scenario::default() };
        let o = runs(&s, 50, 6);
        assert!(o.iter().all(|o| o.state == State::Running && o.max_percent == 1.0), "{name}: {o:?}");
    }
    println!("near-zero traffic (0.5 rps, 1 h): no rollback, no promotion");
}
