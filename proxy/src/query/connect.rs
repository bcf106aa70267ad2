//! Connect unary JSON for flagd's services, on the gRPC port: `POST
//! /flagd.evaluation.v1.Service/ResolveBoolean` (or `.v2.`) with `Content-Type: application/json`
//! and the request message in proto3 JSON (`{"flagKey": …, "context": {…}}`), as flagd answers
//! it. In v2 a flag without a variant (disabled, `defaultVariant: null`) has no `value` and no
//! `variant`; v1 writes their zero values.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tonic::body::Body;

use super::convert::struct_to_json;
use super::grpc::{self, Typed};
use super::{Engine, QueryError};

/// Largest request body read.
const MAX_BODY: usize = 1 << 20;
const PREFIX: &str = "/flagd.evaluation.v1.Service/";
const PREFIX_V2: &str = "/flagd.evaluation.v2.Service/";

/// A Connect error: its code name and HTTP status, as the Connect protocol maps them.
#[derive(Debug, Clone, Copy)]
enum Code {
    InvalidArgument,
    NotFound,
    DataLoss,
    Unknown,
    Unimplemented,
}

impl Code {
    fn parts(self) -> (&'static str, StatusCode) {
        match self {
            Code::InvalidArgument => ("invalid_argument", StatusCode::BAD_REQUEST),
            Code::NotFound => ("not_found", StatusCode::NOT_FOUND),
            Code::DataLoss => ("data_loss", StatusCode::INTERNAL_SERVER_ERROR),
            Code::Unknown => ("unknown", StatusCode::INTERNAL_SERVER_ERROR),
            Code::Unimplemented => ("unimplemented", StatusCode::NOT_IMPLEMENTED),
        }
    }
}

fn code(e: QueryError) -> Code {
    match e {
        QueryError::NotFound => Code::NotFound,
        QueryError::TypeMismatch | QueryError::InvalidContext => Code::InvalidArgument,
        QueryError::Evaluation(rampart_flags::ErrorCode::ParseError) => Code::DataLoss,
        QueryError::Evaluation(_) => Code::Unknown,
    }
}

pub(super) async fn handle(engine: &Engine, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let v2 = path.starts_with(PREFIX_V2);
    let Some(method) = path.strip_prefix(PREFIX).or_else(|| path.strip_prefix(PREFIX_V2)).map(str::to_owned) else {
        return error(
            Code::NotFound,
            StatusCode::NOT_FOUND,
            "no such service; try POST /flagd.evaluation.v1.Service/ResolveBoolean",
        );
    };
    if req.method() != Method::POST {
        return error(Code::Unimplemented, StatusCode::METHOD_NOT_ALLOWED, "Connect unary calls are POST");
    }
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        return error(
            Code::Unimplemented,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this port speaks gRPC (application/grpc) and Connect JSON (application/json)",
        );
    }
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(Code::InvalidArgument, StatusCode::BAD_REQUEST, "request body unreadable or over 1 MiB");
        }
    };
    let mut msg = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => m,
        _ => return error(Code::InvalidArgument, StatusCode::BAD_REQUEST, "the body must be a JSON object"),
    };
    let caller = match msg.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => c,
        Some(_) => return error(Code::InvalidArgument, StatusCode::BAD_REQUEST, "context must be a JSON object"),
    };
    let ctx = engine.context(caller, &parts.headers);
    let key = msg.get("flagKey").or_else(|| msg.get("flag_key")).and_then(Value::as_str).unwrap_or_default();
    let answer = match method.as_str() {
        "ResolveBoolean" => grpc::boolean(engine, key, &ctx).map(|t| typed(t, v2, Value::Bool)),
        "ResolveString" => grpc::string(engine, key, &ctx).map(|t| typed(t, v2, Value::String)),
        "ResolveFloat" => grpc::float(engine, key, &ctx).map(|t| typed(t, v2, Value::from)),
        // proto3 JSON writes int64 as a string.
        "ResolveInt" => grpc::int(engine, key, &ctx).map(|t| typed(t, v2, |v| Value::String(v.to_string()))),
        "ResolveObject" => grpc::object(engine, key, &ctx).map(|t| typed(t, v2, Value::Object)),
        "ResolveAll" if !v2 => grpc::all(engine, &ctx).map(|all| {
            let flags: Map<String, Value> = all
                .flags
                .into_iter()
                .map(|(k, f)| {
                    use rampart_proto::flagd::evaluation::v1::any_flag::Value as V;
                    let mut m = Map::new();
                    m.insert("reason".to_owned(), Value::String(f.reason));
                    m.insert("variant".to_owned(), Value::String(f.variant));
                    match f.value {
                        Some(V::BoolValue(b)) => m.insert("boolValue".to_owned(), Value::Bool(b)),
                        Some(V::StringValue(s)) => m.insert("stringValue".to_owned(), Value::String(s)),
                        Some(V::DoubleValue(d)) => m.insert("doubleValue".to_owned(), Value::from(d)),
                        Some(V::ObjectValue(o)) => m.insert("objectValue".to_owned(), Value::Object(struct_to_json(o))),
                        None => None,
                    };
                    m.insert("metadata".to_owned(), Value::Object(f.metadata.map(struct_to_json).unwrap_or_default()));
                    (k, Value::Object(m))
                })
                .collect();
            json!({"flags": flags, "metadata": all.metadata.map(struct_to_json).unwrap_or_default()})
        }),
        "EventStream" => {
            return error(Code::Unimplemented, StatusCode::NOT_IMPLEMENTED, "EventStream is served over gRPC only");
        }
        _ => return error(Code::Unimplemented, StatusCode::NOT_FOUND, "no such method"),
    };
    match answer {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => {
            let c = code(e);
            error(c, c.parts().1, &e.to_string())
        }
    }
}

fn typed<T: Default>(t: Typed<T>, v2: bool, value: impl FnOnce(T) -> Value) -> Value {
    let mut m = Map::new();
    match (t.value, t.variant) {
        (Some(v), Some(name)) => {
            m.insert("value".to_owned(), value(v));
            m.insert("variant".to_owned(), Value::String(name));
        }
        _ if v2 => {}
        _ => {
            m.insert("value".to_owned(), value(T::default()));
            m.insert("variant".to_owned(), Value::String(String::new()));
        }
    }
    m.insert("reason".to_owned(), Value::String(t.reason));
    m.insert("metadata".to_owned(), Value::Object(struct_to_json(t.metadata)));
    Value::Object(m)
}

fn error(code: Code, status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({"code": code.parts().0, "message": message}))
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
