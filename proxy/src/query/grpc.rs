//! flagd's `flagd.evaluation.v1.Service` over gRPC, routed by content type on one port with
//! Connect unary JSON ([`super::connect`]), and by path with `flagd.evaluation.v2.Service`
//! ([`super::v2`]) and `flagd.sync.v1.FlagSyncService` ([`super::sync`]). The typed resolvers and
//! the `EventStream` producer here are shared by all.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use prost_types::Struct;
use rampart_flags::{Reason, ValueKind};
use rampart_proto::flagd::evaluation::v1 as pb;
use rampart_proto::flagd::evaluation::v1::service_server::{Service, ServiceServer};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Service as _;
use tonic::{Status, body::Body};

use super::convert::{json_to_struct, struct_to_json};
use super::events::Change;
use super::{Engine, Query, QueryError, metadata, resolve, resolve_all};

/// The port's service: gRPC (`application/grpc…`) to tonic, anything else to Connect.
pub(super) fn service(
    engine: Arc<Engine>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> + Send
+ 'static {
    let v1 = ServiceServer::new(Flagd { engine: engine.clone() }).max_decoding_message_size(super::MAX_MESSAGE);
    let v2 = super::v2::server(engine.clone());
    let sync = super::sync::server(engine.clone());
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let path = req.uri().path();
        let service = if path.starts_with(super::v2::PREFIX) {
            Grpc::V2
        } else if path.starts_with(super::sync::PREFIX) {
            Grpc::Sync
        } else {
            Grpc::V1
        };
        let (mut v1, mut v2, mut sync, engine) = (v1.clone(), v2.clone(), sync.clone(), engine.clone());
        async move {
            match (is_grpc, service) {
                (false, _) => Ok(super::connect::handle(&engine, req).await),
                (true, Grpc::V1) => v1.call(req).await,
                (true, Grpc::V2) => v2.call(req).await,
                (true, Grpc::Sync) => sync.call(req).await,
            }
        }
    })
}

/// The gRPC services on the port, by path.
#[derive(Debug, Clone, Copy)]
enum Grpc {
    V1,
    V2,
    Sync,
}

/// The tonic service.
#[derive(Debug)]
struct Flagd {
    engine: Arc<Engine>,
}

/// A typed resolution before it becomes one of the five response messages.
/// `value` and `variant` are `None` when the flag gives no variant (disabled, `defaultVariant:
/// null`): v2 then sends neither (the caller's default applies), v1 sends their zero values.
pub(super) struct Typed<T> {
    pub(super) value: Option<T>,
    pub(super) reason: String,
    pub(super) variant: Option<String>,
    pub(super) metadata: Struct,
}

/// Resolves `key` as a `kind` flag; `get` reads the variant's value.
fn typed<T>(
    engine: &Engine,
    key: &str,
    ctx: &Query,
    kind: ValueKind,
    get: impl FnOnce(&Value) -> Option<T>,
) -> Result<Typed<T>, QueryError> {
    let snapshot = engine.current.load();
    let (flag, r) = resolve(&snapshot, key, ctx)?;
    let (value, variant) = match r.variant {
        Some(_) if flag.kind() != kind => return Err(QueryError::TypeMismatch),
        Some(v) => (Some(get(v.value()).ok_or(QueryError::TypeMismatch)?), Some(v.name().to_owned())),
        None => (None, None),
    };
    Ok(Typed {
        value,
        reason: r.reason.as_str().to_owned(),
        variant,
        metadata: json_to_struct(&metadata(&snapshot.flags, flag)),
    })
}

pub(super) fn boolean(e: &Engine, key: &str, ctx: &Query) -> Result<Typed<bool>, QueryError> {
    typed(e, key, ctx, ValueKind::Bool, Value::as_bool)
}

pub(super) fn string(e: &Engine, key: &str, ctx: &Query) -> Result<Typed<String>, QueryError> {
    typed(e, key, ctx, ValueKind::String, |v| v.as_str().map(str::to_owned))
}

pub(super) fn float(e: &Engine, key: &str, ctx: &Query) -> Result<Typed<f64>, QueryError> {
    typed(e, key, ctx, ValueKind::Number, Value::as_f64)
}

/// Integers as flagd resolves them: a fractional number is truncated.
pub(super) fn int(e: &Engine, key: &str, ctx: &Query) -> Result<Typed<i64>, QueryError> {
    typed(e, key, ctx, ValueKind::Number, |v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

pub(super) fn object(e: &Engine, key: &str, ctx: &Query) -> Result<Typed<Map<String, Value>>, QueryError> {
    typed(e, key, ctx, ValueKind::Object, |v| v.as_object().cloned())
}

/// Every flag that resolves to a value, and every disabled flag (reason `DISABLED`, no value), as
/// flagd's `ResolveAll` (v1) lists them; flags that fail or defer to the caller's default are
/// left out.
pub(super) fn all(e: &Engine, ctx: &Query) -> Result<pb::ResolveAllResponse, QueryError> {
    let snapshot = e.current.load();
    let mut flags = std::collections::HashMap::new();
    for (flag, r) in resolve_all(&snapshot, ctx)? {
        let Ok(r) = r else { continue };
        let Some(v) = r.variant else {
            if r.reason == Reason::Disabled {
                let metadata = Some(json_to_struct(&metadata(&snapshot.flags, flag)));
                let reason = r.reason.as_str().to_owned();
                flags.insert(
                    flag.key().to_owned(),
                    pb::AnyFlag { reason, variant: String::new(), value: None, metadata },
                );
            }
            continue;
        };
        let value = match v.value() {
            Value::Bool(b) => pb::any_flag::Value::BoolValue(*b),
            Value::String(s) => pb::any_flag::Value::StringValue(s.clone()),
            Value::Number(n) => pb::any_flag::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
            Value::Object(o) => pb::any_flag::Value::ObjectValue(json_to_struct(o)),
            Value::Null | Value::Array(_) => continue,
        };
        flags.insert(
            flag.key().to_owned(),
            pb::AnyFlag {
                reason: r.reason.as_str().to_owned(),
                variant: v.name().to_owned(),
                value: Some(value),
                metadata: Some(json_to_struct(&metadata(&snapshot.flags, flag))),
            },
        );
    }
    Ok(pb::ResolveAllResponse { flags, metadata: Some(json_to_struct(snapshot.flags.metadata())) })
}

/// gRPC status of a failed query, with flagd's codes and messages.
pub(super) fn status(e: QueryError) -> Status {
    match e {
        QueryError::NotFound => Status::not_found(e.to_string()),
        QueryError::TypeMismatch | QueryError::InvalidContext => Status::invalid_argument(e.to_string()),
        QueryError::Evaluation(rampart_flags::ErrorCode::ParseError) => Status::data_loss(e.to_string()),
        QueryError::Evaluation(_) => Status::unknown(e.to_string()),
    }
}

/// The context of a gRPC request: its `context` plus the configured enrichment from metadata.
pub(super) fn context<T>(
    engine: &Engine,
    req: tonic::Request<T>,
    ctx: impl FnOnce(&mut T) -> Option<Struct>,
) -> (T, Query) {
    let (metadata, _, mut msg) = req.into_parts();
    let caller = ctx(&mut msg).map(struct_to_json).unwrap_or_default();
    let ctx = engine.context(caller, &metadata.into_headers());
    (msg, ctx)
}

type Req<T> = tonic::Request<T>;
type Resp<T> = Result<tonic::Response<T>, Status>;
type Events = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EventStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Service for Flagd {
    async fn resolve_boolean(&self, req: Req<pb::ResolveBooleanRequest>) -> Resp<pb::ResolveBooleanResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let t = boolean(&self.engine, &msg.flag_key, &ctx).map_err(status)?;
        let (value, reason, variant, metadata) =
            (t.value.unwrap_or_default(), t.reason, t.variant.unwrap_or_default(), Some(t.metadata));
        Ok(tonic::Response::new(pb::ResolveBooleanResponse { value, reason, variant, metadata }))
    }

    async fn resolve_string(&self, req: Req<pb::ResolveStringRequest>) -> Resp<pb::ResolveStringResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let t = string(&self.engine, &msg.flag_key, &ctx).map_err(status)?;
        let (value, reason, variant, metadata) =
            (t.value.unwrap_or_default(), t.reason, t.variant.unwrap_or_default(), Some(t.metadata));
        Ok(tonic::Response::new(pb::ResolveStringResponse { value, reason, variant, metadata }))
    }

    async fn resolve_float(&self, req: Req<pb::ResolveFloatRequest>) -> Resp<pb::ResolveFloatResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let t = float(&self.engine, &msg.flag_key, &ctx).map_err(status)?;
        let (value, reason, variant, metadata) =
            (t.value.unwrap_or_default(), t.reason, t.variant.unwrap_or_default(), Some(t.metadata));
        Ok(tonic::Response::new(pb::ResolveFloatResponse { value, reason, variant, metadata }))
    }

    async fn resolve_int(&self, req: Req<pb::ResolveIntRequest>) -> Resp<pb::ResolveIntResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let t = int(&self.engine, &msg.flag_key, &ctx).map_err(status)?;
        let (value, reason, variant, metadata) =
            (t.value.unwrap_or_default(), t.reason, t.variant.unwrap_or_default(), Some(t.metadata));
        Ok(tonic::Response::new(pb::ResolveIntResponse { value, reason, variant, metadata }))
    }

    async fn resolve_object(&self, req: Req<pb::ResolveObjectRequest>) -> Resp<pb::ResolveObjectResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let t = object(&self.engine, &msg.flag_key, &ctx).map_err(status)?;
        let value = Some(json_to_struct(&t.value.unwrap_or_default()));
        let (reason, variant, metadata) = (t.reason, t.variant.unwrap_or_default(), Some(t.metadata));
        Ok(tonic::Response::new(pb::ResolveObjectResponse { value, reason, variant, metadata }))
    }

    async fn resolve_all(&self, req: Req<pb::ResolveAllRequest>) -> Resp<pb::ResolveAllResponse> {
        let (_, ctx) = context(&self.engine, req, |m| m.context.take());
        all(&self.engine, &ctx).map(tonic::Response::new).map_err(status)
    }

    type EventStreamStream = Events;

    async fn event_stream(
        &self,
        _req: tonic::Request<pb::EventStreamRequest>,
    ) -> Result<tonic::Response<Events>, Status> {
        let events = event_stream(&self.engine, |r#type, data| pb::EventStreamResponse { r#type, data });
        Ok(tonic::Response::new(Box::pin(events)))
    }
}

/// flagd's `EventStream` (v1 and v2 alike, `make` builds the message): `provider_ready` at once,
/// `configuration_change` per new snapshot that changed a flag, `keep_alive` every interval. The
/// producer stops when the client goes or the sidecar shuts down.
pub(super) fn event_stream<M: Send + 'static>(
    engine: &Arc<Engine>,
    make: fn(String, Option<Struct>) -> M,
) -> ReceiverStream<Result<M, Status>> {
    let (tx, rx) = mpsc::channel(16);
    let mut changes = engine.events.subscribe();
    let engine = engine.clone();
    engine.tasks.clone().spawn(async move {
        let send = |kind: &str, data: Option<Struct>| tx.send(Ok(make(kind.to_owned(), data)));
        if send("provider_ready", None).await.is_err() {
            return;
        }
        let every = engine.keep_alive;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let event = tokio::select! {
                () = engine.shutdown.cancelled() => return,
                () = tx.closed() => return,
                _ = tick.tick() => ("keep_alive", None),
                change = changes.recv() => match change {
                    Ok(change) => ("configuration_change", Some(change_data(&change))),
                    // Fell behind: every flag may have changed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let snapshot = engine.current.load();
                        let keys = snapshot.flags.flags().iter().map(|f| (f.key().to_owned(), super::events::ChangeKind::Update)).collect();
                        ("configuration_change", Some(change_data(&Change { version: snapshot.version, flags: keys })))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if send(event.0, event.1).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// flagd's `configuration_change` data: `{"flags": {key: {"type": "write"|"update"|"delete"}}}`.
fn change_data(change: &Change) -> Struct {
    let flags: Map<String, Value> = change
        .flags
        .iter()
        .map(|(k, kind)| (k.clone(), serde_json::json!({"type": kind.as_str(), "source": "rampart"})))
        .collect();
    let mut data = Map::new();
    data.insert("flags".to_owned(), Value::Object(flags));
    data.insert("version".to_owned(), Value::from(change.version));
    json_to_struct(&data)
}
