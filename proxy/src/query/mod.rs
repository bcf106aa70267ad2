//! Flag queries from the local application: flagd's gRPC evaluation service (and Connect unary JSON
//! on the same port, and optionally a unix socket) and OFREP. Queries read the same live snapshot
//! and run the same evaluator as the request path, so a context gets the same variant on both.

mod connect;
mod convert;
mod events;
mod grpc;
mod ofrep;
mod sync;
mod v2;

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rampart_flags::{Bump, Context, ErrorCode, Flag, FlagSet, Reason, Resolution, Selector};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use self::events::Events;
use crate::config::Queries;
use crate::snapshot::{Current, Snapshot};

/// Time open query connections get to finish once the sidecar shuts down.
const DRAIN: Duration = Duration::from_secs(5);

/// The query servers' sockets, bound before [`crate::Proxy::run_with_queries`] (absent ones are
/// not served).
#[derive(Debug, Default)]
pub struct QueryListeners {
    /// flagd gRPC and Connect unary JSON.
    pub grpc: Option<TcpListener>,
    /// OFREP.
    pub ofrep: Option<TcpListener>,
    /// flagd gRPC and Connect on a unix socket.
    pub unix: Option<UnixListener>,
}

impl QueryListeners {
    /// Binds what `[queries]` configures; a stale unix socket file is replaced. The error names
    /// the setting that chose the address (a second sidecar on one host must move its own).
    pub async fn bind(queries: &Queries) -> Result<QueryListeners, BindError> {
        let tcp = |setting: &'static str, addr: Option<std::net::SocketAddr>| async move {
            match addr {
                Some(a) => TcpListener::bind(a).await.map(Some).map_err(|source| BindError {
                    setting,
                    address: a.to_string(),
                    source,
                }),
                None => Ok(None),
            }
        };
        let unix = match &queries.unix_socket {
            Some(path) => {
                let failed = |source| BindError { setting: "unix_socket", address: path.display().to_string(), source };
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed(e)),
                    _ => {}
                }
                Some(UnixListener::bind(path).map_err(failed)?)
            }
            None => None,
        };
        Ok(QueryListeners { grpc: tcp("grpc", queries.grpc).await?, ofrep: tcp("ofrep", queries.ofrep).await?, unix })
    }
}

/// A query listener that could not be bound, with the `[queries]` setting that chose its address.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot bind [queries] {setting} = \"{address}\": {source} (another sidecar on this host? give each its own \
     [queries] {setting}, or \"off\")"
)]
pub struct BindError {
    pub setting: &'static str,
    pub address: String,
    #[source]
    pub source: io::Error,
}

/// flagd's flag-set selection header on evaluation requests (`flagSetId=<id>`).
const SELECTOR: HeaderName = HeaderName::from_static("flagd-selector");

/// What one query evaluates with: the merged context and the selected flag set, if any.
#[derive(Debug)]
pub(crate) struct Query {
    pub(crate) ctx: Value,
    pub(crate) selector: Option<String>,
}

impl Query {
    /// Whether `flag` is visible to this query: every flag without a selector, else the flags of
    /// the selected set (the others answer `FLAG_NOT_FOUND`, as flagd).
    fn sees(&self, set: &FlagSet, flag: &Flag) -> bool {
        match self.selector.as_deref().and_then(Selector::parse) {
            Some(s) => s.selects(set, flag),
            None => true,
        }
    }
}

/// Why a query has no value for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("Flag not found")]
    NotFound,
    #[error("Type mismatch error")]
    TypeMismatch,
    #[error("Invalid context provided")]
    InvalidContext,
    #[error("evaluation failed: {0}")]
    Evaluation(ErrorCode),
}

/// What the query servers share.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) current: Current,
    pub(crate) events: Events,
    /// Static attributes from `[queries.context]`.
    statics: Map<String, Value>,
    /// `[queries.headers]`: request header → context key.
    headers: Vec<(HeaderName, String)>,
    pub(crate) keep_alive: Duration,
    pub(crate) shutdown: CancellationToken,
    /// Owns the `EventStream` producers.
    pub(crate) tasks: TaskTracker,
}

impl Engine {
    pub(crate) fn new(current: Current, events: Events, queries: &Queries, shutdown: CancellationToken) -> Engine {
        Engine {
            current,
            events,
            statics: queries.context.clone(),
            headers: queries.headers.clone(),
            keep_alive: queries.keep_alive,
            shutdown,
            tasks: TaskTracker::new(),
        }
    }

    /// The evaluation context of a query, merged as flagd merges it: the caller's context, then the
    /// configured static attributes, then mapped request headers (later wins); and the flag set
    /// the caller selected with the `Flagd-Selector` header.
    pub(crate) fn context(&self, caller: Map<String, Value>, headers: &HeaderMap) -> Query {
        let selector = headers.get(SELECTOR).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Query { ctx: self.context_value(caller, headers), selector }
    }

    fn context_value(&self, caller: Map<String, Value>, headers: &HeaderMap) -> Value {
        let mut ctx = caller;
        for (k, v) in &self.statics {
            ctx.insert(k.clone(), v.clone());
        }
        for (header, key) in &self.headers {
            if let Some(v) = headers.get(header).and_then(|v| v.to_str().ok()) {
                ctx.insert(key.clone(), Value::String(v.to_owned()));
            }
        }
        Value::Object(ctx)
    }
}

thread_local! {
    /// Scratch arena for query contexts, reset per query.
    static ARENA: RefCell<Bump> = RefCell::new(Bump::with_capacity(4096));
}

/// Runs `f` with a reset arena (a fresh one if this thread's is in use).
fn with_arena<R>(f: impl FnOnce(&Bump) -> R) -> R {
    ARENA.with(|cell| match cell.try_borrow_mut() {
        Ok(mut arena) => {
            arena.reset();
            f(&arena)
        }
        Err(_) => f(&Bump::new()),
    })
}

/// Evaluates `key` in `snapshot` for `ctx` with the request path's evaluator. Evaluation failures
/// are errors; a disabled flag is a success with reason `DISABLED` and no variant (current flagd).
pub(crate) fn resolve<'s>(
    snapshot: &'s Snapshot,
    key: &str,
    query: &Query,
) -> Result<(&'s Flag, Resolution<'s>), QueryError> {
    let position = snapshot.flags.position(key).ok_or(QueryError::NotFound)?;
    let flag = &snapshot.flags.flags()[position];
    if !query.sees(&snapshot.flags, flag) {
        return Err(QueryError::NotFound);
    }
    snapshot.count_query(position);
    let resolution = with_arena(|arena| {
        let ctx = Context::from_json(&query.ctx, arena).map_err(|_| QueryError::InvalidContext)?;
        Ok(flag.evaluate(&ctx, arena))
    })?;
    check(resolution).map(|r| (flag, r))
}

/// One flag of a bulk evaluation and its outcome.
pub(crate) type Evaluated<'s> = (&'s Flag, Result<Resolution<'s>, QueryError>);

/// Evaluates every flag for `ctx` (one context build for all); disabled flags are included, with
/// reason `DISABLED`, as current flagd lists them.
pub(crate) fn resolve_all<'s>(snapshot: &'s Snapshot, query: &Query) -> Result<Vec<Evaluated<'s>>, QueryError> {
    with_arena(|arena| {
        let ctx = Context::from_json(&query.ctx, arena).map_err(|_| QueryError::InvalidContext)?;
        let set = &snapshot.flags;
        Ok(set
            .flags()
            .iter()
            .enumerate()
            .filter(|(_, f)| query.sees(set, f))
            .map(|(position, f)| {
                snapshot.count_query(position);
                (f, check(f.evaluate(&ctx, arena)))
            })
            .collect())
    })
}

fn check(r: Resolution<'_>) -> Result<Resolution<'_>, QueryError> {
    match r.reason {
        Reason::Error => Err(QueryError::Evaluation(r.error.unwrap_or(ErrorCode::General))),
        _ => Ok(r),
    }
}

/// A flag's metadata as flagd reports it: the set's metadata, overridden by the flag's own.
pub(crate) fn metadata(set: &FlagSet, flag: &Flag) -> Map<String, Value> {
    let mut m = set.metadata().clone();
    for (k, v) in flag.metadata() {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Serves the query listeners until `engine.shutdown`; returns once their connections closed.
pub(crate) async fn serve(engine: Arc<Engine>, listeners: QueryListeners) {
    let servers = TaskTracker::new();
    let shutdown = engine.shutdown.clone();
    if let Some(l) = listeners.grpc {
        let (engine, stop) = (engine.clone(), shutdown.clone());
        servers.spawn(async move {
            accept_tcp(l, move || grpc::service(engine.clone()), stop).await;
        });
    }
    if let Some(l) = listeners.unix {
        let (engine, stop) = (engine.clone(), shutdown.clone());
        servers.spawn(async move {
            let conns = TaskTracker::new();
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            loop {
                let permit = tokio::select! {
                    () = stop.cancelled() => break,
                    p = slot(&slots) => match p { Some(p) => p, None => break },
                };
                let stream = tokio::select! {
                    () = stop.cancelled() => break,
                    a = l.accept() => match a {
                        Ok((s, _)) => s,
                        Err(e) => {
                            // Out of descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "query socket accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (service, stop) = (grpc::service(engine.clone()), stop.clone());
                conns.spawn(async move {
                    connection(stream, service, stop).await;
                    drop(permit);
                });
            }
            conns.close();
            conns.wait().await;
        });
    }
    if let Some(l) = listeners.ofrep {
        let (engine, stop) = (engine.clone(), shutdown.clone());
        servers.spawn(async move {
            accept_tcp(l, move || ofrep::service(engine.clone()), stop).await;
        });
    }
    servers.close();
    servers.wait().await;
    engine.tasks.close();
    engine.tasks.wait().await;
}

/// Largest gRPC message a query may send (a context with its flag key). tonic reserves a
/// message's announced length before it arrives: this bounds what a stalled message holds.
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// Open connections per query listener at most; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 1024;
/// HTTP/2 streams per connection at most.
const MAX_STREAMS: u32 = 64;
/// Bytes a client may have in flight per HTTP/2 stream, and per connection.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// A request head (HTTP/1.1) must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes a connection slot; waits while all are taken.
async fn slot(slots: &Arc<tokio::sync::Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    slots.clone().acquire_owned().await.ok()
}

async fn accept_tcp<S, B>(listener: TcpListener, make: impl Fn() -> S, stop: CancellationToken)
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conns = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = slot(&slots) => match p { Some(p) => p, None => break },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "query accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let (service, stop) = (make(), stop.clone());
        conns.spawn(async move {
            connection(stream, service, stop).await;
            drop(permit);
        });
    }
    conns.close();
    conns.wait().await;
}

/// One HTTP/1.1 or HTTP/2 connection, shut down gracefully (bounded by [`DRAIN`]) on `stop`.
async fn connection<I, S, B>(io: I, service: S, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res { tracing::debug!(error = %e, "query connection error") }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if tokio::time::timeout(DRAIN, conn).await.is_err() {
        tracing::debug!("query connection closed at the drain deadline");
    }
}
