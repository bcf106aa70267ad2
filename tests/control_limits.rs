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

fn series(flag: &str, variant: &str) -> rampart_proto::rampart::v1::VariantStats {
    rampart_proto::rampart::v1::VariantStats {
        flag: flag.into(),
        variant: variant.into(),
        requests: 3,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_are_capped_to_the_definitions_and_expire_after_the_retention() {
    use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
    use rampart_proto::rampart::v1::{Hello, ProxyMessage, StatsReport, proxy_message};

    let dir = tempfile::tempdir().unwrap();
    let flags = format!("{FLAGS}  old:\n    state: ENABLED\n    variants: {{ a: 1 }}\n    defaultVariant: a\n");
    std::fs::write(dir.path().join("flags.yaml"), flags).unwrap();
    let control = inprocess::start(dir.path(), "flags = \"flags.yaml\"\nstore = \"c.db\"\nretention = \"1s\"\n").await;
    let (grpc, http) = (control.grpc, control.http);

    // One report: two defined series, and 100 000 series of flags nobody defined.
    let mut stats = vec![series("banner", "a"), series("old", "a"), series("banner", "nope")];
    stats.extend((0..100_000).map(|i| series(&format!("made-up-{i}"), "x")));
    let hello = Hello { proxy_id: "p".into(), service: "s".into(), flags_version: 0, epoch: 1 };
    let report = StatsReport { seq: 1, first_seq: 1, stats, ..Default::default() };
    let messages = vec![
        ProxyMessage { msg: Some(proxy_message::Msg::Hello(hello)) },
        ProxyMessage { msg: Some(proxy_message::Msg::Report(report)) },
    ];
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let outbound = tokio_stream::StreamExt::chain(tokio_stream::iter(messages), tokio_stream::pending());
    let mut inbound = RampControlClient::new(channel).connect(outbound).await.unwrap().into_inner();
    assert_eq!(inprocess::first_ack(&mut inbound).await, 1);
    let requests = |flag: &'static str| async move {
        let (status, body) = get(&format!("http://{http}/api/v1/stats/{flag}"), &[]).await;
        (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["variants"]["a"]["requests"].clone())
    };
    assert_eq!(requests("banner").await.1, 3);
    assert_eq!(requests("old").await.1, 3);
    assert_eq!(requests("made-up-7").await.0, http::StatusCode::NOT_FOUND);
    let (_, metrics) = get(&format!("http://{http}/metrics"), &[]).await;
    // Past the first 10 000 series of a report the rest are refused unread; of those 10 000,
    // all but the two defined ones name flags or variants nobody defined.
    assert!(metrics.contains("rampart_control_series_refused_total 90003"), "{metrics}");
    assert!(metrics.contains("rampart_control_series_unknown_total 9998"), "{metrics}");

    // `old` is removed from the definitions: its idle series expires; `banner`'s stays.
    let (status, answer) = put_yaml(http, FLAGS.to_owned()).await;
    assert!(status.is_success(), "{answer}");
    let expired = eventually(std::time::Duration::from_secs(10), || async {
        requests("old").await.0 == http::StatusCode::NOT_FOUND
    })
    .await;
    assert!(expired, "the removed flag's series expired");
    assert_eq!(requests("banner").await.1, 3, "a defined flag's series stays");
    control.stop.cancel();
}
