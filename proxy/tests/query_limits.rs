//! The flag-query ports bound what a context may be: one of 95 000 keys is refused (a wide one
//! within the bounds is evaluated, in linear time), while the sidecar goes on serving. A real
//! sidecar with its query listeners. (Stalled gRPC messages: `tests/query_limits.rs`, against a
//! sidecar process whose memory is measured alone.)

mod support;

use http::StatusCode;
use support::*;

const FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    defaultVariant: \"off\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_contexts_are_refused() {
    let up = upstream().await;
    let q = sidecar_with_queries(up.addr, FLAGS, "").await;
    // The attack's size: 95 000 keys in about 800 KB.
    let keys: Vec<String> = (0..95_000).map(|i| format!("\"{i}\":0")).collect();
    let body = format!("{{\"context\":{{{}}}}}", keys.join(","));
    let url = format!("http://{}/ofrep/v1/evaluate/flags/banner", q.ofrep);
    let (status, _, answer) = post_json(&url, &body, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["errorCode"], "INVALID_CONTEXT", "{answer}");
    // Within the bounds, a wide context is evaluated.
    let keys: Vec<String> = (0..1_000).map(|i| format!("\"k{i}\":{i}")).collect();
    let body = format!("{{\"context\":{{\"targetingKey\":\"u1\",{}}}}}", keys.join(","));
    let (status, _, answer) = post_json(&url, &body, &[]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(get(&q.sc.url("/"), &[]).await.0, StatusCode::OK);
}
