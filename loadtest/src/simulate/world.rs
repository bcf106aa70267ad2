//! One simulated ramp: units arrive (Poisson) and make requests (exponential think times, failing
//! retries in bursts), each assigned by the real bucketing at the percent the sidecars applied; the
//! sidecars count each report window as the real ones do; the real [`Ramp`] decides once per
//! simulated second. Deterministic for a seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rampart_control::ramp::decide::Decision;
use rampart_control::ramp::model::{Ramp, State, Transition};
use rampart_control::ramp::plan;
use rampart_control::ramp::window::Window;
use rampart_flags::Bucketer;
use rampart_stats::Delta;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, StandardNormal};
use serde::Serialize;

use super::scenario::{PerUnit, Scenario};

mod sidecar;

use sidecar::{Applied, CONTROL, Memory, Sidecar, TREATMENT};

const SECOND_US: u64 = 1_000_000;

/// Traffic before the ramp starts, so it starts on a steady population of units and a sidecar
/// that already remembers recent failures: at least a minute (the failure horizon), at least three
/// unit lifetimes.
fn warmup_us(sc: &Scenario) -> u64 {
    let lifetime = sc.requests_per_unit * sc.think_time.as_secs_f64();
    ((3.0 * lifetime).ceil() as u64).clamp(60, 1800) * SECOND_US
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum End {
    /// Rolled back by the errors guardrail.
    RollbackErrors,
    /// Rolled back by the latency guardrail.
    RollbackLatency,
    Completed,
    /// Paused on a sample-ratio mismatch (the engine waits for an operator: the run ends).
    Paused,
    /// Still running at `max_duration`.
    Running,
}

impl End {
    pub(crate) fn rolled_back(self) -> bool {
        matches!(self, End::RollbackErrors | End::RollbackLatency)
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Outcome {
    pub(crate) end: End,
    /// Simulated seconds at the end (the deciding tick, or `max_duration`).
    pub(crate) at_s: u64,
    /// The ramp's percent when it ended (before a rollback set it to 0).
    pub(crate) percent: f64,
    /// When each later step was decided: (percent, second).
    pub(crate) steps: Vec<(f64, u64)>,
    /// Treatment requests served (lost ones included) until the end.
    pub(crate) treatment_requests: u64,
    pub(crate) treatment_failed: u64,
    /// The failures those requests would have had at the control's error rate (expected).
    pub(crate) control_expected_failed: f64,
    /// The last decision's reason.
    pub(crate) reason: String,
    /// What the engine expected when it stated its plan (as the live engine does, once, 30 s
    /// after the first exposure): seconds since the ramp started.
    pub(crate) plan: Option<Expected>,
}

/// The engine's plan, in the simulation's time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Expected {
    /// When the plan was stated.
    pub(crate) at_s: u64,
    /// Expected time to 100% from the start (the plan's `to_full_s` from its step, plus `at_s`).
    pub(crate) full_s: Option<f64>,
    /// Expected time to roll back a 2× regression at the plan's step, from the plan.
    pub(crate) detect_2x_errors_s: Option<f64>,
    pub(crate) detect_2x_latency_s: Option<f64>,
}

/// One unit (user) while it still makes requests; slots are reused.
#[derive(Debug, Clone, Copy)]
struct Unit {
    bucket: u32,
    /// Its treatment requests are never counted (the treatment crashes first).
    lost: bool,
    /// Original requests still to make after the pending one.
    left: u32,
    /// Failing retries still to make.
    retries: u32,
    /// What the sidecar remembers of it.
    memory: Memory,
}

struct World<'a> {
    sc: &'a Scenario,
    rng: ChaCha8Rng,
    bucketer: Bucketer,
    key: itoa::Buffer,
    units: Vec<Unit>,
    free: Vec<u32>,
    /// When the ramp starts (µs of simulated time; traffic runs from 0).
    origin_us: u64,
    /// Pending requests: (time µs, unit slot).
    queue: BinaryHeap<Reverse<(u64, u32)>>,
    next_arrival_us: u64,
    /// Unit arrivals per µs.
    arrival_rate: f64,
    /// Percent and threshold changes on their way to the sidecar: (when they apply, what).
    changes: VecDeque<(u64, Applied)>,
    /// When the applied percent first reached each treatment curve's `from_percent` (seconds).
    onsets: [Option<f64>; 2],
    sidecar: Sidecar,
    /// Reports waiting for their tick (second).
    reports: VecDeque<(u64, Window)>,
    treatment_requests: u64,
    treatment_failed: u64,
    control_expected_failed: f64,
}

/// Runs `sc` once with `seed`.
pub(crate) fn run(sc: &Scenario, seed: u64) -> Outcome {
    World::new(sc, seed).run(&mut |_, _, _| {})
}

/// Runs `sc` once with `seed`, showing every tick's window and decision to `trace`.
pub(crate) fn run_traced(sc: &Scenario, seed: u64, trace: &mut dyn FnMut(u64, &Window, &Decision)) -> Outcome {
    World::new(sc, seed).run(trace)
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl<'a> World<'a> {
    fn new(sc: &'a Scenario, seed: u64) -> World<'a> {
        World {
            sc,
            rng: ChaCha8Rng::seed_from_u64(seed),
            bucketer: Bucketer::for_flag("sim"),
            key: itoa::Buffer::new(),
            units: Vec::new(),
            free: Vec::new(),
            origin_us: warmup_us(sc),
            queue: BinaryHeap::new(),
            next_arrival_us: 0,
            arrival_rate: sc.rps / sc.requests_per_unit / 1e6,
            changes: VecDeque::new(),
            onsets: [None; 2],
            sidecar: Sidecar::new(micros(sc.report_interval)),
            reports: VecDeque::new(),
            treatment_requests: 0,
            treatment_failed: 0,
            control_expected_failed: 0.0,
        }
    }

    fn run(mut self, trace: &mut dyn FnMut(u64, &Window, &Decision)) -> Outcome {
        let sc = self.sc;
        let mut ramp = Ramp::new(0, "sim", "on", "off", sc.steps.clone(), sc.policy.clone(), 0, &Delta::default());
        let delay = micros(sc.apply_delay);
        let mut published = Applied { percent: ramp.percent(), slow_us: ramp.slow_threshold_us };
        self.changes.push_back((self.origin_us + delay, published));
        self.next_arrival_us = self.exp_us(1.0 / self.arrival_rate);
        let mut steps = Vec::new();
        let max_s = sc.max_duration.as_secs().max(1);
        let mut last: Option<Decision> = None;
        let mut expected = None;
        for tick in 1..=max_s {
            let tick_us = self.origin_us + tick * SECOND_US;
            self.advance_to(tick_us);
            let mut window = Window::default();
            while self.reports.front().is_some_and(|(t, _)| *t <= tick) {
                if let Some((_, w)) = self.reports.pop_front() {
                    merge(&mut window, &w);
                }
            }
            let now_ms = i64::try_from(tick * 1000).unwrap_or(i64::MAX);
            let percent = ramp.percent();
            let decision = ramp.observe(now_ms, &window);
            trace(tick, &window, &decision);
            let end = match ramp.apply(&decision, now_ms) {
                Some(Transition::Percent(p)) => {
                    steps.push((p, tick));
                    None
                }
                Some(Transition::Completed) => Some(End::Completed),
                Some(Transition::Paused) => Some(End::Paused),
                Some(Transition::RolledBack) => {
                    let e = &decision.numbers.errors;
                    Some(if e.harm_e >= e.harm_threshold { End::RollbackErrors } else { End::RollbackLatency })
                }
                None => None,
            };
            if ramp.plan_due(now_ms) {
                ramp.planned = true;
                expected = plan::from_ramp(&ramp, now_ms).map(|p| Expected {
                    at_s: tick,
                    full_s: p.to_full_s.map(|s| s + tick as f64),
                    detect_2x_errors_s: p.detect_2x_errors_s,
                    detect_2x_latency_s: p.detect_2x_latency_s,
                });
            }
            if let Some(end) = end {
                return self.outcome(end, tick, percent, steps, decision.reason, expected);
            }
            debug_assert_eq!(ramp.state, State::Running);
            let now = Applied { percent: ramp.percent(), slow_us: ramp.slow_threshold_us };
            if now != published {
                published = now;
                self.changes.push_back((tick_us + delay, now));
            }
            last = Some(decision);
        }
        let reason = last.map(|d| d.reason).unwrap_or_default();
        self.outcome(End::Running, max_s, ramp.percent(), steps, reason, expected)
    }

    fn outcome(
        &self,
        end: End,
        at_s: u64,
        percent: f64,
        steps: Vec<(f64, u64)>,
        reason: String,
        plan: Option<Expected>,
    ) -> Outcome {
        Outcome {
            end,
            at_s,
            percent,
            steps,
            treatment_requests: self.treatment_requests,
            treatment_failed: self.treatment_failed,
            control_expected_failed: self.control_expected_failed,
            reason,
            plan,
        }
    }

    /// An exponential draw with mean `mean_us`, in µs.
    fn exp_us(&mut self, mean_us: f64) -> u64 {
        let x: f64 = Exp1.sample(&mut self.rng);
        let us = x * mean_us;
        if us.is_finite() { us.max(1.0) as u64 } else { u64::MAX }
    }

    /// Processes every event before `until_us`, in time order (ties: a sidecar change, then a
    /// window end, then an arrival, then a request).
    fn advance_to(&mut self, until_us: u64) {
        loop {
            let change = self.changes.front().map_or(u64::MAX, |c| c.0);
            let window = self.sidecar.window_end_us;
            let request = self.queue.peek().map_or(u64::MAX, |r| r.0.0);
            let next = change.min(window).min(self.next_arrival_us).min(request);
            if next >= until_us {
                return;
            }
            if change == next {
                if let Some((t, applied)) = self.changes.pop_front() {
                    self.apply(t, applied);
                }
            } else if window == next {
                self.close_window();
            } else if self.next_arrival_us == next {
                self.arrive(next);
            } else if let Some(Reverse((t, slot))) = self.queue.pop() {
                self.request(t, slot);
            }
        }
    }

    /// Seconds since the ramp started (negative before): the scenario's time.
    fn seconds(&self, t_us: u64) -> f64 {
        (t_us as f64 - self.origin_us as f64) / 1e6
    }

    fn apply(&mut self, t_us: u64, applied: Applied) {
        self.sidecar.apply(applied);
        let t = self.seconds(t_us);
        let curves = [&self.sc.treatment.error_rate, &self.sc.treatment.latency_multiplier];
        for (onset, curve) in self.onsets.iter_mut().zip(curves) {
            if onset.is_none() && curve.from_percent.is_some_and(|p| applied.percent >= p) {
                *onset = Some(t);
            }
        }
    }

    fn close_window(&mut self) {
        let (end_us, window) = self.sidecar.close();
        // Reports from before the ramp started are not the ramp's.
        let Some(tick) = end_us.checked_sub(self.origin_us).map(|d| d.div_ceil(SECOND_US)).filter(|&t| t > 0) else {
            return;
        };
        match self.reports.back_mut() {
            Some((t, w)) if *t == tick => merge(w, &window),
            _ => self.reports.push_back((tick, window)),
        }
    }

    fn arrive(&mut self, t_us: u64) {
        // A random key per unit: the run's seed picks who is treated (sequential ids would treat
        // the same units in every run).
        let id: u64 = self.rng.random();
        let bucket = self.bucketer.bucket(self.key.format(id).as_bytes());
        let lost = self.sc.drop_treatment > 0.0 && self.rng.random::<f64>() < self.sc.drop_treatment;
        let n = match self.sc.requests_per_unit_dist {
            PerUnit::Fixed => self.sc.requests_per_unit as u32,
            PerUnit::Geometric => {
                let p = 1.0 / self.sc.requests_per_unit;
                let u: f64 = self.rng.random();
                if p >= 1.0 { 1 } else { 1 + ((1.0 - u).ln() / (1.0 - p).ln()).floor().min(1e6) as u32 }
            }
        };
        let unit = Unit { bucket, lost, left: n.saturating_sub(1), retries: 0, memory: Memory::default() };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.units[slot as usize] = unit;
                slot
            }
            None => {
                self.units.push(unit);
                (self.units.len() - 1) as u32
            }
        };
        self.queue.push(Reverse((t_us, slot)));
        self.next_arrival_us = t_us.saturating_add(self.exp_us(1.0 / self.arrival_rate));
    }

    /// The value of an arm's curve at `t` seconds (`which`: 0 error rate, 1 latency multiplier).
    fn curve(&self, arm: usize, which: usize, t: f64) -> f64 {
        let control = [&self.sc.control.error_rate, &self.sc.control.latency_multiplier][which];
        if arm == CONTROL {
            return control.shape.at(t);
        }
        let curve = [&self.sc.treatment.error_rate, &self.sc.treatment.latency_multiplier][which];
        match (curve.from_percent, self.onsets[which]) {
            (None, _) => curve.shape.at(t),
            (Some(_), Some(onset)) => curve.shape.at(t - onset),
            (Some(_), None) => control.shape.at(t),
        }
    }

    fn request(&mut self, t_us: u64, slot: u32) {
        let sc = self.sc;
        let t = self.seconds(t_us);
        let mut unit = self.units[slot as usize];
        let arm = self.sidecar.arm(unit.bucket);
        let p = self.curve(arm, 0, t);
        let retry = unit.retries > 0;
        let mut failed = if retry {
            unit.retries -= 1;
            true
        } else {
            self.rng.random::<f64>() < p / f64::from(sc.burst)
        };
        let z: f64 = StandardNormal.sample(&mut self.rng);
        let latency_s = sc.latency_median.as_secs_f64() * self.curve(arm, 1, t) * (sc.latency_sigma * z).exp();
        let timeout_us = micros(sc.timeout);
        let latency_us = if latency_s * 1e6 >= timeout_us as f64 { timeout_us } else { (latency_s * 1e6) as u64 };
        let timed_out = latency_us >= timeout_us;
        failed |= timed_out;
        if failed && !retry {
            unit.retries = sc.burst - 1;
        }
        if arm == TREATMENT {
            self.treatment_requests += 1;
            self.treatment_failed += u64::from(failed);
            self.control_expected_failed += self.curve(CONTROL, 0, t);
        }
        if !(arm == TREATMENT && unit.lost) {
            self.sidecar.record(&mut unit.memory, arm, t_us, failed, timed_out, latency_us);
        }
        let next = if unit.retries > 0 {
            Some(t_us.saturating_add(micros(sc.retry_gap).max(1)))
        } else if unit.left > 0 {
            unit.left -= 1;
            Some(t_us.saturating_add(self.exp_us(sc.think_time.as_secs_f64() * 1e6)))
        } else {
            None
        };
        self.units[slot as usize] = unit;
        match next {
            Some(at) => self.queue.push(Reverse((at, slot))),
            None => self.free.push(slot),
        }
    }
}

fn merge(into: &mut Window, w: &Window) {
    into.treatment.merge(&w.treatment);
    into.control.merge(&w.control);
    into.control_latency.merge(&w.control_latency);
}

#[cfg(test)]
mod tests;
