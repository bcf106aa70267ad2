//! DORA metrics from the ramp history: every ramp is a deployment. Deployment frequency, lead time
//! for changes (commit → 100%), change failure rate (rolled back ÷ finished), failed-deployment
//! recovery time (first exposure of the bad variant → rollback acknowledged by the sidecars), time
//! to detect (first exposure → rollback decision) and requests served by a bad variant. Also by
//! week, and per rollback. The developer-confidence figures beside them are `confidence.rs`'s.

use serde::Serialize;

use crate::ramp::model::{Ramp, State};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Dora {
    pub(crate) window_s: u64,
    /// Ramps started in the window.
    pub(crate) deployments: u64,
    /// Ramps that reached 100% in the window.
    pub(crate) completed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) aborted: u64,
    /// Completed deployments per day.
    pub(crate) deployment_frequency_per_day: f64,
    /// Median commit → 100%, seconds (ramps with a commit time).
    pub(crate) lead_time_s: Option<f64>,
    /// Rolled back ÷ (completed + rolled back).
    pub(crate) change_failure_rate: Option<f64>,
    /// Median first exposure → rollback acknowledged, seconds.
    pub(crate) recovery_time_s: Option<f64>,
    /// Median first exposure → rollback decision, seconds.
    pub(crate) time_to_detect_s: Option<f64>,
    /// Treatment requests served by rolled-back variants before their rollback took effect.
    pub(crate) bad_variant_requests: u64,
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    Some(if xs.len() % 2 == 1 { xs[mid] } else { (xs[mid - 1] + xs[mid]) / 2.0 })
}

fn seconds(from: i64, to: i64) -> f64 {
    (to - from) as f64 / 1000.0
}

/// DORA over the ramps that started or finished within `window_ms` before `now_ms`.
pub(crate) fn compute<'a>(ramps: impl IntoIterator<Item = &'a Ramp>, now_ms: i64, window_ms: i64) -> Dora {
    let since = now_ms - window_ms;
    let in_window = |t: Option<i64>| t.is_some_and(|t| t >= since && t <= now_ms);
    let (mut deployments, mut completed, mut rolled_back, mut aborted, mut bad) = (0, 0, 0, 0, 0);
    let (mut leads, mut recoveries, mut detections) = (Vec::new(), Vec::new(), Vec::new());
    for r in ramps {
        if in_window(Some(r.started_ms)) {
            deployments += 1;
        }
        if !in_window(r.finished_ms) {
            continue;
        }
        match r.state {
            State::Completed => {
                completed += 1;
                if let (Some(commit), Some(done)) = (r.commit_ms, r.finished_ms) {
                    leads.push(seconds(commit, done));
                }
            }
            State::RolledBack => {
                rolled_back += 1;
                bad += r.exposed_requests.unwrap_or(r.treatment_requests);
                let exposed = r.first_exposure_ms.unwrap_or(r.started_ms);
                if let Some(acked) = r.rollback_acked_ms {
                    recoveries.push(seconds(exposed, acked));
                }
                if let Some(decided) = r.rollback_ms {
                    detections.push(seconds(exposed, decided));
                }
            }
            State::Aborted => aborted += 1,
            State::Running | State::Paused => {}
        }
    }
    let days = window_ms as f64 / 86_400_000.0;
    let finished = completed + rolled_back;
    Dora {
        window_s: u64::try_from(window_ms / 1000).unwrap_or(0),
        deployments,
        completed,
        rolled_back,
        aborted,
        deployment_frequency_per_day: if days > 0.0 { completed as f64 / days } else { 0.0 },
        lead_time_s: median(leads),
        change_failure_rate: (finished > 0).then(|| rolled_back as f64 / finished as f64),
        recovery_time_s: median(recoveries),
        time_to_detect_s: median(detections),
        bad_variant_requests: bad,
    }
}

const WEEK_MS: i64 = 7 * 86_400_000;

/// One week of the trend: the figures of the ramps that started or finished in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Week {
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    #[serde(flatten)]
    pub(crate) dora: Dora,
}

/// The weeks ending at `now_ms` that cover `window_ms`, oldest first (a window shorter than a
/// week is one week).
pub(crate) fn weekly(ramps: &[Ramp], now_ms: i64, window_ms: i64) -> Vec<Week> {
    let weeks = ((window_ms + WEEK_MS - 1) / WEEK_MS).clamp(1, 520);
    (0..weeks)
        .rev()
        .map(|i| {
            let end_ms = now_ms - i * WEEK_MS;
            Week { start_ms: end_ms - WEEK_MS, end_ms, dora: compute(ramps, end_ms, WEEK_MS) }
        })
        .collect()
}

/// One rollback of the window, with what it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Rollback {
    pub(crate) id: i64,
    pub(crate) flag: String,
    pub(crate) treatment: String,
    pub(crate) change_id: Option<String>,
    pub(crate) rollback_ms: Option<i64>,
    /// First exposure → rollback decision.
    pub(crate) time_to_detect_s: Option<f64>,
    /// First exposure → rollback acknowledged by the sidecars.
    pub(crate) recovery_time_s: Option<f64>,
    pub(crate) bad_variant_requests: u64,
}

/// The ramps rolled back within `window_ms` before `now_ms`, newest first.
pub(crate) fn rollbacks<'a>(ramps: impl IntoIterator<Item = &'a Ramp>, now_ms: i64, window_ms: i64) -> Vec<Rollback> {
    let since = now_ms - window_ms;
    let mut out: Vec<Rollback> = ramps
        .into_iter()
        .filter(|r| r.state == State::RolledBack && r.finished_ms.is_some_and(|t| t >= since && t <= now_ms))
        .map(|r| {
            let exposed = r.first_exposure_ms.unwrap_or(r.started_ms);
            Rollback {
                id: r.id,
                flag: r.flag.clone(),
                treatment: r.treatment.clone(),
                change_id: r.change_id.clone(),
                rollback_ms: r.rollback_ms,
                time_to_detect_s: r.rollback_ms.map(|t| seconds(exposed, t)),
                recovery_time_s: r.rollback_acked_ms.map(|t| seconds(exposed, t)),
                bad_variant_requests: r.exposed_requests.unwrap_or(r.treatment_requests),
            }
        })
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramp::decide::Policy;

    const DAY: i64 = 86_400_000;

    fn ramp(id: i64, state: State, started: i64, finished: Option<i64>) -> Ramp {
        let empty = rampart_stats::Delta::default();
        let mut r = Ramp::new(id, "f", "on", "off", vec![1.0, 100.0], Policy::default(), started, &empty);
        r.state = state;
        r.finished_ms = finished;
        r
    }

    /// A recorded history, checked against values computed by hand.
    #[test]
    fn figures_match_a_hand_computed_history() {
        let now = 30 * DAY;
        // Three completed: commits 1 h, 2 h and 6 h before reaching 100% → median lead 2 h.
        let mut a = ramp(1, State::Completed, 2 * DAY, Some(2 * DAY + 600_000));
        a.commit_ms = Some(2 * DAY + 600_000 - 3_600_000);
        let mut b = ramp(2, State::Completed, 5 * DAY, Some(5 * DAY + 900_000));
        b.commit_ms = Some(5 * DAY + 900_000 - 7_200_000);
        let mut c = ramp(3, State::Completed, 9 * DAY, Some(9 * DAY + 300_000));
        c.commit_ms = Some(9 * DAY + 300_000 - 21_600_000);
        // Two rolled back: exposed at start; decided after 40 s and 20 s; acknowledged 0.5 s and
        // 0.3 s later; 400 and 100 bad requests.
        let mut d = ramp(4, State::RolledBack, 10 * DAY, Some(10 * DAY + 40_000));
        d.first_exposure_ms = Some(10 * DAY + 1_000);
        d.rollback_ms = Some(10 * DAY + 41_000);
        d.rollback_acked_ms = Some(10 * DAY + 41_500);
        d.exposed_requests = Some(400);
        let mut e = ramp(5, State::RolledBack, 20 * DAY, Some(20 * DAY + 20_000));
        e.first_exposure_ms = Some(20 * DAY);
        e.rollback_ms = Some(20 * DAY + 20_000);
        e.rollback_acked_ms = Some(20 * DAY + 20_300);
        e.exposed_requests = Some(100);
        // Outside the window, and still running: not finished.
        let old = ramp(6, State::Completed, -5 * DAY, Some(-5 * DAY));
        let running = ramp(7, State::Running, 29 * DAY, None);

        let got = compute([&a, &b, &c, &d, &e, &old, &running], now, 30 * DAY);
        assert_eq!(got.deployments, 6);
        assert_eq!((got.completed, got.rolled_back, got.aborted), (3, 2, 0));
        assert!((got.deployment_frequency_per_day - 0.1).abs() < 1e-12, "3 per 30 days");
        assert_eq!(got.lead_time_s, Some(7200.0));
        assert_eq!(got.change_failure_rate, Some(0.4));
        // Recovery: 40.5 s and 20.3 s → median 30.4 s. Detection: 40 s and 20 s → 30 s.
        assert!((got.recovery_time_s.unwrap() - 30.4).abs() < 1e-9);
        assert_eq!(got.time_to_detect_s, Some(30.0));
        assert_eq!(got.bad_variant_requests, 500);
        assert_eq!(compute([&running], now, DAY).change_failure_rate, None);
    }

    #[test]
    fn confidence_figures_weeks_and_rollbacks() {
        let now = 30 * DAY;
        let a = ramp(1, State::Completed, 2 * DAY, Some(2 * DAY + 1));
        let mut b = ramp(2, State::Aborted, 20 * DAY, Some(20 * DAY + 1));
        b.interventions = 2;
        let mut c = ramp(3, State::RolledBack, 27 * DAY, Some(27 * DAY + 20_000));
        c.first_exposure_ms = Some(27 * DAY);
        c.rollback_ms = Some(27 * DAY + 20_000);
        c.exposed_requests = Some(70);
        let mut d = ramp(4, State::Completed, 28 * DAY, Some(28 * DAY + 1));
        d.interventions = 1;
        let got = crate::confidence::compute([&a, &b, &c, &d], now, 30 * DAY);
        assert_eq!(got.completion_rate, Some(0.5));
        assert_eq!(got.abandon_rate, Some(0.25));
        assert_eq!(got.interventions_per_ramp, Some(0.75));
        assert_eq!(got.untouched_share, Some(0.5));

        let all = [a.clone(), b.clone(), c.clone(), d.clone()];
        let weeks = weekly(&all, now, 30 * DAY);
        assert_eq!(weeks.len(), 5, "30 days take five weeks");
        assert_eq!(weeks.last().unwrap().end_ms, now);
        assert_eq!(weeks.iter().map(|w| w.dora.completed).sum::<u64>(), 2);
        assert_eq!(weeks.last().unwrap().dora.rolled_back, 1);
        assert_eq!(weeks.last().unwrap().dora.change_failure_rate, Some(0.5));
        assert_eq!(weekly(&all[..1], now, DAY).len(), 1);

        let rolled = rollbacks([&a, &b, &c, &d], now, 30 * DAY);
        assert_eq!(rolled.len(), 1);
        assert_eq!((rolled[0].id, rolled[0].time_to_detect_s, rolled[0].bad_variant_requests), (3, Some(20.0), 70));
    }
}
