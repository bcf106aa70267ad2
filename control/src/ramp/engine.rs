//! The live ramp engine: every second, each running ramp takes its flag's window (the randomised
//! stats that reports brought since the last tick), decides, and carries the decision out — a new
//! percent (and slow threshold) is published to every sidecar at once, a rollback sets the
//! treatment to 0% — with every decision, event and state change persisted. Also the operator's
//! actions (start, pause, resume, abort) and the guard that no flags write undoes a rollback.

use std::sync::Arc;

use rampart_flags::FlagSet;
use rampart_stats::Delta;
use serde_json::{Value, json};

use super::decide::{Action, Decision, Policy};
use super::model::{Ramp, State, Transition};
use super::plan;
use super::window::Window;
use crate::audit;
use crate::flags::{self, PublishError};
use crate::state::{Shared, lock, now_ms};
use crate::store::{DecisionRow, EventRow, StoreError};

/// How long after a rollback the exposure count keeps absorbing late-arriving stats.
const EXPOSURE_SETTLE_MS: i64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RampError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no ramp for flag \"{0}\"")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operator asks for when starting a ramp.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StartRequest {
    pub(crate) flag: String,
    pub(crate) treatment: String,
    pub(crate) steps: Vec<f64>,
    pub(crate) policy: Policy,
    pub(crate) change_id: Option<String>,
    pub(crate) commit_ms: Option<i64>,
    /// Who asked (for the audit trail).
    pub(crate) actor: String,
}

/// The ramp block the engine serves for `ramp` (keeping the definition's `bucketBy`).
fn ramp_block(def: &serde_json::Map<String, Value>, ramp: &Ramp) -> Value {
    let mut block = json!({"treatment": ramp.treatment, "percent": ramp.percent()});
    if let Some(b) = def.get("ramp").and_then(|r| r.get("bucketBy")) {
        block["bucketBy"] = b.clone();
    }
    if let (Some(us), true) = (ramp.slow_threshold_us, ramp.state.active()) {
        block["slowUs"] = json!(us);
    }
    block
}

/// Publishes `ramp`'s percent and slow threshold in its flag's ramp block. The caller holds the
/// ramps lock, so no flags write can interleave between reading the definition and publishing.
fn set_percent(shared: &Shared, ramp: &Ramp) -> Result<u64, RampError> {
    let mut doc = shared.flags.borrow().definition.clone();
    let Some(def) = doc.get_mut("flags").and_then(|f| f.get_mut(&ramp.flag)).and_then(Value::as_object_mut) else {
        return Err(RampError::Conflict(format!("flag \"{}\" is no longer defined", ramp.flag)));
    };
    let block = ramp_block(def, ramp);
    def.insert("ramp".to_owned(), block);
    let set = FlagSet::from_value("ramp engine", doc).map_err(PublishError::from)?;
    let json = set.definition().to_string();
    Ok(flags::publish(shared, &set, json, "ramp")?)
}

/// Overrides the ramp blocks in `doc` with the engine's: while a ramp runs the engine owns its
/// flag's percent, and after a rollback or an abort the treatment stays at 0% whatever a
/// replacement definition says (a new ramp is started through the API). `ramps` is the locked
/// map: the caller publishes before releasing it, so a rollback cannot slip in between.
pub(crate) fn impose_ramps(ramps: &std::collections::BTreeMap<i64, Ramp>, doc: &mut Value) {
    let mut latest: std::collections::HashMap<&str, &Ramp> = std::collections::HashMap::new();
    for r in ramps.values() {
        latest.insert(&r.flag, r);
    }
    for r in latest.into_values() {
        let Some(def) = doc.get_mut("flags").and_then(|f| f.get_mut(&r.flag)).and_then(Value::as_object_mut) else {
            continue;
        };
        let stopped = matches!(r.state, State::RolledBack | State::Aborted);
        if r.state.active() || (stopped && def.contains_key("ramp")) {
            let block = ramp_block(def, r);
            def.insert("ramp".to_owned(), block);
        }
    }
}

fn persist(shared: &Shared, ramp: &Ramp) -> Result<(), StoreError> {
    let record = serde_json::to_string(ramp).unwrap_or_default();
    shared.store.put_ramp(ramp.id, &ramp.flag, ramp.state.as_str(), ramp.started_ms, &record)
}

fn event(shared: &Shared, ramp: &Ramp, kind: &str, detail: String) -> Result<(), StoreError> {
    tracing::info!(flag = %ramp.flag, ramp = ramp.id, kind, "{detail}");
    shared.store.add_event(ramp.id, &EventRow { at_ms: now_ms(), kind: kind.to_owned(), detail })
}

/// Starts a ramp: validates, sets the first step's percent, persists.
pub(crate) fn start(shared: &Shared, req: StartRequest) -> Result<Ramp, RampError> {
    let bad = |m: String| Err(RampError::BadRequest(m));
    let current = shared.flags.borrow().clone();
    let Some(def) = current.definition.get("flags").and_then(|f| f.get(&req.flag)) else {
        return bad(format!("no flag \"{}\"", req.flag));
    };
    let Some(control) = def.get("defaultVariant").and_then(Value::as_str) else {
        return bad(format!("flag \"{}\" has no defaultVariant to serve as the control", req.flag));
    };
    if def.get("variants").and_then(|v| v.get(&req.treatment)).is_none() {
        return bad(format!("\"{}\" is not a variant of flag \"{}\"", req.treatment, req.flag));
    }
    if req.treatment == control {
        return bad(format!("the treatment must differ from the control (defaultVariant \"{control}\")"));
    }
    if req.steps.len() < 2
        || req.steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0))
        || !req.steps.windows(2).all(|w| w[0] < w[1])
        || req.steps.last() != Some(&100.0)
    {
        return bad(
            "steps must rise strictly within (0, 100] and end at 100, with at least one testing step before it \
             (the last one keeps a concurrent control)"
                .to_owned(),
        );
    }
    if !(req.policy.alpha > 0.0 && req.policy.alpha < 1.0) {
        return bad("alpha must be in (0, 1)".to_owned());
    }
    if !(req.policy.delta > 0.0 && req.policy.delta.is_finite()) {
        return bad("delta must be a positive number (advance when the relative risk is below 1 + delta)".to_owned());
    }
    if req.policy.error_budget.is_some_and(|b| !(b >= 0.0 && b.is_finite())) {
        return bad("error_budget must be a non-negative number of requests per hour".to_owned());
    }
    let mut ramps = lock(&shared.ramps);
    if let Some(active) = ramps.values().find(|r| r.flag == req.flag && r.state.active()) {
        return Err(RampError::Conflict(format!("flag \"{}\" already has a {} ramp", req.flag, active.state.as_str())));
    }
    let id = ramps.keys().next_back().map_or(1, |last| last + 1);
    let now = now_ms();
    // The slow threshold comes from the control's latencies of the first ticks (the variant's
    // totals may be days old), so the latency guardrail starts a moment after the ramp.
    let t = shared.variant_totals(&req.flag, &req.treatment)?;
    let mut ramp = Ramp::new(id, &req.flag, &req.treatment, control, req.steps, req.policy, now, &t);
    ramp.change_id = req.change_id;
    ramp.commit_ms = req.commit_ms;
    ramp.started_by = Some(req.actor.clone());
    let version = set_percent(shared, &ramp)?;
    persist(shared, &ramp)?;
    let detail = format!("{} → {}% of {} (flags version {version})", ramp.flag, ramp.percent(), ramp.treatment);
    audit::record(shared, &req.actor, "ramp_start", Some(&ramp.flag), Some(version), detail.clone())?;
    event(shared, &ramp, "started", detail)?;
    ramps.insert(id, ramp.clone());
    Ok(ramp)
}

/// The operator's pause, resume and abort.
pub(crate) fn operate(shared: &Shared, flag: &str, op: &str, actor: &str) -> Result<Ramp, RampError> {
    let mut ramps = lock(&shared.ramps);
    let Some(ramp) = ramps.values_mut().rev().find(|r| r.flag == flag) else {
        return Err(RampError::NotFound(flag.to_owned()));
    };
    let now = now_ms();
    let mut version = None;
    match (op, ramp.state) {
        ("pause", State::Running) => ramp.state = State::Paused,
        ("resume", State::Paused) => ramp.resume(now),
        ("abort", State::Running | State::Paused) => {
            let before = ramp.clone();
            ramp.state = State::Aborted;
            ramp.finished_ms = Some(now);
            match set_percent(shared, ramp) {
                Ok(v) => version = Some(v),
                Err(e) => {
                    *ramp = before;
                    return Err(e);
                }
            }
        }
        ("pause" | "resume" | "abort", state) => {
            return Err(RampError::Conflict(format!("cannot {op} a {} ramp", state.as_str())));
        }
        _ => return Err(RampError::BadRequest(format!("unknown action \"{op}\" (pause, resume or abort)"))),
    }
    ramp.interventions = ramp.interventions.saturating_add(1);
    persist(shared, ramp)?;
    let detail = format!("{op} by {actor} at {}%", ramp.percent());
    audit::record(shared, actor, &format!("ramp_{op}"), Some(&ramp.flag), version, detail.clone())?;
    event(shared, ramp, op, detail)?;
    Ok(ramp.clone())
}

/// One engine tick at `now`.
pub(crate) fn tick(shared: &Arc<Shared>, now: i64) {
    // Everything reported since the last tick; windows of flags without a running ramp are
    // dropped here, so the map never holds more than a tick's reports.
    let mut windows = std::mem::take(&mut *lock(&shared.windows));
    let ids: Vec<i64> = lock(&shared.ramps)
        .values()
        .filter(|r| {
            r.state == State::Running
                || (r.state == State::RolledBack && r.finished_ms.is_some_and(|f| now - f < EXPOSURE_SETTLE_MS))
        })
        .map(|r| r.id)
        .collect();
    for id in ids {
        if let Err(e) = tick_one(shared, id, now, &mut windows) {
            tracing::error!(ramp = id, error = %e, "ramp tick failed; retrying next tick");
        }
    }
}

fn tick_one(shared: &Shared, id: i64, now: i64, windows: &mut crate::state::Windows) -> Result<(), RampError> {
    let mut ramps = lock(&shared.ramps);
    let Some(ramp) = ramps.get_mut(&id) else { return Ok(()) };
    if ramp.state == State::RolledBack {
        let t = shared.variant_totals(&ramp.flag, &ramp.treatment)?;
        return settle_rollback(shared, ramp, &t, now);
    }
    let mut window = Window::default();
    if let Some((arm, _)) = windows.remove(&(ramp.flag.clone(), ramp.treatment.clone())) {
        window.treatment = arm;
    }
    if let Some((arm, latency)) = windows.remove(&(ramp.flag.clone(), ramp.control.clone())) {
        window.control = arm;
        window.control_latency = latency;
    }
    let before = ramp.clone();
    let threshold = ramp.slow_threshold_us;
    let decision = ramp.observe(now, &window);
    let transition = ramp.apply(&decision, now);
    let result = carry_out(shared, ramp, &decision, transition, threshold, now);
    if result.is_err() {
        // Nothing half-done: the ramp stays as it was and the tick is retried (this window's
        // evidence is lost to the tests, which stay valid without it).
        *ramp = before;
    }
    result
}

fn carry_out(
    shared: &Shared,
    ramp: &mut Ramp,
    decision: &Decision,
    transition: Option<Transition>,
    threshold_before: Option<u64>,
    now: i64,
) -> Result<(), RampError> {
    let threshold = |r: &Ramp| r.slow_threshold_us.map_or_else(String::new, |us| format!(", slow above {us} µs"));
    match transition {
        Some(Transition::Percent(p)) => {
            let version = set_percent(shared, ramp)?;
            let slow = threshold(ramp);
            let detail = format!("→ {p}% (flags version {version}{slow}): {}", decision.reason);
            audit::record(shared, audit::ENGINE, "ramp_advance", Some(&ramp.flag), Some(version), detail.clone())?;
            event(shared, ramp, "advanced", detail)?;
        }
        Some(Transition::Completed) => {
            let version = set_percent(shared, ramp)?;
            let detail = format!("→ 100% (flags version {version}): {}", decision.reason);
            audit::record(shared, audit::ENGINE, "ramp_complete", Some(&ramp.flag), Some(version), detail.clone())?;
            event(shared, ramp, "completed", detail)?;
        }
        Some(Transition::RolledBack) => {
            let version = set_percent(shared, ramp)?;
            ramp.rollback_version = Some(version);
            let detail = format!("→ 0% (flags version {version}): {}", decision.reason);
            audit::record(shared, audit::ENGINE, "ramp_rollback", Some(&ramp.flag), Some(version), detail.clone())?;
            event(shared, ramp, "rolled_back", detail)?;
        }
        Some(Transition::Paused) => {
            let detail = format!("paused by the engine at {}%: {}", ramp.percent(), decision.reason);
            audit::record(shared, audit::ENGINE, "ramp_pause", Some(&ramp.flag), None, detail.clone())?;
            event(shared, ramp, "paused", detail)?;
        }
        None if ramp.slow_threshold_us != threshold_before => {
            let version = set_percent(shared, ramp)?;
            let slow = threshold(ramp);
            let detail = format!("latency guardrail set (flags version {version}{slow})");
            audit::record(shared, audit::ENGINE, "ramp_threshold", Some(&ramp.flag), Some(version), detail.clone())?;
            event(shared, ramp, "threshold", detail)?;
        }
        None => {}
    }
    if ramp.plan_due(now) {
        let p = plan::from_ramp(ramp, now);
        ramp.planned = true;
        if let Some(p) = p {
            event(shared, ramp, "plan", p.describe())?;
        }
    }
    let row = DecisionRow {
        at_ms: now,
        step: u32::try_from(ramp.step + 1).unwrap_or(u32::MAX),
        percent: ramp.percent(),
        action: match decision.action {
            Action::Advance if transition == Some(Transition::Completed) => "COMPLETE".to_owned(),
            Action::Advance => "ADVANCE".to_owned(),
            Action::Hold => "HOLD".to_owned(),
            Action::Rollback => "ROLLBACK".to_owned(),
            Action::Pause => "PAUSE".to_owned(),
        },
        reason: decision.reason.clone(),
        numbers: serde_json::to_value(&decision.numbers).unwrap_or(Value::Null),
    };
    shared.store.add_decision(ramp.id, &row)?;
    persist(shared, ramp)?;
    Ok(())
}

/// After a rollback: keeps counting the treatment requests served before it took effect (their
/// stats arrive a report interval late), and notes the acknowledgement if none came yet.
fn settle_rollback(shared: &Shared, ramp: &mut Ramp, treatment: &Delta, now: i64) -> Result<(), RampError> {
    let exposed = treatment.requests.saturating_sub(ramp.base_treatment.requests);
    if ramp.exposed_requests != Some(exposed) {
        ramp.exposed_requests = Some(exposed);
        persist(shared, ramp)?;
    }
    acknowledge(shared, ramp, now)
}

/// How long a connected sidecar has to confirm a rollback's flags version before the rollback
/// is acknowledged without it: one sidecar that never answers must not hold back the
/// acknowledgement (and the recovery time of the DORA figures) until it disconnects.
pub(crate) const ACK_DEADLINE_MS: i64 = 5_000;

/// Notes the moment every connected sidecar serves the rollback's flags version — or, past
/// [`ACK_DEADLINE_MS`], every one but those that never confirmed, which are marked unresponsive.
fn acknowledge(shared: &Shared, ramp: &mut Ramp, now: i64) -> Result<(), RampError> {
    let (None, Some(version)) = (ramp.rollback_acked_ms, ramp.rollback_version) else { return Ok(()) };
    let after = now - ramp.rollback_ms.unwrap_or(now);
    // With replicas, the sidecars of the others too (as their last heartbeat lists them).
    let remote = crate::replicas::remote_sidecars(shared);
    let late: Vec<String> = {
        let mut proxies = lock(&shared.proxies);
        let mut connected = proxies.values_mut().filter(|p| p.connected).peekable();
        if connected.peek().is_none() && remote.is_empty() {
            return Ok(());
        }
        let late: Vec<&mut crate::state::ProxyInfo> = connected.filter(|p| p.flags_version < version).collect();
        let remote_late: Vec<String> = remote.into_iter().filter(|(_, v)| *v < version).map(|(id, _)| id).collect();
        if (!late.is_empty() || !remote_late.is_empty()) && after < ACK_DEADLINE_MS {
            return Ok(());
        }
        late.into_iter()
            .map(|p| {
                p.unresponsive = true;
                p.proxy_id.clone()
            })
            .chain(remote_late)
            .collect()
    };
    ramp.rollback_acked_ms = Some(now);
    persist(shared, ramp)?;
    let detail = if late.is_empty() {
        format!("every connected sidecar serves version {version}, {after} ms after the decision")
    } else {
        shared.metrics.unresponsive_sidecars.increment(late.len() as u64);
        tracing::warn!(version, sidecars = ?late, "sidecars did not confirm a rollback within the deadline");
        format!(
            "every responsive sidecar serves version {version}, {after} ms after the decision; unresponsive (no \
             confirmation within {} s): {}",
            ACK_DEADLINE_MS / 1000,
            late.join(", ")
        )
    };
    event(shared, ramp, "rollback_acknowledged", detail)?;
    Ok(())
}

/// A sidecar confirmed a flags version: rollbacks waiting for it may now be acknowledged.
pub(crate) fn flags_applied(shared: &Shared, now: i64) {
    // With replicas, the leader acknowledges (its ticks read every replica's sidecars).
    if shared.replicas.as_ref().is_some_and(|r| !r.leads()) {
        return;
    }
    let mut ramps = lock(&shared.ramps);
    for ramp in ramps.values_mut().filter(|r| r.rollback_version.is_some() && r.rollback_acked_ms.is_none()) {
        if let Err(e) = acknowledge(shared, ramp, now) {
            tracing::error!(ramp = ramp.id, error = %e, "recording a rollback acknowledgement failed");
        }
    }
}

/// The status of a ramp as the API and CLI show it.
pub(crate) fn status(shared: &Shared, ramp: &Ramp, recent: u32) -> Result<Value, StoreError> {
    let decisions = shared.store.decisions(ramp.id, recent)?;
    let events = shared.store.events(ramp.id)?;
    Ok(json!({
        "id": ramp.id,
        "flag": ramp.flag,
        "treatment": ramp.treatment,
        "control": ramp.control,
        "state": ramp.state.as_str(),
        "step": ramp.step + 1,
        "steps": ramp.steps,
        "percent": ramp.percent(),
        "slow_threshold_us": ramp.slow_threshold_us,
        "plan": plan::from_ramp(ramp, now_ms()),
        "policy": ramp.policy,
        "change_id": ramp.change_id,
        "commit_ms": ramp.commit_ms,
        "started_ms": ramp.started_ms,
        "step_started_ms": ramp.step_started_ms,
        "finished_ms": ramp.finished_ms,
        "first_exposure_ms": ramp.first_exposure_ms,
        "rollback_ms": ramp.rollback_ms,
        "rollback_acked_ms": ramp.rollback_acked_ms,
        "exposed_requests": ramp.exposed_requests,
        "started_by": ramp.started_by,
        "interventions": ramp.interventions,
        "decisions": decisions,
        "events": events,
    }))
}
