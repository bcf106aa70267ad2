//! A scenario file (`loadtest/scenarios/*.toml`): the simulated world (traffic, per-arm error rate
//! and latency as functions of time, error bursts, lost treatment units, lags), the ramp's steps
//! and policy, and the expectation. Parsed into real types at load; errors name the file, the key
//! path and, where the TOML parser knows it, line and column.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_control::ramp::decide::Policy;
use rampart_control::ramp::model::DEFAULT_STEPS;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::curve::Curve;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScenarioError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, key: String, message: String },
    #[error("{}: {key}: {message}", path.display())]
    Invalid { path: PathBuf, key: String, message: String },
}

/// What the scenario is, and so what its rollback rate means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A/A: both arms equal; every rollback is a false rollback.
    Aa,
    /// The treatment is worse: it should roll back.
    Bad,
    /// The treatment is as good: it should reach 100%.
    Good,
    /// The treatment loses units before they are counted: it should pause (sample-ratio mismatch).
    Srm,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Aa => "aa",
            Kind::Bad => "bad",
            Kind::Good => "good",
            Kind::Srm => "srm",
        }
    }
}

/// How many requests a unit makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PerUnit {
    /// Exactly `requests_per_unit`.
    #[default]
    Fixed,
    /// Geometric with mean `requests_per_unit` (at least one).
    Geometric,
}

/// One arm's behaviour; `None`: from `[arms.both]`, else the default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmSpec {
    error_rate: Option<Curve>,
    latency_multiplier: Option<Curve>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arms {
    #[serde(default)]
    both: ArmSpec,
    #[serde(default)]
    control: ArmSpec,
    #[serde(default)]
    treatment: ArmSpec,
}

/// An arm as simulated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct ArmModel {
    pub(crate) error_rate: Curve,
    pub(crate) latency_multiplier: Curve,
}

/// Loose bounds the test suite checks at few runs (shares of runs; the "at least" bounds on
/// rollbacks and completions of the runs that did not pause). Unset bounds take the defaults of
/// the scenario's kind (see `summary::check_bounds`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Check {
    pub(crate) rollback_at_most: Option<f64>,
    pub(crate) rollback_at_least: Option<f64>,
    pub(crate) completed_at_least: Option<f64>,
    pub(crate) paused_at_most: Option<f64>,
    pub(crate) paused_at_least: Option<f64>,
    /// Share of runs that left the first step.
    pub(crate) advanced_at_most: Option<f64>,
    /// Why the scenario misses its bounds for now (a defect found, not yet fixed): the test suite
    /// then requires it to miss them, so a fix is noticed and this line removed.
    pub(crate) known_issue: Option<String>,
    /// Runs and `max_duration` for the test suite (default 30 and the file's).
    pub(crate) runs: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_duration: Option<Duration>,
}

fn d_requests_per_unit() -> f64 {
    5.0
}
fn d_think_time() -> Duration {
    Duration::from_secs(2)
}
fn d_burst() -> u32 {
    1
}
fn d_retry_gap() -> Duration {
    Duration::from_millis(200)
}
fn d_latency_median() -> Duration {
    Duration::from_millis(20)
}
fn d_latency_sigma() -> f64 {
    0.5
}
fn d_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_second() -> Duration {
    Duration::from_secs(1)
}
fn d_max_duration() -> Duration {
    Duration::from_secs(3600)
}
fn d_steps() -> Vec<f64> {
    DEFAULT_STEPS.to_vec()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    description: String,
    expectation: String,
    kind: Kind,
    /// Requests per second, both arms (retries add to it).
    rps: f64,
    #[serde(default = "d_requests_per_unit")]
    requests_per_unit: f64,
    #[serde(default)]
    requests_per_unit_dist: PerUnit,
    #[serde(default = "d_think_time", with = "humantime_serde")]
    think_time: Duration,
    #[serde(default = "d_burst")]
    burst: u32,
    #[serde(default = "d_retry_gap", with = "humantime_serde")]
    retry_gap: Duration,
    #[serde(default = "d_latency_median", with = "humantime_serde")]
    latency_median: Duration,
    #[serde(default = "d_latency_sigma")]
    latency_sigma: f64,
    #[serde(default = "d_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    drop_treatment: f64,
    #[serde(default = "d_second", with = "humantime_serde")]
    apply_delay: Duration,
    #[serde(default = "d_second", with = "humantime_serde")]
    report_interval: Duration,
    #[serde(default = "d_max_duration", with = "humantime_serde")]
    max_duration: Duration,
    #[serde(default = "d_steps")]
    steps: Vec<f64>,
    #[serde(default, deserialize_with = "strict_policy")]
    policy: Policy,
    #[serde(default)]
    arms: Arms,
    #[serde(default)]
    check: Check,
}

/// `Policy` accepts unknown keys; a scenario refuses them (a misspelt `min_dwel` would silently
/// measure the default).
fn strict_policy<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Policy, D::Error> {
    let table = toml::Table::deserialize(deserializer)?;
    let known = match serde_json::to_value(Policy::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect::<BTreeSet<_>>(),
        _ => BTreeSet::new(),
    };
    if let Some(key) = table.keys().find(|k| !known.contains(*k)) {
        let expected: Vec<&str> = known.iter().map(String::as_str).collect();
        return Err(de::Error::custom(format!("unknown policy key `{key}`, expected one of {}", expected.join(", "))));
    }
    Policy::deserialize(toml::Value::Table(table)).map_err(de::Error::custom)
}

/// A loaded, validated scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scenario {
    /// The file's stem.
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) expectation: String,
    pub(crate) kind: Kind,
    pub(crate) rps: f64,
    pub(crate) requests_per_unit: f64,
    pub(crate) requests_per_unit_dist: PerUnit,
    #[serde(with = "humantime_serde")]
    pub(crate) think_time: Duration,
    pub(crate) burst: u32,
    #[serde(with = "humantime_serde")]
    pub(crate) retry_gap: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) latency_median: Duration,
    pub(crate) latency_sigma: f64,
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
    pub(crate) drop_treatment: f64,
    #[serde(with = "humantime_serde")]
    pub(crate) apply_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) report_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) max_duration: Duration,
    pub(crate) steps: Vec<f64>,
    pub(crate) policy: Policy,
    pub(crate) control: ArmModel,
    pub(crate) treatment: ArmModel,
    pub(crate) check: Check,
}

impl Scenario {
    pub(crate) fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Io { path: path.to_owned(), source })?;
        Scenario::parse(path, &text)
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        let syntax = |key: String, e: toml::de::Error| {
            let offset = e.span().map_or(0, |s| s.start).min(text.len());
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
            ScenarioError::Syntax { path: path.to_owned(), line, column, key, message: e.message().to_owned() }
        };
        let document = toml::Deserializer::parse(text).map_err(|e| syntax("(document)".to_owned(), e))?;
        let raw: Raw = serde_path_to_error::deserialize(document).map_err(|e| {
            let key = e.path().to_string();
            syntax(key, e.into_inner())
        })?;
        let name = path.file_stem().map_or_else(|| "scenario".to_owned(), |s| s.to_string_lossy().into_owned());
        raw.validate(path, name)
    }
}

impl Raw {
    fn validate(self, path: &Path, name: String) -> Result<Scenario, ScenarioError> {
        let invalid =
            |key: &str, message: String| ScenarioError::Invalid { path: path.to_owned(), key: key.to_owned(), message };
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(key, format!("must be a positive number, got {v}")))
            }
        };
        let share = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(invalid(key, format!("must be within [0, 1], got {v}"))) }
        };
        if self.description.trim().is_empty() {
            return Err(invalid("description", "must say what the scenario is".to_owned()));
        }
        positive("rps", self.rps)?;
        if !(self.requests_per_unit >= 1.0 && self.requests_per_unit.is_finite()) {
            return Err(invalid("requests_per_unit", format!("must be at least 1, got {}", self.requests_per_unit)));
        }
        if self.requests_per_unit_dist == PerUnit::Fixed && self.requests_per_unit.fract() != 0.0 {
            return Err(invalid("requests_per_unit", "a fixed count must be a whole number".to_owned()));
        }
        if self.burst == 0 {
            return Err(invalid("burst", "must be at least 1".to_owned()));
        }
        if !(self.latency_sigma >= 0.0 && self.latency_sigma.is_finite()) {
            return Err(invalid("latency_sigma", format!("must be 0 or more, got {}", self.latency_sigma)));
        }
        share("drop_treatment", self.drop_treatment)?;
        for (key, d) in [
            ("think_time", self.think_time),
            ("latency_median", self.latency_median),
            ("timeout", self.timeout),
            ("report_interval", self.report_interval),
            ("max_duration", self.max_duration),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than 0".to_owned()));
            }
        }
        if self.max_duration > Duration::from_secs(7 * 24 * 3600) {
            return Err(invalid("max_duration", "at most a week".to_owned()));
        }
        let steps_ok = !self.steps.is_empty()
            && self.steps.windows(2).all(|w| w[0] < w[1])
            && self.steps.iter().all(|&p| p > 0.0 && p <= 100.0)
            && self.steps.last() == Some(&100.0);
        if !steps_ok {
            return Err(invalid(
                "steps",
                format!("must increase within (0, 100] and end at 100, got {:?}", self.steps),
            ));
        }
        share("policy.alpha", self.policy.alpha)?;
        let pick =
            |own: Option<Curve>, both: Option<Curve>, default: f64| own.or(both).unwrap_or(Curve::constant(default));
        let arms = self.arms;
        let control = ArmModel {
            error_rate: pick(arms.control.error_rate, arms.both.error_rate, 0.0),
            latency_multiplier: pick(arms.control.latency_multiplier, arms.both.latency_multiplier, 1.0),
        };
        let treatment = ArmModel {
            error_rate: pick(arms.treatment.error_rate, arms.both.error_rate, 0.0),
            latency_multiplier: pick(arms.treatment.latency_multiplier, arms.both.latency_multiplier, 1.0),
        };
        for (arm, model) in [("control", &control), ("treatment", &treatment)] {
            for (field, curve) in [("error_rate", &model.error_rate), ("latency_multiplier", &model.latency_multiplier)]
            {
                let key = format!("arms.{arm}.{field}");
                if arm == "control" && curve.from_percent.is_some() {
                    return Err(invalid(
                        &key,
                        "`from_percent` is for the treatment only (the control has no onset)".to_owned(),
                    ));
                }
                for v in curve.shape.values() {
                    if field == "error_rate" { share(&key, v)? } else { positive(&key, v)? }
                }
            }
        }
        Ok(Scenario {
            name,
            description: self.description,
            expectation: self.expectation,
            kind: self.kind,
            rps: self.rps,
            requests_per_unit: self.requests_per_unit,
            requests_per_unit_dist: self.requests_per_unit_dist,
            think_time: self.think_time,
            burst: self.burst,
            retry_gap: self.retry_gap,
            latency_median: self.latency_median,
            latency_sigma: self.latency_sigma,
            timeout: self.timeout,
            drop_treatment: self.drop_treatment,
            apply_delay: self.apply_delay,
            report_interval: self.report_interval,
            max_duration: self.max_duration,
            steps: self.steps,
            policy: self.policy,
            control,
            treatment,
            check: self.check,
        })
    }
}

#[cfg(test)]
mod tests;
