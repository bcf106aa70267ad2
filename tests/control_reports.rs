//! Reports the control plane must not drop, over a real gRPC stream to a real control plane (SQLite
//! in a temporary directory): a delta in which a variant has more errors than requests (several
//! proxy workers can produce one, see `rampart_stats::SeriesStats`) is applied and acknowledged —
//! a variant whose every request fails is exactly the one to see — and it rolls the ramp back.
//! And a sidecar that stays connected but never confirms the rollback's flags does not hold back
//! its acknowledgement past the deadline.

mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{Hello, ProxyMessage, SplitStats, StatsReport, VariantStats, proxy_message};
use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = "flags = \"flags.yaml\"\nstore = \"c.db\"\n";
const FLAGS: &str = "flags:\n  new-checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    defaultVariant: \"off\"\n";

fn variant(name: &str, requests: u64, errors: u64, units: u64, failing: u64) -> VariantStats {
    VariantStats {
        flag: "new-checkout".into(),
        variant: name.into(),
        requests,
        errors,
        split: Some(SplitStats { requests, errors, units, failing_units: failing, ..SplitStats::default() }),
        ..VariantStats::default()
    }
}

fn report(seq: u64, stats: Vec<VariantStats>) -> ProxyMessage {
    ProxyMessage {
        msg: Some(proxy_message::Msg::Report(StatsReport { seq, first_seq: seq, stats, ..StatsReport::default() })),
    }
}

async fn api(http: SocketAddr, path: &str) -> Value {
    let (_, body) = get(&format!("http://{http}{path}"), &[]).await;
    serde_json::from_str(&body).unwrap()
}

/// A control plane with a ramp of `new-checkout` at 10%, and a sidecar stream that sends one
/// report in which every treatment request failed, then stays open (confirming nothing).
async fn rolled_back_by_a_report()
-> (SocketAddr, CancellationToken, tonic::Streaming<rampart_proto::rampart::v1::ControlMessage>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let control = inprocess::start(dir.path(), CONFIG).await;
    let (grpc_addr, http_addr, stop) = (control.grpc, control.http, control.stop);

    let start = r#"{"flag": "new-checkout", "treatment": "on", "steps": [10, 100]}"#;
    let (code, _, answer) = post_json(&format!("http://{http_addr}/api/v1/ramps"), start, &[]).await;
    assert!(code.is_success(), "{answer}");

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}")).unwrap().connect().await.unwrap();
    let mut client = RampControlClient::new(channel);
    let hello = ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(Hello {
            proxy_id: "p".into(),
            service: "shop".into(),
            flags_version: 0,
            epoch: 7,
        })),
    };
    // Every treatment request failed, and a worker counted three failures whose requests land in
    // the next report: 3 errors of 2 requests.
    let messages = vec![hello, report(1, vec![variant("on", 2, 3, 2, 2), variant("off", 98, 0, 98, 0)])];
    let outbound = tokio_stream::StreamExt::chain(tokio_stream::iter(messages), tokio_stream::pending());
    let inbound = client.connect(outbound).await.unwrap().into_inner();
    (http_addr, stop, inbound, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_with_more_errors_than_requests_is_counted_and_rolls_the_ramp_back() {
    let (http_addr, stop, mut inbound, _dir) = rolled_back_by_a_report().await;
    let acked = inprocess::first_ack(&mut inbound).await;
    assert_eq!(acked, 1);
    let stats = api(http_addr, "/api/v1/stats/new-checkout").await;
    assert_eq!(
        (stats["variants"]["on"]["requests"].as_u64(), stats["variants"]["on"]["errors"].as_u64()),
        (Some(2), Some(3))
    );
    // The next engine tick sees the window.
    assert!(
        eventually(Duration::from_secs(5), || async {
            api(http_addr, "/api/v1/ramps/new-checkout").await["state"] == "rolled_back"
        })
        .await,
        "{:#}",
        api(http_addr, "/api/v1/ramps/new-checkout").await
    );
    // The engine's own decision is in the audit trail, with the version that turned it off.
    let trail = api(http_addr, "/api/v1/audit?flag=new-checkout").await;
    let rollback = trail["audit"].as_array().unwrap().iter().find(|a| a["action"] == "ramp_rollback").unwrap();
    assert_eq!(rollback["actor"], "engine", "{trail}");
    assert!(rollback["version"].as_u64().is_some(), "{trail}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_never_confirms_does_not_hold_back_the_acknowledgement() {
    let (http_addr, stop, _inbound, _dir) = rolled_back_by_a_report().await;
    let acked = eventually(Duration::from_secs(15), || async {
        api(http_addr, "/api/v1/ramps/new-checkout").await["rollback_acked_ms"].is_i64()
    })
    .await;
    let ramp = api(http_addr, "/api/v1/ramps/new-checkout").await;
    assert!(acked, "{ramp:#}");
    let after = ramp["rollback_acked_ms"].as_i64().unwrap() - ramp["rollback_ms"].as_i64().unwrap();
    assert!(after >= 5_000, "acknowledged {after} ms after the decision, before the deadline");
    let event =
        ramp["events"].as_array().unwrap().iter().find(|e| e["kind"] == "rollback_acknowledged").unwrap().clone();
    assert!(event["detail"].as_str().unwrap().contains("unresponsive (no confirmation within 5 s): p"), "{event}");
    let proxies = api(http_addr, "/api/v1/proxies").await;
    assert_eq!(proxies["proxies"][0]["connected"], true, "{proxies}");
    assert_eq!(proxies["proxies"][0]["unresponsive"], true, "{proxies}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_longer_than_a_flag_file_allows_are_refused_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let control = inprocess::start(dir.path(), CONFIG).await;
    let (grpc_addr, http_addr, stop) = (control.grpc, control.http, control.stop);
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}")).unwrap().connect().await.unwrap();
    let mut client = RampControlClient::new(channel);
    let hello = |proxy_id: String| ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(Hello { proxy_id, service: "shop".into(), flags_version: 0, epoch: 1 })),
    };
    let refused = client.connect(tokio_stream::iter([hello("p".repeat(1_000))])).await;
    let refused = match refused {
        Ok(resp) => resp.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);

    let long = VariantStats { flag: "f".repeat(1_000), ..variant("on", 5, 0, 5, 0) };
    let mut message = report(1, vec![long, variant("on", 5, 0, 5, 0)]);
    // A window end no clock gives: the ingest delay it implies must not overflow.
    if let Some(proxy_message::Msg::Report(r)) = &mut message.msg {
        r.window_end_ms = i64::MIN;
    }
    let messages = vec![hello("p".into()), message];
    let outbound = tokio_stream::StreamExt::chain(tokio_stream::iter(messages), tokio_stream::pending());
    let mut inbound = client.connect(outbound).await.unwrap().into_inner();
    let acked = inprocess::first_ack(&mut inbound).await;
    assert_eq!(acked, 1, "the report is applied");
    assert_eq!(api(http_addr, "/api/v1/stats/new-checkout").await["variants"]["on"]["requests"], 5);
    let (status, _) = get(&format!("http://{http_addr}/api/v1/stats/{}", "f".repeat(1_000)), &[]).await;
    assert_eq!(status, http::StatusCode::NOT_FOUND, "the over-long series was dropped");
    let (_, metrics) = get(&format!("http://{http_addr}/metrics"), &[]).await;
    assert!(metrics.contains("rampart_control_series_refused_total 1"), "{metrics}");
    stop.cancel();
}
