//! Developer-confidence figures, next to DORA: whether engineers let the automation ship. Over the
//! ramps that finished in the window:
//!
//! - completion rate: reached 100% ÷ finished;
//! - abandon rate: aborted by a person ÷ finished;
//! - human interventions per ramp: pauses, resumes and aborts by operators, and edits of the ramp's
//!   flag while it ran, ÷ finished ramps;
//! - automatic rollbacks (the engine) and human rollbacks (aborted after the treatment was exposed);
//! - median time from start to 100% (completed ramps);
//! - untouched share: finished ramps with no human intervention ÷ finished.

use serde::Serialize;

use crate::ramp::model::{Ramp, State};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Confidence {
    /// Ramps that finished (completed, rolled back or aborted) in the window.
    pub(crate) finished: u64,
    pub(crate) completion_rate: Option<f64>,
    pub(crate) abandon_rate: Option<f64>,
    pub(crate) interventions_per_ramp: Option<f64>,
    pub(crate) automatic_rollbacks: u64,
    pub(crate) human_rollbacks: u64,
    pub(crate) median_time_to_100_s: Option<f64>,
    pub(crate) untouched_share: Option<f64>,
}

/// The figures over the ramps that finished within `window_ms` before `now_ms`.
pub(crate) fn compute<'a>(ramps: impl IntoIterator<Item = &'a Ramp>, now_ms: i64, window_ms: i64) -> Confidence {
    let since = now_ms - window_ms;
    let (mut finished, mut completed, mut aborted, mut automatic, mut human, mut untouched) = (0, 0, 0, 0, 0, 0);
    let mut interventions = 0u64;
    let mut to_100 = Vec::new();
    for r in ramps {
        let Some(done) = r.finished_ms.filter(|t| *t >= since && *t <= now_ms) else { continue };
        match r.state {
            State::Completed => {
                completed += 1;
                to_100.push((done - r.started_ms) as f64 / 1000.0);
            }
            State::RolledBack => automatic += 1,
            State::Aborted => {
                aborted += 1;
                if r.first_exposure_ms.is_some() {
                    human += 1;
                }
            }
            State::Running | State::Paused => continue,
        }
        finished += 1;
        interventions += u64::from(r.interventions);
        if r.interventions == 0 {
            untouched += 1;
        }
    }
    let share = |n: u64| (finished > 0).then(|| n as f64 / finished as f64);
    to_100.sort_by(f64::total_cmp);
    let median = match to_100.len() {
        0 => None,
        n if n % 2 == 1 => Some(to_100[n / 2]),
        n => Some((to_100[n / 2 - 1] + to_100[n / 2]) / 2.0),
    };
    Confidence {
        finished,
        completion_rate: share(completed),
        abandon_rate: share(aborted),
        interventions_per_ramp: share(interventions),
        automatic_rollbacks: automatic,
        human_rollbacks: human,
        median_time_to_100_s: median,
        untouched_share: share(untouched),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramp::decide::Policy;

    const H: i64 = 3_600_000;

    fn ramp(id: i64, state: State, started: i64, finished: Option<i64>, interventions: u32) -> Ramp {
        let mut r = Ramp::new(id, "f", "on", "off", vec![1.0, 100.0], Policy::default(), started, &Default::default());
        r.state = state;
        r.finished_ms = finished;
        r.interventions = interventions;
        r
    }

    /// A recorded history, checked against values computed by hand.
    #[test]
    fn figures_match_a_hand_computed_history() {
        let now = 1000 * H;
        let mut aborted_exposed = ramp(5, State::Aborted, 100 * H, Some(101 * H), 2);
        aborted_exposed.first_exposure_ms = Some(100 * H + 60_000);
        let ramps = [
            // Completed in 2 h, 4 h and 9 h; one paused and resumed once (2 interventions).
            ramp(1, State::Completed, 10 * H, Some(12 * H), 0),
            ramp(2, State::Completed, 20 * H, Some(24 * H), 2),
            ramp(3, State::Completed, 30 * H, Some(39 * H), 0),
            // Rolled back by the engine, untouched.
            ramp(4, State::RolledBack, 40 * H, Some(41 * H), 0),
            // Aborted after exposure (a human rollback) with a pause before: 2 interventions.
            aborted_exposed,
            // Aborted before any exposure: abandoned, 1 intervention (the abort).
            ramp(6, State::Aborted, 200 * H, Some(200 * H + 1), 1),
            // Still running, and one finished before the window: not counted.
            ramp(7, State::Running, 900 * H, None, 3),
            ramp(8, State::Completed, 0, Some(1), 0),
        ];
        let c = compute(ramps.iter(), now, 999 * H);
        assert_eq!(c.finished, 6);
        assert_eq!(c.completion_rate, Some(3.0 / 6.0));
        assert_eq!(c.abandon_rate, Some(2.0 / 6.0));
        assert_eq!(c.interventions_per_ramp, Some(5.0 / 6.0));
        assert_eq!((c.automatic_rollbacks, c.human_rollbacks), (1, 1));
        assert_eq!(c.median_time_to_100_s, Some(4.0 * 3600.0));
        assert_eq!(c.untouched_share, Some(3.0 / 6.0));
        let empty = compute([].iter(), now, H);
        assert_eq!((empty.finished, empty.completion_rate, empty.median_time_to_100_s), (0, None, None));
    }
}
