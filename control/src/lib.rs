//! Rampart's control plane: takes the stats streams of all sidecars, applies every report exactly
//! once into per-variant aggregates, distributes versioned flag definitions, persists it all in
//! SQLite (or in PostgreSQL, shared by replicas: see `replicas.rs`), and serves the HTTP JSON API.
//!
//! [`Control::open`] opens the store and loads the state (failing before anything is bound);
//! [`Control::run`] serves gRPC and HTTP on the given listeners (both over TLS with `[tls]`) until
//! the shutdown token fires.

mod api;
mod audit;
mod auth;
mod confidence;
pub mod config;
mod console;
mod deployments;
mod dora;
mod flags;
mod https;
mod ingest;
pub mod lifecycle;
mod metrics;
pub mod operators;
pub mod ramp;
mod replicas;
mod state;
mod store;
mod stream;
mod views;
mod wire;
mod writes;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rampart_flags::Format;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::{Config, ConfigError};
use crate::state::{Flags, Shared};
pub use crate::store::{Location, StoreError};

/// Why the control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("initial flags: {0}")]
    Flags(#[from] rampart_flags::LoadError),
    #[error("initial flags {}: {source}", path.display())]
    FlagsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store holds flags that no longer validate (version {version}): {source}")]
    StoredFlags {
        version: u64,
        #[source]
        source: rampart_flags::LoadError,
    },
    #[error("the store holds a ramp record that does not decode: {0}")]
    StoredRamp(#[source] serde_json::Error),
    #[error("TLS file {}: {source}", path.display())]
    TlsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// Largest stats report a sidecar may send (a full window of the default 1 000 series with their
/// histograms is far below it).
pub(crate) const MAX_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// HTTP/2 streams per sidecar connection (a sidecar opens one).
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Bytes a sidecar may have in flight per stream (twice that per connection): what a stream that
/// waits for room in ingest holds unread, so with 10 000 sidecars the windows are what bounds the
/// control plane's memory. Three reports of 20 series; a larger report takes a few window updates
/// (one round trip each).
const STREAM_WINDOW: u32 = 16 * 1024;

/// Runs `work` on the blocking pool every `period` until `shutdown`, one run at a time (a late
/// run delays the next rather than piling up); `what` names it in the log if a run panics.
async fn periodically(
    what: &'static str,
    period: std::time::Duration,
    shutdown: CancellationToken,
    work: impl Fn() + Send + Sync + 'static,
) {
    let work = Arc::new(work);
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let work = work.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || work()).await {
            tracing::error!(error = %e, "{what} failed");
        }
    }
}

/// The ramp engine: one tick per second (on the leading replica, with replicas), and the DORA
/// gauges with it.
fn ramp_engine(shared: Arc<Shared>) -> impl Fn() + Send + Sync + 'static {
    let ticks = AtomicU64::new(0);
    move || {
        // Every 10 s: the flags' lifecycle gauges.
        if ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(10) {
            match lifecycle::current(&shared, state::now_ms()) {
                Ok(lives) => shared.metrics.set_flag_stages(&lifecycle::counts(&lives)),
                Err(e) => tracing::warn!(error = %e, "cannot assess the flags' lifecycle"),
            }
        }
        let decides = shared.replicas.as_ref().is_none_or(|r| r.leads());
        if decides {
            if shared.replicas.is_some() {
                replicas::before_tick(&shared);
            }
            ramp::engine::tick(&shared, state::now_ms());
        }
        shared.metrics.set_dora(&api::dora_now(&shared, 30 * 86_400_000));
    }
}

/// Deletes, from the store and from memory, the series of flags no longer defined and the
/// sequences of sidecar processes not connected that no report touched for `retention`.
fn expire_idle(shared: Arc<Shared>, retention: std::time::Duration) -> impl Fn() + Send + Sync + 'static {
    move || match expire_now(&shared, retention, state::now_ms()) {
        Ok((series, seqs)) if series + seqs > 0 => tracing::info!(series, seqs, "idle series and sequences expired"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "expiring idle series failed"),
    }
}

/// One expiry pass at `now_ms`: how many series and sequences went.
fn expire_now(shared: &Shared, retention: std::time::Duration, now_ms: i64) -> Result<(usize, usize), StoreError> {
    // With replicas, the leader expires for all.
    if shared.replicas.as_ref().is_some_and(|r| !r.leads()) {
        return Ok((0, 0));
    }
    let cutoff = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let definition = shared.flags.borrow().definition.clone();
    let defined = |flag: &str| definition.get("flags").and_then(|f| f.get(flag)).is_some();
    // Ingest holds `totals` and `seqs` while it applies a batch: taking them first keeps a report
    // from landing between the store's delete and memory's.
    let mut totals = state::lock(&shared.totals);
    let mut seqs = state::lock(&shared.seqs);
    let (series, expired_seqs) = shared.store.expire(cutoff, &defined)?;
    let connected: std::collections::HashSet<(String, u64)> =
        state::lock(&shared.proxies).values().filter(|p| p.connected).map(|p| (p.proxy_id.clone(), p.epoch)).collect();
    for key in &series {
        totals.remove(key);
    }
    let mut gone = 0;
    for key in &expired_seqs {
        // A connected sidecar keeps its sequence in memory (the store's row returns with its next
        // report); one that is not starts afresh when it comes back (its reports are renumbered).
        if !connected.contains(key) {
            seqs.remove(key);
            gone += 1;
        }
    }
    Ok((series.len(), gone))
}

/// An opened control plane, ready to serve.
#[derive(Debug)]
pub struct Control {
    shared: Arc<Shared>,
    tls: Option<config::Tls>,
    /// The HTTP listener's TLS (the `[tls]` certificate), when configured.
    https: Option<Arc<rustls::ServerConfig>>,
    tokens: Vec<config::SidecarToken>,
    operators: Option<operators::Operators>,
    retention: std::time::Duration,
    /// The ingest queue's bounds: reports, bytes.
    ingest_queue: (usize, usize),
}

impl config::Tls {
    /// tonic's server TLS: our certificate, and the client CA (certificates optional: a sidecar may
    /// present a bearer token instead).
    fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig, Error> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|source| Error::TlsFile { path: p.to_owned(), source });
        let identity = tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?)).client_auth_optional(true);
        }
        Ok(tls)
    }
}

impl Control {
    pub fn open(config: &Config) -> Result<Control, Error> {
        let (store, replicas): (Arc<dyn store::Store>, _) = match &config.store {
            store::Location::Sqlite(path) => (Arc::new(store::Sqlite::open(path)?), None),
            store::Location::Postgres(url) => {
                let name = config.replica.clone().unwrap_or_else(default_replica_name);
                let pg = Arc::new(store::Postgres::open(url, &name)?);
                (pg.clone(), Some(Arc::new(replicas::Replicas::new(pg))))
            }
        };
        let metrics = metrics::Metrics::new();
        metrics.leader.set(if replicas.is_none() { 1.0 } else { 0.0 });
        let flags = match store.latest_flags()? {
            Some((version, text)) => {
                let (set, json) = flags::parse("store", &text, Format::Json)
                    .map_err(|source| Error::StoredFlags { version, source })?;
                Flags { version, text: json, definition: set.definition().clone() }
            }
            None => {
                let (set, json) = match &config.flags {
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|source| Error::FlagsFile { path: path.clone(), source })?;
                        let name = path.display().to_string();
                        flags::parse(&name, &text, Format::detect(&name, &text))?
                    }
                    None => flags::parse("empty", "{\"flags\": {}}", Format::Json)?,
                };
                // Another replica may have stored a first version meanwhile: the store's wins.
                store.init_flags(&json, state::now_ms())?;
                match store.latest_flags()? {
                    Some((version, text)) if version > 1 || text != json => {
                        let (set, json) = flags::parse("store", &text, Format::Json)
                            .map_err(|source| Error::StoredFlags { version, source })?;
                        Flags { version, text: json, definition: set.definition().clone() }
                    }
                    _ => Flags { version: 1, text: json, definition: set.definition().clone() },
                }
            }
        };
        metrics.flags_version.set(flags.version as f64);
        let totals = store.load_totals()?.into_iter().map(|(f, v, d)| ((f, v), d)).collect();
        let seqs: HashMap<_, _> = store.load_seqs()?.into_iter().collect();
        let mut owners: HashMap<_, _> = store
            .load_owners()?
            .into_iter()
            .map(|(proxy, service, pinned)| (proxy, state::Owner { service, pinned }))
            .collect();
        // A token pinned to a sidecar makes it that service's, whatever an earlier stream said.
        for t in &config.tokens {
            if let (Some(service), Some(proxy)) = (&t.service, &t.proxy) {
                owners.insert(proxy.clone(), state::Owner { service: service.clone(), pinned: true });
            }
        }
        let ramps = store
            .load_ramps()?
            .iter()
            .map(|record| serde_json::from_str::<ramp::model::Ramp>(record).map(|r| (r.id, r)))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(Error::StoredRamp)?;
        let shared = Shared {
            lifecycle: config.lifecycle,
            store,
            publishing: Mutex::new(()),
            usage_written: Mutex::default(),
            replicas,
            totals: Mutex::new(totals),
            windows: Mutex::default(),
            seqs: Mutex::new(seqs),
            proxies: Mutex::new(BTreeMap::new()),
            owners: Mutex::new(owners),
            flags: watch::Sender::new(Arc::new(flags)),
            ramps: Mutex::new(ramps),
            metrics,
        };
        // Fail before binding anything when the files do not load.
        if let Some(tls) = &config.tls {
            tls.server_config()?;
        }
        let https = config.tls.as_ref().map(https::server_config).transpose()?;
        Ok(Control {
            shared: Arc::new(shared),
            tls: config.tls.clone(),
            https,
            tokens: config.tokens.clone(),
            operators: config.operators.clone(),
            retention: config.retention,
            ingest_queue: (config.ingest_queue.get(), config.ingest_queue_bytes.get()),
        })
    }

    /// The flags version being distributed.
    pub fn flags_version(&self) -> u64 {
        self.shared.flags.borrow().version
    }

    /// Serves the sidecar streams on `grpc` and the API on `http` until `shutdown`.
    pub async fn run(self, grpc: TcpListener, http: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
        if let Some(r) = &self.shared.replicas {
            let at = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            r.set_addresses(at(&grpc), at(&http));
        }
        let tasks = TaskTracker::new();
        let (ingest_tx, ingest_rx) = ingest::Ingest::new(self.ingest_queue.0, self.ingest_queue.1);
        let ingest_task = tokio::spawn(ingest::run(self.shared.clone(), ingest_rx));
        let service = stream::Service {
            shared: self.shared.clone(),
            ingest: ingest_tx,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            next_stream: AtomicU64::new(1),
        };
        let auth = auth::Auth {
            client_certs: self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            tokens: self.tokens.clone(),
        };
        if auth.tokens.is_empty() && !auth.client_certs {
            tracing::warn!(
                "no tokens_file or [tls] client_ca: sidecar streams are not authenticated, and any stream may report as any sidecar"
            );
        }
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            // tonic builds its TLS from the process-wide provider: make it ring, whatever other
            // crates in the build enable.
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder.tls_config(tls.server_config()?)?;
        }
        // Memory per connection is bounded: a message that spans chunks is buffered as it
        // arrives, up to its announced length, so the message size (a report of `max_series` series fits well
        // within it), the streams per connection (a sidecar opens one) and the flow-control
        // windows cap what a stalled or hostile stream holds.
        let grpc_server = builder
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(STREAM_WINDOW * 2))
            .add_service(stream::ConnectService { service: Arc::new(service), auth: Arc::new(auth) })
            // tonic ignores its own `tcp_nodelay` with an external listener: set it per accepted
            // stream, or small acks wait on delayed ACKs (+40 ms at the tail, measured by the fan-in load).
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            );
        if self.operators.is_none() {
            let at = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(
                http = %at,
                "no api_tokens_file: the HTTP API is open to anyone who reaches {at} (served on loopback unless allow_unauthenticated)"
            );
        }
        let router = api::router(self.shared.clone(), self.operators.clone());
        let stopped = shutdown.clone().cancelled_owned();
        let http_server = async move {
            match self.https {
                Some(config) => {
                    axum::serve(https::TlsListener::new(http, config)?, router).with_graceful_shutdown(stopped).await
                }
                None => axum::serve(http, router).with_graceful_shutdown(stopped).await,
            }
        };
        let second = std::time::Duration::from_secs(1);
        if self.shared.replicas.is_some() {
            let shared = self.shared.clone();
            tasks.spawn(periodically("leader lease", second, shutdown.clone(), move || replicas::lease_tick(&shared)));
            tasks.spawn(replicas::follow(self.shared.clone(), shutdown.clone()));
        }
        tasks.spawn(periodically("ramp engine tick", second, shutdown.clone(), ramp_engine(self.shared.clone())));
        // Every minute, or half the retention when that is shorter.
        let sweep = (self.retention / 2).clamp(std::time::Duration::from_millis(100), 60 * second);
        tasks.spawn(periodically("expiry", sweep, shutdown.clone(), expire_idle(self.shared.clone(), self.retention)));
        let (g, h) = tokio::join!(grpc_server, http_server);
        tasks.close();
        tasks.wait().await;
        // Every stream task has ended, so every ingest sender is gone and the task drains.
        if let Err(e) = ingest_task.await {
            tracing::error!(error = %e, "ingest task failed");
        }
        if let Some(r) = &self.shared.replicas {
            let pg = r.pg.clone();
            // Hand the lead over at once rather than after the lease lapses.
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || pg.resign()).await {
                tracing::warn!(error = %e, "cannot give up the leader lease");
            }
        }
        g?;
        h?;
        Ok(())
    }
}

/// A replica's default name: the host's name and this process's id.
fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_owned());
    format!("{host}-{}", std::process::id())
}
