//! The service behind the sidecars in the ramp tests: answers with the `x-flag-new-checkout`
//! variant it saw, and fails (500) the requests a rule picks — a broken treatment, or an incident
//! that hits everyone.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Decides from the variant (if any) whether a request fails.
pub type Rule = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// Serves on an ephemeral loopback port until the test's runtime ends.
pub async fn checkout_upstream(rule: Rule) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let rule = rule.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let variant = req.headers().get("x-flag-new-checkout").map(|v| v.to_str().unwrap_or("").to_owned());
                    let fail = rule(variant.as_deref());
                    let mut resp = Response::new(Full::new(Bytes::from(variant.unwrap_or_default())));
                    if fail {
                        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}
