//! Header integrity on the request path: names with `_` never reach the upstream (a CGI/WSGI
//! upstream would read `x_flag_a` as the flag header), `Connection:` cannot remove the injected
//! flag header or Host, `Upgrade: h2c` is not honoured, HTTP/2's `:authority` is the upstream's
//! Host, an absolute-form target sets Host, and two Hosts (or none in HTTP/1.1) are refused.
//! A real sidecar, a real upstream that echoes the headers it saw, raw HTTP/1.1 where clients
//! would not send such requests.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLAGS: &str = "flags:\n  legacy-export:\n    state: ENABLED\n    variants: { \"on\": \"on\", \"off\": \"off\" }\n    defaultVariant: \"off\"\n";

/// Sends `request` raw and returns the status code and the upstream's view of the headers (when
/// the answer is the upstream's JSON).
async fn raw(addr: SocketAddr, request: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // A chunked answer: the JSON sits between the chunk-size lines.
    let json = body.lines().find(|l| l.starts_with('{')).unwrap_or("null");
    (code, serde_json::from_str::<Value>(json).map(|v| v["headers"].clone()).unwrap_or(Value::Null))
}

#[tokio::test]
async fn underscores_and_connection_tricks_never_reach_the_upstream() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "").await;
    let (code, seen) = raw(
        sc.addr,
        "GET / HTTP/1.1\r\nHost: shop\r\nx_flag_legacy_export: on\r\nx-user_id: u1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200);
    assert!(seen.get("x_flag_legacy_export").is_none() && seen.get("x-user_id").is_none(), "{seen}");
    assert_eq!(header(&seen, "x-flag-legacy-export").as_deref(), Some("off"));
    assert_eq!(metric(sc.admin, "rampart_underscore_headers_dropped_total").await, Some(2.0));

    // `Connection` naming the injected header or Host removes neither.
    let (code, seen) =
        raw(sc.addr, "GET / HTTP/1.1\r\nHost: shop\r\nConnection: x-flag-legacy-export, host, close\r\n\r\n").await;
    assert_eq!(code, 200);
    assert_eq!(header(&seen, "x-flag-legacy-export").as_deref(), Some("off"), "{seen}");
    assert_eq!(header(&seen, "host").as_deref(), Some("shop"), "{seen}");

    // An h2c upgrade is served as a plain request: the upstream sees no Upgrade.
    let (code, seen) = raw(
        sc.addr,
        "GET / HTTP/1.1\r\nHost: shop\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200);
    assert!(seen.get("upgrade").is_none() && seen.get("http2-settings").is_none(), "{seen}");
    assert_eq!(metric(sc.admin, "rampart_h2c_upgrades_refused_total").await, Some(1.0));

    // With underscores allowed (an explicit choice), they are forwarded.
    let open = sidecar(up.addr, FLAGS, "[headers]\nallow_underscores = true\n").await;
    let (_, seen) = raw(open.addr, "GET / HTTP/1.1\r\nHost: shop\r\nx_trace: 1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(header(&seen, "x_trace").as_deref(), Some("1"), "{seen}");
}

#[tokio::test]
async fn host_is_normalised_as_rfc_9112_says() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "").await;
    let (code, _) = raw(sc.addr, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
    assert_eq!(code, 400, "two Host headers");
    let (code, _) = raw(sc.addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(code, 400, "HTTP/1.1 without Host");
    assert_eq!(metric(sc.admin, "rampart_requests_refused_total").await, Some(2.0));
    let (code, seen) =
        raw(sc.addr, "GET http://shop.example/path HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n").await;
    assert_eq!(code, 200);
    assert_eq!(header(&seen, "host").as_deref(), Some("shop.example"), "the target's authority wins: {seen}");

    // HTTP/2: `:authority` becomes Host (it used to be dropped for the endpoint's address).
    let stream = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://checkout.internal/").body(empty()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let seen = serde_json::from_slice::<Value>(&body).unwrap()["headers"].clone();
    assert_eq!(header(&seen, "host").as_deref(), Some("checkout.internal"), "{seen}");

    // `preserve_host = false`: the endpoint's authority instead.
    let endpoint = sidecar(up.addr, FLAGS, "[headers]\npreserve_host = false\n").await;
    let (_, seen) = raw(endpoint.addr, "GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n").await;
    assert_eq!(header(&seen, "host"), Some(up.addr.to_string()), "{seen}");
}
