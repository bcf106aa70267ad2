//! `rampart-loadtest bare-proxy`: the least a reverse proxy built on hyper and tokio does, to
//! measure the floor under any such sidecar (`benches/compare/instructions.sh bare`), never to
//! serve anything. hyper's HTTP/1.1 server and client on the current-thread runtime; one upstream
//! connection per client connection, opened with it and driven by its own task (as hyper's client
//! is meant to be used); the request forwarded as received plus `compare`'s 10 constant
//! `x-flag-f<i>` headers (what nginx is given there), the response streamed back. No flags, stats,
//! pool, timeouts, header cleaning or error pages: a failed exchange closes the client connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// `compare`'s constant headers: `x-flag-f<i>`, `on` for even `i`, `off` for odd. Built at
/// compile time: a request copies static names and values, as Rampart's interned ones.
static HEADERS: [(HeaderName, HeaderValue); 10] = [
    (HeaderName::from_static("x-flag-f0"), HeaderValue::from_static("on")),
    (HeaderName::from_static("x-flag-f1"), HeaderValue::from_static("off")),
    (HeaderName::from_static("x-flag-f2"), HeaderValue::from_static("on")),
    (HeaderName::from_static("x-flag-f3"), HeaderValue::from_static("off")),
    (HeaderName::from_static("x-flag-f4"), HeaderValue::from_static("on")),
    (HeaderName::from_static("x-flag-f5"), HeaderValue::from_static("off")),
    (HeaderName::from_static("x-flag-f6"), HeaderValue::from_static("on")),
    (HeaderName::from_static("x-flag-f7"), HeaderValue::from_static("off")),
    (HeaderName::from_static("x-flag-f8"), HeaderValue::from_static("on")),
    (HeaderName::from_static("x-flag-f9"), HeaderValue::from_static("off")),
];

/// Why an exchange failed (hyper then closes the client connection).
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("upstream connection busy")]
    Busy,
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The upstream (loopback only), e.g. `rampart-loadtest upstream`'s address.
    #[arg(long)]
    upstream: SocketAddr,
    /// Exit after this long at the latest.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    max_lifetime: Duration,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.listen.ip().is_loopback(), "--listen must be a loopback address");
    anyhow::ensure!(args.upstream.ip().is_loopback(), "--upstream must be a loopback address");
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("bare proxy listening on {}", listener.local_addr()?);
    let (stop, timer) = crate::upstream::stop_after(args.max_lifetime);
    serve(listener, args.upstream, stop).await;
    timer.abort();
    Ok(std::process::ExitCode::SUCCESS)
}

/// Serves `listener` until `stop`; the connections end with it.
async fn serve(listener: TcpListener, upstream: SocketAddr, stop: CancellationToken) {
    crate::upstream::accept_each(listener, stop, |stream| proxy(stream, upstream)).await;
}

/// Serves one client connection through one upstream connection until either ends.
async fn proxy(stream: TcpStream, upstream: SocketAddr) {
    let Ok(up) = TcpStream::connect(upstream).await else { return };
    let _ = (stream.set_nodelay(true), up.set_nodelay(true));
    let Ok((sender, conn)) = client::handshake::<_, Incoming>(TokioIo::new(up)).await else { return };
    let driver = tokio::spawn(conn);
    // HTTP/1.1 serves one request at a time, so the sender is only ever taken by one request: the
    // lock is held for the take and the put back, never across an `.await`.
    let slot = Arc::new(Mutex::new(Some(sender)));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let slot = slot.clone();
        async move {
            let headers = req.headers_mut();
            for (name, value) in &HEADERS {
                headers.insert(name.clone(), value.clone());
            }
            let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            let Some(mut sender) = taken else { return Err(Failed::Busy) };
            let sent = async {
                sender.ready().await?;
                sender.send_request(req).await
            }
            .await;
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
            sent.map_err(Failed::from)
        }
    });
    let _ = server::Builder::new().serve_connection(TokioIo::new(stream), service).await;
    driver.abort();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    use super::*;
    use crate::upstream::{self, Behavior, Observed};

    /// Two requests on one client connection reach the in-process upstream through the bare proxy,
    /// each with the 10 constant headers.
    #[tokio::test]
    async fn forwards_with_the_constant_headers_over_one_connection() {
        let stop = CancellationToken::new();
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let seen = Arc::new(Observed::default());
        let upstream = tokio::spawn(upstream::serve(up, Arc::new(Behavior::fast()), seen.clone(), stop.clone()));
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let proxy = tokio::spawn(serve(front, up_addr, stop.clone()));

        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = client::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await.unwrap();
        let driver = tokio::spawn(conn);
        let expected: String = HEADERS
            .iter()
            .map(|(k, v)| format!("{}={} ", &k.as_str()["x-flag-".len()..], v.to_str().unwrap()))
            .collect();
        for _ in 0..2 {
            sender.ready().await.unwrap();
            let req = Request::get("/headers").header("host", "localhost").body(Empty::new()).unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(String::from_utf8_lossy(&body), expected);
        }
        assert_eq!(seen.requests.load(Ordering::Relaxed), 2);
        driver.abort();
        stop.cancel();
        proxy.await.unwrap();
        upstream.await.unwrap();
    }
}
