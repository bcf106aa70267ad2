//! A sidecar stream is what its credential says: with service-bound tokens, a stream cannot speak
//! for another service, nor take over a sidecar id of another service; and a flag scoped to its
//! services (`metadata.services`) counts evidence only from them. A real control plane, real gRPC.

mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;

use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{Hello, ProxyMessage, StatsReport, VariantStats, proxy_message};
use serde_json::Value;
use support::*;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
  billing-v2:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    metadata: { services: "billing" }
"#;
const SHOP: &str = "shop-token-0123456789";
const BILLING: &str = "billing-token-0123456789";

fn hello(proxy_id: &str, service: &str) -> ProxyMessage {
    ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(Hello {
            proxy_id: proxy_id.into(),
            service: service.into(),
            flags_version: 0,
            epoch: 1,
        })),
    }
}

fn series(flag: &str, requests: u64, errors: u64) -> VariantStats {
    VariantStats { flag: flag.into(), variant: "on".into(), requests, errors, ..VariantStats::default() }
}

/// Opens a stream with `token` and sends `messages`; the first answer, or the refusal.
async fn stream(
    grpc: SocketAddr,
    token: &str,
    messages: Vec<ProxyMessage>,
) -> Result<tonic::Streaming<rampart_proto::rampart::v1::ControlMessage>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let mut client = RampControlClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let outbound = tokio_stream::StreamExt::chain(tokio_stream::iter(messages), tokio_stream::pending());
    let mut inbound = client.connect(outbound).await?.into_inner();
    // The refusal of a Hello comes as the stream's first answer.
    match inbound.message().await {
        Ok(_) => Ok(inbound),
        Err(status) => Err(status),
    }
}

async fn api(http: SocketAddr, path: &str) -> Value {
    let (_, body) = get(&format!("http://{http}{path}"), &[]).await;
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_speaks_only_for_its_credential_and_flags_count_only_their_services() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    std::fs::write(dir.path().join("tokens"), format!("# service token\nshop {SHOP}\nbilling {BILLING}\n")).unwrap();
    let text = "flags = \"flags.yaml\"\nstore = \"c.db\"\ntokens_file = \"tokens\"\n";
    let control = inprocess::start(dir.path(), text).await;
    let (grpc_addr, http_addr) = (control.grpc, control.http);

    // The shop's token cannot say it is billing.
    let refused = stream(grpc_addr, SHOP, vec![hello("not-billing", "billing")]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // As itself, the shop reports; its evidence about billing's flag is dropped, the rest counts.
    let report = ProxyMessage {
        msg: Some(proxy_message::Msg::Report(StatsReport {
            seq: 1,
            first_seq: 1,
            stats: vec![series("billing-v2", 1_000, 1_000), series("new-checkout", 10, 0)],
            ..StatsReport::default()
        })),
    };
    let mut shop = stream(grpc_addr, SHOP, vec![hello("shop-1", "shop"), report]).await.unwrap();
    let acked = inprocess::first_ack(&mut shop).await;
    assert_eq!(acked, 1);
    assert_eq!(api(http_addr, "/api/v1/stats/new-checkout").await["variants"]["on"]["requests"], 10);
    let billing = api(http_addr, "/api/v1/stats/billing-v2").await;
    assert!(billing["variants"].as_object().is_none_or(|v| v.is_empty()), "{billing}");
    let (_, metrics) = get(&format!("http://{http_addr}/metrics"), &[]).await;
    assert!(metrics.contains("rampart_control_series_out_of_scope_total 1"), "{metrics}");

    // Billing's token cannot take over the shop's sidecar id.
    let refused = stream(grpc_addr, BILLING, vec![hello("shop-1", "billing")]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let (_, metrics) = get(&format!("http://{http_addr}/metrics"), &[]).await;
    assert!(metrics.contains("rampart_control_streams_refused_total 2"), "both refusals counted: {metrics}");
    control.stop.cancel();
}
