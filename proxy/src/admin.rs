//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus), `/flags` (the loaded
//! definitions and their version) and `/stats` (the per-variant stats of the report window in
//! progress). Loopback by default; never on the client listener.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::atomic::Ordering;

use rampart_stats::{Delta, Registry};

use crate::metrics::Metrics;
use crate::reporter::Status;
use crate::snapshot::Current;

#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) current: Current,
    pub(crate) metrics: Metrics,
    /// The recorded series, read (never drained) by `/stats`.
    pub(crate) stats: Arc<Registry>,
    /// The control stream's state, when the sidecar follows a control plane.
    pub(crate) control: Option<Arc<Status>>,
}

/// How often, with no control plane to report to, the series of ended ramps are freed.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = upkeep.tick() => {
                if admin.control.is_none() {
                    // No reporter drains the stats: free the series of ended ramps no request
                    // holds any more (a reload frees those it can at once).
                    admin.stats.forget_retired();
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.route(&req)) }
            });
            let conn =
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).into_owned();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => if let Err(e) = res { tracing::debug!(error = %e, "admin connection error") },
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

impl Admin {
    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
            // Ready whenever flags are served: a sidecar without its control plane keeps serving
            // its last flags, so it stays ready and says so.
            "/readyz" => {
                let stream = match &self.control {
                    None => "none (local flags file)".to_owned(),
                    Some(s) => s.describe(),
                };
                let version = self.current.load().version;
                text(StatusCode::OK, format!("ready: flags version {version}; control stream: {stream}\n"))
            }
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics.render());
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            "/flags" => {
                let snapshot = self.current.load();
                json(&serde_json::json!({
                    "version": snapshot.version,
                    "loaded_at": unix_seconds(snapshot.loaded_at),
                    "flags": snapshot.flags.definition(),
                }))
            }
            "/stats" => json(&self.stats_body()),
            _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz, /metrics, /flags, /stats\n".to_owned()),
        }
    }
}

impl Admin {
    /// `/stats`: every recorded series as it stands in the window in progress — since the last
    /// report to the control plane, or since start without one. Reading drains nothing.
    fn stats_body(&self) -> serde_json::Value {
        let series: Vec<_> =
            self.stats.peek_all().iter().map(|(flag, variant, d)| series_json(flag, variant, d)).collect();
        let window = if self.control.is_some() { "since the last stats report" } else { "since start" };
        serde_json::json!({
            "window": window,
            "series": series,
            "overflow": self.stats.overflow().load(Ordering::Relaxed),
        })
    }
}

fn series_json(flag: &str, variant: &str, d: &Delta) -> serde_json::Value {
    let s = &d.split;
    serde_json::json!({
        "flag": flag,
        "variant": variant,
        "requests": d.requests,
        "errors": d.errors,
        "timeouts": d.timeouts,
        "latency_us": {
            "count": d.latency.count(),
            "p50": d.latency.quantile(0.5),
            "p99": d.latency.quantile(0.99),
        },
        "split": {
            "requests": s.requests,
            "errors": s.errors,
            "slow": s.slow,
            "units": s.units,
            "failing_units": s.failing_units,
            "slow_units": s.slow_units,
        },
    })
}

fn json(body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn unix_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
