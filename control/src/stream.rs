//! `rampart.v1.RampControl/Connect`: one bidirectional stream per sidecar. Hello → Welcome (last
//! applied sequence) and the current flags; then reports are applied (acknowledged once durable)
//! and every new flags version is pushed as soon as it exists. Reports are read as they come and
//! handed to ingest without waiting for the previous one's answer; when ingest is full the stream
//! waits for room and reads nothing more meanwhile (flags are still pushed), so HTTP/2 flow control
//! keeps the sidecar's next reports on its side, where they merge. A stream with more reports
//! unanswered than any sidecar sends is shed: it ends with `RESOURCE_EXHAUSTED` and a pushback,
//! and the sidecar, which keeps what is unacknowledged, sends it again when it comes back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rampart_flags::MAX_NAME_BYTES;
use rampart_proto::rampart::v1::{
    ControlMessage, FlagsSnapshot, ProxyMessage, Welcome, control_message, proxy_message,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Status};

use crate::auth::{Auth, Identity};
use crate::ingest::{Ingest, MAX_IN_FLIGHT_PER_STREAM, Origin, Outbound, Refused};
use crate::state::{Flags, Owner, ProxyInfo, Shared, lock, now_ms};
use crate::wire::{Inbound, Outgoing};

#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ingest: Ingest,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) next_stream: AtomicU64,
}

/// A report being handed to ingest.
type Submitting = Pin<Box<dyn Future<Output = Result<(), Refused>> + Send>>;

/// How long a shed sidecar is asked to stay away (gRPC's `grpc-retry-pushback-ms`), jittered
/// over `PUSHBACK..2 * PUSHBACK` so shed sidecars do not all come back at once.
const PUSHBACK: Duration = Duration::from_secs(1);

/// The status that sheds a stream: not applied, send it again after the pushback.
fn shed_status() -> Status {
    let wait = PUSHBACK.mul_f64(1.0 + fastrand::f64());
    let mut status = Status::resource_exhausted("the control plane is saturated; resend after the pushback");
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(wait.as_millis().to_string()) {
        status.metadata_mut().insert("grpc-retry-pushback-ms", v);
    }
    status
}

fn flags_message(f: &Flags) -> ControlMessage {
    ControlMessage {
        msg: Some(control_message::Msg::Flags(FlagsSnapshot { version: f.version, definition: f.text.clone() })),
    }
}

/// Whether a stream with `identity` may speak as sidecar `proxy` of `service`: the credential's
/// service and sidecar must be the Hello's; a sidecar id belongs to the service that first used it
/// (recorded in the store), and one pinned to a credential of its own takes only that credential.
fn admit(shared: &Shared, identity: &Identity, service: &str, proxy: &str) -> Result<(), Status> {
    let refuse = |why: String| {
        shared.metrics.streams_refused.increment(1);
        tracing::warn!(proxy, service, %why, "sidecar stream refused");
        Err(Status::permission_denied(why))
    };
    if let Some(own) = identity.service.as_deref().filter(|s| *s != service) {
        return refuse(format!("this credential is for service \"{own}\", not \"{service}\""));
    }
    if let Some(own) = identity.proxy.as_deref().filter(|p| *p != proxy) {
        return refuse(format!("this credential is for sidecar \"{own}\", not \"{proxy}\""));
    }
    let pinned = identity.proxy.is_some();
    let mut owners = lock(&shared.owners);
    match owners.get(proxy) {
        Some(o) if o.service != service => refuse(format!("sidecar \"{proxy}\" belongs to service \"{}\"", o.service)),
        Some(o) if o.pinned && !pinned => refuse(format!("sidecar \"{proxy}\" has a credential of its own")),
        Some(o) if o.pinned == pinned => Ok(()),
        Some(o) if pinned => {
            // A credential of its own now pins an id its service already had.
            if let Err(e) = shared.store.pin_owner(proxy) {
                tracing::error!(error = %e, proxy, "cannot record the sidecar's owner");
                return Err(Status::unavailable("the control plane cannot record this sidecar now; retry"));
            }
            let service = o.service.clone();
            owners.insert(proxy.to_owned(), Owner { service, pinned });
            Ok(())
        }
        _ => {
            // Another replica may have recorded an owner meanwhile: the store's word is final.
            let stored = shared.store.claim_owner(proxy, service, pinned, now_ms());
            let (owner_service, owner_pinned) = match stored {
                Ok(owner) => owner,
                Err(e) => {
                    // Refuse rather than let an unrecorded owner be taken over after a restart.
                    tracing::error!(error = %e, proxy, "cannot record the sidecar's owner");
                    return Err(Status::unavailable("the control plane cannot record this sidecar now; retry"));
                }
            };
            owners.insert(proxy.to_owned(), Owner { service: owner_service.clone(), pinned: owner_pinned });
            if owner_service != service {
                drop(owners);
                return refuse(format!("sidecar \"{proxy}\" belongs to service \"{owner_service}\""));
            }
            if owner_pinned && !pinned {
                drop(owners);
                return refuse(format!("sidecar \"{proxy}\" has a credential of its own"));
            }
            Ok(())
        }
    }
}

/// Serves `rampart.v1.RampControl` with the stream's own framing ([`crate::wire`]); the
/// messages are the generated ones, so any gRPC client of the proto talks to it.
#[derive(Debug, Clone)]
pub(crate) struct ConnectService {
    pub(crate) service: Arc<Service>,
    pub(crate) auth: Arc<Auth>,
}

impl tonic::server::NamedService for ConnectService {
    const NAME: &'static str = "rampart.v1.RampControl";
}

/// The service's one method.
const CONNECT_PATH: &str = "/rampart.v1.RampControl/Connect";

impl tonic::codegen::Service<hyper::http::Request<tonic::body::Body>> for ConnectService {
    type Response = hyper::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(request).await.unwrap_or_else(Status::into_http)) })
    }
}

impl ConnectService {
    async fn serve(
        &self,
        request: hyper::http::Request<tonic::body::Body>,
    ) -> Result<hyper::http::Response<tonic::body::Body>, Status> {
        if request.uri().path() != CONNECT_PATH {
            return Err(Status::unimplemented(format!("no method {}", request.uri().path())));
        }
        if request.headers().get("grpc-encoding").is_some_and(|e| e != "identity") {
            return Err(Status::unimplemented("this stream accepts no compression"));
        }
        let (parts, body) = request.into_parts();
        let checked = self.auth.check(Request::from_http(hyper::http::Request::from_parts(parts, ())))?;
        let identity = checked.extensions().get::<Identity>().cloned();
        let rx = self.service.connect(identity, Inbound::new(body, crate::MAX_REPORT_BYTES)).await?;
        let mut response = hyper::http::Response::new(tonic::body::Body::new(Outgoing::new(rx)));
        response
            .headers_mut()
            .insert(hyper::http::header::CONTENT_TYPE, hyper::http::HeaderValue::from_static("application/grpc"));
        Ok(response)
    }
}

impl Service {
    /// Admits a sidecar's stream and starts serving it; the receiver carries its answers.
    async fn connect(
        &self,
        identity: Option<Identity>,
        mut inbound: Inbound<ProxyMessage>,
    ) -> Result<mpsc::Receiver<Outbound>, Status> {
        let hello = match inbound.message().await? {
            Some(ProxyMessage { msg: Some(proxy_message::Msg::Hello(h)) }) if !h.proxy_id.is_empty() => h,
            _ => return Err(Status::invalid_argument("the first message must be a Hello with a proxy_id")),
        };
        if hello.proxy_id.len() > MAX_NAME_BYTES || hello.service.len() > MAX_NAME_BYTES {
            return Err(Status::invalid_argument(format!("proxy_id and service are at most {MAX_NAME_BYTES} bytes")));
        }
        // With credentials configured, a stream is what its credential says, not what its Hello
        // claims.
        if let Some(identity) = &identity {
            admit(&self.shared, identity, &hello.service, &hello.proxy_id)?;
        }
        let key = (hello.proxy_id.clone(), hello.epoch);
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        // With replicas, the sidecar may have reported to another one since: the store knows.
        if let Some(r) = &self.shared.replicas {
            match r.pg.seq_async(&key).await {
                Ok(seq) => {
                    lock(&self.shared.seqs).insert(key.clone(), seq);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a sidecar's sequence");
                    return Err(Status::unavailable("the control plane cannot read its store now; retry"));
                }
            }
        }
        let last_applied = lock(&self.shared.seqs).get(&key).copied().unwrap_or(0);
        lock(&self.shared.proxies).insert(
            hello.proxy_id.clone(),
            ProxyInfo {
                proxy_id: hello.proxy_id.clone(),
                service: hello.service.clone(),
                epoch: hello.epoch,
                connected: true,
                flags_version: hello.flags_version,
                connected_ms: now_ms(),
                last_report_ms: None,
                last_seq: last_applied,
                unresponsive: false,
                stream: stream_id,
            },
        );
        self.shared.metrics.connected.increment(1.0);
        tracing::info!(proxy = %hello.proxy_id, service = %hello.service, epoch = hello.epoch, last_applied, "sidecar connected");

        // Room for every report in flight's answer, and for flags pushes besides.
        let (tx, rx) = mpsc::channel::<Outbound>(MAX_IN_FLIGHT_PER_STREAM + 8);
        let mut flags = self.shared.flags.subscribe();
        let current = flags.borrow_and_update().clone();
        let welcome =
            ControlMessage { msg: Some(control_message::Msg::Welcome(Welcome { last_applied_seq: last_applied })) };
        // The channel is fresh and larger than two messages: these cannot fail for lack of room.
        let _ = tx.try_send(Ok(welcome));
        let _ = tx.try_send(Ok(flags_message(&current)));

        let (shared, ingest, shutdown) = (self.shared.clone(), self.ingest.clone(), self.shutdown.clone());
        let origin = Arc::new(Origin {
            key,
            service: hello.service,
            stream: stream_id,
            out: tx.clone(),
            in_flight: AtomicUsize::new(0),
            ended: CancellationToken::new(),
        });
        self.tasks.spawn(async move {
            let key = &origin.key;
            // The report being handed to ingest; while it waits for room nothing more is read.
            let mut submitting: Option<Submitting> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    // Ingest refused a report and said why on the stream.
                    () = origin.ended.cancelled() => break,
                    changed = flags.changed() => {
                        if changed.is_err() { break; }
                        let f = flags.borrow_and_update().clone();
                        if tx.send(Ok(flags_message(&f))).await.is_err() { break; }
                    }
                    submitted = async { submitting.as_mut().expect("guarded").await }, if submitting.is_some() => {
                        submitting = None;
                        match submitted {
                            Ok(()) => {}
                            Err(Refused::Saturated) => {
                                shared.metrics.shed();
                                tracing::debug!(proxy = %key.0, "more reports unanswered than a sidecar sends: shed, stream ended");
                                let _ = tx.send(Err(shed_status())).await;
                                break;
                            }
                            Err(Refused::Closed) => break,
                        }
                    }
                    msg = inbound.message(), if submitting.is_none() => match msg {
                        Ok(Some(ProxyMessage { msg: Some(proxy_message::Msg::Report(report)) })) => {
                            let size = prost::Message::encoded_len(&report);
                            let (ingest, origin, shared) = (ingest.clone(), origin.clone(), shared.clone());
                            submitting = Some(Box::pin(async move {
                                ingest.submit(&origin, report, size, &shared.metrics).await
                            }));
                        }
                        Ok(Some(ProxyMessage { msg: Some(proxy_message::Msg::FlagsApplied(applied)) })) => {
                            if let Some(p) = lock(&shared.proxies).get_mut(&key.0).filter(|p| p.stream == stream_id) {
                                p.flags_version = applied.version;
                                p.unresponsive = false;
                            }
                            crate::ramp::engine::flags_applied(&shared, now_ms());
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(proxy = %key.0, %status, "sidecar stream error");
                            break;
                        }
                    }
                }
            }
            if let Some(p) = lock(&shared.proxies).get_mut(&key.0).filter(|p| p.stream == stream_id) {
                p.connected = false;
            }
            shared.metrics.connected.decrement(1.0);
            tracing::info!(proxy = %key.0, "sidecar disconnected");
        });
        Ok(rx)
    }
}
