//! The HTTP JSON API (the operator contract): `/api/v1/proxies`, `/api/v1/flags` (GET, PUT),
//! `/api/v1/stats/{flag}`, plus `/metrics` and `/healthz`. Errors are JSON `{"error": ...}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rampart_flags::Format;
use serde_json::{Value, json};

use crate::flags;
use crate::state::{Shared, lock};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/proxies", get(proxies))
        .route("/api/v1/flags", get(get_flags).put(put_flags))
        .route("/api/v1/stats/{flag}", get(stats))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(shared)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

async fn proxies(State(shared): State<Arc<Shared>>) -> Response {
    let proxies: Vec<_> = lock(&shared.proxies).values().cloned().collect();
    axum::Json(json!({ "proxies": proxies })).into_response()
}

async fn get_flags(State(shared): State<Arc<Shared>>) -> Response {
    let f = shared.flags.borrow().clone();
    axum::Json(json!({"version": f.version, "flags": f.definition})).into_response()
}

/// Replaces the definitions: JSON, or YAML when the content type says so. Invalid → 400 with every
/// located problem; the current flags stay.
async fn put_flags(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body must be UTF-8");
    };
    let yaml = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("yaml"));
    let format = if yaml { Format::Yaml } else { Format::Json };
    let (set, json_text) = match flags::parse("request body", text, format) {
        Ok(parsed) => parsed,
        Err(e) => {
            let problems: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
            let body = json!({"error": "invalid flag definitions", "problems": problems});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let shared2 = shared.clone();
    let published = tokio::task::spawn_blocking(move || flags::publish(&shared2, &set, json_text, "api")).await;
    match published {
        Ok(Ok(version)) => axum::Json(json!({ "version": version })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn stats(State(shared): State<Arc<Shared>>, Path(flag): Path<String>) -> Response {
    let mut variants = BTreeMap::new();
    for ((f, variant), d) in lock(&shared.totals).iter() {
        if *f != flag {
            continue;
        }
        let ms = |q: f64| d.latency.quantile(q).map(|us| us.round() / 1000.0);
        variants.insert(
            variant.clone(),
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
