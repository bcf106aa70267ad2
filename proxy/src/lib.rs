//! Rampart's sidecar: a reverse proxy in front of one service that evaluates the flags for every
//! request, injects the chosen variants as `x-flag-<key>` headers, and hot-reloads its flags.
//!
//! [`Proxy::new`] loads everything that can fail before any port is bound; [`Proxy::run`] serves
//! the given listeners until the shutdown token fires, then drains.

mod admin;
mod cache;
mod cluster;
pub mod config;
mod deadline;
mod extract;
mod forward;
mod inject;
mod interned;
mod metrics;
mod pool;
pub mod propagate;
mod query;
mod reload;
mod reporter;
mod route;
mod server;
mod snapshot;
pub mod tls;
mod watchdog;
mod workers;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rampart_flags::{FlagSet, Format};
use rampart_stats::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::{Config, ConfigError};
pub use crate::inject::{Assigned, Tracked, inject_flags};
pub use crate::query::{BindError, QueryListeners};
pub use crate::reload::LoadError;
pub use crate::snapshot::Snapshot;
pub use crate::workers::bind;

/// A configured sidecar whose flags are loaded, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    loader: reload::Loader,
    current: snapshot::Current,
    metrics: metrics::Metrics,
    stats: Arc<Registry>,
    /// The listener's TLS config, when `[tls]` is set.
    tls: Option<tls::LiveServerConfig>,
}

impl Proxy {
    /// Loads the flags named by `config`; fails (with a located error) before anything is bound.
    ///
    /// Without a control plane the flags file is served (version 1) and watched. With one, the
    /// last flags it pushed (the disk cache) are served until it pushes again; without a cache,
    /// the flags file (version 0), or no flags at all.
    pub fn new(config: Config) -> Result<Proxy, LoadError> {
        let metrics = metrics::Metrics::new();
        let stats = Arc::new(Registry::new(config.max_series));
        let loader = reload::Loader {
            path: config.flags.clone(),
            prefix: config.header_prefix.clone(),
            inject: config.inject.clone(),
            metrics: metrics.clone(),
            stats: stats.clone(),
            reported: config.control_plane.is_some(),
            events: query::Events::default(),
            routes: config.routes.clone(),
            propagation: config.propagation.clone(),
        };
        let first = match &config.control_plane {
            None => loader.load(1)?,
            Some(cp) => match cache::read(&cp.cache) {
                Ok(Some(cached)) => {
                    let set =
                        FlagSet::from_text_tolerant(&cp.cache.display().to_string(), &cached.definition, Format::Json)?;
                    tracing::info!(version = cached.version, "serving the cached control-plane flags until it pushes");
                    loader.build(cached.version, set, "flags cache")?
                }
                other => {
                    if let Err(e) = other {
                        tracing::warn!(error = %e, "ignoring the flags cache");
                    }
                    match config.flags {
                        Some(_) => loader.load(0)?,
                        None => {
                            loader.build(0, FlagSet::from_text("empty", "{\"flags\":{}}", Format::Json)?, "empty")?
                        }
                    }
                }
            },
        };
        metrics.flags_version.set(first.version as f64);
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(ArcSwap::new(files.server_config()?))),
            None => None,
        };
        Ok(Proxy { config, loader, current: Arc::new(ArcSwap::from_pointee(first)), metrics, stats, tls })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The snapshot being served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Serves client traffic on `listener` and the admin endpoints on `admin` until `shutdown`,
    /// watching the flags file meanwhile; returns once in-flight requests drained (or the drain
    /// deadline passed). Serves no flag queries: see [`Proxy::run_with_queries`]. With `workers = N`
    /// the caller's runtime is the first of N threads serving `listener`; call it on a
    /// current-thread runtime to keep each connection on one thread.
    pub async fn run(self, listener: TcpListener, admin: TcpListener, shutdown: CancellationToken) {
        self.run_with_queries(listener, admin, QueryListeners::default(), shutdown).await;
    }

    /// As [`Proxy::run`], and answers flag queries (flagd gRPC + Connect, OFREP) on `queries`
    /// (bind them with [`QueryListeners::bind`]) from the same snapshot as the request path.
    pub async fn run_with_queries(
        self,
        listener: TcpListener,
        admin: TcpListener,
        queries: QueryListeners,
        shutdown: CancellationToken,
    ) {
        let c = &self.config;
        let clusters: Vec<_> =
            c.clusters.iter().map(|cluster| Arc::new(cluster::Cluster::new(cluster, c, &self.metrics))).collect();
        let forwarder = Arc::new(forward::Forwarder {
            current: self.current.clone(),
            router: route::Router::new(&c.routes, &clusters, c.upstream_timeout),
            context: c.context.clone(),
            prefix: c.header_prefix.clone(),
            metrics: self.metrics.clone(),
            stats: self.stats.clone(),
            tunnels: TaskTracker::new(),
            headers: c.headers,
        });
        let status = Arc::new(reporter::Status::default());
        let admin_state = Arc::new(admin::Admin {
            current: self.current.clone(),
            metrics: self.metrics.clone(),
            stats: self.stats.clone(),
            control: c.control_plane.as_ref().map(|_| status.clone()),
        });
        let limits = server::Limits {
            max_connections: c.max_connections.get(),
            max_header_bytes: c.max_header_bytes,
            header_read_timeout: c.header_read_timeout,
            drain_timeout: c.drain_timeout,
            connections: c.connections.clone(),
        };
        let local =
            |l: Option<&TcpListener>| l.and_then(|l| l.local_addr().ok()).map_or("off".to_owned(), |a| a.to_string());
        let (admin_addr, grpc_addr, ofrep_addr) =
            (local(Some(&admin)), local(queries.grpc.as_ref()), local(queries.ofrep.as_ref()));
        let tasks = TaskTracker::new();
        let background = CancellationToken::new();
        tasks.spawn(admin::serve(admin, admin_state, background.clone()));
        tasks.spawn(cluster::sweep(clusters, c.pool_idle_timeout, background.clone()));
        let engine = query::Engine::new(self.current.clone(), self.loader.events.clone(), &c.queries, shutdown.clone());
        tasks.spawn(query::serve(Arc::new(engine), queries));
        match (&c.control_plane, &c.flags) {
            (Some(control), _) => {
                let reporter = reporter::Reporter {
                    control: control.clone(),
                    stats: self.stats.clone(),
                    loader: self.loader.clone(),
                    current: self.current.clone(),
                    metrics: self.metrics.clone(),
                    status,
                    epoch: fastrand::u64(1..),
                };
                tasks.spawn(reporter.run(background.clone()));
            }
            (None, Some(path)) => {
                let (loader, path, current, stop) =
                    (self.loader.clone(), path.clone(), self.current.clone(), background.clone());
                tasks.spawn(async move {
                    if let Err(e) = reload::watch(loader, path, current, stop).await {
                        tracing::error!(error = %e, "cannot watch the flags file; hot reload is off");
                    }
                });
            }
            (None, None) => {}
        }
        if let (Some(files), Some(live)) = (&c.tls, &self.tls) {
            let (files, watched, metrics, stop) =
                (files.clone(), live.clone(), self.metrics.clone(), background.clone());
            tasks.spawn(async move {
                if let Err(e) = tls::watch(files, watched, metrics, stop).await {
                    tracing::error!(error = %e, "cannot watch the TLS files; certificate reload is off");
                }
            });
        }
        tasks.close();
        let gate = server::Gate::new(limits);
        let workers = c.workers.map_or(1, std::num::NonZeroUsize::get);
        let (listener, started) =
            workers::Workers::start(workers, listener, &forwarder, &gate, self.tls.as_ref(), &shutdown);
        // Logged once every worker listens: a client connecting after this line can reach any.
        tracing::info!(listen = %local(Some(&listener)), admin = %admin_addr, grpc = %grpc_addr, ofrep = %ofrep_addr,
            upstream = %c.upstream.authority, flags = ?c.flags,
            control_plane = ?c.control_plane.as_ref().map(|cp| &cp.uris), workers, "rampart proxy serving");
        server::serve(listener, forwarder, gate, self.tls.clone(), shutdown).await;
        started.join().await;
        // Drained: the reporter now sends the last interval's stats, then everything stops.
        background.cancel();
        tasks.wait().await;
    }
}
