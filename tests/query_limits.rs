//! A sidecar process's memory stays bounded while 1 000 gRPC streams on its flag-query port each
//! announce a 4 MiB message and send 15 bytes: each is refused at once (OUT_OF_RANGE) instead of
//! reserving 4 MiB apiece, and the sidecar goes on serving. The real `rampart proxy` binary, its
//! RSS read from /proc, raw HTTP/2 from this test.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::sync::mpsc;

const FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    defaultVariant: \"off\"\n";

/// The resident set of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB");
    kb.trim().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_grpc_messages_hold_no_memory() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let config = dir.path().join("proxy.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nflags = \"flags.yaml\"\n\
         [queries]\ngrpc = \"127.0.0.1:0\"\nofrep = \"off\"\n",
        up.addr
    );
    std::fs::write(&config, text).unwrap();
    let sidecar = process::start(&["proxy"], &config, "rampart proxy serving");
    let (grpc, listen, pid) = (sidecar.addr("grpc"), sidecar.addr("listen"), sidecar.pid());
    assert_eq!(get(&format!("http://{listen}/"), &[]).await.0, http::StatusCode::OK);
    let before = rss(pid);
    let mut bodies = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..16 {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(grpc).await.unwrap());
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..63 {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            // A message announcing 4 MiB, then 15 bytes of it, then nothing.
            let mut prefix = vec![0u8];
            prefix.extend_from_slice(&(4u32 << 20).to_be_bytes());
            prefix.extend_from_slice(&[7u8; 15]);
            tx.send(Ok(Frame::data(Bytes::from(prefix)))).await.unwrap();
            bodies.push(tx);
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
            let req = http::Request::post("http://localhost/flagd.evaluation.v1.Service/ResolveBoolean")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(body)
                .unwrap();
            let mut send = send.clone();
            answers.push(tokio::spawn(async move {
                let resp = send.send_request(req).await.unwrap();
                let grpc_status = resp.headers().get("grpc-status").cloned();
                let trailers = resp.into_body().collect().await.ok().and_then(|c| c.trailers().cloned());
                grpc_status.or_else(|| trailers.and_then(|t| t.get("grpc-status").cloned()))
            }));
        }
    }
    assert_eq!(answers.len(), 1_008);
    for a in answers {
        let status = tokio::time::timeout(Duration::from_secs(20), a).await.unwrap().unwrap();
        assert_eq!(status.as_ref().map(|v| v.as_bytes()), Some(&b"11"[..]), "OUT_OF_RANGE: {status:?}");
    }
    let grown = rss(pid).saturating_sub(before);
    println!("sidecar RSS grew by {} KiB for 1 008 stalled 4 MiB messages", grown / 1024);
    assert!(grown < 64 << 20, "the stalled messages hold {grown} bytes");
    drop(bodies);
    assert_eq!(get(&format!("http://{listen}/"), &[]).await.0, http::StatusCode::OK);
}
