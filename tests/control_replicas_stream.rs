//! Exactly once across replicas, at the protocol: two control planes in-process on one real
//! PostgreSQL (started by the test), and a sidecar speaking `RampControl/Connect` by hand. When it
//! moves to the other replica, that one's Welcome carries the sequence the first applied; a report
//! already applied is acknowledged and not counted, whichever replica it reaches — also at the
//! replica whose view of the sequence is stale (its stream still open from before the move).

mod inprocess;
mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rampart_proto::rampart::v1::ramp_control_client::RampControlClient;
use rampart_proto::rampart::v1::{
    ControlMessage, Hello, ProxyMessage, StatsReport, VariantStats, control_message, proxy_message,
};
use serde_json::Value;
use support::*;
use tokio::sync::mpsc;

const FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { a: 1, b: 2 }\n    defaultVariant: a\n";

/// A hand-driven sidecar stream: what it sends, and what it receives.
struct Stream {
    out: mpsc::Sender<ProxyMessage>,
    inbound: tonic::Streaming<ControlMessage>,
}

impl Stream {
    /// Connects as sidecar `p` (epoch 1); the Welcome's last applied sequence.
    async fn open(grpc: SocketAddr) -> (Stream, u64) {
        let (out, rx) = mpsc::channel(16);
        let hello = Hello { proxy_id: "p".into(), service: "s".into(), flags_version: 0, epoch: 1 };
        out.send(ProxyMessage { msg: Some(proxy_message::Msg::Hello(hello)) }).await.unwrap();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = RampControlClient::new(channel).connect(outbound).await.unwrap().into_inner();
        let welcome = match inbound.message().await.unwrap().and_then(|m| m.msg) {
            Some(control_message::Msg::Welcome(w)) => w.last_applied_seq,
            other => panic!("expected a Welcome, got {other:?}"),
        };
        (Stream { out, inbound }, welcome)
    }

    /// Sends report `seq` (5 requests of `banner`/`a`) and waits for its acknowledgement.
    async fn report(&mut self, seq: u64) {
        let stats =
            vec![VariantStats { flag: "banner".into(), variant: "a".into(), requests: 5, ..Default::default() }];
        let report = StatsReport { seq, first_seq: seq, stats, ..Default::default() };
        self.out.send(ProxyMessage { msg: Some(proxy_message::Msg::Report(report)) }).await.unwrap();
        let acked = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = self.inbound.message().await.unwrap() {
                if let Some(control_message::Msg::Ack(a)) = m.msg {
                    return a.seq;
                }
            }
            0
        })
        .await
        .unwrap();
        assert_eq!(acked, seq);
    }
}

async fn requests(http: SocketAddr) -> u64 {
    let (status, body) = get(&format!("http://{http}/api/v1/stats/banner"), &[]).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["variants"]["a"]["requests"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_moving_between_replicas_is_counted_exactly_once() {
    let pg = process::postgres::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let config = |name: &str| format!("flags = \"flags.yaml\"\nstore = \"{}\"\nreplica = \"{name}\"\n", pg.url());
    let a = inprocess::start(dir.path(), &config("a")).await;
    let b = inprocess::start(dir.path(), &config("b")).await;

    let (mut on_a, welcome) = Stream::open(a.grpc).await;
    assert_eq!(welcome, 0);
    for seq in 1..=3 {
        on_a.report(seq).await;
    }
    // The sidecar moves to b while its stream to a is still open.
    let (mut on_b, welcome) = Stream::open(b.grpc).await;
    assert_eq!(welcome, 3, "b knows what a applied");
    on_b.report(3).await; // a resend: acknowledged, not counted
    on_b.report(4).await;
    assert_eq!(requests(b.http).await, 20);
    // a still believes 3 is the last: its stale view must not count 4 again.
    on_a.report(4).await;
    for http in [a.http, b.http] {
        assert_eq!(requests(http).await, 20, "every replica sums every replica's totals");
    }
    // And back on a, the next report counts.
    on_a.report(5).await;
    assert!(eventually(Duration::from_secs(5), || async { requests(b.http).await == 25 }).await);
    let (_, metrics) = get(&format!("http://{}/metrics", a.http), &[]).await;
    assert!(metrics.contains("rampart_control_reports_duplicate_total 1"), "{metrics}");
    a.stop.cancel();
    b.stop.cancel();
}
