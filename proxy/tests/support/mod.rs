//! Test scenario builders: a real upstream server on 127.0.0.1:0 that reports what it received, and
//! a sidecar started in-process on real sockets.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_proxy::{Config, Proxy};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A real HTTP/1.1 upstream:
/// - any path: 200 with JSON `{"method", "path", "headers": {name: [values]}, "body_bytes"}`
///   (the request body is drained and counted);
/// - `/slow?ms=N`: the same after N ms, announcing the request on `arrivals` first;
/// - `/bytes?n=N`: streams N bytes in 64 KiB chunks;
/// - `/status?code=N`: answers with that status;
/// - `Upgrade: echo` requests: 101, then echoes bytes on the upgraded connection.
pub struct Upstream {
    pub addr: SocketAddr,
    pub arrivals: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, arrivals) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, tx.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, arrivals, stop }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn answer(
    mut req: Request<Incoming>,
    arrivals: mpsc::UnboundedSender<String>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(full(""));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut().insert("upgrade", "echo".parse().unwrap());
        return Ok(resp);
    }
    if path == "/bytes" {
        let n = query(&req, "n").unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = (n / chunk.len() as u64) as usize;
        let rest = (n % chunk.len() as u64) as usize;
        let stream = futures_stream(chunk, chunks, rest);
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    if path == "/status" {
        let mut resp = Response::new(full("status"));
        *resp.status_mut() = StatusCode::from_u16(query(&req, "code").unwrap_or(200) as u16).unwrap();
        return Ok(resp);
    }
    if path == "/slow" {
        let _ = arrivals.send(path.clone());
        tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers.entry(name.as_str()).or_insert_with(|| json!([]));
        entry.as_array_mut().unwrap().push(json!(String::from_utf8_lossy(value.as_bytes())));
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let mut body = req.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            body_bytes += data.len() as u64;
        }
    }
    let report =
        json!({"method": method, "path": path, "version": version, "headers": headers, "body_bytes": body_bytes});
    Ok(Response::new(full(report.to_string())))
}

fn futures_stream(
    chunk: Bytes,
    chunks: usize,
    rest: usize,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, hyper::Error>> + Send + Sync + 'static {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
    tokio::spawn(async move {
        for _ in 0..chunks {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
        if rest > 0 {
            let _ = tx.send(Ok(Frame::data(chunk.slice(..rest)))).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A sidecar running in-process on real sockets.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stop: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl Sidecar {
    pub fn flags_path(&self) -> PathBuf {
        self.dir.path().join("flags.yaml")
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A sidecar configured in a fresh directory: `upstream`, `flags` (YAML) and extra TOML lines.
fn configured(upstream: SocketAddr, flags: &str, extra: &str) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), flags).unwrap();
    let config = format!("upstream = \"http://{upstream}\"\nflags = \"flags.yaml\"\n{extra}\n");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &config).unwrap();
    (dir, Proxy::new(Config::load(&path).unwrap()).unwrap())
}

/// Starts a sidecar in front of `upstream` with `flags` (YAML) and extra TOML config lines.
pub async fn sidecar(upstream: SocketAddr, flags: &str, extra: &str) -> Sidecar {
    let (dir, proxy) = configured(upstream, flags, extra);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let stop = CancellationToken::new();
    let done = tokio::spawn(proxy.run(listener, admin, stop.clone()));
    Sidecar { addr, admin: admin_addr, dir, stop, done }
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// GET `url` with `headers`; returns status and body text.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The headers the upstream saw for a GET through the sidecar.
pub async fn seen(url: &str, headers: &[(&str, &str)]) -> Value {
    let (status, body) = get(url, headers).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["headers"].clone()
}

/// The one value of header `name` in an upstream report, if present.
pub fn header(seen: &Value, name: &str) -> Option<String> {
    seen.get(name).map(|v| {
        let values = v.as_array().unwrap();
        assert_eq!(values.len(), 1, "{name} sent more than once: {values:?}");
        values[0].as_str().unwrap().to_owned()
    })
}

/// Value of the Prometheus sample `name` (exact, with labels) on the admin endpoint.
pub async fn metric(admin: SocketAddr, sample: &str) -> Option<f64> {
    let (_, text) = get(&format!("http://{admin}/metrics"), &[]).await;
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` every 20 ms until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `text` to `path` atomically (write then rename), as editors and config tools do.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A sidecar that also answers flag queries: flagd gRPC + Connect on `grpc` (and on the unix
/// socket `socket`), OFREP on `ofrep`, all on ephemeral ports.
pub struct QuerySidecar {
    pub sc: Sidecar,
    pub grpc: SocketAddr,
    pub ofrep: SocketAddr,
    pub socket: PathBuf,
}

/// Starts a sidecar with query listeners; `extra` may hold a `[queries]` table (addresses in it
/// are ignored: the listeners are bound here).
pub async fn sidecar_with_queries(upstream: SocketAddr, flags: &str, extra: &str) -> QuerySidecar {
    let (dir, proxy) = configured(upstream, flags, extra);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ofrep = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = dir.path().join("flagd.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (grpc_addr, ofrep_addr) = (grpc.local_addr().unwrap(), ofrep.local_addr().unwrap());
    let queries = rampart_proxy::QueryListeners { grpc: Some(grpc), ofrep: Some(ofrep), unix: Some(unix) };
    let stop = CancellationToken::new();
    let done = tokio::spawn(proxy.run_with_queries(listener, admin, queries, stop.clone()));
    let sc = Sidecar { addr, admin: admin_addr, dir, stop, done };
    QuerySidecar { sc, grpc: grpc_addr, ofrep: ofrep_addr, socket }
}

/// POSTs JSON `body` to `url` with `headers`; returns status, response headers and parsed body
/// (`null` when empty).
pub async fn post_json(url: &str, body: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(full(body.to_owned())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (parts.status, parts.headers, json)
}

/// As [`upstream`], listening on `addr` (e.g. a port that was dead until now, or `127.0.0.1:0`),
/// and naming itself in an `x-upstream: <address>` header on every response.
pub async fn upstream_at(addr: SocketAddr) -> Upstream {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = http::HeaderValue::from_str(&addr.to_string()).unwrap();
    let (tx, arrivals) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = token.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            let (tx, name) = (tx.clone(), name.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (tx, name) = (tx.clone(), name.clone());
                    async move {
                        let mut resp = answer(req, tx).await?;
                        resp.headers_mut().insert("x-upstream", name);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, arrivals, stop }
}

/// A named upstream ([`upstream_at`]) on a fresh port.
pub async fn named_upstream() -> Upstream {
    upstream_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// A loopback address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Sends `req`; returns status, the answering upstream's `x-upstream` (when a named upstream
/// answered) and the body text.
pub async fn send(req: Request<Body>) -> (StatusCode, Option<String>, String) {
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let from = resp.headers().get("x-upstream").map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, from, String::from_utf8_lossy(&body).into_owned())
}

/// GET `url` with `headers`: status and the answering upstream's `x-upstream`.
pub async fn get_from(url: &str, headers: &[(&str, &str)]) -> (StatusCode, Option<String>) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, from, _) = send(req.body(empty()).unwrap()).await;
    (status, from)
}

/// A request body of `text`.
pub fn body(text: &'static str) -> Body {
    full(text)
}
