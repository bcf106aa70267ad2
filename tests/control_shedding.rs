//! Past its ingest capacity the control plane sheds reports explicitly and loses none: a real
//! control plane (SQLite file in a temporary directory) with an ingest queue of one report takes
//! bursts from several sidecar streams over real gRPC. Reports that do not fit end their stream with
//! `RESOURCE_EXHAUSTED` and a pushback, counted in `/metrics`; each simulated sidecar keeps what is
//! unacknowledged, reconnects and resends what its Welcome says is not applied (as
//! `proxy/src/reporter` does), until everything is acknowledged. Then the totals equal what was sent:
//! each report counted exactly once.

mod inprocess;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{
    ControlMessage, Hello, ProxyMessage, StatsReport, VariantStats, control_message, proxy_message,
};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CONFIG: &str = "flags = \"flags.yaml\"\nstore = \"c.db\"\ningest_queue = 1\n";
const FLAGS: &str = "flags:\n  new-checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    defaultVariant: \"off\"\n";
const SIDECARS: u64 = 8;
const REPORTS: u64 = 12;
/// Most streams one sidecar may need (each shed costs one).
const MAX_STREAMS: usize = 200;

/// Report `seq` of sidecar `sidecar`: a request count no other report has, so a report counted
/// twice or lost shows in the total.
fn requests(sidecar: u64, seq: u64) -> u64 {
    sidecar * 1000 + seq
}

fn report(sidecar: u64, seq: u64) -> ProxyMessage {
    let stats = vec![VariantStats {
        flag: "new-checkout".into(),
        variant: "on".into(),
        requests: requests(sidecar, seq),
        ..VariantStats::default()
    }];
    ProxyMessage {
        msg: Some(proxy_message::Msg::Report(StatsReport { seq, first_seq: seq, stats, ..StatsReport::default() })),
    }
}

/// One sidecar: sends all its reports at once (no waiting for acks), and after each shed opens a
/// new stream and resends what is not applied. Returns how many times it was shed.
async fn sidecar(grpc: SocketAddr, index: u64) -> u64 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut pending: VecDeque<u64> = (1..=REPORTS).collect();
    for shed in 0..MAX_STREAMS as u64 {
        let (tx, rx) = mpsc::channel(REPORTS as usize + 1);
        let hello = Hello { proxy_id: format!("p{index}"), service: "shop".into(), flags_version: 0, epoch: 7 };
        tx.try_send(ProxyMessage { msg: Some(proxy_message::Msg::Hello(hello)) }).unwrap();
        let mut inbound =
            RampControlClient::new(channel.clone()).connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let ended = loop {
            let message = tokio::time::timeout(Duration::from_secs(30), inbound.message()).await.expect("an answer");
            match message {
                Ok(Some(ControlMessage { msg: Some(control_message::Msg::Welcome(w)) })) => {
                    pending.retain(|&seq| seq > w.last_applied_seq);
                    for &seq in &pending {
                        // The server may end the stream while we send: its status follows below.
                        let _ = tx.try_send(report(index, seq));
                    }
                }
                Ok(Some(ControlMessage { msg: Some(control_message::Msg::Ack(a)) })) => {
                    pending.retain(|&seq| seq > a.seq);
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the control plane ended a stream without a status"),
                Err(status) => break status,
            }
            if pending.is_empty() {
                return shed;
            }
        };
        assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
        let pushback = ended.metadata().get("grpc-retry-pushback-ms").expect("a pushback").to_str().unwrap();
        assert!(pushback.parse::<u64>().unwrap() > 0);
        // A real sidecar waits the pushback; this one comes back at once, to shed again sooner.
    }
    panic!("sidecar {index} still has {} reports pending after {MAX_STREAMS} streams", pending.len());
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_past_capacity_are_shed_counted_and_applied_exactly_once_after() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let control = inprocess::start(dir.path(), CONFIG).await;

    let mut sidecars = tokio::task::JoinSet::new();
    for i in 0..SIDECARS {
        sidecars.spawn(sidecar(control.grpc, i));
    }
    let mut shed = 0;
    while let Some(s) = sidecars.join_next().await {
        shed += s.unwrap();
    }

    let (_, metrics) = get(&format!("http://{}/metrics", control.http), &[]).await;
    assert!(shed > 0, "bursts of {SIDECARS}×{REPORTS} reports into a queue of one were all taken");
    assert_eq!(metric(&metrics, "rampart_control_reports_shed_total"), shed as f64, "every shed is counted");
    assert_eq!(metric(&metrics, "rampart_control_reports_applied_total"), (SIDECARS * REPORTS) as f64);
    assert!(metrics.contains("rampart_control_ingest_saturated "), "{metrics}");
    assert!(metrics.contains("rampart_control_ingest_queue_reports "), "{metrics}");

    let (_, body) = get(&format!("http://{}/api/v1/stats/new-checkout", control.http), &[]).await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sent: u64 = (0..SIDECARS).flat_map(|i| (1..=REPORTS).map(move |seq| requests(i, seq))).sum();
    assert_eq!(stats["variants"]["on"]["requests"], sent, "each report counted exactly once");
    control.stop.cancel();
}
