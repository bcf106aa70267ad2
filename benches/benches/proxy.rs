//! Criterion benches of the sidecar's request path, in process on real sockets: a keep-alive hyper
//! client → the real `rampart_proxy::Proxy` → a minimal hyper upstream, per flag set, against a
//! `direct` client → upstream baseline; and `inject_flags` alone.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_benches::sidecar::{Fixture, ProxyFlags, REQUEST_HEADERS, request};
use rampart_proxy::inject_flags;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Headers the upstream accepts: the request's own plus one per flag of the largest set.
const UPSTREAM_MAX_HEADERS: usize = 256;

/// The upstream's answer to any path but `/count`.
const BODY: &[u8] = b"ok\n";

/// One thread runs client, proxy and upstream: the time per request is then the CPU cost of the
/// whole path plus loopback syscalls, without cross-thread wake-up noise, and the difference to
/// `direct` is the proxy's share.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// A minimal HTTP/1.1 upstream on 127.0.0.1:0: `/count` answers how many `x-flag-` headers it
/// received (to check the fixture), any other path a small 200.
async fn upstream(stop: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            stream.set_nodelay(true).expect("nodelay");
            tokio::spawn(async move {
                // hyper's default is 100 headers (431 beyond): 100 flag headers need more.
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_headers(UPSTREAM_MAX_HEADERS)
                    .serve_connection(TokioIo::new(stream), service_fn(answer));
                // A client that goes away mid-request is no bench failure.
                conn.await.ok();
            });
        }
    });
    addr
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/count" {
        let n = req.headers().keys().filter(|k| k.as_str().starts_with("x-flag-")).count();
        return Ok(Response::new(Full::new(Bytes::from(n.to_string()))));
    }
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One round trip with the user headers; returns the body length so nothing is optimised away.
async fn round_trip(client: &HttpClient, uri: &Uri) -> usize {
    let mut req = Request::get(uri.clone());
    for (name, value) in &REQUEST_HEADERS[3..] {
        req = req.header(*name, *value);
    }
    let resp = client.request(req.body(Empty::new()).expect("request")).await.expect("round trip");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.expect("body").to_bytes().len()
}

/// How many flag headers the upstream receives through `addr`.
async fn flags_seen(client: &HttpClient, addr: SocketAddr) -> usize {
    let uri: Uri = format!("http://{addr}/count").parse().expect("uri");
    let mut req = Request::get(uri);
    for (name, value) in &REQUEST_HEADERS[3..] {
        req = req.header(*name, *value);
    }
    let resp = client.request(req.body(Empty::new()).expect("request")).await.expect("count");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    match text.parse() {
        Ok(n) if status == StatusCode::OK => n,
        _ => panic!("{addr}/count answered {status}: {text}"),
    }
}

/// `request/direct` and `request/<kind>/<flags>`: the time of one keep-alive round trip.
fn request_path(c: &mut Criterion) {
    let rt = runtime();
    let stop = CancellationToken::new();
    let upstream = rt.block_on(upstream(stop.clone()));
    let client = client();
    let mut group = c.benchmark_group("request");

    let direct: Uri = format!("http://{upstream}/").parse().expect("uri");
    group
        .bench_function("direct", |b| b.to_async(&rt).iter(|| async { black_box(round_trip(&client, &direct).await) }));

    for flags in ProxyFlags::ALL {
        let fixture = Fixture::new(flags, upstream);
        let proxy = fixture.proxy();
        let shutdown = CancellationToken::new();
        let (addr, done) = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
            let addr = listener.local_addr().expect("proxy address");
            (addr, tokio::spawn(proxy.run(listener, admin, shutdown.clone())))
        });
        let seen = rt.block_on(flags_seen(&client, addr));
        assert_eq!(seen, flags.len(), "{flags:?}: the upstream must see one header per flag");
        let uri: Uri = format!("http://{addr}/").parse().expect("uri");
        group.bench_function(BenchmarkId::new(flags.kind(), flags.len()), |b| {
            b.to_async(&rt).iter(|| async { black_box(round_trip(&client, &uri).await) });
        });
        // Shut the proxy down (it closes the idle keep-alive connection) before the next one.
        shutdown.cancel();
        rt.block_on(done).expect("proxy task");
    }
    group.finish();
    stop.cancel();
}

/// `inject_flags/<kind>/<flags>`: strip, evaluate and insert for one request, the request built
/// (as hyper would hand it over) outside the timing.
fn inject(c: &mut Criterion) {
    let mut group = c.benchmark_group("inject_flags");
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    for flags in [ProxyFlags::Untargeted(10), ProxyFlags::Untargeted(100), ProxyFlags::Targeting(10)] {
        let fixture = Fixture::new(flags, nowhere);
        let proxy = fixture.proxy();
        let snapshot = proxy.snapshot();
        let config = proxy.config();
        group.bench_function(BenchmarkId::new(flags.kind(), flags.len()), |b| {
            b.iter_batched_ref(
                || request(0, false),
                |req| inject_flags(&snapshot, &config.context, &config.header_prefix, req),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, request_path, inject);
criterion_main!(benches);
