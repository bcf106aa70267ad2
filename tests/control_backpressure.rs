//! Past its ingest capacity the control plane pushes back and loses nothing: a real control plane
//! (SQLite file in a temporary directory) with an ingest queue of one report takes bursts from
//! several sidecar streams over real gRPC. A report that does not fit waits for room while its
//! stream reads nothing more (HTTP/2 flow control holds the rest on the sidecar's side); the waits
//! are counted in `/metrics`, no stream is shed or ended, and every report is acknowledged on the
//! stream it came on. Then the totals equal what was sent: each report counted exactly once.

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

/// One sidecar: sends all its reports at once (no waiting for acks) on one stream and reads the
/// answers until every report is acknowledged; flags pushes may come in between.
async fn sidecar(grpc: SocketAddr, index: u64) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let (tx, rx) = mpsc::channel(REPORTS as usize + 1);
    let hello = Hello { proxy_id: format!("p{index}"), service: "shop".into(), flags_version: 0, epoch: 7 };
    tx.try_send(ProxyMessage { msg: Some(proxy_message::Msg::Hello(hello)) }).unwrap();
    let mut inbound =
        RampControlClient::new(channel.clone()).connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut pending: VecDeque<u64> = (1..=REPORTS).collect();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), inbound.message()).await.expect("an answer");
        match message.expect("the stream is not ended") {
            Some(ControlMessage { msg: Some(control_message::Msg::Welcome(w)) }) => {
                assert_eq!(w.last_applied_seq, 0);
                for &seq in &pending {
                    tx.try_send(report(index, seq)).unwrap();
                }
            }
            Some(ControlMessage { msg: Some(control_message::Msg::Ack(a)) }) => {
                assert_eq!(pending.front(), Some(&a.seq), "acknowledged in order, once each");
                pending.pop_front();
            }
            Some(_) => {}
            None => panic!("the control plane ended a stream"),
        }
        if pending.is_empty() {
            return;
        }
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_past_capacity_wait_for_room_and_are_applied_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let control = inprocess::start(dir.path(), CONFIG).await;

    let mut sidecars = tokio::task::JoinSet::new();
    for i in 0..SIDECARS {
        sidecars.spawn(sidecar(control.grpc, i));
    }
    while let Some(s) = sidecars.join_next().await {
        s.unwrap();
    }

    let (_, metrics) = get(&format!("http://{}/metrics", control.http), &[]).await;
    let waited = metric(&metrics, "rampart_control_reports_waited_total");
    assert!(waited > 0.0, "bursts of {SIDECARS}×{REPORTS} reports into a queue of one never waited");
    assert_eq!(metric(&metrics, "rampart_control_reports_shed_total"), 0.0, "nothing is shed");
    assert_eq!(metric(&metrics, "rampart_control_reports_applied_total"), (SIDECARS * REPORTS) as f64);
    assert_eq!(metric(&metrics, "rampart_control_streams_waiting_for_ingest"), 0.0, "no stream waits now");
    assert_eq!(metric(&metrics, "rampart_control_ingest_saturated"), 0.0, "not saturated any more");
    assert!(metrics.contains("rampart_control_ingest_queue_reports "), "{metrics}");

    let (_, body) = get(&format!("http://{}/api/v1/stats/new-checkout", control.http), &[]).await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sent: u64 = (0..SIDECARS).flat_map(|i| (1..=REPORTS).map(move |seq| requests(i, seq))).sum();
    assert_eq!(stats["variants"]["on"]["requests"], sent, "each report counted exactly once");
    control.stop.cancel();
}
