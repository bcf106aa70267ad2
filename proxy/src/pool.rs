//! The keep-alive HTTP/1.1 connections to one upstream endpoint, on hyper's low-level client:
//! connect (with a timeout), handshake with upgrades enabled (WebSocket passthrough), reuse idle
//! connections newest first, resend a request that a stale keep-alive connection never wrote,
//! and cap and expire idle connections. A connection returns to the pool when the response body
//! it carried has ended, so no task is spawned per request.
//!
//! The idle list is a `std::sync::Mutex<Vec<_>>` per endpoint: it is held for a push or a pop,
//! never across an `.await`, and uncontended on the default single worker thread. Unlike hyper-util's
//! legacy client there is no pool key to hash and no waiter channel: a request that finds no idle
//! connection opens one.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::task::TaskTracker;

use crate::config::UpstreamTls;
use crate::deadline::coarse_now;

/// Where an endpoint's connections go.
#[derive(Debug)]
enum Target {
    Addr(SocketAddr),
    /// Resolved at each connect (connections are reused, so this is rare).
    Name(Box<str>, u16),
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Incoming>,
    /// On the coarse clock: idle timeouts are seconds, and a stamp per request costs no TSC read.
    since: coarsetime::Instant,
}

/// How long to wait and how many idle connections to keep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
}

/// One endpoint's connections.
#[derive(Debug)]
pub(crate) struct Pool {
    target: Target,
    /// `Host` for requests that carry none (HTTP/2 clients): the endpoint's authority.
    pub(crate) host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    settings: Settings,
    /// `settings.idle_timeout` on the coarse clock the idle stamps use.
    idle_timeout: coarsetime::Duration,
    /// Requests picked for this endpoint and not finished (response body ended or dropped).
    in_flight: AtomicUsize,
    /// Owns the connection tasks; each ends when its connection closes or its sender is dropped.
    connections: TaskTracker,
    /// TLS to the endpoint, and the server name to send and verify.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// Why no connection could carry a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed")]
    Io(#[source] std::io::Error),
    #[error("HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
}

/// A failed send.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection: the request was not sent and is handed back (boxed: a rare path).
    Connect(Box<Request<Incoming>>, ConnectError),
    /// The connection failed after the request was (perhaps partly) written, or the response was bad.
    Request(hyper::Error),
}

impl Pool {
    pub(crate) fn new(authority: &Authority, settings: Settings, tls: Option<&UpstreamTls>) -> Pool {
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let target = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Name(host.into(), port),
        };
        Pool {
            target,
            host: HeaderValue::from_str(authority.as_str()).unwrap_or(HeaderValue::from_static("localhost")),
            idle: Mutex::new(Vec::new()),
            settings,
            idle_timeout: coarsetime::Duration::from(settings.idle_timeout),
            in_flight: AtomicUsize::new(0),
            connections: TaskTracker::new(),
            tls: tls.and_then(|t| {
                let name =
                    t.sni.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_owned());
                let name = ServerName::try_from(name).ok()?;
                Some((t.client.clone(), name))
            }),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The newest idle connection ready for a request. Closed and expired ones are dropped; one
    /// not ready yet (its last exchange still finishing) stays for later.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let now = coarse_now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            let expired = now.duration_since(entry.since) >= self.idle_timeout;
            if entry.sender.is_ready() && !expired {
                return Some(idle.remove(i).sender);
            }
            if expired || entry.sender.is_closed() {
                idle.remove(i);
            }
        }
        None
    }

    /// Returns a connection whose exchange has ended; the oldest idle one goes when full.
    fn checkin(&self, sender: SendRequest<Incoming>) {
        if sender.is_closed() || self.settings.max_idle == 0 {
            return;
        }
        let entry = Idle { sender, since: coarse_now() };
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= self.settings.max_idle {
            idle.remove(0);
        }
        idle.push(entry);
    }

    /// Drops idle connections that expired or closed.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = coarse_now();
        idle.retain(|e| !e.sender.is_closed() && now.duration_since(e.since) < self.idle_timeout);
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let connecting = async {
            match &self.target {
                Target::Addr(addr) => TcpStream::connect(*addr).await,
                Target::Name(host, port) => TcpStream::connect((&**host, *port)).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::Io)?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let Some((client, name)) = &self.tls else {
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(ConnectError::Handshake)?;
            self.connections.spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            return Ok(sender);
        };
        let connector = TlsConnector::from(client.clone());
        let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), stream))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::Tls)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(ConnectError::Handshake)?;
        self.connections.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream TLS connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// One request's hold on an endpoint: counted in flight from the pick until the response body
/// ends or is dropped; then its connection goes back to the pool if the exchange completed.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Arc<Pool>,
    sender: Option<SendRequest<Incoming>>,
}

impl Lease {
    pub(crate) fn new(pool: &Arc<Pool>) -> Lease {
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease { pool: pool.clone(), sender: None }
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one. A request a
    /// stale keep-alive connection handed back unwritten is sent again on the next one.
    pub(crate) async fn send(&mut self, mut req: Request<Incoming>) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut sender, fresh) = match self.pool.checkout() {
                Some(sender) => (sender, false),
                // Boxed: connecting is rare (connections are reused), and its futures (TCP, TLS,
                // handshake) would otherwise size every request's future, which is moved whole
                // when hyper stores it.
                None => match Box::pin(self.pool.connect()).await {
                    Ok(sender) => (sender, true),
                    Err(e) => return Err(SendError::Connect(Box::new(req), e)),
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.sender = Some(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        tracing::debug!(error = %e.error(), "stale keep-alive connection; sending again");
                        req = unsent;
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// The exchange ended: the connection may carry the next request.
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.checkin(sender);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream's response body, streamed as is; when it ends, its connection returns to the pool.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    /// `None` for an upgraded connection (never reused) or once released.
    lease: Option<Lease>,
    /// A frame read by [`UpstreamBody::peek_failed`], returned first.
    first: Option<Frame<Bytes>>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, lease: Option<Lease>) -> UpstreamBody {
        UpstreamBody { inner, lease, first: None }
    }

    /// Polls the body once, without waiting: whether it already failed (a frame it already has is
    /// kept and returned first).
    pub(crate) fn peek_failed(&mut self) -> bool {
        if self.inner.is_end_stream() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *self).poll_frame(&mut cx) {
            Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => {
                self.first = Some(frame);
                false
            }
            Poll::Ready(None) | Poll::Pending => false,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(mut lease) = this.lease.take() {
                    lease.release();
                }
            }
            // A broken exchange: the connection is not reused.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(len) = self.first.as_ref().and_then(Frame::data_ref).map(|d| d.len() as u64) else { return inner };
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + len);
        }
        hint.set_lower(inner.lower() + len);
        hint
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty or fully read body (the server stops polling at its known end) completed the
        // exchange; any other body dropped early leaves its connection mid-response.
        if let Some(mut lease) = self.lease.take()
            && self.inner.is_end_stream()
        {
            lease.release();
        }
    }
}
