//! `rampart proxy` as a real process: SIGTERM drains an in-flight request, and gigabyte bodies
//! stream through with flat memory.

#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;

struct Running {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rampart proxy` in front of `upstream` on an ephemeral port, read back from its log.
fn start(upstream: SocketAddr, extra: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flags.yaml"),
        "flags:\n  f:\n    state: ENABLED\n    variants: {a: 1, b: 2}\n    defaultVariant: a\n",
    )
    .unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\nflags = \"flags.yaml\"\n{extra}\n"
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["proxy", "--config"])
        .arg(dir.path().join("proxy.toml"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("proxy exited before serving").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Running { child, addr, _dir: dir }
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_request() {
    let mut up = upstream().await;
    let mut proxy = start(up.addr, "drain_timeout = \"10s\"");
    let url = format!("http://{}/slow?ms=800", proxy.addr);
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    assert_eq!(up.arrivals.recv().await.as_deref(), Some("/slow"));
    terminate(proxy.child.id());
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"path\":\"/slow\""));
    let exit = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// Sends SIGTERM with `kill(1)`, which keeps the workspace free of `unsafe`.
fn terminate(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Peak resident memory of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_gigabyte_each_way_keeps_memory_flat() {
    let up = upstream().await;
    let proxy = start(up.addr, "");
    let gib: u64 = 1 << 30;

    let resp = client()
        .request(Request::get(format!("http://{}/bytes?n={gib}", proxy.addr)).body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, gib);

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, hyper::Error>>(2);
    tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'y'; 1 << 20]);
        for _ in 0..1024 {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let resp = client().request(Request::post(format!("http://{}/up", proxy.addr)).body(body).unwrap()).await.unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(report["body_bytes"], gib);

    let peak = peak_rss_kib(proxy.child.id());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB after 2 GiB streamed: bodies must not be buffered");
}
