//! `workers = N`: thread per core. The caller's runtime is worker 0; each further worker is an OS
//! thread running a current-thread tokio runtime of its own, with a listening socket of its own,
//! serving the connections it accepts to the end on that thread. Each worker keeps its own
//! upstream connections (`Endpoint::pool`), so a request, its client connection and its upstream
//! connection stay on one thread: no task is woken across threads on the request path.
//!
//! Listening: [`bind`] sets `SO_REUSEPORT` when there is more than one worker, and each further
//! worker binds its own socket to the same address, so the kernel spreads new connections over the
//! workers by their addresses and a busy worker is not handed more by winning a race to `accept`.
//! A listener bound without it (handed to [`crate::Proxy::run`] by an embedder) is shared instead:
//! each worker accepts from a duplicate of its descriptor.
//!
//! What the workers share is read-mostly or atomic: the flags snapshot, the routes and the passive
//! health of the endpoints, the connection caps, stats and metrics. Admin, flag queries, the
//! control stream and reloads run on worker 0's runtime.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::forward::Forwarder;
use crate::server::{self, Gate};
use crate::tls::LiveServerConfig;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker: 0 on the caller's runtime (and on any thread that is not a worker).
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Binds the client listener at `addr` (`SO_REUSEADDR`, as tokio's `bind`), with `SO_REUSEPORT`
/// when `workers` > 1 so that each worker can listen on a socket of its own. Call it on a runtime.
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<TcpListener> {
    let socket = listening_socket(addr, workers > 1)?;
    TcpListener::from_std(socket)
}

fn listening_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A further worker's listening socket: its own on the same address when `listener` has
/// `SO_REUSEPORT`, else a duplicate of `listener`'s descriptor (non-blocking like it).
fn socket_for(listener: &TcpListener) -> io::Result<std::net::TcpListener> {
    if SockRef::from(listener).reuse_port()? {
        return listening_socket(listener.local_addr()?, true);
    }
    Ok(std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?))
}

/// The extra workers' threads, serving until shutdown.
#[derive(Debug, Default)]
pub(crate) struct Workers(Vec<JoinHandle<()>>);

impl Workers {
    /// Starts workers `1..count` on `listener`'s socket. Returns the listener for worker 0. A
    /// worker that cannot start (out of descriptors or threads) is logged and left out.
    pub(crate) fn start(
        count: usize,
        listener: TcpListener,
        forwarder: &Arc<Forwarder>,
        gate: &Arc<Gate>,
        tls: Option<&LiveServerConfig>,
        shutdown: &CancellationToken,
    ) -> (TcpListener, Workers) {
        if count <= 1 {
            return (listener, Workers::default());
        }
        let mut threads = Vec::with_capacity(count - 1);
        for index in 1..count {
            let socket = match socket_for(&listener) {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::error!(error = %e, worker = index, "cannot open a worker's listener; serving with fewer workers");
                    break;
                }
            };
            let (forwarder, gate, tls, shutdown) = (forwarder.clone(), gate.clone(), tls.cloned(), shutdown.clone());
            let spawned = std::thread::Builder::new().name(format!("rampart-worker{index}")).spawn(move || {
                INDEX.with(|i| i.set(index));
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => return tracing::error!(error = %e, worker = index, "cannot start a worker's runtime"),
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => server::serve(listener, forwarder, gate, tls, shutdown).await,
                        Err(e) => tracing::error!(error = %e, worker = index, "cannot register the listener"),
                    }
                });
            });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    tracing::error!(error = %e, worker = index, "cannot start a worker thread; serving with fewer workers");
                    break;
                }
            }
        }
        (listener, Workers(threads))
    }

    /// Waits until every extra worker has drained and stopped.
    pub(crate) async fn join(self) {
        if self.0.is_empty() {
            return;
        }
        let joined = tokio::task::spawn_blocking(move || {
            for thread in self.0 {
                if thread.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        });
        if let Err(e) = joined.await {
            tracing::error!(error = %e, "cannot wait for the worker threads");
        }
    }
}
