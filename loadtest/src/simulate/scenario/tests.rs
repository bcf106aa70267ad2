use super::*;
use crate::simulate::curve::Shape;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(Path::new("scenarios/test.toml"), text)
}

const MINIMAL: &str = r#"
description = "A/A"
expectation = "no rollback"
kind = "aa"
rps = 1000
"#;

#[test]
fn a_full_file_parses_into_real_types() {
    let sc = parse(
        r#"
description = "late onset"
expectation = "rolls back at 25%"
kind = "bad"
rps = 250.5
requests_per_unit = 3
requests_per_unit_dist = "geometric"
think_time = "500ms"
burst = 3
retry_gap = "100ms"
latency_median = "30ms"
latency_sigma = 0.7
timeout = "2s"
drop_treatment = 0.1
apply_delay = "2s"
report_interval = "10s"
max_duration = "2h"
steps = [5, 50, 100]

[policy]
alpha = 0.01
min_dwell = "30s"
error_budget = 12.5

[arms.both]
error_rate = 0.005

[arms.treatment]
error_rate = { kind = "step", before = 0.005, after = 0.02, at = "0s", from_percent = 25 }
latency_multiplier = { kind = "ramp", from = 1, to = 2, start = "1m", end = "2m" }

[check]
rollback_at_least = 0.9
runs = 20
max_duration = "30m"
"#,
    )
    .unwrap();
    assert_eq!((sc.name.as_str(), sc.kind, sc.rps, sc.burst), ("test", Kind::Bad, 250.5, 3));
    assert_eq!(sc.requests_per_unit_dist, PerUnit::Geometric);
    assert_eq!(sc.think_time, Duration::from_millis(500));
    assert_eq!(sc.report_interval, Duration::from_secs(10));
    assert_eq!(sc.max_duration, Duration::from_secs(7200));
    assert_eq!(sc.steps, vec![5.0, 50.0, 100.0]);
    assert_eq!(sc.policy.alpha, 0.01);
    assert_eq!(sc.policy.min_dwell, Duration::from_secs(30));
    assert_eq!(sc.policy.error_budget, Some(12.5));
    assert_eq!(sc.policy.min_samples, Policy::default().min_samples, "unset policy keys keep their default");
    assert_eq!(sc.control.error_rate, Curve::constant(0.005), "the control takes [arms.both]");
    assert_eq!(sc.control.latency_multiplier, Curve::constant(1.0));
    assert_eq!(sc.treatment.error_rate.from_percent, Some(25.0));
    assert_eq!(sc.treatment.latency_multiplier.shape, Shape::Ramp { from: 1.0, to: 2.0, start: 60.0, end: 120.0 });
    assert_eq!(sc.check.runs, Some(20));
    assert_eq!(sc.check.max_duration, Some(Duration::from_secs(1800)));
}

#[test]
fn defaults_fill_a_minimal_file() {
    let sc = parse(MINIMAL).unwrap();
    assert_eq!(sc.steps, DEFAULT_STEPS.to_vec());
    assert_eq!(sc.policy, Policy::default());
    assert_eq!((sc.requests_per_unit, sc.burst, sc.drop_treatment), (5.0, 1, 0.0));
    assert_eq!((sc.apply_delay, sc.report_interval), (Duration::from_secs(1), Duration::from_secs(1)));
    assert_eq!(sc.timeout, Duration::from_secs(10));
    assert_eq!(sc.max_duration, Duration::from_secs(3600));
    assert_eq!(sc.treatment.error_rate, Curve::constant(0.0));
}

fn syntax(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Err(ScenarioError::Syntax { line, column, key, message, .. }) => (line, column, key, message),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn a_bad_file_gives_the_file_line_and_key_path() {
    let (line, column, key, message) = syntax(&format!("{MINIMAL}\n[arms.treatment]\nerror_rat = 0.01\n"));
    assert_eq!((line, column), (8, 1), "{message}");
    assert_eq!(key, "arms.treatment.error_rat");
    assert!(message.contains("unknown field `error_rat`"), "{message}");

    let (line, _, key, message) = syntax(&MINIMAL.replace("rps = 1000", "rps = \"fast\""));
    assert_eq!((line, key.as_str()), (5, "rps"), "{message}");

    let text = format!("{MINIMAL}\n[arms.control]\nerror_rate = {{ kind = \"spike\", base = 0.01 }}\n");
    let (line, _, key, message) = syntax(&text);
    assert_eq!((line, key.as_str()), (8, "arms.control.error_rate"));
    assert!(message.contains("needs `value`"), "{message}");

    let (line, _, key, message) = syntax(&format!("{MINIMAL}\n[policy]\nmin_dwel = \"30s\"\n"));
    assert_eq!(key, "policy");
    assert!((7..=8).contains(&line), "{line}");
    assert!(message.contains("unknown policy key `min_dwel`") && message.contains("min_dwell"), "{message}");

    let (_, _, key, message) = syntax(&MINIMAL.replace("kind = \"aa\"", "kind = \"ab\""));
    assert_eq!(key, "kind");
    assert!(message.contains("unknown variant `ab`"), "{message}");

    let (_, _, _, message) = syntax(&MINIMAL.replace("kind = \"aa\"\n", ""));
    assert!(message.contains("missing field `kind`"), "{message}");

    let (line, _, _, _) = syntax("description = \"x\"\nrps = = 3\n");
    assert_eq!(line, 2);

    let e = parse(&format!("{MINIMAL}\nbogus = 1\n")).unwrap_err().to_string();
    assert!(e.starts_with("scenarios/test.toml:7:1: "), "{e}");
}

fn invalid(text: &str) -> (String, String) {
    match parse(text) {
        Err(ScenarioError::Invalid { key, message, .. }) => (key, message),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn values_out_of_range_are_refused_with_their_key() {
    let (key, _) = invalid(&format!("{MINIMAL}steps = [1, 5, 50]\n"));
    assert_eq!(key, "steps");
    let (key, _) = invalid(&format!("{MINIMAL}steps = [5, 1, 100]\n"));
    assert_eq!(key, "steps");
    let (key, _) = invalid(&MINIMAL.replace("rps = 1000", "rps = 0"));
    assert_eq!(key, "rps");
    let (key, _) = invalid(&format!("{MINIMAL}drop_treatment = 1.5\n"));
    assert_eq!(key, "drop_treatment");
    let (key, _) = invalid(&format!("{MINIMAL}burst = 0\n"));
    assert_eq!(key, "burst");
    let (key, _) = invalid(&format!("{MINIMAL}requests_per_unit = 2.5\n"));
    assert_eq!(key, "requests_per_unit");
    let (key, _) = invalid(&format!("{MINIMAL}\n[arms.treatment]\nerror_rate = 1.2\n"));
    assert_eq!(key, "arms.treatment.error_rate");
    let (key, _) = invalid(&format!(
        "{MINIMAL}\n[arms.both]\nlatency_multiplier = {{ kind = \"step\", before = 1, after = 0, at = \"1m\" }}\n"
    ));
    assert_eq!(key, "arms.control.latency_multiplier");
    let (key, message) = invalid(&format!(
        "{MINIMAL}\n[arms.control]\nerror_rate = {{ kind = \"constant\", value = 0.1, from_percent = 25 }}\n"
    ));
    assert_eq!(key, "arms.control.error_rate");
    assert!(message.contains("treatment only"), "{message}");
    let (key, _) = invalid(&format!("{MINIMAL}\n[policy]\nalpha = 2\n"));
    assert_eq!(key, "policy.alpha");
}
