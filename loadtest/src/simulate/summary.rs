//! The operating characteristics of one scenario over its runs: how often the ramp rolled back
//! (with a 95% Wilson interval), completed, paused or was still running; how long it took; what a
//! bad treatment cost before the rollback; and the loose bounds the test suite checks.

use serde::Serialize;

use super::scenario::{Check, Kind, Scenario};
use super::world::{End, Expected, Outcome};

/// A count of runs, its share and the share's 95% Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Share {
    pub(crate) runs: usize,
    pub(crate) share: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
}

impl Share {
    pub(crate) fn of(k: usize, n: usize) -> Share {
        if n == 0 {
            return Share { runs: 0, share: 0.0, low: 0.0, high: 1.0 };
        }
        let (k, nf) = (k as f64, n as f64);
        let z = 1.959_963_984_540_054_f64;
        let p = k / nf;
        let centre = (p + z * z / (2.0 * nf)) / (1.0 + z * z / nf);
        let half = z / (1.0 + z * z / nf) * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt();
        // The interval's ends are exactly 0 and 1 at k = 0 and k = n (rounding would miss them).
        let low = if k == 0.0 { 0.0 } else { (centre - half).max(0.0) };
        let high = if k == nf { 1.0 } else { (centre + half).min(1.0) };
        Share { runs: k as usize, share: p, low, high }
    }
}

/// Median and 90th percentile (nearest rank) of the runs that had the value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Spread {
    pub(crate) runs: usize,
    pub(crate) median: f64,
    pub(crate) p90: f64,
}

impl Spread {
    pub(crate) fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Spread { runs: values.len(), median: rank(0.5), p90: rank(0.9) })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct AtPercent {
    pub(crate) percent: f64,
    pub(crate) runs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StepTime {
    pub(crate) percent: f64,
    /// Runs that reached the step, and when (seconds since the ramp started).
    pub(crate) reached: Spread,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub(crate) scenario: String,
    pub(crate) description: String,
    pub(crate) expectation: String,
    pub(crate) kind: Kind,
    pub(crate) runs: usize,
    pub(crate) seed: u64,
    pub(crate) max_duration_s: u64,
    /// For an A/A scenario: the false-rollback rate.
    pub(crate) rolled_back: Share,
    pub(crate) rolled_back_errors: usize,
    pub(crate) rolled_back_latency: usize,
    pub(crate) completed: Share,
    pub(crate) paused_srm: Share,
    pub(crate) still_running: Share,
    /// Runs that left the first step (any promotion).
    pub(crate) advanced: Share,
    pub(crate) time_to_rollback_s: Option<Spread>,
    pub(crate) time_to_full_s: Option<Spread>,
    pub(crate) time_to_pause_s: Option<Spread>,
    pub(crate) treatment_requests_before_rollback: Option<Spread>,
    /// Treatment failed requests minus those the control's error rate would have given them.
    pub(crate) excess_failed_before_rollback: Option<Spread>,
    /// Where the rollbacks happened, and the share of them below 50%.
    pub(crate) rollback_at_percent: Vec<AtPercent>,
    pub(crate) rollbacks_below_50: Option<f64>,
    /// What the engine's plan expected (medians over the runs that stated one): time to 100% from
    /// the start, and time to roll back a 2× error or latency regression from the plan's step.
    pub(crate) plan_full_s: Option<Spread>,
    pub(crate) plan_detect_2x_errors_s: Option<Spread>,
    pub(crate) plan_detect_2x_latency_s: Option<Spread>,
    /// When each step was reached, over the runs that reached it.
    pub(crate) steps: Vec<StepTime>,
    /// Where the runs still running at `max_duration` were.
    pub(crate) running_at_percent: Vec<AtPercent>,
    /// One decision reason of each kind of end, as the engine wrote it.
    pub(crate) example_rollback: Option<String>,
    pub(crate) example_running: Option<String>,
    pub(crate) example_paused: Option<String>,
    /// Wall-clock seconds the runs took.
    pub(crate) wall_s: f64,
    /// Failed bounds of the file's `[check]` (with its kind's defaults).
    pub(crate) check_failures: Vec<String>,
    /// The file's `[check] known_issue`: why it is expected to miss its bounds for now.
    pub(crate) known_issue: Option<String>,
}

fn by_percent<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Vec<AtPercent> {
    let mut v: Vec<AtPercent> = Vec::new();
    for o in outcomes {
        match v.iter_mut().find(|a| a.percent == o.percent) {
            Some(a) => a.runs += 1,
            None => v.push(AtPercent { percent: o.percent, runs: 1 }),
        }
    }
    v.sort_by(|a, b| a.percent.total_cmp(&b.percent));
    v
}

pub(crate) fn summarise(sc: &Scenario, seed: u64, outcomes: &[Outcome], wall_s: f64) -> Summary {
    let n = outcomes.len();
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let rollbacks: Vec<&Outcome> = outcomes.iter().filter(|o| o.end.rolled_back()).collect();
    let spread = |f: &dyn Fn(&Outcome) -> f64| Spread::of(rollbacks.iter().map(|o| f(o)).collect());
    let mut percents: Vec<f64> = outcomes.iter().flat_map(|o| o.steps.iter().map(|s| s.0)).collect();
    percents.sort_by(f64::total_cmp);
    percents.dedup();
    let steps = percents
        .iter()
        .filter_map(|&p| {
            let times = outcomes.iter().filter_map(|o| o.steps.iter().find(|s| s.0 == p).map(|s| s.1 as f64));
            Spread::of(times.collect()).map(|reached| StepTime { percent: p, reached })
        })
        .collect();
    let planned = |f: &dyn Fn(&Expected) -> Option<f64>| {
        Spread::of(outcomes.iter().filter_map(|o| o.plan.as_ref().and_then(f)).collect())
    };
    let ended_at = |end: End| Spread::of(outcomes.iter().filter(|o| o.end == end).map(|o| o.at_s as f64).collect());
    let example = |end: &dyn Fn(End) -> bool| outcomes.iter().find(|o| end(o.end)).map(|o| o.reason.clone());
    let mut summary = Summary {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        expectation: sc.expectation.clone(),
        kind: sc.kind,
        runs: n,
        seed,
        max_duration_s: sc.max_duration.as_secs(),
        rolled_back: Share::of(rollbacks.len(), n),
        rolled_back_errors: count(&|o| o.end == End::RollbackErrors),
        rolled_back_latency: count(&|o| o.end == End::RollbackLatency),
        completed: Share::of(count(&|o| o.end == End::Completed), n),
        paused_srm: Share::of(count(&|o| o.end == End::Paused), n),
        still_running: Share::of(count(&|o| o.end == End::Running), n),
        advanced: Share::of(count(&|o| !o.steps.is_empty() || o.end == End::Completed), n),
        time_to_rollback_s: spread(&|o| o.at_s as f64),
        time_to_full_s: ended_at(End::Completed),
        time_to_pause_s: ended_at(End::Paused),
        treatment_requests_before_rollback: spread(&|o| o.treatment_requests as f64),
        excess_failed_before_rollback: spread(&|o| o.treatment_failed as f64 - o.control_expected_failed),
        rollback_at_percent: by_percent(rollbacks.iter().copied()),
        rollbacks_below_50: (!rollbacks.is_empty())
            .then(|| rollbacks.iter().filter(|o| o.percent < 50.0).count() as f64 / rollbacks.len() as f64),
        plan_full_s: planned(&|p| p.full_s),
        plan_detect_2x_errors_s: planned(&|p| p.detect_2x_errors_s),
        plan_detect_2x_latency_s: planned(&|p| p.detect_2x_latency_s),
        steps,
        running_at_percent: by_percent(outcomes.iter().filter(|o| o.end == End::Running)),
        example_rollback: example(&End::rolled_back),
        example_running: example(&|e| e == End::Running),
        example_paused: example(&|e| e == End::Paused),
        wall_s,
        check_failures: Vec::new(),
        known_issue: sc.check.known_issue.clone(),
    };
    summary.check_failures = check_bounds(&summary, &sc.check);
    summary
}

/// The file's bounds, else its kind's: equal arms (A/A, good) roll back at most 15% of runs and
/// pause at most 10% (the sample-ratio test's level is `α × 0.2`, 1% by default); a bad change
/// rolls back at least 80%, a good one completes 80%, a lost-units one pauses in 50%. "At least"
/// bounds on rollbacks and completions count the runs that did not pause (a pause is judged on its
/// own, by the pause bound of equal arms).
pub(crate) fn check_bounds(s: &Summary, check: &Check) -> Vec<String> {
    let (rb_max, rb_min, done_min, pause_max, pause_min) = match s.kind {
        Kind::Aa => (Some(0.15), None, None, Some(0.1), None),
        Kind::Bad => (None, Some(0.8), None, None, None),
        Kind::Good => (Some(0.15), None, Some(0.8), Some(0.1), None),
        Kind::Srm => (None, None, None, None, Some(0.5)),
    };
    let unpaused = s.runs - s.paused_srm.runs;
    let of_unpaused = |share: &Share| Share::of(share.runs, unpaused);
    let mut failures = Vec::new();
    let mut check_share = |name: &str, share: Share, at_most: Option<f64>, at_least: Option<f64>| {
        if let Some(b) = at_most
            && share.share > b
        {
            failures.push(format!("{name} {} > {}", pct(share.share), pct(b)));
        }
        if let Some(b) = at_least
            && share.share < b
        {
            failures.push(format!("{name} {} < {}", pct(share.share), pct(b)));
        }
    };
    check_share("rolled back", s.rolled_back, check.rollback_at_most.or(rb_max), None);
    check_share(
        "rolled back (of unpaused runs)",
        of_unpaused(&s.rolled_back),
        None,
        check.rollback_at_least.or(rb_min),
    );
    check_share("completed (of unpaused runs)", of_unpaused(&s.completed), None, check.completed_at_least.or(done_min));
    check_share("paused", s.paused_srm, check.paused_at_most.or(pause_max), check.paused_at_least.or(pause_min));
    check_share("advanced", s.advanced, check.advanced_at_most, None);
    failures
}

/// `1h02m`, `12m05s`, `45s`.
pub(crate) fn human_secs(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn share(s: &Share) -> String {
    format!("{} ({}, 95% CI {}–{})", s.runs, pct(s.share), pct(s.low), pct(s.high))
}

fn spread_time(s: Option<&Spread>) -> String {
    s.map_or_else(|| "–".to_owned(), |s| format!("{} / {}", human_secs(s.median), human_secs(s.p90)))
}

fn spread_count(s: Option<&Spread>) -> String {
    // `+ 0.0` turns a rounded −0 into 0.
    s.map_or_else(|| "–".to_owned(), |s| format!("{:.0} / {:.0}", s.median.round() + 0.0, s.p90.round() + 0.0))
}

fn at_percent(v: &[AtPercent]) -> String {
    v.iter().map(|a| format!("{}%: {}", a.percent, a.runs)).collect::<Vec<_>>().join(", ")
}

impl Summary {
    pub(crate) fn human(&self) -> String {
        let mut lines = vec![
            format!("{} ({}): {}", self.scenario, self.kind.as_str(), self.description),
            format!("  expectation: {}", self.expectation),
            format!(
                "  {} runs (seed {}, at most {} each, {:.1} s wall)",
                self.runs,
                self.seed,
                human_secs(self.max_duration_s as f64),
                self.wall_s
            ),
            format!(
                "  rolled back{}: {} — errors {}, latency {}",
                if self.kind == Kind::Aa { " [false rollbacks]" } else { "" },
                share(&self.rolled_back),
                self.rolled_back_errors,
                self.rolled_back_latency
            ),
            format!("  completed:   {}", share(&self.completed)),
            format!("  SRM pause:   {}", share(&self.paused_srm)),
            format!("  running at {}: {}", human_secs(self.max_duration_s as f64), share(&self.still_running)),
            format!("  left the first step: {}", share(&self.advanced)),
            format!("  time to rollback (median / p90): {}", spread_time(self.time_to_rollback_s.as_ref())),
            format!("  time to 100% (median / p90):     {}", spread_time(self.time_to_full_s.as_ref())),
        ];
        if self.time_to_pause_s.is_some() {
            lines.push(format!("  time to SRM pause (median / p90): {}", spread_time(self.time_to_pause_s.as_ref())));
        }
        if !self.rollback_at_percent.is_empty() {
            lines.push(format!(
                "  before rollback (median / p90): treatment requests {}, excess failed requests {}",
                spread_count(self.treatment_requests_before_rollback.as_ref()),
                spread_count(self.excess_failed_before_rollback.as_ref())
            ));
            lines.push(format!(
                "  rolled back at: {} ({} below 50%)",
                at_percent(&self.rollback_at_percent),
                self.rollbacks_below_50.map_or_else(String::new, pct)
            ));
        }
        if self.plan_full_s.is_some() || self.plan_detect_2x_errors_s.is_some() {
            lines.push(format!(
                "  the engine's plan (median / p90): 100% at {}; a 2x regression rolled back in {} (errors), {} (latency)",
                spread_time(self.plan_full_s.as_ref()),
                spread_time(self.plan_detect_2x_errors_s.as_ref()),
                spread_time(self.plan_detect_2x_latency_s.as_ref())
            ));
        }
        if !self.steps.is_empty() {
            let steps: Vec<String> = self
                .steps
                .iter()
                .map(|s| format!("{}% {} ({} runs)", s.percent, human_secs(s.reached.median), s.reached.runs))
                .collect();
            lines.push(format!("  step reached (median): {}", steps.join(", ")));
        }
        if !self.running_at_percent.is_empty() {
            lines.push(format!("  still running at: {}", at_percent(&self.running_at_percent)));
        }
        for (what, reason) in [
            ("a rollback", &self.example_rollback),
            ("a pause", &self.example_paused),
            ("a run still going", &self.example_running),
        ] {
            if let Some(r) = reason {
                lines.push(format!("  {what}: {r}"));
            }
        }
        lines.push(format!("  check: {}", self.check_text()));
        if let Some(issue) = &self.known_issue {
            lines.push(format!("  known issue: {issue}"));
        }
        lines.join("\n") + "\n"
    }

    pub(crate) const MARKDOWN_HEADER: &'static str = "| scenario | kind | runs | rolled back (95% CI) | completed | SRM pause | running at end | time to rollback p50 / p90 | time to 100% p50 / p90 | excess failed requests before rollback p50 / p90 | rollbacks below 50% | expectation | check |\n|---|---|---:|---|---:|---:|---:|---|---|---|---:|---|---|";

    /// `ok`, or the bounds missed (and whether that is a known issue).
    pub(crate) fn check_text(&self) -> String {
        match (self.check_failures.is_empty(), &self.known_issue) {
            (true, None) => "ok".to_owned(),
            (true, Some(_)) => "ok (the known issue did not show)".to_owned(),
            (false, None) => format!("FAILED: {}", self.check_failures.join("; ")),
            (false, Some(_)) => format!("known issue: {}", self.check_failures.join("; ")),
        }
    }

    pub(crate) fn markdown_row(&self) -> String {
        format!(
            "| `{}` | {} | {} | {} ({}–{}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.kind.as_str(),
            self.runs,
            pct(self.rolled_back.share),
            pct(self.rolled_back.low),
            pct(self.rolled_back.high),
            pct(self.completed.share),
            pct(self.paused_srm.share),
            pct(self.still_running.share),
            spread_time(self.time_to_rollback_s.as_ref()),
            spread_time(self.time_to_full_s.as_ref()),
            spread_count(self.excess_failed_before_rollback.as_ref()),
            self.rollbacks_below_50.map_or_else(|| "–".to_owned(), pct),
            self.expectation.replace('|', "\\|"),
            self.check_text(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_known_values() {
        let s = Share::of(0, 100);
        assert_eq!(s.low, 0.0);
        assert!((s.high - 0.0370).abs() < 1e-3, "{s:?}");
        let s = Share::of(5, 100);
        assert!((s.low - 0.0215).abs() < 1e-3 && (s.high - 0.1118).abs() < 1e-3, "{s:?}");
    }

    #[test]
    fn spread_is_nearest_rank() {
        let s = Spread::of((1..=10).map(f64::from).collect()).unwrap();
        assert_eq!((s.median, s.p90, s.runs), (5.0, 9.0, 10));
        assert_eq!(Spread::of(Vec::new()), None);
    }
}
