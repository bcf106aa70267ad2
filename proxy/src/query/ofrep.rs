//! OFREP, the OpenFeature Remote Evaluation Protocol: `POST /ofrep/v1/evaluate/flags/{key}` and the
//! bulk `POST /ofrep/v1/evaluate/flags` (with `ETag` / `If-None-Match` → 304). Status codes and
//! error bodies follow the OFREP OpenAPI definition and flagd's answers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rampart_flags::Resolution;
use serde_json::{Map, Value, json};

use super::{Engine, QueryError, metadata, resolve, resolve_all};

const MAX_BODY: usize = 1 << 20;
const SINGLE: &str = "/ofrep/v1/evaluate/flags/";
const BULK: &str = "/ofrep/v1/evaluate/flags";

pub(super) fn service(
    engine: Arc<Engine>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
> + Send
+ 'static {
    hyper::service::service_fn(move |req| {
        let engine = engine.clone();
        async move { Ok(handle(&engine, req).await) }
    })
}

async fn handle(engine: &Engine, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let key = match path.strip_prefix(SINGLE) {
        Some(k) if !k.is_empty() => Some(k.to_owned()),
        _ if path == BULK || path == SINGLE => None,
        _ => return respond(StatusCode::NOT_FOUND, &json!({"errorDetails": "not an OFREP path"})),
    };
    if req.method() != Method::POST {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, &json!({"errorDetails": "OFREP evaluations are POST"}));
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (parts, body) = req.into_parts();
    let bad = |code: &str, details: &str| {
        let mut body = json!({"errorCode": code, "errorDetails": details});
        if let Some(k) = &key {
            body["key"] = Value::String(k.clone());
        }
        respond(StatusCode::BAD_REQUEST, &body)
    };
    let Ok(bytes) = Limited::new(body, MAX_BODY).collect().await.map(|b| b.to_bytes()) else {
        return bad("PARSE_ERROR", "request body unreadable or over 1 MiB");
    };
    let caller = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(mut m)) => match m.remove("context") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(c)) => c,
                Some(_) => return bad("INVALID_CONTEXT", "context must be a JSON object"),
            },
            Ok(_) => return bad("PARSE_ERROR", "the body must be a JSON object"),
            Err(e) => return bad("PARSE_ERROR", &format!("the body is not JSON: {e}")),
        }
    };
    let ctx = engine.context(caller, &parts.headers);
    let snapshot = engine.current.load();
    match key {
        Some(key) => match resolve(&snapshot, &key, &ctx) {
            Ok((flag, r)) => respond(StatusCode::OK, &success(&key, &r, metadata(&snapshot.flags, flag))),
            Err(e) => {
                let (status, body) = failure(&key, e);
                respond(status, &body)
            }
        },
        None => {
            let flags: Vec<Value> = match resolve_all(&snapshot, &ctx) {
                Ok(all) => all
                    .into_iter()
                    .map(|(flag, r)| match r {
                        Ok(r) => success(flag.key(), &r, metadata(&snapshot.flags, flag)),
                        Err(e) => failure(flag.key(), e).1,
                    })
                    .collect(),
                Err(_) => return bad("INVALID_CONTEXT", "context must be a JSON object"),
            };
            let body = json!({"flags": flags, "metadata": snapshot.flags.metadata()}).to_string();
            // The ETag names this exact answer: it changes when the flags or the result change.
            let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
            let matches = parts
                .headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim() == etag || t.trim() == "*");
            let mut r = if matches {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                raw(StatusCode::OK, Bytes::from(body))
            };
            if let Ok(v) = HeaderValue::try_from(etag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
    }
}

/// `{key, value, reason, variant, metadata}`; without `value` and `variant` when the flag defers
/// to the caller's default (`defaultVariant: null`) or is disabled (reason `DISABLED`, `200`, as
/// current flagd answers it).
fn success(key: &str, r: &Resolution<'_>, metadata: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("key".to_owned(), Value::String(key.to_owned()));
    if let Some(v) = r.variant {
        m.insert("value".to_owned(), v.value().clone());
        m.insert("variant".to_owned(), Value::String(v.name().to_owned()));
    }
    m.insert("reason".to_owned(), Value::String(r.reason.as_str().to_owned()));
    m.insert("metadata".to_owned(), Value::Object(metadata));
    Value::Object(m)
}

/// Status and body of a failed evaluation.
fn failure(key: &str, e: QueryError) -> (StatusCode, Value) {
    let (status, code, details) = match e {
        QueryError::NotFound => (StatusCode::NOT_FOUND, "FLAG_NOT_FOUND", format!("flag `{key}` does not exist")),
        QueryError::TypeMismatch => (StatusCode::BAD_REQUEST, "TYPE_MISMATCH", e.to_string()),
        QueryError::InvalidContext => (StatusCode::BAD_REQUEST, "INVALID_CONTEXT", e.to_string()),
        QueryError::Evaluation(code) => (StatusCode::BAD_REQUEST, code.as_str(), e.to_string()),
    };
    (status, json!({"key": key, "errorCode": code, "errorDetails": details}))
}

fn respond(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    raw(status, Bytes::from(v.to_string()))
}

fn raw(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
