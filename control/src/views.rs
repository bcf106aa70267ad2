//! The read endpoints the web console needs beyond the operator API: the ramps with their latest
//! decision, one ramp's per-tick numbers as compact series, a flag with its change history, the
//! DORA figures by week with every rollback, and who the caller is. JSON like the rest of the API
//! (`api.rs`), behind the same roles; any client may use them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::api::error;
use crate::operators::Actor;
use crate::ramp::model::Ramp;
use crate::state::{Shared, lock, now_ms};
use crate::store::{DecisionRow, StoreError};

/// Points a series answer holds at most (plus the decisions that changed something): enough for
/// a chart as wide as a screen, small enough to load at once.
pub(crate) const SERIES_POINTS: u32 = 3000;

/// Runs `work` (store reads) on the blocking pool and answers its JSON (`null`: 404).
async fn blocking(work: impl FnOnce() -> Result<Value, StoreError> + Send + 'static) -> Response {
    match crate::api::off_runtime(work).await {
        Ok(Value::Null) => error(StatusCode::NOT_FOUND, "not found"),
        Ok(v) => axum::Json(v).into_response(),
        Err(answer) => answer,
    }
}

fn latest_json(d: &DecisionRow) -> Value {
    json!({"at_ms": d.at_ms, "action": d.action, "reason": d.reason, "percent": d.percent})
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ListQuery {
    /// The newest finished ramps to list (every active one is listed); default all.
    limit: Option<usize>,
}

/// `GET /api/v1/ramps?limit=N`: every ramp, oldest first, with where it stands and its latest
/// decision; `limit` keeps the newest N finished ramps.
pub(crate) async fn list_ramps(State(shared): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    let mut ramps: Vec<Ramp> = lock(&shared.ramps).values().cloned().collect();
    if let Some(limit) = q.limit {
        let finished = ramps.iter().filter(|r| !r.state.active()).count();
        let mut skip = finished.saturating_sub(limit);
        ramps.retain(|r| {
            let drop = skip > 0 && !r.state.active();
            skip -= usize::from(drop);
            !drop
        });
    }
    blocking(move || {
        let ids: Vec<i64> = ramps.iter().map(|r| r.id).collect();
        let latest: HashMap<i64, DecisionRow> = shared.store.latest_decisions(&ids)?.into_iter().collect();
        let list: Vec<Value> = ramps
            .iter()
            .map(|r| {
                json!({
                    "id": r.id, "flag": r.flag, "treatment": r.treatment, "control": r.control,
                    "state": r.state.as_str(), "step": r.step + 1, "steps": r.steps.len(), "percent": r.percent(),
                    "started_ms": r.started_ms, "step_started_ms": r.step_started_ms, "finished_ms": r.finished_ms,
                    "started_by": r.started_by, "change_id": r.change_id, "interventions": r.interventions,
                    "latest": latest.get(&r.id).map(latest_json),
                })
            })
            .collect();
        Ok(json!({"now_ms": now_ms(), "ramps": list}))
    })
    .await
}

/// The ramp `id` of `flag`, or its latest when `id` is `None`.
pub(crate) fn find_ramp(shared: &Shared, flag: &str, id: Option<i64>) -> Option<Ramp> {
    let ramps = lock(&shared.ramps);
    match id {
        Some(id) => ramps.get(&id).filter(|r| r.flag == flag).cloned(),
        None => ramps.values().rev().find(|r| r.flag == flag).cloned(),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct SeriesQuery {
    id: Option<i64>,
    /// Only decisions after this time (Unix ms): what a page that has the rest asks for.
    after_ms: Option<i64>,
}

/// Pushes `v` (a number or null) onto the column `name`.
fn push(cols: &mut BTreeMap<&'static str, Vec<Value>>, name: &'static str, v: &Value) {
    cols.entry(name).or_default().push(if v.is_number() { v.clone() } else { Value::Null });
}

/// `GET /api/v1/ramps/{flag}/series?id=&after_ms=`: the ramp's per-tick numbers, one column per
/// figure (see README), at most about [`SERIES_POINTS`] of them.
pub(crate) async fn series(
    State(shared): State<Arc<Shared>>,
    Path(flag): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Response {
    let Some(ramp) = find_ramp(&shared, &flag, q.id) else {
        return error(StatusCode::NOT_FOUND, &format!("no ramp for flag \"{flag}\""));
    };
    let after = q.after_ms.unwrap_or(i64::MIN);
    blocking(move || {
        let (rows, total) = shared.store.decision_series(ramp.id, after, SERIES_POINTS)?;
        let mut cols: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
        for name in ["at_ms", "percent", "step", "action", "reason"] {
            cols.insert(name, Vec::with_capacity(rows.len()));
        }
        let mut thresholds = json!({});
        for d in &rows {
            cols.entry("at_ms").or_default().push(json!(d.at_ms));
            cols.entry("percent").or_default().push(json!(d.percent));
            cols.entry("step").or_default().push(json!(d.step));
            cols.entry("action").or_default().push(json!(d.action));
            let reason = if d.action == "HOLD" { Value::Null } else { json!(d.reason) };
            cols.entry("reason").or_default().push(reason);
            let n = &d.numbers;
            for (prefix, guard) in [("err", &n["errors"]), ("slow", &n["latency"])] {
                let names: [(&'static str, &str); 5] = if prefix == "err" {
                    [
                        ("err_t", "treatment_rate"),
                        ("err_c", "control_rate"),
                        ("err_rr", "relative_risk"),
                        ("err_upper", "relative_risk_upper"),
                        ("err_e", "harm_e"),
                    ]
                } else {
                    [
                        ("slow_t", "treatment_rate"),
                        ("slow_c", "control_rate"),
                        ("slow_rr", "relative_risk"),
                        ("slow_upper", "relative_risk_upper"),
                        ("slow_e", "harm_e"),
                    ]
                };
                for (col, field) in names {
                    push(&mut cols, col, &guard[field]);
                }
            }
            push(&mut cols, "units_t", &n["treatment_units"]);
            push(&mut cols, "units_c", &n["control_units"]);
            push(&mut cols, "observed_share", &n["observed_share"]);
            push(&mut cols, "ratio_e", &n["ratio_e"]);
            push(&mut cols, "slow_threshold_us", &n["slow_threshold_us"]);
            if n.is_object() {
                thresholds = json!({
                    "errors": n["errors"]["harm_threshold"],
                    "latency": n["latency"]["harm_threshold"],
                    "ratio": n["ratio_threshold"],
                });
            }
        }
        Ok(json!({
            "id": ramp.id,
            "flag": ramp.flag,
            "state": ramp.state.as_str(),
            "total": total,
            "kept": rows.len(),
            "last_ms": rows.last().map(|d| d.at_ms),
            "delta": ramp.policy.delta,
            "thresholds": thresholds,
            "points": Value::Object(cols.into_iter().map(|(k, v)| (k.to_owned(), Value::Array(v))).collect()),
        }))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct HistoryQuery {
    /// Changes listed, newest first (default 50).
    limit: Option<u32>,
}

/// `GET /api/v1/flags/{flag}`: the flag's definition, its ramps, which sidecars serve its current
/// definition, and its change history with the definition each change produced.
pub(crate) async fn flag(
    State(shared): State<Arc<Shared>>,
    actor: Option<Extension<Actor>>,
    Path(flag): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let current = shared.flags.borrow().clone();
    let definition = current.definition.get("flags").and_then(|f| f.get(&flag)).cloned();
    let ramps: Vec<Value> = lock(&shared.ramps)
        .values()
        .filter(|r| r.flag == flag)
        .map(|r| {
            json!({"id": r.id, "state": r.state.as_str(), "treatment": r.treatment, "percent": r.percent(),
                        "started_ms": r.started_ms, "finished_ms": r.finished_ms})
        })
        .collect();
    let sidecars = crate::api::sidecar_list(&shared, actor.as_ref()).await;
    blocking(move || {
        let audit = shared.store.audit(Some(&flag), limit)?;
        if definition.is_none() && audit.is_empty() && ramps.is_empty() {
            return Ok(Value::Null); // no such flag, ever
        }
        let versions: Vec<u64> = audit.iter().filter_map(|a| a.version).collect();
        let defs: HashMap<u64, Value> = shared
            .store
            .flag_versions(&versions)?
            .into_iter()
            .map(|row| {
                let doc: Value = serde_json::from_str(&row.definition).unwrap_or(Value::Null);
                (row.version, doc["flags"][&flag].clone())
            })
            .collect();
        let changed = shared.store.flag_changes()?.into_iter().find(|(f, _)| *f == flag).map_or(1, |(_, v)| v);
        let history: Vec<Value> = audit
            .iter()
            .rev()
            .map(|a| {
                let def = a.version.and_then(|v| defs.get(&v)).cloned().unwrap_or(Value::Null);
                json!({"at_ms": a.at_ms, "actor": a.actor, "action": a.action, "version": a.version,
                       "detail": a.detail, "definition": def})
            })
            .collect();
        let served: Vec<Value> = sidecars
            .into_iter()
            .map(|mut s| {
                let current = s["flags_version"].as_u64().is_some_and(|v| v >= changed);
                s["serves_current"] = json!(current);
                s
            })
            .collect();
        Ok(json!({
            "flag": flag, "version": current.version, "changed_version": changed, "definition": definition,
            "ramps": ramps, "sidecars": served, "history": history,
        }))
    })
    .await
}

/// Per flag, the newest flags version that changed it (for "served by every sidecar?").
pub(crate) fn changed_versions(shared: &Shared) -> Result<Map<String, Value>, StoreError> {
    Ok(shared.store.flag_changes()?.into_iter().map(|(f, v)| (f, json!(v))).collect())
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct WindowQuery {
    window: Option<String>,
}

/// `GET /api/v1/dora/weekly?window=30d`: the DORA and confidence figures of each week covering the
/// window, oldest first, and every rollback in the window with its cost and reason.
pub(crate) async fn dora_weekly(State(shared): State<Arc<Shared>>, Query(q): Query<WindowQuery>) -> Response {
    let window = q.window.as_deref().unwrap_or("30d");
    let Ok(span) = humantime::parse_duration(window) else {
        return error(StatusCode::BAD_REQUEST, &format!("window \"{window}\" is not a duration like 30d or 12h"));
    };
    let window_ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX).min(3650 * 86_400_000);
    let now = now_ms();
    let ramps: Vec<Ramp> = lock(&shared.ramps).values().cloned().collect();
    blocking(move || {
        let weeks = crate::dora::weekly(&ramps, now, window_ms);
        let rollbacks = crate::dora::rollbacks(ramps.iter(), now, window_ms);
        let ids: Vec<i64> = rollbacks.iter().map(|r| r.id).collect();
        let reasons: HashMap<i64, String> =
            shared.store.latest_decisions(&ids)?.into_iter().map(|(id, d)| (id, d.reason)).collect();
        let rollbacks: Vec<Value> = rollbacks
            .into_iter()
            .map(|r| {
                let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
                v["reason"] = json!(reasons.get(&r.id));
                v
            })
            .collect();
        Ok(json!({"window_s": window_ms / 1000, "now_ms": now, "weeks": weeks, "rollbacks": rollbacks}))
    })
    .await
}

/// `GET /api/v1/whoami`: the caller's operator name and role (`auth: false` on an open API, where
/// everyone may do everything).
pub(crate) async fn whoami(actor: Option<Extension<Actor>>) -> Response {
    match actor {
        Some(Extension(a)) => axum::Json(json!({"auth": true, "name": a.name, "role": a.role.as_str()})),
        None => axum::Json(json!({"auth": false, "name": crate::audit::ANONYMOUS, "role": "admin"})),
    }
    .into_response()
}
