//! flagd's `flagd.evaluation.v2.Service` over gRPC, on the same port as v1: the same resolvers,
//! with `value` and `variant` proto3-optional — a zero value is sent explicitly, and a flag that
//! gives no variant (disabled, `defaultVariant: null`) sends neither, so the caller's default
//! applies.

use std::pin::Pin;
use std::sync::Arc;

use rampart_proto::flagd::evaluation::v2 as pb;
use rampart_proto::flagd::evaluation::v2::service_server::{Service, ServiceServer};
use tonic::Status;

use super::Engine;
use super::convert::json_to_struct;
use super::grpc::{self, Typed, context, event_stream, status};

/// Path prefix of the service's methods.
pub(super) const PREFIX: &str = "/flagd.evaluation.v2.Service/";

pub(super) fn server(engine: Arc<Engine>) -> ServiceServer<V2> {
    ServiceServer::new(V2 { engine }).max_decoding_message_size(super::MAX_MESSAGE)
}

/// The tonic service.
#[derive(Debug)]
pub(super) struct V2 {
    engine: Arc<Engine>,
}

type Req<T> = tonic::Request<T>;
type Resp<T> = Result<tonic::Response<T>, Status>;
type Events = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EventStreamResponse, Status>> + Send>>;

fn parts<T>(t: Typed<T>) -> (Option<T>, String, Option<String>, Option<prost_types::Struct>) {
    (t.value, t.reason, t.variant, Some(t.metadata))
}

#[tonic::async_trait]
impl Service for V2 {
    async fn resolve_boolean(&self, req: Req<pb::ResolveBooleanRequest>) -> Resp<pb::ResolveBooleanResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let (value, reason, variant, metadata) =
            parts(grpc::boolean(&self.engine, &msg.flag_key, &ctx).map_err(status)?);
        Ok(tonic::Response::new(pb::ResolveBooleanResponse { value, reason, variant, metadata }))
    }

    async fn resolve_string(&self, req: Req<pb::ResolveStringRequest>) -> Resp<pb::ResolveStringResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let (value, reason, variant, metadata) =
            parts(grpc::string(&self.engine, &msg.flag_key, &ctx).map_err(status)?);
        Ok(tonic::Response::new(pb::ResolveStringResponse { value, reason, variant, metadata }))
    }

    async fn resolve_float(&self, req: Req<pb::ResolveFloatRequest>) -> Resp<pb::ResolveFloatResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let (value, reason, variant, metadata) = parts(grpc::float(&self.engine, &msg.flag_key, &ctx).map_err(status)?);
        Ok(tonic::Response::new(pb::ResolveFloatResponse { value, reason, variant, metadata }))
    }

    async fn resolve_int(&self, req: Req<pb::ResolveIntRequest>) -> Resp<pb::ResolveIntResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let (value, reason, variant, metadata) = parts(grpc::int(&self.engine, &msg.flag_key, &ctx).map_err(status)?);
        Ok(tonic::Response::new(pb::ResolveIntResponse { value, reason, variant, metadata }))
    }

    async fn resolve_object(&self, req: Req<pb::ResolveObjectRequest>) -> Resp<pb::ResolveObjectResponse> {
        let (msg, ctx) = context(&self.engine, req, |m| m.context.take());
        let (value, reason, variant, metadata) =
            parts(grpc::object(&self.engine, &msg.flag_key, &ctx).map_err(status)?);
        let value = value.map(|v| json_to_struct(&v));
        Ok(tonic::Response::new(pb::ResolveObjectResponse { value, reason, variant, metadata }))
    }

    type EventStreamStream = Events;

    async fn event_stream(&self, _req: Req<pb::EventStreamRequest>) -> Resp<Events> {
        let events = event_stream(&self.engine, |r#type, data| pb::EventStreamResponse { r#type, data });
        Ok(tonic::Response::new(Box::pin(events)))
    }
}
