//! A ramp and its state machine: `running` → (`paused` ⇄ `running`) → `completed` | `rolled_back` |
//! `aborted`. [`Ramp::observe`] feeds a tick's window to the ramp's tests and returns a decision;
//! [`Ramp::apply`] carries it out on the ramp's own state. Pure (time is passed in), so the live
//! engine and the simulator (`rampart-loadtest simulate`) run exactly this code.

use std::collections::VecDeque;
use std::time::Duration;

use rampart_stats::{Delta, SparseHistogram};
use serde::{Deserialize, Serialize};

use super::decide::{Action, Decision, GuardState, Observation, Policy, decide};
use super::sequential::{Harm, Ratio, RiskBound};
use super::window::{Arm, Open, Window, errors_cell, slow_cell, units};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Running,
    Paused,
    Completed,
    RolledBack,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Completed => "completed",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
        }
    }

    /// Running or paused: the ramp still owns its flag.
    pub fn active(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

/// Serialisable totals of one variant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub latency: Vec<(u32, u64)>,
}

impl From<&Delta> for Totals {
    fn from(d: &Delta) -> Self {
        Totals { requests: d.requests, errors: d.errors, timeouts: d.timeouts, latency: d.latency.iter().collect() }
    }
}

/// What carrying out a decision changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Now at this percent (a new slow threshold may come with it: [`Ramp::slow_threshold_us`]).
    Percent(f64),
    Completed,
    RolledBack,
    /// Paused by the engine (sample-ratio mismatch).
    Paused,
}

/// Time after a percent change before strata enter the sample-ratio test: sidecars apply a new
/// percent a push and a report interval later.
pub const RATIO_SETTLE_MS: i64 = 10_000;
/// How far back the control's latencies set the next step's slow threshold.
pub const RECENT_MS: i64 = 60_000;
/// Fewest control latencies before a slow threshold is set.
pub const MIN_THRESHOLD_SAMPLES: u64 = 200;
/// The quantile of the control's recent latencies that makes the slow threshold.
pub const SLOW_QUANTILE: f64 = 0.95;
/// The default steps: the last testing step keeps a 5% holdback, so there is always a concurrent
/// control; 100% is reached only when it passes.
pub const DEFAULT_STEPS: [f64; 6] = [1.0, 5.0, 25.0, 50.0, 95.0, 100.0];

/// One guardrail's carried state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guardrail {
    pub harm: Harm,
    pub bound: RiskBound,
}

impl Guardrail {
    fn new(policy: &Policy) -> Guardrail {
        Guardrail { harm: Harm::default(), bound: RiskBound::new(1.0 + policy.delta) }
    }
}

impl Default for Guardrail {
    fn default() -> Self {
        Guardrail::new(&Policy::default())
    }
}

/// One ramp: its definition, position and the state its tests carry between ticks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    pub id: i64,
    pub flag: String,
    pub treatment: String,
    /// The flag's default variant: the concurrent control.
    pub control: String,
    pub steps: Vec<f64>,
    /// Index into `steps`.
    pub step: usize,
    pub state: State,
    pub policy: Policy,
    pub change_id: Option<String>,
    /// When the change was committed (Unix ms), for lead time.
    pub commit_ms: Option<i64>,
    pub started_ms: i64,
    pub step_started_ms: i64,
    pub finished_ms: Option<i64>,
    /// The variant totals (all requests) when the ramp started: exposure is counted from here.
    pub base_treatment: Totals,
    /// Randomised units over the ramp and at the current step, per arm.
    #[serde(default)]
    pub sums: (Arm, Arm),
    #[serde(default)]
    pub step_sums: (Arm, Arm),
    /// The stratum being filled.
    #[serde(default)]
    pub open: Open,
    #[serde(default)]
    pub errors: Guardrail,
    #[serde(default)]
    pub latency: Guardrail,
    #[serde(default)]
    pub ratio: Ratio,
    /// The current step's slow threshold, µs (sidecars count slow units against it).
    #[serde(default)]
    pub slow_threshold_us: Option<u64>,
    /// The control's latency per recent tick (not persisted: rebuilt within a minute).
    #[serde(skip)]
    recent: VecDeque<(i64, SparseHistogram)>,
    /// Randomised treatment requests since the start.
    #[serde(default)]
    pub treatment_requests: u64,
    /// Whether the plan (expected times, see `plan.rs`) was stated.
    #[serde(default)]
    pub planned: bool,
    /// The first tick that saw treatment traffic: from here a bad change does harm.
    pub first_exposure_ms: Option<i64>,
    pub rollback_ms: Option<i64>,
    /// The flags version that turned the treatment off, and when every sidecar served it.
    pub rollback_version: Option<u64>,
    pub rollback_acked_ms: Option<i64>,
    /// Treatment requests (all, randomised or not) served until the rollback was acknowledged.
    pub exposed_requests: Option<u64>,
    /// Who started the ramp (an operator's name, or `anonymous`), as the audit trail has it.
    #[serde(default)]
    pub started_by: Option<String>,
    /// Times an operator paused, resumed or aborted it (the engine's own pauses are not counted):
    /// the human touches of the developer-confidence figures.
    #[serde(default)]
    pub interventions: u32,
}

impl Ramp {
    /// A new running ramp at its first step. `base_treatment`: the treatment variant's totals now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        flag: &str,
        treatment: &str,
        control: &str,
        steps: Vec<f64>,
        policy: Policy,
        now_ms: i64,
        base_treatment: &Delta,
    ) -> Ramp {
        Ramp {
            id,
            flag: flag.to_owned(),
            treatment: treatment.to_owned(),
            control: control.to_owned(),
            steps,
            step: 0,
            state: State::Running,
            errors: Guardrail::new(&policy),
            latency: Guardrail::new(&policy),
            policy,
            change_id: None,
            commit_ms: None,
            started_ms: now_ms,
            step_started_ms: now_ms,
            finished_ms: None,
            base_treatment: Totals::from(base_treatment),
            sums: (Arm::default(), Arm::default()),
            step_sums: (Arm::default(), Arm::default()),
            open: Open { since_ms: now_ms, ..Open::default() },
            ratio: Ratio::default(),
            slow_threshold_us: None,
            recent: VecDeque::new(),
            treatment_requests: 0,
            planned: false,
            first_exposure_ms: None,
            rollback_ms: None,
            rollback_version: None,
            rollback_acked_ms: None,
            exposed_requests: None,
            started_by: None,
            interventions: 0,
        }
    }

    /// The treatment's share now, percent.
    pub fn percent(&self) -> f64 {
        match self.state {
            State::RolledBack | State::Aborted => 0.0,
            _ => self.steps.get(self.step).copied().unwrap_or(0.0),
        }
    }

    /// The percent the next advance goes to (the last step completes the ramp).
    pub fn next_percent(&self) -> f64 {
        self.steps.get(self.step + 1).copied().unwrap_or(100.0)
    }

    /// Feeds one tick's window to the tests and decides.
    pub fn observe(&mut self, now_ms: i64, w: &Window) -> Decision {
        self.treatment_requests = self.treatment_requests.saturating_add(w.treatment.requests);
        if self.first_exposure_ms.is_none() && w.treatment.requests > 0 {
            self.first_exposure_ms = Some(now_ms);
        }
        if !w.control_latency.is_empty() {
            self.recent.push_back((now_ms, w.control_latency.clone()));
        }
        while self.recent.front().is_some_and(|(at, _)| now_ms - at > RECENT_MS) {
            self.recent.pop_front();
        }
        if self.slow_threshold_us.is_none() {
            self.slow_threshold_us = self.recent_threshold();
        }
        self.sums.0.merge(&w.treatment);
        self.sums.1.merge(&w.control);
        self.step_sums.0.merge(&w.treatment);
        self.step_sums.1.merge(&w.control);
        if let Some((t, c)) = self.open.push(now_ms, w) {
            self.errors.harm.update(&errors_cell(&t, &c));
            self.errors.bound.update(&errors_cell(&t, &c));
            self.latency.harm.update(&slow_cell(&t, &c));
            self.latency.bound.update(&slow_cell(&t, &c));
        }
        // The sample-ratio test takes every window, not strata: assignment does not drift, and a
        // stratum is closed (or dropped) by whether the treatment showed up, which is what this
        // test measures. New units only: a user who returns window after window is one draw of
        // the assignment, and counting it in every window would make a heavy user look like a
        // mismatch.
        if now_ms >= self.step_started_ms + RATIO_SETTLE_MS {
            self.ratio.update(w.treatment.new_units, w.control.new_units, self.percent());
        }
        let dwell_ms = (now_ms - self.step_started_ms).max(0);
        let (st, sc) = self.step_sums;
        let units_per_hour =
            if dwell_ms > 0 { (units(&st) + units(&sc)) as f64 * 3_600_000.0 / dwell_ms as f64 } else { 0.0 };
        let (t, c) = self.sums;
        let obs = Observation {
            errors: GuardState {
                harm: &self.errors.harm,
                bound: &self.errors.bound,
                failing: (t.failing_units, c.failing_units),
                step: ((st.failing_units, units(&st)), (sc.failing_units, units(&sc))),
            },
            latency: GuardState {
                harm: &self.latency.harm,
                bound: &self.latency.bound,
                failing: (t.slow_units, c.slow_units),
                step: ((st.slow_units, units(&st)), (sc.slow_units, units(&sc))),
            },
            ratio: &self.ratio,
            ramp: (&self.sums.0, &self.sums.1),
            step_units: units(&st),
            dwell: Duration::from_millis(u64::try_from(dwell_ms).unwrap_or(0)),
            units_per_hour,
            percent: self.percent(),
            next_percent: self.next_percent(),
            slow_threshold_us: self.slow_threshold_us,
        };
        decide(&self.policy, obs)
    }

    /// The control's recent latency quantile, when there are enough samples.
    fn recent_threshold(&self) -> Option<u64> {
        let mut merged = SparseHistogram::default();
        for (_, h) in &self.recent {
            merged.merge(h);
        }
        super::plan::threshold_of(&merged)
    }

    /// Whether the engine should state the plan now: once, after the first 30 s of traffic.
    pub fn plan_due(&self, now_ms: i64) -> bool {
        !self.planned && self.state == State::Running && self.first_exposure_ms.is_some_and(|t| now_ms - t >= 30_000)
    }

    /// Carries out `decision` on the ramp; `None` when nothing changes.
    pub fn apply(&mut self, decision: &Decision, now_ms: i64) -> Option<Transition> {
        if self.state != State::Running {
            return None;
        }
        match decision.action {
            Action::Hold => None,
            Action::Advance if self.step + 2 < self.steps.len() => {
                self.step += 1;
                self.enter_step(now_ms);
                // Fixed before the step: the control's recent latencies (the old one if none).
                self.slow_threshold_us = self.recent_threshold().or(self.slow_threshold_us);
                Some(Transition::Percent(self.steps[self.step]))
            }
            Action::Advance => {
                self.step = self.steps.len().saturating_sub(1);
                self.state = State::Completed;
                self.finished_ms = Some(now_ms);
                Some(Transition::Completed)
            }
            Action::Rollback => {
                self.state = State::RolledBack;
                self.rollback_ms = Some(now_ms);
                self.finished_ms = Some(now_ms);
                Some(Transition::RolledBack)
            }
            Action::Pause => {
                self.state = State::Paused;
                Some(Transition::Paused)
            }
        }
    }

    /// Resumes a paused ramp: the dwell restarts (time paused is not time observed) and the
    /// sample-ratio test starts over (the operator looked at the mismatch).
    pub fn resume(&mut self, now_ms: i64) {
        self.state = State::Running;
        self.enter_step(now_ms);
        self.ratio = Ratio::default();
    }

    fn enter_step(&mut self, now_ms: i64) {
        self.step_started_ms = now_ms;
        self.step_sums = (Arm::default(), Arm::default());
    }
}

#[cfg(test)]
mod tests;
