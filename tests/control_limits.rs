//! The control plane's flags PUT is bounded and parsed off its runtime: concurrent deeply nested
//! YAML bodies are refused with a located error while `/healthz` and the sidecar streams' API
//! keep answering, and a body over the flags size cap is refused before it is parsed. A real
//! control plane (SQLite in a temporary directory), real HTTP.

mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::*;

const FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { a: 1, b: 2 }\n    defaultVariant: a\n";

async fn put_yaml(http: SocketAddr, body: String) -> (http::StatusCode, Value) {
    let req = http::Request::put(format!("http://{http}/api/v1/flags"))
        .header("content-type", "application/yaml")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
        .unwrap();
    let (status, _, text) = send(req).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_flags_puts_are_refused_while_the_control_plane_answers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let control = inprocess::start(dir.path(), "flags = \"flags.yaml\"\nstore = \"c.db\"\n").await;
    let http = control.http;

    // Four concurrent 120 KB bodies nested 60 000 deep (the attack that took 14–28 s each).
    let deep = format!("flags:\n  banner:\n    targeting: {}1{}\n", "[".repeat(60_000), "]".repeat(60_000));
    let puts: Vec<_> = (0..4).map(|_| tokio::spawn(put_yaml(http, deep.clone()))).collect();
    for _ in 0..20 {
        assert_eq!(get(&format!("http://{http}/healthz"), &[]).await.0, http::StatusCode::OK);
    }
    for p in puts {
        let (status, answer) = p.await.unwrap();
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "{answer}");
        let problem = answer["problems"][0].as_str().unwrap_or_default().to_owned();
        assert!(problem.starts_with("request body:3:"), "located: {problem}");
        assert!(problem.contains("nested deeper than 128 levels"), "{problem}");
    }

    // Over the 16 MiB cap: refused without being parsed.
    let (status, _) = put_yaml(http, format!("{FLAGS}# {}\n", "x".repeat(17 << 20))).await;
    assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
    let (_, body) = get(&format!("http://{http}/api/v1/flags"), &[]).await;
    assert!(body.contains("banner"), "the flags are unchanged: {body}");
    control.stop.cancel();
}
