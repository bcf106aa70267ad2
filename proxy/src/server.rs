//! The client-side listener: accepts HTTP/1.1 and HTTP/2 — cleartext (prior knowledge) or TLS
//! (ALPN) — caps concurrent connections (in all, and per client address when configured), times
//! out slow handshakes and header reads, closes connections left quiet past their state's timeout
//! (see `watchdog`), pings idle HTTP/2 clients, and drains connections on shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::config::Connections;
use crate::forward::{Forwarder, PeerInfo, Session};
use crate::tls::LiveServerConfig;
use crate::watchdog::{Guarded, Order, Signal, Watch, Watched};

/// Listener limits.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) connections: Connections,
}

/// Open connections per client address, when capped.
#[derive(Debug, Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    /// Takes a slot for `ip`, unless it holds `max` already.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { table: self.clone(), ip })
    }
}

#[derive(Debug)]
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What every worker's listener shares: the limits, and the connection caps, which hold for the
/// sidecar as a whole (not per worker).
#[derive(Debug)]
pub(crate) struct Gate {
    limits: Limits,
    permits: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
}

impl Gate {
    pub(crate) fn new(limits: Limits) -> Arc<Gate> {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        Arc::new(Gate { limits, permits, per_address: Arc::default() })
    }
}

/// Serves `listener` until `shutdown`, then stops accepting and gives open connections up to the
/// drain timeout to finish their in-flight requests. With `tls`, every connection is a TLS one
/// (the certificate as of its handshake; reloads apply to new connections). Connections are
/// served on the runtime this runs on.
pub(crate) async fn serve(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    gate: Arc<Gate>,
    tls: Option<LiveServerConfig>,
    shutdown: CancellationToken,
) {
    crate::deadline::use_on_this_thread();
    let timer = crate::deadline::WorkerTimer::for_this_thread();
    let limits = &gate.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(timer.clone())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(timer)
        .keep_alive_interval(Some(limits.connections.h2_ping_interval))
        .keep_alive_timeout(limits.connections.h2_ping_timeout)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let (permits, per_address) = (&gate.permits, &gate.per_address);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match limits.connections.max_per_address {
            0 => None,
            max => match per_address.enter(addr.ip(), max) {
                Some(slot) => Some(slot),
                None => {
                    forwarder.metrics.connections_refused.increment(1);
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let session = Arc::new(Session { forwarder: forwarder.clone(), peer: PeerInfo::new(addr, tls.is_some()) });
        let (builder, tls, shutdown) = (builder.clone(), tls.clone(), shutdown.clone());
        let gauge = forwarder.metrics.connections.clone();
        gauge.increment(1.0);
        let gate = gate.clone();
        connections.spawn(async move {
            let limits = &gate.limits;
            match tls {
                None => serve_io(&builder, TokioIo::new(stream), session, shutdown, &limits.connections).await,
                Some(live) => {
                    let acceptor = TlsAcceptor::from(live.load_full());
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_io(&builder, TokioIo::new(tls_stream), session, shutdown, &limits.connections).await;
                        }
                        Ok(Err(e)) => {
                            session.forwarder.metrics.tls_handshake_failures.increment(1);
                            tracing::debug!(error = %e, %addr, "TLS handshake failed");
                        }
                        Err(_) => {
                            session.forwarder.metrics.tls_handshake_failures.increment(1);
                            tracing::debug!(%addr, "TLS handshake timed out");
                        }
                    }
                }
            }
            gauge.decrement(1.0);
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    // Each open connection was told to drain by its watcher (`Signal::watch`), on the same token.
    tokio::select! {
        () = connections.wait() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(timeout = ?limits.drain_timeout, "drain deadline passed; closing open connections");
        }
    }
    forwarder.tunnels.close();
}

/// Serves HTTP/1.1 or HTTP/2 (by preface or ALPN) on one connection until it ends, is drained
/// (once `shutdown` is cancelled), or stays quiet past its state's timeout. A task of its own
/// watches for the last two ([`Signal::watch`]); this one only checks the signal when it runs.
async fn serve_io<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    session: Arc<Session>,
    shutdown: CancellationToken,
    limits: &Connections,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let watch = Watch::new();
    let io = Watched::new(io, watch.clone());
    let metrics = session.forwarder.metrics.clone();
    let requests = watch.clone();
    let service = service_fn(move |req| {
        let (session, awaiting) = (session.clone(), requests.request());
        async move {
            let resp = session.handle(req).await?;
            let in_flight = awaiting.responded();
            Ok::<_, std::convert::Infallible>(resp.map(|body| Guarded::new(body, in_flight)))
        }
    });
    let signal = Arc::new(Signal::default());
    // Aborted when this returns or is dropped (a connection cut at the drain deadline).
    let _watcher = AbortOnDropHandle::new(tokio::spawn(signal.clone().watch(watch, limits.clone(), shutdown)));
    let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(io, service).into_owned());
    let mut draining = false;
    let ended = std::future::poll_fn(|cx| {
        match signal.check(cx) {
            Order::Close => return std::task::Poll::Ready(None),
            Order::Drain if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            Order::Serve | Order::Drain => {}
        }
        conn.as_mut().poll(cx).map(Some)
    })
    .await;
    match ended {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            // hyper answered a request it could not parse itself (400, or 431 for a head too
            // large): count it with the responses.
            if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse) {
                metrics.responses[3].increment(1);
            }
            tracing::debug!(error = %e, "connection ended with an error");
        }
        None => {
            metrics.connections_timed_out.increment(1);
            tracing::debug!("connection closed: quiet past its timeout");
        }
    }
}
