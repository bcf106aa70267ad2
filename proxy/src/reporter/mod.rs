//! The control stream, sidecar side: every interval the per-variant deltas become a numbered
//! report, sent over `RampControl/Connect` and kept until acknowledged ([`pending`]); flags pushed
//! by the control plane are applied atomically, cached on disk and confirmed. The control plane's
//! replicas are tried in turn: after a failed connect or a stream that ends, the next one at once;
//! after a full round without a lasting stream, a jittered exponential backoff. Reports not yet
//! acknowledged are resent to whichever replica the sidecar reaches; it serves its last flags
//! meanwhile.

mod pending;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rampart_flags::{FlagSet, Format};
use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{
    ControlMessage, FlagsApplied, FlagsSnapshot, Hello, ProxyMessage, control_message, proxy_message,
};
use rampart_stats::Registry;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use self::pending::Pending;
use crate::cache::{self, Cached};
use crate::config::ControlPlane;
use crate::metrics::Metrics;
use crate::reload::Loader;
use crate::snapshot::Current;

/// Reports kept unsent before new deltas are merged into the newest unsent one.
const MAX_UNSENT: usize = 120;
/// Reports sent and not yet acknowledged on one stream.
const MAX_IN_FLIGHT: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a shutting-down sidecar waits for its last reports to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// A stream welcomed and up at least this long starts a new round of the replicas: the next
/// failure fails over at once again. Shorter-lived streams count as failures of their round, so
/// replicas that accept and drop the stream at once are retried with backoff, never in a loop.
const LASTING_STREAM: Duration = Duration::from_secs(1);

/// Whether the control stream is up, and to which replica, for `/readyz`.
#[derive(Debug, Default)]
pub(crate) struct Status {
    pub(crate) connected: AtomicBool,
    /// The URL of the replica of the stream that is or was last up.
    replica: Mutex<Option<http::Uri>>,
}

impl Status {
    /// `connected to URL`, or `disconnected (serving the last flags)`.
    pub(crate) fn describe(&self) -> String {
        if self.connected.load(Ordering::Relaxed)
            && let Some(uri) = self.replica.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
        {
            return format!("connected to {uri}");
        }
        "disconnected (serving the last flags)".to_owned()
    }
}

#[derive(Debug)]
pub(crate) struct Reporter {
    pub(crate) control: ControlPlane,
    pub(crate) stats: Arc<Registry>,
    pub(crate) loader: Loader,
    pub(crate) current: Current,
    pub(crate) metrics: Metrics,
    pub(crate) status: Arc<Status>,
    /// Random per process: a restarted sidecar starts a fresh sequence space.
    pub(crate) epoch: u64,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("connect timed out")]
    Timeout,
    #[error("the control plane closed the stream")]
    Closed,
    #[error("{0}: {1}")]
    File(String, #[source] std::io::Error),
}

impl StreamError {
    /// How long a saturated control plane asked us to stay away (`RESOURCE_EXHAUSTED` with
    /// gRPC's `grpc-retry-pushback-ms`), at most [`BACKOFF_MAX`]; the reports it shed stay pending.
    fn pushback(&self) -> Option<Duration> {
        let StreamError::Status(status) = self else { return None };
        if status.code() != tonic::Code::ResourceExhausted {
            return None;
        }
        let ms: u64 = status.metadata().get("grpc-retry-pushback-ms")?.to_str().ok()?.parse().ok()?;
        Some(Duration::from_millis(ms).min(BACKOFF_MAX))
    }
}

impl Reporter {
    /// Runs until `shutdown`; then sends what it can of the last interval and stops.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut pending = Pending::new(MAX_UNSENT, MAX_IN_FLIGHT);
        let mut tick = tokio::time::interval(self.control.report_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut window_start = unix_ms();
        let mut backoff = BACKOFF_MIN;
        let replicas = self.control.uris.len();
        // The replica to try next, and how many of this round failed.
        let (mut next, mut failed) = (0, 0);
        loop {
            let uri = &self.control.uris[next];
            let mut up = Up::default();
            let pushback = match self.stream(next, &mut pending, &mut tick, &mut window_start, &mut up, &shutdown).await
            {
                Ok(()) => return,
                Err(e) => {
                    self.set_connected(next, false);
                    tracing::warn!(control_plane = %uri, error = %e, pending = pending.len(), "control stream down");
                    e.pushback()
                }
            };
            if up.connected {
                backoff = BACKOFF_MIN;
            }
            if up.lasting() {
                failed = 0;
            }
            failed += 1;
            next = (next + 1) % replicas;
            if pushback.is_none() && failed < replicas {
                // Fail over to the next replica at once.
                continue;
            }
            failed = 0;
            // A saturated replica's pushback, or after a full round that failed, jittered backoff;
            // stats keep being collected meanwhile.
            let wait = pushback.unwrap_or_else(|| backoff.mul_f64(0.5 + fastrand::f64() * 0.5));
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tracing::info!(retry_in = ?wait, "no control plane replica reachable; retrying");
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(until) => break,
                    _ = tick.tick() => self.collect(&mut pending, &mut window_start),
                }
            }
        }
    }

    /// One stream to replica `replica`, from connect to failure (`Err`) or shutdown (`Ok`).
    async fn stream(
        &self,
        replica: usize,
        pending: &mut Pending,
        tick: &mut tokio::time::Interval,
        window_start: &mut i64,
        up: &mut Up,
        shutdown: &CancellationToken,
    ) -> Result<(), StreamError> {
        pending.new_stream();
        let uri = &self.control.uris[replica];
        let mut endpoint = Endpoint::from(uri.clone())
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let auth = self.control.auth.as_ref();
        if let Some(tls) = auth.map(client_tls).transpose()?.flatten() {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        let (tx, rx) = mpsc::channel::<ProxyMessage>(MAX_IN_FLIGHT * 2 + 8);
        let hello = Hello {
            proxy_id: self.control.proxy_id.clone(),
            service: self.control.service.clone(),
            flags_version: self.current.load().version,
            epoch: self.epoch,
        };
        send(&tx, proxy_message::Msg::Hello(hello)).await?;
        let token = match auth.and_then(|a| a.token.as_deref()) {
            Some(t) => Some(tonic::metadata::MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                StreamError::Status(tonic::Status::invalid_argument("the bearer token is not a valid header value"))
            })?),
            None => None,
        };
        // Flag snapshots are as large as a flags file may be (JSON of up to 16 MiB of YAML).
        let mut client = RampControlClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(t) = &token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            Ok(req)
        })
        .max_decoding_message_size(4 * rampart_flags::bounds::MAX_FILE_BYTES as usize);
        let response = tokio::time::timeout(Duration::from_secs(5), client.connect(ReceiverStream::new(rx)))
            .await
            .map_err(|_| StreamError::Timeout)??;
        let mut inbound = response.into_inner();
        *self.status.replica.lock().unwrap_or_else(PoisonError::into_inner) = Some(uri.clone());
        self.set_connected(replica, true);
        up.connected = true;
        tracing::info!(control_plane = %uri, "control stream connected");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.flush(pending, window_start, &tx, &mut inbound).await;
                    return Ok(());
                }
                _ = tick.tick() => {
                    self.collect(pending, window_start);
                    for report in pending.next_to_send() {
                        send(&tx, proxy_message::Msg::Report(report)).await?;
                    }
                }
                msg = inbound.message() => {
                    let Some(ControlMessage { msg }) = msg? else { return Err(StreamError::Closed) };
                    match msg {
                        Some(control_message::Msg::Welcome(w)) => {
                            up.welcomed.get_or_insert_with(Instant::now);
                            pending.welcome(w.last_applied_seq);
                            for report in pending.next_to_send() {
                                send(&tx, proxy_message::Msg::Report(report)).await?;
                            }
                        }
                        Some(control_message::Msg::Ack(ack)) => {
                            pending.ack(ack.seq);
                            for report in pending.next_to_send() {
                                send(&tx, proxy_message::Msg::Report(report)).await?;
                            }
                        }
                        Some(control_message::Msg::Flags(snapshot)) => {
                            if let Some(version) = self.apply_flags(snapshot).await {
                                send(&tx, proxy_message::Msg::FlagsApplied(FlagsApplied { version })).await?;
                            }
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// On shutdown: sends the last interval and waits a little for the acknowledgements, so a
    /// drained sidecar's final requests are counted.
    async fn flush(
        &self,
        pending: &mut Pending,
        window_start: &mut i64,
        tx: &mpsc::Sender<ProxyMessage>,
        inbound: &mut tonic::Streaming<ControlMessage>,
    ) {
        self.collect(pending, window_start);
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while pending.len() > 0 {
            for report in pending.next_to_send() {
                if send(tx, proxy_message::Msg::Report(report)).await.is_err() {
                    return;
                }
            }
            match tokio::time::timeout_at(deadline, inbound.message()).await {
                Ok(Ok(Some(ControlMessage { msg: Some(control_message::Msg::Ack(ack)) }))) => pending.ack(ack.seq),
                Ok(Ok(Some(ControlMessage { msg: Some(control_message::Msg::Welcome(w)) }))) => {
                    pending.welcome(w.last_applied_seq);
                }
                Ok(Ok(Some(_))) => {}
                _ => {
                    tracing::warn!(pending = pending.len(), "shutting down with unacknowledged stats");
                    return;
                }
            }
        }
    }

    /// Takes this interval's deltas into a new pending report.
    fn collect(&self, pending: &mut Pending, window_start: &mut i64) {
        let end = unix_ms();
        let evaluated = self.metrics.evaluated_flags();
        pending.push(self.stats.take_all(), self.stats.take_overflow(), evaluated, *window_start, end);
        *window_start = end;
        self.metrics.pending_reports.set(pending.len() as f64);
    }

    /// Applies pushed flags: one atomic snapshot swap, then the disk cache. Returns the version
    /// now served; `None` when the definitions are refused (the previous flags stay). Compiled
    /// on the blocking pool: a large definition never holds the runtime serving requests.
    async fn apply_flags(&self, snapshot: FlagsSnapshot) -> Option<u64> {
        if snapshot.version == self.current.load().version {
            return Some(snapshot.version);
        }
        let (loader, current, metrics) = (self.loader.clone(), self.current.clone(), self.metrics.clone());
        let cache_path = self.control.cache.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let built = FlagSet::from_text("control plane", &snapshot.definition, Format::Json)
                .map_err(crate::reload::LoadError::from)
                .and_then(|set| loader.build(snapshot.version, set, "control plane"));
            match built {
                Ok(s) => {
                    loader.publish(&current, s);
                    metrics.reloads.increment(1);
                    metrics.flags_version.set(snapshot.version as f64);
                    tracing::info!(version = snapshot.version, "flags from the control plane applied");
                    let cached = Cached { version: snapshot.version, definition: snapshot.definition };
                    if let Err(e) = cache::write(&cache_path, &cached) {
                        tracing::warn!(error = %e, "cannot write the flags cache");
                    }
                    Some(snapshot.version)
                }
                Err(e) => {
                    metrics.reload_failures.increment(1);
                    tracing::error!(version = snapshot.version, "flags from the control plane refused: {e}");
                    None
                }
            }
        })
        .await;
        applied.unwrap_or_else(|e| {
            tracing::error!(error = %e, "applying flags from the control plane failed");
            None
        })
    }

    /// The stream's state for `/readyz` and `/metrics` (per replica:
    /// `rampart_control_plane_connected{url}`).
    fn set_connected(&self, replica: usize, up: bool) {
        self.status.connected.store(up, Ordering::Relaxed);
        let value = if up { 1.0 } else { 0.0 };
        self.metrics.control_connected.set(value);
        if let Some(uri) = self.control.uris.get(replica) {
            self.metrics.gauge("rampart_control_plane_connected", &[("url", &uri.to_string())]).set(value);
        }
    }
}

/// How far one stream got.
#[derive(Debug, Default)]
struct Up {
    /// The control plane answered the stream.
    connected: bool,
    /// When its Welcome arrived.
    welcomed: Option<Instant>,
}

impl Up {
    /// Welcomed and up for [`LASTING_STREAM`]: its end starts a new round of the replicas.
    fn lasting(&self) -> bool {
        self.welcomed.is_some_and(|at| at.elapsed() >= LASTING_STREAM)
    }
}

/// tonic's client TLS for `[control_auth]`: the control plane's CA, our identity, the name to verify.
fn client_tls(auth: &crate::config::ControlAuth) -> Result<Option<ClientTlsConfig>, StreamError> {
    let Some(ca) = &auth.ca else { return Ok(None) };
    // tonic builds its TLS from the process-wide provider: make it ring, whatever other crates in
    // the build enable (an error means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| StreamError::File(p.display().to_string(), e));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = &auth.identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &auth.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

async fn send(tx: &mpsc::Sender<ProxyMessage>, msg: proxy_message::Msg) -> Result<(), StreamError> {
    tx.send(ProxyMessage { msg: Some(msg) }).await.map_err(|_| StreamError::Closed)
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
