//! One-off HTTP calls of the orchestrating modes (sanity checks, the control plane's API), with a
//! timeout each; the measured traffic goes through `load` instead.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("{method} {uri}: {source}")]
    Request {
        method: Method,
        uri: Uri,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{method} {uri}: reading the body: {source}")]
    Body {
        method: Method,
        uri: Uri,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {uri}: timed out")]
    Timeout { method: Method, uri: Uri },
    #[error("{method} {uri}: bad request: {source}")]
    Build {
        method: Method,
        uri: Uri,
        #[source]
        source: hyper::http::Error,
    },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request; returns the status and the body as text.
pub(crate) async fn call(
    method: Method,
    uri: &Uri,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> Result<(u16, String), CallError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder().method(method.clone()).uri(uri.clone());
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let payload = match body {
        Some(v) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = builder.body(Full::new(payload)).map_err(|source| CallError::Build {
        method: method.clone(),
        uri: uri.clone(),
        source,
    })?;
    let fetch = async {
        let resp = client.request(req).await.map_err(|source| CallError::Request {
            method: method.clone(),
            uri: uri.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|source| CallError::Body {
            method: method.clone(),
            uri: uri.clone(),
            source,
        })?;
        Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| CallError::Timeout { method: method.clone(), uri: uri.clone() })?
}
