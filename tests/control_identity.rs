//! A sidecar stream is what its credential says: with service-bound tokens, a stream cannot speak
//! for another service, nor take over a sidecar id of another service; a token or certificate
//! pinned to a sidecar is the only one that may speak as it (also after a restart); a report that
//! jumps its sequence is refused without silencing the real sidecar; and a flag scoped to its
//! services (`metadata.services`) counts evidence only from them. A real control plane, real gRPC.

#[path = "../proxy/tests/support/certs.rs"]
mod certs;
mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;

use rampart_proto::rampart::v1::ControlMessage;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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

fn report(seq: u64, stats: Vec<VariantStats>) -> ProxyMessage {
    ProxyMessage {
        msg: Some(proxy_message::Msg::Report(StatsReport { seq, first_seq: seq, stats, ..Default::default() })),
    }
}

/// A stream open on `channel` (with `token`, if any) that has sent `messages`: the sender for
/// more, and the answers after the first; or the refusal.
async fn open(
    channel: Channel,
    token: Option<&str>,
    messages: Vec<ProxyMessage>,
) -> Result<(mpsc::Sender<ProxyMessage>, tonic::Streaming<ControlMessage>), tonic::Status> {
    let bearer = token.map(|t| format!("Bearer {t}").parse::<tonic::metadata::MetadataValue<_>>().unwrap());
    let mut client = RampControlClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    });
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let mut inbound = client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    // The refusal of a Hello comes as the stream's first answer.
    inbound.message().await?;
    Ok((tx, inbound))
}

async fn plain(grpc: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap()
}

/// Opens a stream with `token` and sends `messages`; the answers after the first, or the refusal.
async fn stream(
    grpc: SocketAddr,
    token: &str,
    messages: Vec<ProxyMessage>,
) -> Result<tonic::Streaming<ControlMessage>, tonic::Status> {
    open(plain(grpc).await, Some(token), messages).await.map(|(_, inbound)| inbound)
}

async fn metric(http: SocketAddr, line: &str) -> bool {
    get(&format!("http://{http}/metrics"), &[]).await.1.lines().any(|l| l == line)
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

const SHOP_1: &str = "shop-1-token-0123456789";
const SHOP_2: &str = "shop-2-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_pinned_to_a_token_takes_no_other_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let tokens = format!("shop {SHOP}\nshop/shop-1 {SHOP_1}\nshop/shop-2 {SHOP_2}\nbilling {BILLING}\n");
    std::fs::write(dir.path().join("tokens"), tokens).unwrap();
    let text = "flags = \"flags.yaml\"\nstore = \"c.db\"\ntokens_file = \"tokens\"\n";
    let control = inprocess::start(dir.path(), text).await;
    let grpc = control.grpc;
    let denied = |r: Result<tonic::Streaming<ControlMessage>, tonic::Status>| {
        r.err().map(|s| (s.code(), s.message().to_owned()))
    };

    let other_sidecar = denied(stream(grpc, SHOP_2, vec![hello("shop-1", "shop")]).await).unwrap();
    assert_eq!(other_sidecar.0, tonic::Code::PermissionDenied);
    assert!(other_sidecar.1.contains("for sidecar \"shop-2\""), "{other_sidecar:?}");
    let service_wide = denied(stream(grpc, SHOP, vec![hello("shop-1", "shop")]).await).unwrap();
    assert!(service_wide.1.contains("has a credential of its own"), "{service_wide:?}");
    assert!(stream(grpc, SHOP_1, vec![hello("shop-1", "shop")]).await.is_ok());
    assert!(denied(stream(grpc, SHOP_1, vec![hello("shop-7", "shop")]).await).is_some());
    // An unpinned sidecar id becomes its service's the first time it is used…
    assert!(stream(grpc, SHOP, vec![hello("shop-7", "shop")]).await.is_ok());
    assert!(metric(control.http, "rampart_control_streams_refused_total 3").await);
    control.stop.cancel();

    // …and stays so across a restart of the control plane.
    let control = inprocess::start(dir.path(), text).await;
    let taken = denied(stream(control.grpc, BILLING, vec![hello("shop-7", "billing")]).await).unwrap();
    assert!(taken.1.contains("belongs to service \"shop\""), "{taken:?}");
    assert!(stream(control.grpc, SHOP, vec![hello("shop-7", "shop")]).await.is_ok());
    control.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_names_its_service_and_sidecar() {
    let pki = certs::pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    std::fs::write(dir.path().join("tokens"), format!("shop {SHOP}\n")).unwrap();
    let text = format!(
        "flags = \"flags.yaml\"\nstore = \"c.db\"\ntokens_file = \"tokens\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let control = inprocess::start(dir.path(), &text).await;
    let ca = Certificate::from_pem(std::fs::read(&pki.ca).unwrap());
    let grpc = control.grpc;
    let channel = |cert: Option<(&Path, &Path)>| {
        let mut tls = ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name("localhost");
        if let Some((c, k)) = cert {
            tls = tls.identity(Identity::from_pem(std::fs::read(c).unwrap(), std::fs::read(k).unwrap()));
        }
        async move {
            let endpoint = Endpoint::from_shared(format!("https://localhost:{}", grpc.port())).unwrap();
            endpoint.tls_config(tls).unwrap().connect().await.unwrap()
        }
    };
    let refused = |r: Result<_, tonic::Status>| r.err().map(|s| s.code());

    let (shop9_cert, shop9_key) = pki.client("shop-9", Some("spiffe://rampart.test/shop/shop-9"), "ignored");
    let shop9 = || channel(Some((&shop9_cert, &shop9_key)));
    assert!(open(shop9().await, None, vec![hello("shop-9", "shop")]).await.is_ok());
    assert_eq!(
        refused(open(shop9().await, None, vec![hello("shop-1", "shop")]).await),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        refused(open(shop9().await, None, vec![hello("shop-9", "billing")]).await),
        Some(tonic::Code::PermissionDenied)
    );

    // A subject CN (no SAN) names a service, any of whose sidecars it may be.
    let (billing_cert, billing_key) = pki.client("billing", None, "billing");
    let billing = || channel(Some((&billing_cert, &billing_key)));
    assert!(open(billing().await, None, vec![hello("billing-1", "billing")]).await.is_ok());
    assert_eq!(
        refused(open(billing().await, None, vec![hello("shop-3", "shop")]).await),
        Some(tonic::Code::PermissionDenied)
    );
    // The sidecar the certificate pinned takes no service-wide token either.
    assert_eq!(
        refused(open(channel(None).await, Some(SHOP), vec![hello("shop-9", "shop")]).await),
        Some(tonic::Code::PermissionDenied)
    );
    assert!(open(channel(None).await, Some(SHOP), vec![hello("shop-4", "shop")]).await.is_ok());
    control.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_jump_is_refused_and_the_real_sidecar_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    std::fs::write(dir.path().join("tokens"), format!("shop {SHOP}\n")).unwrap();
    let text = "flags = \"flags.yaml\"\nstore = \"c.db\"\ntokens_file = \"tokens\"\n";
    let control = inprocess::start(dir.path(), text).await;
    let (grpc, http) = (control.grpc, control.http);
    let requests =
        || async move { api(http, "/api/v1/stats/new-checkout").await["variants"]["on"]["requests"].clone() };

    let first = report(1, vec![series("new-checkout", 10, 0)]);
    let (real, mut real_in) = open(plain(grpc).await, Some(SHOP), vec![hello("shop-1", "shop"), first]).await.unwrap();
    assert_eq!(inprocess::first_ack(&mut real_in).await, 1);

    // A stream that learnt the sidecar's id and epoch jumps its sequence to the end: refused.
    let forged = vec![hello("shop-1", "shop"), report(u64::MAX, vec![series("new-checkout", 1, 0)])];
    let (_forger, mut forger_in) = open(plain(grpc).await, Some(SHOP), forged).await.unwrap();
    let refusal = loop {
        match forger_in.message().await {
            Ok(Some(_flags)) => continue,
            Ok(None) => panic!("the stream ended without a refusal"),
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), tonic::Code::FailedPrecondition, "{refusal:?}");
    assert!(refusal.message().contains("jumps past the next sequence number, 2"), "{refusal:?}");
    assert!(metric(http, "rampart_control_sequence_jumps_total 1").await);
    assert_eq!(requests().await, 10);

    // The real sidecar's next report is applied and counted.
    real.send(report(2, vec![series("new-checkout", 5, 0)])).await.unwrap();
    assert_eq!(inprocess::first_ack(&mut real_in).await, 2);
    assert_eq!(requests().await, 15);
    control.stop.cancel();
}
