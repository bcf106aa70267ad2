//! End-to-end: a real upstream on 127.0.0.1:0, the sidecar in front of it on real sockets, and a
//! real HTTP client — headers injected, stickiness, stripping, h2c, streaming, upgrades, errors.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLAGS: &str = r##"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    ramp: { treatment: "on", percent: 50 }
  color:
    state: ENABLED
    variants: { red: "#f00", blue: "#00f" }
    defaultVariant: red
    targeting:
      if: [{ ends_with: [{ var: email }, "@staff.example"] }, blue, null]
  old-thing:
    state: DISABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
"##;

const CONTEXT: &str =
    "[context]\ntargetingKey = [\"header:x-user-id\", \"cookie:uid\"]\nemail = [\"header:x-user-email\"]\n";

#[tokio::test]
async fn injects_a_header_per_enabled_flag() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, CONTEXT).await;
    let h = seen(&sc.url("/x"), &[("x-user-id", "u-1"), ("x-user-email", "ann@staff.example")]).await;
    assert!(matches!(header(&h, "x-flag-new-checkout").as_deref(), Some("on" | "off")), "{h}");
    assert_eq!(header(&h, "x-flag-color").as_deref(), Some("blue"));
    assert_eq!(header(&h, "x-flag-old-thing"), None, "a disabled flag has no variant to send");
    assert!(header(&h, "x-forwarded-for").unwrap().starts_with("127.0.0.1"));

    let h = seen(&sc.url("/x"), &[("cookie", "theme=dark; uid=u-9")]).await;
    assert_eq!(header(&h, "x-flag-color").as_deref(), Some("red"));
    assert!(header(&h, "x-flag-new-checkout").is_some());
}

#[tokio::test]
async fn the_same_user_always_gets_the_same_variant() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, CONTEXT).await;
    let mut per_variant: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        let first = header(&seen(&sc.url("/"), &[("x-user-id", &user)]).await, "x-flag-new-checkout").unwrap();
        for _ in 0..3 {
            let again = header(&seen(&sc.url("/"), &[("x-user-id", &user)]).await, "x-flag-new-checkout").unwrap();
            assert_eq!(again, first, "{user} changed variant");
        }
        *per_variant.entry(first).or_default() += 1;
    }
    assert_eq!(per_variant.len(), 2, "a 50% ramp over 40 users shows both variants: {per_variant:?}");
}

#[tokio::test]
async fn client_sent_flag_headers_never_reach_the_upstream() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, CONTEXT).await;
    let h = seen(
        &sc.url("/"),
        &[("x-flag-color", "blue"), ("X-Flag-Old-Thing", "on"), ("x-flag-unknown", "1"), ("x-flagpole", "kept")],
    )
    .await;
    assert_eq!(header(&h, "x-flag-color").as_deref(), Some("red"), "the proxy's evaluation replaces the client's");
    assert_eq!(header(&h, "x-flag-old-thing"), None);
    assert_eq!(header(&h, "x-flag-unknown"), None);
    assert_eq!(header(&h, "x-flagpole").as_deref(), Some("kept"));
}

#[tokio::test]
async fn inject_limits_the_set() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, &format!("inject = [\"color\"]\n{CONTEXT}")).await;
    let h = seen(&sc.url("/"), &[("x-user-id", "u")]).await;
    assert_eq!(header(&h, "x-flag-color").as_deref(), Some("red"));
    assert_eq!(header(&h, "x-flag-new-checkout"), None);
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, CONTEXT).await;
    let req = Request::get(sc.url("/h2")).header("x-user-email", "bo@staff.example").body(empty()).unwrap();
    let resp = h2c_client().request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(header(&body["headers"], "x-flag-color").as_deref(), Some("blue"));
    assert_eq!(body["version"], "HTTP/1.1", "the upstream leg is HTTP/1.1");
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, CONTEXT).await;
    // Download: 256 MiB streamed from the upstream.
    let n: u64 = 256 << 20;
    let resp = client().request(Request::get(sc.url(&format!("/bytes?n={n}"))).body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, n);
    // Upload: 256 MiB streamed to the upstream, which counts it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, hyper::Error>>(2);
    tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'y'; 1 << 20]);
        for _ in 0..256 {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let resp = client().request(Request::post(sc.url("/upload")).body(body).unwrap()).await.unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(report["body_bytes"], n);
}

#[tokio::test]
async fn dead_upstream_is_502_and_slow_upstream_is_504() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let sc = sidecar(dead, FLAGS, "").await;
    let (status, body) = get(&sc.url("/"), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "upstream unreachable\n");

    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "upstream_timeout = \"200ms\"").await;
    let (status, body) = get(&sc.url("/slow?ms=3000"), &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream timed out\n");
    assert_eq!(metric(sc.admin, "rampart_upstream_timeouts_total").await, Some(1.0));
    // Upstream statuses pass through untouched.
    assert_eq!(get(&sc.url("/status?code=503"), &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

/// Sends raw bytes on a fresh connection and returns everything read until the proxy closes it
/// (or 5 s pass).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "max_header_bytes = 8192").await;
    let bad = raw(sc.addr, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    let resp = raw(sc.addr, huge.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
}

#[tokio::test]
async fn slow_header_reads_are_cut_off() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "header_read_timeout = \"300ms\"").await;
    let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy must close a connection whose headers never finish");
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn upgrade_is_passed_through() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "").await;
    let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: echo"), "{head}");
    s.write_all(b"ping over the tunnel").await.unwrap();
    let mut echoed = vec![0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping over the tunnel");
}

#[tokio::test]
async fn connection_cap_holds_extra_connections_until_one_closes() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "max_connections = 1").await;
    let mut first = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(first.read(&mut buf).await.unwrap() > 0, "the first connection is served");
    // The first connection stays open (keep-alive), so a second one waits unserved.
    let url = sc.url("/");
    let second = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "a second connection must wait while the cap is reached");
    drop(first);
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn admin_endpoints() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, CONTEXT).await;
    seen(&sc.url("/"), &[("x-user-email", "a@staff.example")]).await;
    assert_eq!(get(&format!("http://{}/healthz", sc.admin), &[]).await.0, StatusCode::OK);
    assert_eq!(get(&format!("http://{}/readyz", sc.admin), &[]).await.0, StatusCode::OK);
    let (status, body) = get(&format!("http://{}/flags", sc.admin), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let flags: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(flags["version"], 1);
    assert_eq!(flags["flags"]["flags"]["color"]["defaultVariant"], "red");
    assert_eq!(metric(sc.admin, "rampart_flag_evaluations_total{flag=\"color\",variant=\"blue\"}").await, Some(1.0));
    assert_eq!(metric(sc.admin, "rampart_responses_total{class=\"2xx\"}").await, Some(1.0));
    let (_, text) = get(&format!("http://{}/metrics", sc.admin), &[]).await;
    assert!(text.contains("rampart_upstream_latency_seconds_bucket"), "{text}");
    assert_eq!(get(&format!("http://{}/nope", sc.admin), &[]).await.0, StatusCode::NOT_FOUND);
}
