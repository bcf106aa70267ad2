use std::path::Path;
use std::time::Duration;

use rampart_control::ramp::window::Arm;

use super::*;
use crate::simulate::run_many;

fn scenario(extra: &str) -> Scenario {
    let text = format!("description = \"test\"\nexpectation = \"-\"\nkind = \"aa\"\n{extra}");
    Scenario::parse(Path::new("test.toml"), &text).unwrap()
}

/// Runs once and sums the windows the engine read, per arm.
fn totals(sc: &Scenario, seed: u64) -> (Outcome, Arm, Arm, Vec<(u64, Window)>) {
    let (mut t, mut c, mut windows) = (Arm::default(), Arm::default(), Vec::new());
    let outcome = run_traced(sc, seed, &mut |tick, w, _| {
        t.merge(&w.treatment);
        c.merge(&w.control);
        windows.push((tick, w.clone()));
    });
    (outcome, t, c, windows)
}

#[test]
fn a_seed_gives_the_same_runs_on_any_number_of_threads() {
    let sc = scenario("rps = 300\nmax_duration = \"3m\"\n[arms.both]\nerror_rate = 0.01\n");
    let one = run_many(&sc, 6, 42, 1);
    assert_eq!(one, run_many(&sc, 6, 42, 3));
    assert_ne!(one[0], one[1], "runs have their own streams");
    assert_ne!(run(&sc, 1), run(&sc, 2));
}

#[test]
fn traffic_is_split_by_the_applied_percent_and_counted_per_unit() {
    // Two minutes at 10% (equal arms; a dwell of an hour: no advance).
    let sc = scenario(
        "rps = 1000\nmax_duration = \"120s\"\nsteps = [10, 100]\n[policy]\nmin_dwell = \"1h\"\n[arms.both]\nerror_rate = 0.01\n",
    );
    let (outcome, t, c, windows) = totals(&sc, 3);
    assert_eq!(outcome.end, End::Running);
    let requests = (t.requests + c.requests) as f64;
    assert!((requests / 120.0 - 1000.0).abs() < 100.0, "{requests} requests in 120 s");
    let share = t.requests as f64 / requests;
    assert!((0.07..0.13).contains(&share), "treatment share of requests {share}");
    // Five requests a unit, ~2 s apart: a unit is in a few windows; fewer units than requests.
    assert!(c.units < c.requests && c.units * 4 > c.requests, "{c:?}");
    let errors = c.errors as f64 / c.requests as f64;
    assert!((0.008..0.012).contains(&errors), "control error rate {errors}");
    // The first window is read at tick 1 (it ends half a second before); the 10% reach the
    // sidecars after the apply delay, so the first window has no treatment.
    assert_eq!(windows[0].0, 1);
    assert_eq!(windows[0].1.treatment.requests, 0);
    assert!(windows[0].1.control.requests > 300, "the ramp starts on warmed-up traffic");
    let excess = outcome.treatment_failed as f64 - outcome.control_expected_failed;
    assert!(excess.abs() < 5.0 * outcome.control_expected_failed.sqrt(), "{outcome:?}");
}

#[test]
fn a_burst_is_one_failing_unit() {
    let sc = scenario(
        "rps = 1000\nburst = 10\nmax_duration = \"90s\"\n[policy]\nmin_dwell = \"1h\"\n[arms.both]\nerror_rate = 0.02\n",
    );
    let (_, _, c, _) = totals(&sc, 5);
    let per_unit = c.errors as f64 / c.failing_units as f64;
    assert!((8.0..=10.5).contains(&per_unit), "{} errors from {} failing units", c.errors, c.failing_units);
    let rate = c.errors as f64 / c.requests as f64;
    assert!((0.015..0.025).contains(&rate), "request error rate {rate} stays the scenario's");
}

#[test]
fn a_failing_unit_counts_once_per_horizon() {
    // Every request fails; a unit lives ~8 s, well within the horizon: one failing unit each.
    let sc = scenario("rps = 500\nmax_duration = \"60s\"\n[policy]\nmin_dwell = \"1h\"\n[arms.both]\nerror_rate = 1\n");
    let (_, t, c, _) = totals(&sc, 9);
    assert_eq!(c.errors, c.requests);
    let units_arrived = (c.requests + t.requests) as f64 / 5.0;
    let failing = (c.failing_units + t.failing_units) as f64;
    assert!((failing / units_arrived - 1.0).abs() < 0.15, "{failing} failing units, ~{units_arrived} units");
    assert!(c.units as f64 > 2.0 * failing, "units are counted per window, failures per horizon");
    // A unit is new once (it lives well within the new-unit horizon), in each arm it is seen in.
    let new = (c.new_units + t.new_units) as f64;
    assert!((new / units_arrived - 1.0).abs() < 0.15, "{new} new units, ~{units_arrived} units");
}

#[test]
fn nothing_is_slow_before_a_threshold_is_applied() {
    let sc = scenario("rps = 1000\nmax_duration = \"20s\"\n");
    let (_, _, _, windows) = totals(&sc, 1);
    // The threshold is set at tick 1 (≥ 200 control latencies) and applied a second later.
    assert_eq!(windows[0].1.control.slow, 0);
    let later: u64 = windows[3..].iter().map(|(_, w)| w.control.slow).sum();
    let requests: u64 = windows[3..].iter().map(|(_, w)| w.control.requests).sum();
    let share = later as f64 / requests as f64;
    let expected = 1.0 - rampart_control::ramp::model::SLOW_QUANTILE;
    assert!((expected / 2.0..expected * 2.0).contains(&share), "control slow share {share}, expected ~{expected}");
}

#[test]
fn lost_treatment_units_are_never_counted() {
    let sc = scenario("rps = 1000\nmax_duration = \"30s\"\ndrop_treatment = 1\n");
    let (outcome, t, _, _) = totals(&sc, 1);
    assert_eq!(t.requests, 0);
    assert!(outcome.treatment_requests > 100, "{outcome:?}");
}

#[test]
fn a_late_onset_waits_for_its_percent() {
    let at = |from: u32| {
        scenario(&format!(
            "rps = 1000\nmax_duration = \"40s\"\nsteps = [30, 100]\n[policy]\nmin_dwell = \"1h\"\n\
             [arms.treatment]\nerror_rate = {{ kind = \"constant\", value = 0.5, from_percent = {from} }}\n"
        ))
    };
    let (_, t, _, _) = totals(&at(50), 1);
    assert_eq!(t.errors, 0, "below 50%: the treatment behaves like the control");
    let (outcome, t, _, _) = totals(&at(30), 1);
    assert!(t.errors > 0 || outcome.end.rolled_back(), "{outcome:?}");
    let sc = at(30);
    assert_eq!(sc.max_duration, Duration::from_secs(40));
}

#[test]
fn a_report_interval_longer_than_a_tick_leaves_ticks_empty() {
    let sc = scenario("rps = 1000\nmax_duration = \"60s\"\nreport_interval = \"10s\"\n");
    let (_, _, _, windows) = totals(&sc, 1);
    let with_traffic: Vec<u64> =
        windows.iter().filter(|(_, w)| w.control.requests > 0).map(|(tick, _)| *tick).collect();
    assert_eq!(with_traffic, vec![10, 20, 30, 40, 50, 60]);
}
