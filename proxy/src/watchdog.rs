//! Per-connection timeouts by state. The connection's I/O is wrapped ([`Watched`]) to note when
//! bytes last moved; requests and their response bodies are counted ([`Watch::request`],
//! [`InFlight`]). [`Watch::expired`] resolves when the connection has been quiet for longer than
//! its state allows:
//! - nothing received yet: `first_byte_timeout`;
//! - no request in flight (idle keep-alive, an idle HTTP/2 connection): `idle_timeout` since the
//!   last byte read;
//! - a response being sent: `body_idle_timeout` since the last byte moved either way;
//! - waiting for the upstream's response head: no limit here (`upstream_timeout` bounds it).
//!
//! Header reads (hyper's `header_read_timeout`) and HTTP/2 pings are set on the connection itself.
//!
//! The timeouts, and the drain on shutdown, are watched by a task of the connection's own
//! ([`Signal::watch`]), which tells the connection's task through a [`Signal`] when to drain or
//! close. The connection's task checks that signal (one atomic load and one waker registration)
//! each time it runs, instead of polling a timer and a shutdown channel beside the connection on
//! every wake-up: 1.9% fewer instructions per proxied request
//! (`benches/compare/instructions-2026-12-01-966a581.md`, section 5).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Connections;

/// What a connection's watchdog knows of it.
#[derive(Debug)]
pub(crate) struct Watch {
    start: Instant,
    /// `start` on the coarse clock, which stamps reads and writes (no TSC read per stamp).
    coarse_start: coarsetime::Instant,
    /// Milliseconds after `start` when a byte was last read; `u64::MAX`: never.
    last_read: AtomicU64,
    /// Milliseconds after `start` when a byte was last written.
    last_write: AtomicU64,
    /// Requests whose response head is not yet back.
    awaiting: AtomicU32,
    /// Responses whose body is still being sent.
    sending: AtomicU32,
}

const NEVER: u64 = u64::MAX;

impl Watch {
    pub(crate) fn new() -> Arc<Watch> {
        Arc::new(Watch {
            start: Instant::now(),
            coarse_start: crate::deadline::coarse_now(),
            last_read: AtomicU64::new(NEVER),
            last_write: AtomicU64::new(NEVER),
            awaiting: AtomicU32::new(0),
            sending: AtomicU32::new(0),
        })
    }

    /// Milliseconds since `start`, to within the coarse clock's tick (a few milliseconds, far
    /// below any of these timeouts).
    fn now_ms(&self) -> u64 {
        crate::deadline::coarse_now().duration_since(self.coarse_start).as_millis().min(NEVER - 1)
    }

    /// A request arrived: until [`Awaiting::responded`] (or the request is abandoned), the
    /// connection waits on the upstream.
    pub(crate) fn request(self: &Arc<Self>) -> Awaiting {
        self.awaiting.fetch_add(1, Ordering::Relaxed);
        Awaiting(self.clone())
    }

    /// When the connection's current state times out, if it does (`None`: waiting on the upstream).
    fn deadline(&self, limits: &Connections) -> Option<Instant> {
        let at = |ms: u64, limit: Duration| self.start + Duration::from_millis(ms) + limit;
        let (read, write) = (self.last_read.load(Ordering::Relaxed), self.last_write.load(Ordering::Relaxed));
        if self.awaiting.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.sending.load(Ordering::Relaxed) > 0 {
            let last = [read, write].into_iter().filter(|&t| t != NEVER).max().unwrap_or(0);
            return Some(at(last, limits.body_idle_timeout));
        }
        Some(match read {
            NEVER => at(0, limits.first_byte_timeout),
            read => at(read, limits.idle_timeout),
        })
    }

    /// Resolves when the connection has been quiet past what its state allows.
    pub(crate) async fn expired(&self, limits: &Connections) {
        loop {
            match self.deadline(limits) {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                // Re-checked now and then: the state changes without waking this.
                None => tokio::time::sleep(limits.idle_timeout.min(Duration::from_secs(1))).await,
            }
        }
    }
}

/// What a connection's watcher tells the connection's task.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    state: AtomicU8,
    waker: AtomicWaker,
}

/// What the connection's task must do now ([`Signal::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Serve on.
    Serve,
    /// The sidecar is shutting down: finish the requests in flight, take no more.
    Drain,
    /// Quiet past what its state allows: close now.
    Close,
}

const SERVE: u8 = 0;
const DRAIN: u8 = 1;
const CLOSE: u8 = 2;

impl Signal {
    /// The current order; `cx`'s task is woken when it changes.
    pub(crate) fn check(&self, cx: &Context<'_>) -> Order {
        self.waker.register(cx.waker());
        match self.state.load(Ordering::Acquire) {
            SERVE => Order::Serve,
            DRAIN => Order::Drain,
            _ => Order::Close,
        }
    }

    fn order(&self, state: u8) {
        self.state.fetch_max(state, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Watches a connection: orders a drain once `shutdown` is cancelled, and a close once `watch`
    /// says it has been quiet too long (drained or not). Runs until it ordered the close; the
    /// connection's task aborts it when the connection ends first.
    pub(crate) async fn watch(self: Arc<Self>, watch: Arc<Watch>, limits: Connections, shutdown: CancellationToken) {
        let expired = watch.expired(&limits);
        tokio::pin!(expired);
        tokio::select! {
            () = shutdown.cancelled() => self.order(DRAIN),
            () = &mut expired => return self.order(CLOSE),
        }
        expired.await;
        self.order(CLOSE);
    }
}

/// A request waiting for its response head; dropping it (an abandoned request) ends that state.
#[derive(Debug)]
pub(crate) struct Awaiting(Arc<Watch>);

impl Awaiting {
    /// The response head is ready; its body is sent until the returned guard drops.
    pub(crate) fn responded(self) -> InFlight {
        self.0.sending.fetch_add(1, Ordering::Relaxed);
        InFlight(self.0.clone())
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0.awaiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response whose body is being sent; dropping it (the body finished or was abandoned) ends
/// that state.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Watch>);

/// A response body that holds its [`InFlight`] until it is done.
#[derive(Debug)]
pub(crate) struct Guarded<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Guarded<B> {
    pub(crate) fn new(body: B, in_flight: InFlight) -> Guarded<B> {
        Guarded { body, _in_flight: in_flight }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's I/O, noting when bytes move.
#[derive(Debug)]
pub(crate) struct Watched<I> {
    io: I,
    watch: Arc<Watch>,
}

impl<I> Watched<I> {
    pub(crate) fn new(io: I, watch: Arc<Watch>) -> Watched<I> {
        Watched { io, watch }
    }
}

impl<I: Read + Unpin> Read for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        // Any ready read counts as progress (an EOF or an error ends the connection anyway).
        let ready = Pin::new(&mut self.io).poll_read(cx, buf);
        if ready.is_ready() {
            let now = self.watch.now_ms();
            self.watch.last_read.store(now, Ordering::Relaxed);
        }
        ready
    }
}

impl<I: Write + Unpin> Write for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let ready = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = ready
            && n > 0
        {
            let now = self.watch.now_ms();
            self.watch.last_write.store(now, Ordering::Relaxed);
        }
        ready
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let ready = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = ready
            && n > 0
        {
            let now = self.watch.now_ms();
            self.watch.last_write.store(now, Ordering::Relaxed);
        }
        ready
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
