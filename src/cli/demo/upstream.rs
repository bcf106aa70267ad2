//! The demo's service: answers every request after a few milliseconds, and hides a regression in
//! the `new-checkout` treatment — more errors and twice the latency for `x-flag-new-checkout: on`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Error rates of the control and of the regressed treatment.
const CONTROL_ERRORS: f64 = 0.003;
const TREATMENT_ERRORS: f64 = 0.08;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let treatment = req.headers().get("x-flag-new-checkout").is_some_and(|v| v == "on");
    let base_ms = 2 + fastrand::u64(0..5);
    let delay = if treatment { base_ms * 2 } else { base_ms };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let fails = fastrand::f64() < if treatment { TREATMENT_ERRORS } else { CONTROL_ERRORS };
    let mut resp = Response::new(Full::new(Bytes::from_static(if fails { b"checkout failed\n" } else { b"ok\n" })));
    if fails {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(resp)
}

/// Serves until `stop`.
pub(crate) async fn serve(listener: TcpListener, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let stop = stop.clone();
        connections.spawn(async move {
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
