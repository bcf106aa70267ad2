//! A control plane running inside the test process, on ephemeral loopback ports, with its config
//! and SQLite store in a directory of the test's; and the sidecar-stream helpers the stream tests
//! share.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rampart_proto::rampart::v1::{ControlMessage, control_message};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running control plane: its gRPC and HTTP addresses; `stop` ends it.
pub struct Control {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub stop: CancellationToken,
}

/// Starts a control plane configured by `config` (TOML; paths relative to `dir`).
pub async fn start(dir: &Path, config: &str) -> Control {
    let config = rampart_control::Config::parse(&dir.join("control.toml"), config).unwrap();
    let control = rampart_control::Control::open(&config).unwrap();
    let (grpc, http) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(control.run(grpc, http, stop.clone()));
    Control { grpc: grpc_addr, http: http_addr, stop }
}

/// The sequence of the first `StatsAck` on `inbound` (within 10 s).
pub async fn first_ack(inbound: &mut tonic::Streaming<ControlMessage>) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = inbound.message().await.unwrap() {
            if let Some(control_message::Msg::Ack(a)) = m.msg {
                return a.seq;
            }
        }
        0
    })
    .await
    .unwrap()
}
