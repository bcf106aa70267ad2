//! Rampart's sidecar: a reverse proxy in front of one service that evaluates the flags for every
//! request, injects the chosen variants as `x-flag-<key>` headers, and hot-reloads its flags.
//!
//! [`Proxy::new`] loads everything that can fail before any port is bound; [`Proxy::run`] serves
//! the given listeners until the shutdown token fires, then drains.

mod admin;
pub mod config;
mod extract;
mod forward;
mod inject;
mod metrics;
mod reload;
mod server;
mod snapshot;

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::{Config, ConfigError};
pub use crate::inject::inject_flags;
pub use crate::reload::LoadError;
pub use crate::snapshot::Snapshot;

/// A configured sidecar whose flags are loaded, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    loader: reload::Loader,
    current: snapshot::Current,
    metrics: metrics::Metrics,
}

impl Proxy {
    /// Loads the flags named by `config`; fails (with a located error) before anything is bound.
    pub fn new(config: Config) -> Result<Proxy, LoadError> {
        let metrics = metrics::Metrics::new();
        let loader = reload::Loader {
            path: config.flags.clone(),
            prefix: config.header_prefix.clone(),
            inject: config.inject.clone(),
            metrics: metrics.clone(),
        };
        let first = loader.load(1)?;
        metrics.flags_version.set(1.0);
        Ok(Proxy { config, loader, current: Arc::new(ArcSwap::from_pointee(first)), metrics })
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
    /// deadline passed).
    pub async fn run(self, listener: TcpListener, admin: TcpListener, shutdown: CancellationToken) {
        let c = &self.config;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(c.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(c.pool_idle_timeout)
            .build(connector);
        let forwarder = Arc::new(forward::Forwarder {
            current: self.current.clone(),
            client,
            upstream: c.upstream.clone(),
            context: c.context.clone(),
            prefix: c.header_prefix.clone(),
            timeout: c.upstream_timeout,
            metrics: self.metrics.clone(),
            tunnels: TaskTracker::new(),
        });
        let admin_state = Arc::new(admin::Admin {
            current: self.current.clone(),
            metrics: self.metrics.clone(),
            flags_path: c.flags.display().to_string(),
        });
        let limits = server::Limits {
            max_connections: c.max_connections.get(),
            max_header_bytes: c.max_header_bytes,
            header_read_timeout: c.header_read_timeout,
            drain_timeout: c.drain_timeout,
        };
        let tasks = TaskTracker::new();
        let background = CancellationToken::new();
        tasks.spawn(admin::serve(admin, admin_state, background.clone()));
        let (loader, current, watch_stop) = (self.loader.clone(), self.current.clone(), background.clone());
        tasks.spawn(async move {
            if let Err(e) = reload::watch(loader, current, watch_stop).await {
                tracing::error!(error = %e, "cannot watch the flags file; hot reload is off");
            }
        });
        tasks.close();
        server::serve(listener, forwarder, limits, shutdown).await;
        background.cancel();
        tasks.wait().await;
    }
}
