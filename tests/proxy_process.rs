//! `rampart proxy` as a real process: SIGTERM drains an in-flight request, gigabyte bodies
//! stream through with flat memory, and `workers = 2` serves on two threads.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use process::Running;
use support::*;

/// Starts `rampart proxy` in front of `upstream` on an ephemeral port, read back from its log.
fn start(upstream: SocketAddr, extra: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flags.yaml"),
        "flags:\n  f:\n    state: ENABLED\n    variants: {a: 1, b: 2}\n    defaultVariant: a\n",
    )
    .unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\nflags = \"flags.yaml\"\n{extra}\n\
         [queries]\ngrpc = \"127.0.0.1:0\"\nofrep = \"127.0.0.1:0\"\n"
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    (process::start(&["proxy"], &dir.path().join("proxy.toml"), "rampart proxy serving"), dir)
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_request() {
    let mut up = upstream().await;
    let (mut proxy, _dir) = start(up.addr, "drain_timeout = \"10s\"");
    let url = format!("http://{}/slow?ms=800", proxy.addr("listen"));
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    assert_eq!(up.arrivals.recv().await.as_deref(), Some("/slow"));
    let exit = tokio::task::spawn_blocking(move || proxy.terminate()).await.unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"path\":\"/slow\""));
    assert!(exit.success(), "{exit:?}");
}

/// The voluntary context switches of `pid`'s thread named `name`: one per wait for I/O.
fn thread_waits(pid: u32, name: &str) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(())?;
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")).and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test]
async fn two_workers_each_serve_connections_and_drain_on_sigterm() {
    let mut up = upstream().await;
    let (mut proxy, _dir) = start(up.addr, "workers = 2\ndrain_timeout = \"10s\"");
    let (pid, listen) = (proxy.pid(), proxy.addr("listen"));
    // 32 connections (a client each), 25 requests on each: every one answered, the flag injected.
    let connections: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let client = client();
                for _ in 0..25 {
                    let req = Request::get(format!("http://{listen}/w")).body(empty()).unwrap();
                    let resp = client.request(req).await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                    let seen: serde_json::Value =
                        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
                    assert_eq!(header(&seen["headers"], "x-flag-f").as_deref(), Some("a"), "{seen}");
                }
            })
        })
        .collect();
    for c in connections {
        c.await.unwrap();
    }
    // The kernel spread the connections over both workers' sockets (by their ports: all 32 on
    // one worker is a 1 in 2^31 chance), so the second worker waited for I/O again and again (an
    // idle worker waits a few times at start).
    let waits = thread_waits(pid, "rampart-worker1").expect("a thread named rampart-worker1");
    assert!(waits >= 25, "rampart-worker1 waited for I/O {waits} times while 800 requests were served");

    // In-flight requests on either worker finish before the process exits.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("http://{listen}/slow?ms=800");
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    for _ in 0..4 {
        assert_eq!(up.arrivals.recv().await.as_deref(), Some("/slow"));
    }
    let exit = tokio::task::spawn_blocking(move || proxy.terminate()).await.unwrap();
    for s in slow {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert!(exit.success(), "{exit:?}");
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
    let (proxy, _dir) = start(up.addr, "");
    let gib: u64 = 1 << 30;

    let resp = client()
        .request(Request::get(format!("http://{}/bytes?n={gib}", proxy.addr("listen"))).body(empty()).unwrap())
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
    let resp = client()
        .request(Request::post(format!("http://{}/up", proxy.addr("listen"))).body(body).unwrap())
        .await
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(report["body_bytes"], gib);

    let peak = peak_rss_kib(proxy.pid());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB after 2 GiB streamed: bodies must not be buffered");
}

#[tokio::test]
async fn the_binary_answers_flag_queries_over_ofrep() {
    let up = upstream().await;
    let (proxy, _dir) = start(up.addr, "");
    let req = http::Request::post(format!("http://{}/ofrep/v1/evaluate/flags/f", proxy.addr("ofrep")))
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(bytes::Bytes::from_static(b"{\"context\":{\"targetingKey\":\"u1\"}}"))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["variant"], "a");
    assert_eq!(body["value"], 1);
}

/// A second sidecar on one host: when its flag-query port is taken, it refuses to start and its
/// error names the setting to change; with its own `[queries]` ports both serve (the README's
/// "control plane with two sidecars" recipe).
#[tokio::test]
async fn a_second_sidecar_names_the_setting_that_frees_its_query_port() {
    let up = upstream().await;
    let (first, _dir) = start(up.addr, "");
    let taken = first.addr("grpc");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), "flags: {}\n").unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nflags = \"flags.yaml\"\n\
         [queries]\ngrpc = \"{taken}\"\nofrep = \"127.0.0.1:0\"\n",
        up.addr
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["proxy", "--config"])
        .arg(dir.path().join("proxy.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot bind [queries] grpc = \"{taken}\"")), "{err}");
    // With ports of its own, the second sidecar serves beside the first.
    let (second, _dir2) = start(up.addr, "");
    assert_ne!(second.addr("grpc"), taken);
}
