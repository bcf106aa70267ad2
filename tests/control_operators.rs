//! Only operators steer the control plane: with `api_tokens_file`, the HTTP API refuses anonymous
//! requests (401) and roles too low for the action (403), as JSON; the CLI sends its token from
//! `RAMPART_TOKEN` or `--token-file`; every change is in the audit trail with its operator. A real control plane (SQLite in a temporary directory), real
//! HTTP, the real `rampart` binary.

mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{Hello, ProxyMessage, proxy_message};
use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;

const FLAGS: &str = "flags:\n  new-checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    defaultVariant: \"off\"\n";
const ADMIN: &str = "admin-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

async fn control(dir: &std::path::Path) -> (SocketAddr, SocketAddr, CancellationToken) {
    std::fs::write(dir.join("flags.yaml"), FLAGS).unwrap();
    let ops = format!("# name role token\nann admin {ADMIN}\nolga operator {OPERATOR}\nvic viewer {VIEWER}\n");
    std::fs::write(dir.join("operators"), ops).unwrap();
    let text = "flags = \"flags.yaml\"\nstore = \"c.db\"\napi_tokens_file = \"operators\"\n";
    let control = inprocess::start(dir, text).await;
    (control.http, control.grpc, control.stop)
}

/// `method` `path` with an optional bearer token and JSON body: status and JSON answer.
async fn call(http: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
    let mut req = http::Request::builder().method(method).uri(format!("http://{http}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())).map_err(|never| match never {}).boxed())
        .unwrap();
    let (status, _, text) = send(req).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn rampart(http: SocketAddr, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .env("RAMPART_CONTROL_PLANE", format!("http://{http}"))
        .env_remove("RAMPART_TOKEN")
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_with_the_role_steer_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc, stop) = control(dir.path()).await;
    let wipe = r#"{"flags": {}}"#;

    // Anonymous, or with a token nobody has: 401, JSON, and nothing changes.
    let (status, answer) = call(http, "PUT", "/api/v1/flags", None, wipe).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("operator token is required"), "{answer}");
    assert_eq!(
        call(http, "GET", "/api/v1/flags", Some("guessed-token-0123456789"), "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(http, "GET", "/api/v1/proxies", None, "").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(http, "GET", "/healthz", None, "").await.0, StatusCode::OK, "liveness stays open");

    // A viewer reads, and is refused every change (403).
    let (status, flags) = call(http, "GET", "/api/v1/flags", Some(VIEWER), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(flags["flags"]["flags"]["new-checkout"].is_object(), "{flags}");
    let start = r#"{"flag": "new-checkout", "treatment": "on"}"#;
    let (status, answer) = call(http, "POST", "/api/v1/ramps", Some(VIEWER), start).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("\"vic\" is a viewer"), "{answer}");

    // An operator runs ramps but cannot replace the flags; a viewer cannot abort.
    assert_eq!(call(http, "POST", "/api/v1/ramps", Some(OPERATOR), start).await.0, StatusCode::CREATED);
    assert_eq!(call(http, "PUT", "/api/v1/flags", Some(OPERATOR), wipe).await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(http, "POST", "/api/v1/ramps/new-checkout/abort", Some(VIEWER), "").await.0, StatusCode::FORBIDDEN);
    let (_, ramp) = call(http, "GET", "/api/v1/ramps/new-checkout", Some(VIEWER), "").await;
    assert_eq!(ramp["state"], "running");

    // The CLI: refused without a token, let in with RAMPART_TOKEN or --token-file.
    let out = rampart(http, &["ramp", "abort", "new-checkout"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rampart(http, &["ramp", "status", "new-checkout"], &[("RAMPART_TOKEN", VIEWER)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = dir.path().join("olga.token");
    std::fs::write(&file, format!("{OPERATOR}\n")).unwrap();
    let out = rampart(http, &["ramp", "abort", "new-checkout", "--token-file", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("aborted"));

    // A connected sidecar's epoch (what a stream needs to report as it) is not shown to viewers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let hello = ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(Hello {
            proxy_id: "shop-1".into(),
            service: "shop".into(),
            flags_version: 0,
            epoch: 42,
        })),
    };
    let outbound = tokio_stream::StreamExt::chain(tokio_stream::iter([hello]), tokio_stream::pending());
    let _stream = RampControlClient::new(channel).connect(outbound).await.unwrap();
    let listed = |token| async move {
        let (_, list) = call(http, "GET", "/api/v1/proxies", Some(token), "").await;
        list["proxies"][0].clone()
    };
    assert!(eventually(std::time::Duration::from_secs(5), || async { listed(ADMIN).await["epoch"] == 42 }).await);
    let seen = listed(VIEWER).await;
    assert_eq!(seen["proxy_id"], "shop-1");
    assert!(seen.get("epoch").is_none(), "{seen}");

    // An admin replaces the flags.
    let (status, answer) = call(http, "PUT", "/api/v1/flags", Some(ADMIN), wipe).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // The audit trail names who did each change, with the flags version it produced; refused
    // requests changed nothing and left no entry.
    let (status, trail) = call(http, "GET", "/api/v1/audit?flag=new-checkout", Some(VIEWER), "").await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let entries: Vec<(String, String)> = trail["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["actor"].as_str().unwrap().to_owned(), a["action"].as_str().unwrap().to_owned()))
        .collect();
    let want = [("olga", "ramp_start"), ("olga", "ramp_abort"), ("ann", "flags_put")];
    assert_eq!(entries, want.map(|(a, b)| (a.to_owned(), b.to_owned())), "{trail:#}");
    let put = &trail["audit"][2];
    assert_eq!(put["version"].as_u64(), answer["version"].as_u64(), "{put}");
    assert!(put["detail"].as_str().unwrap().starts_with("removed"), "{put}");
    let out = rampart(http, &["audit", "--flag", "new-checkout"], &[("RAMPART_TOKEN", VIEWER)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().count() == 3, "{text}");
    assert!(text.lines().last().unwrap().contains("ann") && text.contains("ramp_abort"), "{text}");
    stop.cancel();
}
