//! Malformed traffic gets an answer and is counted: an upstream whose chunked body is broken right
//! after its head gives the client a 502 (not a connection closed without a word), counted as the
//! variant's error; so does one that streams `102 Processing` without end; requests hyper itself
//! refuses (a bad request line, a head over the limit) are counted among the 4xx responses. A real
//! sidecar; raw TCP upstreams.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { a: 1, b: 2 }\n    defaultVariant: a\n";

/// An upstream that answers every request by writing `reply` `times` times (stopping when the
/// sidecar hangs up), then closing.
async fn raw_upstream(reply: &'static [u8], times: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                for _ in 0..times {
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A head, then an invalid chunk.
async fn broken_upstream() -> SocketAddr {
    raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nnot a chunk\r\n", 1).await
}

/// `102 Processing`, again and again: far more than the sidecar accepts.
async fn processing_forever() -> SocketAddr {
    raw_upstream(b"HTTP/1.1 102 Processing\r\n\r\n", 100_000).await
}

async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_broken_upstream_body_is_a_502() {
    let sc = sidecar(broken_upstream().await, FLAGS, "").await;
    let answer = raw(sc.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer:?}");
    assert_eq!(metric(sc.admin, "rampart_upstream_failures_total").await, Some(1.0));
}

#[tokio::test]
async fn endless_informational_responses_are_a_502() {
    let sc = sidecar(processing_forever().await, FLAGS, "").await;
    let answer = raw(sc.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer:?}");
    assert!(answer.contains("too many informational responses"), "{answer:?}");
}

#[tokio::test]
async fn requests_hyper_refuses_are_counted() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "").await;
    let class = r#"rampart_responses_total{class="4xx"}"#;
    let before = metric(sc.admin, class).await.unwrap_or(0.0);
    let answer = raw(sc.addr, b"NOT A REQUEST\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let answer = raw(sc.addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(
        eventually(Duration::from_secs(2), || async { metric(sc.admin, class).await == Some(before + 2.0) }).await,
        "both refusals counted"
    );
}
