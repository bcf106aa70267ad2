//! The HTTP JSON API (the operator contract): `/api/v1/proxies`, `/api/v1/flags` (GET, PUT),
//! `/api/v1/stats/{flag}`, ramps, DORA, the console's reads (`views.rs`), plus `/metrics`,
//! `/healthz` and the console's static shell (`console.rs`), behind the operators' roles
//! (`operators.rs`). Errors are JSON `{"error": ...}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rampart_flags::Format;
use serde_json::{Value, json};

use crate::flags;
use crate::operators::{Actor, Role};
use crate::ramp::decide::Policy;
use crate::ramp::engine::{self, StartRequest};
use crate::state::{Shared, lock, now_ms};
use crate::views;
use crate::writes::Write;

/// Largest flags PUT body: the size cap of a flags file.
const FLAGS_BODY_LIMIT: usize = rampart_flags::bounds::MAX_FILE_BYTES as usize;

/// Flags PUTs parsed at once; more wait their turn (each is bounded, but a burst of large ones
/// should not take every core from the sidecar streams).
static PARSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub(crate) fn router(shared: Arc<Shared>, operators: Option<crate::operators::Operators>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/proxies", get(proxies))
        .route(
            "/api/v1/flags",
            get(get_flags).put(put_flags).layer(axum::extract::DefaultBodyLimit::max(FLAGS_BODY_LIMIT)),
        )
        .route("/api/v1/flags/{flag}", get(views::flag).post(create_flag))
        .route("/api/v1/stats/{flag}", get(stats))
        .route("/api/v1/ramps", get(views::list_ramps).post(start_ramp))
        .route("/api/v1/ramps/{flag}", get(ramp_status))
        .route("/api/v1/ramps/{flag}/series", get(views::series))
        .route("/api/v1/ramps/{flag}/{action}", post(operate_ramp))
        .route("/api/v1/dora", get(dora))
        .route("/api/v1/dora/weekly", get(views::dora_weekly))
        .route("/api/v1/whoami", get(views::whoami))
        .route("/", get(crate::console::index))
        .route("/console/{*path}", get(crate::console::asset))
        .route("/api/v1/audit", get(audit_trail))
        .route("/api/v1/replicas", get(replicas))
        .route("/api/v1/flags/lifecycle", get(lifecycle))
        .route("/api/v1/flags/{flag}/archive", post(archive_flag))
        .route("/api/v1/deployments", get(list_deployments).post(record_deployment))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(operators, crate::operators::authorize))
}

/// The operator behind a request: the token's name; on an API without operators, the user the
/// CLI names in `x-rampart-actor` (unverified, so marked), else `anonymous`.
fn actor_name(actor: Option<&Extension<Actor>>, headers: &HeaderMap) -> String {
    if let Some(Extension(a)) = actor {
        return a.name.clone();
    }
    let claimed = headers
        .get("x-rampart-actor")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_graphic()));
    match claimed {
        Some(name) => format!("{name} (unverified)"),
        None => crate::audit::ANONYMOUS.to_owned(),
    }
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// Runs `work` (store access) on the blocking pool; its error, or a failed task, answers 500.
pub(crate) async fn off_runtime<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Response>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "a store call for the API failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(&e)),
        Err(e) => Err(failed(&e)),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

/// The sidecars. A viewer does not see their epochs: with a proxy id, an epoch is what a stream
/// needs to report as that sidecar.
async fn proxies(State(shared): State<Arc<Shared>>, actor: Option<Extension<Actor>>) -> Response {
    axum::Json(json!({ "proxies": sidecar_list(&shared, actor.as_ref()).await })).into_response()
}

/// The sidecars as `/api/v1/proxies` lists them for `actor`.
pub(crate) async fn sidecar_list(shared: &Arc<Shared>, actor: Option<&Extension<Actor>>) -> Vec<Value> {
    let hide_epochs = actor.is_some_and(|Extension(a)| a.role == Role::Viewer);
    let mut proxies: Vec<Value> = lock(&shared.proxies)
        .values()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
            if hide_epochs && let Some(m) = v.as_object_mut() {
                m.remove("epoch");
            }
            v
        })
        .collect();
    // With replicas, the sidecars connected to the others too, as their last heartbeat lists them.
    if shared.replicas.is_some() {
        let shared2 = shared.clone();
        if let Ok(remote) = tokio::task::spawn_blocking(move || crate::replicas::remote_sidecar_list(&shared2)).await {
            proxies.extend(remote);
        }
    }
    proxies
}

/// The definitions, their version, and per flag the newest version that changed it.
async fn get_flags(State(shared): State<Arc<Shared>>) -> Response {
    let f = shared.flags.borrow().clone();
    let changed = match tokio::task::spawn_blocking(move || views::changed_versions(&shared)).await {
        Ok(Ok(changed)) => changed,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    axum::Json(json!({"version": f.version, "flags": f.definition, "changed_versions": changed})).into_response()
}

/// Replaces the definitions: JSON, or YAML when the content type says so. Invalid → 400 with every
/// located problem; the current flags stay.
async fn put_flags(
    State(shared): State<Arc<Shared>>,
    actor: Option<Extension<Actor>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let actor = actor_name(actor.as_ref(), &headers);
    if std::str::from_utf8(&body).is_err() {
        return error(StatusCode::BAD_REQUEST, "the body must be UTF-8");
    }
    let yaml = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("yaml"));
    let format = if yaml { Format::Yaml } else { Format::Json };
    // Parsed and compiled off the runtime (bounded by `rampart_flags::bounds`), two at a time.
    let Ok(_turn) = PARSING.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let parsed = tokio::task::spawn_blocking(move || {
        let text = std::str::from_utf8(&body).unwrap_or_default();
        flags::parse("request body", text, format).map(|(set, _)| set.definition().clone())
    })
    .await;
    let doc = match parsed {
        Ok(Ok(doc)) => doc,
        Ok(Err(e)) => return invalid(&e),
        Err(e) => {
            tracing::error!(error = %e, "flags parse task failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the flags could not be parsed");
        }
    };
    answer(crate::writes::submit(&shared, Write::PutFlags { definition: doc, actor }).await)
}

/// A write's answer as an HTTP response.
fn answer((status, body): (u16, Value)) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn invalid(e: &rampart_flags::LoadError) -> Response {
    let problems: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
    let body = json!({"error": "invalid flag definitions", "problems": problems});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>, Path(flag): Path<String>) -> Response {
    let shared2 = shared.clone();
    let flag2 = flag.clone();
    let totals = match off_runtime(move || shared2.flag_totals(&flag2)).await {
        Ok(totals) => totals,
        Err(answer) => return answer,
    };
    let mut variants = BTreeMap::new();
    for (variant, d) in totals {
        let ms = |q: f64| d.latency.quantile(q).map(|us| us.round() / 1000.0);
        variants.insert(
            variant,
            json!({
                "requests": d.requests,
                "errors": d.errors,
                "timeouts": d.timeouts,
                "error_rate": d.error_rate().unwrap_or(0.0),
                "p50_ms": ms(0.5),
                "p90_ms": ms(0.9),
                "p99_ms": ms(0.99),
            }),
        );
    }
    let known = shared.flags.borrow().definition.get("flags").and_then(|f| f.get(&flag)).is_some();
    if variants.is_empty() && !known {
        return error(StatusCode::NOT_FOUND, &format!("no flag \"{flag}\" and no stats for it"));
    }
    axum::Json(json!({"flag": flag, "variants": Value::from(serde_json::Map::from_iter(variants))})).into_response()
}

/// `POST /api/v1/ramps` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    flag: String,
    treatment: String,
    steps: Option<Vec<f64>>,
    /// e.g. "60s", "2m".
    min_dwell: Option<String>,
    alpha: Option<f64>,
    min_samples: Option<u64>,
    /// Advance when the relative risk is shown below 1 + delta (default 0.5).
    delta: Option<f64>,
    /// Or when the excess failing requests per hour at the next step fit this budget.
    error_budget: Option<f64>,
    change_id: Option<String>,
    /// RFC 3339, e.g. "2026-11-26T09:30:00+01:00".
    commit_time: Option<String>,
}

fn parse_start(body: &[u8]) -> Result<StartRequest, String> {
    let b: StartBody = serde_json::from_slice(body).map_err(|e| format!("invalid ramp request: {e}"))?;
    let mut policy = Policy::default();
    if let Some(d) = &b.min_dwell {
        policy.min_dwell = humantime::parse_duration(d).map_err(|e| format!("min_dwell \"{d}\": {e}"))?;
    }
    if let Some(a) = b.alpha {
        policy.alpha = a;
    }
    if let Some(n) = b.min_samples {
        policy.min_samples = n;
    }
    if let Some(d) = b.delta {
        policy.delta = d;
    }
    policy.error_budget = b.error_budget;
    let commit_ms = match &b.commit_time {
        None => None,
        Some(t) => {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("commit_time \"{t}\" is not RFC 3339: {e}"))?;
            Some(
                i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
                    .map_err(|_| "commit_time out of range".to_owned())?,
            )
        }
    };
    Ok(StartRequest {
        flag: b.flag,
        treatment: b.treatment,
        steps: b.steps.unwrap_or_else(|| crate::ramp::model::DEFAULT_STEPS.to_vec()),
        policy,
        change_id: b.change_id,
        commit_ms,
        actor: crate::audit::ANONYMOUS.to_owned(),
    })
}

async fn start_ramp(
    State(shared): State<Arc<Shared>>,
    actor: Option<Extension<Actor>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut req = match parse_start(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    req.actor = actor_name(actor.as_ref(), &headers);
    answer(crate::writes::submit(&shared, Write::StartRamp { request: req }).await)
}

#[derive(Debug, serde::Deserialize)]
struct RampQuery {
    /// A given ramp of the flag (default: its latest).
    id: Option<i64>,
}

async fn ramp_status(
    State(shared): State<Arc<Shared>>,
    Path(flag): Path<String>,
    Query(q): Query<RampQuery>,
) -> Response {
    let Some(ramp) = views::find_ramp(&shared, &flag, q.id) else {
        return error(StatusCode::NOT_FOUND, &format!("no ramp for flag \"{flag}\""));
    };
    let shared2 = shared.clone();
    match off_runtime(move || engine::status(&shared2, &ramp, 50)).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(answer) => answer,
    }
}

async fn operate_ramp(
    State(shared): State<Arc<Shared>>,
    actor: Option<Extension<Actor>>,
    headers: HeaderMap,
    Path((flag, action)): Path<(String, String)>,
) -> Response {
    let actor = actor_name(actor.as_ref(), &headers);
    answer(crate::writes::submit(&shared, Write::OperateRamp { flag, op: action, actor }).await)
}

/// `GET /api/v1/replicas`: the control-plane replicas and which one leads.
async fn replicas(State(shared): State<Arc<Shared>>) -> Response {
    match tokio::task::spawn_blocking(move || crate::replicas::list(&shared)).await {
        Ok(Ok(list)) => axum::Json(list).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// DORA over the last `window_ms`.
pub(crate) fn dora_now(shared: &Shared, window_ms: i64) -> crate::dora::Dora {
    crate::dora::compute(lock(&shared.ramps).values(), now_ms(), window_ms)
}

#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    flag: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/audit?flag=F&limit=N`: the latest changes (default 100), oldest first.
async fn audit_trail(State(shared): State<Arc<Shared>>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).min(10_000);
    let shared2 = shared.clone();
    match off_runtime(move || shared2.store.audit(q.flag.as_deref(), limit)).await {
        Ok(rows) => axum::Json(json!({ "audit": rows })).into_response(),
        Err(answer) => answer,
    }
}

#[derive(Debug, serde::Deserialize)]
struct DoraQuery {
    window: Option<String>,
}

async fn dora(State(shared): State<Arc<Shared>>, Query(q): Query<DoraQuery>) -> Response {
    let window = q.window.as_deref().unwrap_or("30d");
    let Ok(span) = humantime::parse_duration(window) else {
        return error(StatusCode::BAD_REQUEST, &format!("window \"{window}\" is not a duration like 30d or 12h"));
    };
    let window_ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    let mut body = serde_json::to_value(dora_now(&shared, window_ms)).unwrap_or(Value::Null);
    let confidence = crate::confidence::compute(lock(&shared.ramps).values(), now_ms(), window_ms);
    body["confidence"] = serde_json::to_value(confidence).unwrap_or(Value::Null);
    axum::Json(body).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct LifecycleQuery {
    /// RFC 3339: the stages as they will be (or were) at that time.
    at: Option<String>,
    /// Only flags in this stage.
    stage: Option<String>,
}

/// `GET /api/v1/flags/lifecycle?at=&stage=`: every flag's owner, stage and why, with when it was
/// last evaluated.
async fn lifecycle(State(shared): State<Arc<Shared>>, Query(q): Query<LifecycleQuery>) -> Response {
    let now = match q.at.as_deref() {
        None => now_ms(),
        Some(t) => match crate::lifecycle::parse_time(t) {
            Some(at) => at,
            None => return error(StatusCode::BAD_REQUEST, &format!("at \"{t}\" is not RFC 3339")),
        },
    };
    let shared2 = shared.clone();
    match off_runtime(move || crate::lifecycle::current(&shared2, now)).await {
        Ok(mut lives) => {
            if let Some(stage) = &q.stage {
                lives.retain(|l| l.stage.as_str() == stage);
            }
            axum::Json(json!({"at_ms": now, "flags": lives})).into_response()
        }
        Err(answer) => answer,
    }
}

async fn create_flag(
    State(shared): State<Arc<Shared>>,
    actor: Option<Extension<Actor>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let spec: crate::writes::NewFlag = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid flag: {e}")),
    };
    let actor = actor_name(actor.as_ref(), &headers);
    answer(crate::writes::submit(&shared, Write::CreateFlag { key, spec, actor }).await)
}

async fn archive_flag(
    State(shared): State<Arc<Shared>>,
    actor: Option<Extension<Actor>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let actor = actor_name(actor.as_ref(), &headers);
    answer(crate::writes::submit(&shared, Write::ArchiveFlag { key, actor }).await)
}

/// `POST /api/v1/deployments`: the pipeline records a deployment (any replica stores it).
async fn record_deployment(
    State(shared): State<Arc<Shared>>,
    actor: Option<Extension<Actor>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let actor = actor_name(actor.as_ref(), &headers);
    let mut row = match crate::deployments::parse(&body, &actor, now_ms()) {
        Ok(row) => row,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let to_store = row.clone();
    let recorded = off_runtime(move || {
        let id = shared.store.add_deployment(&to_store)?;
        let detail = format!("{} at {} ({} flags)", to_store.service, to_store.commit, to_store.flags.len());
        crate::audit::record(&shared, &actor, "deployment", None, None, detail)?;
        Ok::<_, crate::store::StoreError>(id)
    })
    .await;
    match recorded {
        Ok(id) => {
            row.id = id;
            (StatusCode::CREATED, axum::Json(row)).into_response()
        }
        Err(answer) => answer,
    }
}

#[derive(Debug, serde::Deserialize)]
struct DeploymentsQuery {
    window: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/deployments?window=30d&limit=100`: newest first.
async fn list_deployments(State(shared): State<Arc<Shared>>, Query(q): Query<DeploymentsQuery>) -> Response {
    let window = q.window.as_deref().unwrap_or("30d");
    let Ok(span) = humantime::parse_duration(window) else {
        return error(StatusCode::BAD_REQUEST, &format!("window \"{window}\" is not a duration like 30d"));
    };
    let since = now_ms().saturating_sub(i64::try_from(span.as_millis()).unwrap_or(i64::MAX));
    let limit = q.limit.unwrap_or(100).min(10_000);
    match off_runtime(move || shared.store.deployments(since, limit)).await {
        Ok(rows) => axum::Json(json!({ "deployments": rows })).into_response(),
        Err(answer) => answer,
    }
}
