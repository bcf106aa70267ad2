//! The request path: one snapshot load; the request head checked and cleaned (one Host, RFC 9112
//! §3.2; an absolute-form target or h2 `:authority` as the Host; headers with `_` in their name
//! dropped; hop-by-hop headers removed — never Host — and `Upgrade: h2c` refused) before anything is
//! added; client-sent flag headers stripped and every flag in scope evaluated and injected; then
//! forwarded to the cluster the first matching route picks, over pooled keep-alive connections
//! with both bodies streamed, upstream failures answered with 502/504 and a short reason.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::cluster::Failure;
use crate::config::{Attribute, Headers};
use crate::deadline;
use crate::inject::{Assigned, Tracked, inject_flags};
use crate::metrics::Metrics;
use crate::pool::UpstreamBody;
use crate::route::Router;
use crate::snapshot::{Current, Injected, Snapshot};
use rampart_stats::{Outcome, Registry};

/// What the proxy answers with: the upstream's streamed body, or a short error text.
pub(crate) type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Informational (1xx) responses an upstream may send before its final one.
const MAX_INFORMATIONAL: u32 = 16;

/// The informational responses of one exchange, and the request's waker to call when there were
/// too many. An `AtomicWaker`, not a `Notify`: registering is an atomic swap (no clone while the
/// waker stays the same), where a `Notify` waiter takes a lock to enter and to leave its list on
/// every request.
#[derive(Debug, Default)]
struct Informational {
    count: AtomicU32,
    flood: AtomicWaker,
}

impl Informational {
    /// Counts one informational response; the one that makes too many wakes the request.
    fn seen(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == MAX_INFORMATIONAL {
            self.flood.wake();
        }
    }

    /// Ready once the upstream has sent too many informational responses.
    fn flooded(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let over = || self.count.load(Ordering::Relaxed) >= MAX_INFORMATIONAL;
            if over() {
                return Poll::Ready(());
            }
            self.flood.register(cx.waker());
            // Counted between the load and the registration: not missed.
            if over() { Poll::Ready(()) } else { Poll::Pending }
        })
    }
}

/// Everything the request path shares across requests.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) current: Current,
    pub(crate) router: Router,
    pub(crate) context: Vec<Attribute>,
    pub(crate) prefix: String,
    pub(crate) metrics: Metrics,
    pub(crate) stats: Arc<Registry>,
    /// Owns the tunnels of upgraded (WebSocket) connections.
    pub(crate) tunnels: TaskTracker,
    pub(crate) headers: Headers,
}

impl Forwarder {
    /// Serves one request from a client at `peer` (its `x-forwarded-for` value precomputed).
    pub(crate) async fn handle(
        &self,
        peer: &PeerInfo,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if let Err(reason) = self.clean_head(&mut req) {
            return Ok(self.error(StatusCode::BAD_REQUEST, reason));
        }
        let mut upgrade = prepare_upgrade(&mut req);
        if upgrade.as_ref().is_some_and(is_h2c) {
            // An h2c upgrade would hand the client an unfiltered HTTP/2 connection to the upstream:
            // not upgraded (RFC 9110 §7.8 lets a server ignore it); the request is served as is.
            self.metrics.h2c_upgrades_refused.increment(1);
            upgrade = None;
        }
        remove_hop_by_hop(req.headers_mut());
        let snapshot = self.current.load_full();
        let tracked = inject_flags(&snapshot, &self.context, &self.prefix, &mut req);
        let route = self.router.select(&snapshot.routes, &tracked, &req);
        if let Some(protocol) = &upgrade {
            req.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, protocol.clone());
        }
        set_forwarded_for(req.headers_mut(), &peer.ip);
        req.headers_mut().insert(HeaderName::from_static("x-forwarded-proto"), peer.proto.clone());
        if let Err(status) = self.set_upstream_uri(&mut req) {
            return Ok(self.error(status, "bad request target\n"));
        }
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        // An upstream streaming informational (1xx) responses without end would keep this request
        // parsing them until `upstream_timeout`: past a few, it is a failed exchange.
        let informational = Arc::new(Informational::default());
        let seen = informational.clone();
        hyper::ext::on_informational(&mut req, move |_| seen.seen());
        let started = Instant::now();
        let result = tokio::select! {
            sent = deadline::timeout(route.timeout, route.cluster.send(req, route.retries)) => sent,
            () = informational.flooded() => {
                self.metrics.upstream_failures.increment(1);
                self.record(&snapshot, &tracked, Outcome::Error, None, Instant::now());
                return Ok(self.error(StatusCode::BAD_GATEWAY, "upstream sent too many informational responses\n"));
            }
        };
        // One clock read dates the answer for the latency and for every ramp's table of units.
        let answered = Instant::now();
        let elapsed = answered.saturating_duration_since(started);
        let (resp, lease) = match result {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) if e.client_body_failed() => {
                // The client's own fault (a malformed or cut-off request body): a 400, and no
                // outcome recorded — it must never count against the variant it was assigned.
                tracing::debug!(error = %e, "client request body failed while forwarding");
                return Ok(self.error(StatusCode::BAD_REQUEST, "bad request body\n"));
            }
            Ok(Err(e)) => {
                self.metrics.upstream_failures.increment(1);
                self.record(&snapshot, &tracked, Outcome::Error, None, answered);
                let connect = matches!(e, Failure::Connect(_));
                tracing::debug!(error = %e, cluster = route.cluster.name(), "upstream request failed");
                let reason = if connect { "upstream unreachable\n" } else { "upstream connection failed\n" };
                return Ok(self.error(StatusCode::BAD_GATEWAY, reason));
            }
            Err(_) => {
                self.metrics.upstream_timeouts.increment(1);
                self.record(&snapshot, &tracked, Outcome::Timeout, None, answered);
                return Ok(self.error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"));
            }
        };
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.metrics.upstream_latency.record(micros);
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        // An upgraded connection is never reused.
        let (mut parts, body) = resp.into_parts();
        let mut body = UpstreamBody::new(body, (!upgraded).then_some(lease));
        if !upgraded && body.peek_failed() {
            // The body broke at once (an invalid chunk right after the head): nothing was sent to
            // the client yet, so it gets a 502 rather than a connection closed without a word.
            self.metrics.upstream_failures.increment(1);
            self.record(&snapshot, &tracked, Outcome::Error, None, answered);
            return Ok(self.error(StatusCode::BAD_GATEWAY, "upstream sent a malformed body\n"));
        }
        let outcome = if parts.status.is_server_error() { Outcome::Error } else { Outcome::Ok };
        self.record(&snapshot, &tracked, outcome, Some(micros), answered);
        drop(snapshot);
        let mut resp = Response::from_parts(parts, ());
        if upgraded && let Some(client_side) = client_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            self.tunnels.spawn(tunnel(client_side, upstream_side));
        } else {
            remove_hop_by_hop(resp.headers_mut());
        }
        parts = resp.into_parts().0;
        self.metrics.response(parts.status);
        Ok(Response::from_parts(parts, Either::Left(body)))
    }

    /// Records the request's outcome for every tracked flag it was assigned, on the snapshot it
    /// was evaluated with; randomised assignments (a unit from the ramp's split) also as such,
    /// dated `at` (when it was answered, or failed).
    fn record(&self, snapshot: &Snapshot, tracked: &Tracked, outcome: Outcome, micros: Option<u64>, at: Instant) {
        // Each ramped flag's unit lookup is a likely cache miss in a large table: issued
        // together first, they overlap (`SeriesStats::warm`).
        for a in tracked {
            if let (Some((_, Some(series))), Some(unit)) = (series_of(snapshot, a), a.unit) {
                series.warm(unit.get());
            }
        }
        let now_s = rampart_stats::seconds_at(at);
        for a in tracked {
            // None: returned only because a route matches on it.
            let Some((inj, series)) = series_of(snapshot, a) else { continue };
            match (series, a.unit) {
                (Some(series), Some(unit)) => {
                    series.record_split(outcome, micros, unit.get(), inj.slow_us, now_s);
                }
                (Some(series), None) => series.record(outcome, micros),
                _ => {
                    self.metrics.stats_overflow.increment(1);
                    self.stats.overflow().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Sets the request's URI to the origin form an HTTP/1.1 upstream expects (path and query);
    /// the cluster adds `Host` when the client sent none.
    /// RFC 9112 §3.2: exactly one Host in HTTP/1.1, replaced by the target's authority when the
    /// target is in absolute form (and for h2, `:authority` is the Host); then the Host policy and
    /// the underscore rule. Allocates only when a header is dropped.
    fn clean_head(&self, req: &mut Request<Incoming>) -> Result<(), &'static str> {
        let hosts = req.headers().get_all(header::HOST).iter().count();
        if hosts > 1 {
            self.metrics.requests_refused.increment(1);
            return Err("more than one Host header\n");
        }
        if let Some(authority) = req.uri().authority() {
            let host = HeaderValue::from_str(authority.as_str()).map_err(|_| "bad request target\n")?;
            req.headers_mut().insert(header::HOST, host);
        } else if hosts == 0 && req.version() == http::Version::HTTP_11 {
            self.metrics.requests_refused.increment(1);
            return Err("an HTTP/1.1 request needs a Host header\n");
        }
        if !self.headers.preserve_host {
            // The cluster sets the endpoint's authority.
            req.headers_mut().remove(header::HOST);
        }
        if !self.headers.allow_underscores && req.headers().keys().any(|k| k.as_str().contains('_')) {
            let names: Vec<HeaderName> = req.headers().keys().filter(|k| k.as_str().contains('_')).cloned().collect();
            for name in names {
                req.headers_mut().remove(&name);
                self.metrics.underscore_headers_dropped.increment(1);
            }
        }
        Ok(())
    }

    fn set_upstream_uri(&self, req: &mut Request<Incoming>) -> Result<(), StatusCode> {
        let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        // The upstream speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = http::Version::HTTP_11;
        Ok(())
    }

    fn error(&self, status: StatusCode, reason: &'static str) -> Response<ProxyBody> {
        self.metrics.response(status);
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(reason.as_bytes()))));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp
    }
}

/// One client connection's handle on the request path: a request clones this one `Arc` (not the
/// forwarder's and the peer's apart).
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) peer: PeerInfo,
}

impl Session {
    /// Serves one request of this connection.
    pub(crate) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        self.forwarder.handle(&self.peer, req).await
    }
}

/// Per-connection facts, computed once when the connection is accepted.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    pub(crate) ip: HeaderValue,
    /// `x-forwarded-proto`: `https` on a TLS listener.
    pub(crate) proto: HeaderValue,
}

impl PeerInfo {
    pub(crate) fn new(addr: SocketAddr, tls: bool) -> PeerInfo {
        let ip = HeaderValue::try_from(addr.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        PeerInfo { ip, proto }
    }
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (`Connection: upgrade`), if any.
fn prepare_upgrade(req: &mut Request<Incoming>) -> Option<HeaderValue> {
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants { req.headers_mut().remove(header::UPGRADE) } else { None }
}

/// Whether an `Upgrade` value asks for h2c.
fn is_h2c(protocols: &HeaderValue) -> bool {
    protocols.to_str().unwrap_or("").split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))
}

/// Whether `name` is a hop-by-hop header (or `Upgrade`, forwarded only on an upgrade request).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// An assignment's injected flag when it is tracked, and its variant's stats series (`None`
/// when the registry had no room for it).
fn series_of<'a>(
    snapshot: &'a Snapshot,
    a: &Assigned,
) -> Option<(&'a Injected, Option<&'a rampart_stats::SeriesStats>)> {
    let inj = snapshot.injected.get(a.flag as usize).filter(|inj| inj.tracked)?;
    Some((inj, inj.variants.get(a.variant as usize).and_then(|out| out.stats.as_deref())))
}

/// Removes hop-by-hop headers, including those the `Connection` header names — but never Host (a
/// request's headers are cleaned before the proxy adds its own). Names are looked up
/// as `&str`, so this allocates nothing. Most messages carry none, so one pass over the names
/// (integer comparisons for the standard ones) comes first, instead of nine hashed removals.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let lists = headers.get_all(header::CONNECTION).iter().count();
    for i in 0..lists {
        // Cloning a received header value shares its bytes.
        let Some(list) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() else { break };
        for token in list.to_str().unwrap_or("").split(',').map(str::trim) {
            if !token.is_empty() && !token.eq_ignore_ascii_case("connection") && !token.eq_ignore_ascii_case("host") {
                headers.remove(token);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Appends the client address to `x-forwarded-for`.
fn set_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    match headers.get(&XFF).map(|prior| [prior.as_bytes(), b", ", ip.as_bytes()].concat()) {
        Some(joined) => {
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(XFF, v);
            }
        }
        None => {
            headers.insert(XFF, ip.clone());
        }
    }
}

/// Copies bytes both ways between an upgraded client and upstream connection until either closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::strip_prefixed;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn prefixed_headers_are_stripped_and_xff_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-flag-a", HeaderValue::from_static("on"));
        h.append("x-flag-a", HeaderValue::from_static("off"));
        h.insert("x-flag-b", HeaderValue::from_static("on"));
        h.insert("x-flagship", HeaderValue::from_static("kept"));
        strip_prefixed(&mut h, "x-flag-");
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-flagship"]);
        let ip = HeaderValue::from_static("10.0.0.2");
        set_forwarded_for(&mut h, &ip);
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        set_forwarded_for(&mut h, &ip);
        assert_eq!(h["x-forwarded-for"], "10.0.0.2, 10.0.0.2");
    }

    /// The type of the future `f` returns, without calling it.
    fn future_size<A, B, Fut, F: Fn(A, B) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_request_future_stays_small() {
        // hyper moves each request's future into its connection's slot, and every layer of the
        // path moves the one below it into place: a future of a few KiB is a few KiB of memmove per
        // request. Connecting (TCP, TLS, handshake) is boxed for that reason; unboxed it made this
        // 5 KiB.
        let handle = |session: Arc<Session>, req: Request<Incoming>| session.handle(req);
        let size = future_size(&handle);
        assert!(size <= 3 * 1024, "a request's future is {size} bytes");
    }
}
