//! The upstream the load tool serves itself: a small hyper server (HTTP/1.1 and h2c) answering
//! `200 ok`, optionally failing or slowing down the requests whose `x-flag-<flag>` header names a
//! chosen variant, and counting what it saw of that variant (for the ramp scenarios). `/headers`
//! echoes the flag headers it received, `/big` answers 4 MiB (for clients that stop reading).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderName;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the upstream does to each request.
#[derive(Debug, Clone)]
pub(crate) struct Behavior {
    /// The flag header to look at and the variant that misbehaves; `None`: every request is alike.
    pub(crate) bad: Option<(HeaderName, String)>,
    /// Share of the bad variant's requests answered `500`.
    pub(crate) fail_rate: f64,
    /// Share of every other request answered `500` (the baseline error rate).
    pub(crate) base_fail_rate: f64,
    /// Delay of every response (none when zero).
    pub(crate) base_latency: Duration,
    /// The bad variant's delay is `base_latency × slowdown`.
    pub(crate) slowdown: f64,
}

impl Behavior {
    /// Answers `200 ok` at once to everything.
    pub(crate) fn fast() -> Behavior {
        Behavior { bad: None, fail_rate: 0.0, base_fail_rate: 0.0, base_latency: Duration::ZERO, slowdown: 1.0 }
    }
}

/// What the upstream saw.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Requests carrying the bad variant.
    pub(crate) bad_requests: AtomicU64,
    /// When the last of them arrived (Unix ms; 0: none yet).
    pub(crate) last_bad_ms: AtomicI64,
}

pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn handle(req: Request<Incoming>, behavior: Arc<Behavior>, seen: Arc<Observed>) -> Response<Full<Bytes>> {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    if req.uri().path() == "/headers" {
        return Response::new(Full::new(Bytes::from(flag_headers(&req))));
    }
    if req.uri().path() == "/big" {
        return Response::new(Full::new(Bytes::from_static(&BIG)));
    }
    let is_bad = behavior
        .bad
        .as_ref()
        .is_some_and(|(name, variant)| req.headers().get(name).is_some_and(|v| v.as_bytes() == variant.as_bytes()));
    let (fail_rate, delay) = if is_bad {
        seen.bad_requests.fetch_add(1, Ordering::Relaxed);
        seen.last_bad_ms.fetch_max(unix_ms(), Ordering::Relaxed);
        (behavior.fail_rate, behavior.base_latency.mul_f64(behavior.slowdown.max(0.0)))
    } else {
        (behavior.base_fail_rate, behavior.base_latency)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if fail_rate > 0.0 && fastrand::f64() < fail_rate {
        seen.errors.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::from_static(b"injected failure\n")));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    Response::new(Full::new(Bytes::from_static(b"ok\n")))
}

/// The body of `/big`: zeros, static (no allocation per response).
static BIG: [u8; 4 << 20] = [0; 4 << 20];

/// `name=value ` for every `x-flag-*` header: what a proxy injected (the sanity check of `compare`);
/// `x_flag_name=value ` for a header spelled with underscores (which must never get through).
fn flag_headers(req: &Request<Incoming>) -> String {
    let mut out = String::new();
    for (name, value) in req.headers() {
        if name.as_str().starts_with("x_flag_") {
            out.push_str(name.as_str());
            out.push('=');
            out.push_str(&String::from_utf8_lossy(value.as_bytes()));
            out.push(' ');
        } else if let Some(flag) = name.as_str().strip_prefix("x-flag-") {
            out.push_str(flag);
            out.push('=');
            out.push_str(&String::from_utf8_lossy(value.as_bytes()));
            out.push(' ');
        }
    }
    out
}

/// Serves `listener` until `cancel`; the connections end with it.
pub(crate) async fn serve(
    listener: TcpListener,
    behavior: Arc<Behavior>,
    seen: Arc<Observed>,
    cancel: CancellationToken,
) {
    accept_each(listener, cancel, |stream| {
        let _ = stream.set_nodelay(true);
        let (behavior, seen) = (behavior.clone(), seen.clone());
        async move {
            let service = service_fn(move |req| {
                let (behavior, seen) = (behavior.clone(), seen.clone());
                async move { Ok::<_, Infallible>(handle(req, behavior, seen).await) }
            });
            // A connection that breaks is the client's business; nothing to report.
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        }
    })
    .await;
}

/// Accepts on `listener` until `cancel`, serving each connection with `serve` on a task of its
/// own; the connections end with it.
pub(crate) async fn accept_each<F, Fut>(listener: TcpListener, cancel: CancellationToken, mut serve: F)
where
    F: FnMut(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = cancel.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = accepted else { continue };
        connections.spawn(serve(stream));
    }
}

/// `rampart-loadtest upstream`: the fast upstream as its own process (for `compare`, pinned
/// with `taskset` next to the proxy), on a single-threaded runtime.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Exit after this long at the latest.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    max_lifetime: Duration,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.listen.ip().is_loopback(), "--listen must be a loopback address");
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("upstream listening on {}", listener.local_addr()?);
    let (cancel, timer) = stop_after(args.max_lifetime);
    serve(listener, Arc::new(Behavior::fast()), Arc::new(Observed::default()), cancel).await;
    timer.abort();
    Ok(std::process::ExitCode::SUCCESS)
}

/// A token cancelled on Ctrl-C or after `lifetime`, whichever comes first, and the task that
/// cancels it (to abort once the server ended on its own): a server process of this tool never
/// outlives its run.
pub(crate) fn stop_after(lifetime: Duration) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let timer = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = tokio::time::sleep(lifetime) => {}
        }
        stop.cancel();
    });
    (cancel, timer)
}
