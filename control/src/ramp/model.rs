//! A ramp and its state machine: `running` → (`paused` ⇄ `running`) → `completed` | `rolled_back` |
//! `aborted`. [`Ramp::observe`] turns the latest totals into a decision; [`Ramp::apply`] carries it
//! out on the ramp's own state. Pure (time is passed in), so the live engine and the simulation
//! harness run exactly this code.

use rampart_stats::{Delta, SparseHistogram};
use serde::{Deserialize, Serialize};

use super::decide::{Action, Decision, Observation, Policy, decide};
use super::sequential::ErrorShare;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
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

/// `now − base`: what accumulated since `base` was taken (counts only grow).
pub fn since(now: &Delta, base: &Totals) -> Delta {
    let mut base_iter = base.latency.iter().copied().peekable();
    let mut pairs = Vec::with_capacity(now.latency.iter().len());
    for (bucket, count) in now.latency.iter() {
        while base_iter.peek().is_some_and(|(b, _)| *b < bucket) {
            base_iter.next();
        }
        let before = match base_iter.peek() {
            Some(&(b, c)) if b == bucket => c,
            _ => 0,
        };
        pairs.push((bucket, count.saturating_sub(before)));
    }
    Delta {
        requests: now.requests.saturating_sub(base.requests),
        errors: now.errors.saturating_sub(base.errors),
        timeouts: now.timeouts.saturating_sub(base.timeouts),
        latency: SparseHistogram::from_pairs(pairs).unwrap_or_default(),
    }
}

/// What carrying out a decision changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Now at this percent.
    Percent(f64),
    Completed,
    RolledBack,
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
    /// Totals when the ramp started: everything is measured from here.
    pub base_treatment: Totals,
    pub base_control: Totals,
    /// Treatment requests since the start, when the current step started.
    pub step_base_requests: u64,
    /// Totals at the previous tick: each tick's window feeds the e-process.
    pub last_treatment: (u64, u64),
    pub last_control: (u64, u64),
    pub error_share: ErrorShare,
    /// Treatment requests since the start, at the last observation.
    pub treatment_requests: u64,
    /// The first tick that saw treatment traffic: from here a bad change does harm.
    pub first_exposure_ms: Option<i64>,
    pub rollback_ms: Option<i64>,
    /// The flags version that turned the treatment off, and when every sidecar served it.
    pub rollback_version: Option<u64>,
    pub rollback_acked_ms: Option<i64>,
    /// Treatment requests served until the rollback was acknowledged.
    pub exposed_requests: Option<u64>,
}

impl Ramp {
    /// A new running ramp at its first step.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        flag: &str,
        treatment: &str,
        control: &str,
        steps: Vec<f64>,
        policy: Policy,
        now_ms: i64,
        totals: (&Delta, &Delta),
    ) -> Ramp {
        Ramp {
            id,
            flag: flag.to_owned(),
            treatment: treatment.to_owned(),
            control: control.to_owned(),
            steps,
            step: 0,
            state: State::Running,
            policy,
            change_id: None,
            commit_ms: None,
            started_ms: now_ms,
            step_started_ms: now_ms,
            finished_ms: None,
            base_treatment: Totals::from(totals.0),
            base_control: Totals::from(totals.1),
            step_base_requests: 0,
            last_treatment: (totals.0.requests, totals.0.errors),
            last_control: (totals.1.requests, totals.1.errors),
            error_share: ErrorShare::default(),
            treatment_requests: 0,
            first_exposure_ms: None,
            rollback_ms: None,
            rollback_version: None,
            rollback_acked_ms: None,
            exposed_requests: None,
        }
    }

    /// The treatment's share now, percent.
    pub fn percent(&self) -> f64 {
        match self.state {
            State::RolledBack | State::Aborted => 0.0,
            _ => self.steps.get(self.step).copied().unwrap_or(0.0),
        }
    }

    /// Takes the latest cumulative totals of treatment and control and decides.
    pub fn observe(&mut self, now_ms: i64, treatment: &Delta, control: &Delta) -> Decision {
        let (wt_n, wt_e) = window(self.last_treatment, treatment);
        let (wc_n, wc_e) = window(self.last_control, control);
        self.error_share.update(wt_e, wc_e, wt_n, wc_n);
        self.last_treatment = (treatment.requests, treatment.errors);
        self.last_control = (control.requests, control.errors);
        let t = since(treatment, &self.base_treatment);
        let c = since(control, &self.base_control);
        self.treatment_requests = t.requests;
        if self.first_exposure_ms.is_none() && t.requests > 0 {
            self.first_exposure_ms = Some(now_ms);
        }
        let obs = Observation {
            treatment: &t,
            control: &c,
            step_treatment_requests: t.requests.saturating_sub(self.step_base_requests),
            dwell: std::time::Duration::from_millis(u64::try_from(now_ms - self.step_started_ms).unwrap_or(0)),
            error_share: &self.error_share,
        };
        decide(&self.policy, obs)
    }

    /// Carries out `decision` on the ramp; `None` when nothing changes.
    pub fn apply(&mut self, decision: &Decision, now_ms: i64) -> Option<Transition> {
        if self.state != State::Running {
            return None;
        }
        match decision.action {
            Action::Hold => None,
            Action::Advance if self.step + 1 < self.steps.len() => {
                self.step += 1;
                self.step_started_ms = now_ms;
                self.step_base_requests = self.treatment_requests;
                Some(Transition::Percent(self.steps[self.step]))
            }
            Action::Advance => {
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
        }
    }
}

/// Requests and errors between the previous totals and `now`.
fn window(last: (u64, u64), now: &Delta) -> (u64, u64) {
    (now.requests.saturating_sub(last.0), now.errors.saturating_sub(last.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_counts_and_buckets() {
        let mut base = Delta { requests: 10, errors: 1, timeouts: 0, latency: SparseHistogram::default() };
        base.latency.record(100);
        let mut now = base.clone();
        now.requests = 25;
        now.errors = 4;
        now.latency.record(100);
        now.latency.record(5_000);
        let d = since(&now, &Totals::from(&base));
        assert_eq!((d.requests, d.errors), (15, 3));
        assert_eq!(d.latency.count(), 2);
    }
}
