//! Connections a client leaves quiet are closed within their state's timeout while normal
//! requests go on being served: silent TCP connections (no first byte), an HTTP/2 connection
//! that sent its preface and went quiet, an idle keep-alive connection, a client that stops
//! reading its response; a request waiting on a slow upstream is not cut; the per-address cap
//! refuses the connection past it. A real sidecar and upstream on loopback.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FLAGS: &str = "flags: {}\n";
const QUICK: &str =
    "[connections]\nfirst_byte_timeout = \"300ms\"\nidle_timeout = \"600ms\"\nbody_idle_timeout = \"500ms\"\n";

/// Waits (up to `limit`) for the peer to close `s`; how long it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_while_requests_are_served() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, QUICK).await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(sc.addr).await.unwrap());
    }
    // An HTTP/2 client that sends its preface and settings, then nothing.
    let mut h2 = TcpStream::connect(sc.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    for _ in 0..20 {
        assert_eq!(get(&format!("http://{}/", sc.addr), &[]).await.0, StatusCode::OK);
    }
    for s in &mut silent {
        let took = closed_within(s, Duration::from_secs(3)).await;
        assert!(took.is_some(), "a silent connection is still open");
    }
    assert!(closed_within(&mut h2, Duration::from_secs(3)).await.is_some(), "the quiet h2 connection is still open");

    // A keep-alive connection is closed once idle past its timeout, not before it.
    let mut ka = TcpStream::connect(sc.addr).await.unwrap();
    ka.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    ka.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let took = closed_within(&mut ka, Duration::from_secs(3)).await.expect("idle keep-alive closed");
    assert!(took >= Duration::from_millis(400), "closed after {took:?}, before its idle timeout");
    let timed_out = metric(sc.admin, "rampart_connections_timed_out_total").await.unwrap_or(0.0);
    assert!(timed_out >= 202.0, "{timed_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstreams_are_waited_for_and_stalled_readers_are_not() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, QUICK).await;
    // Waiting for the response head is bounded by upstream_timeout, not the idle timeouts.
    let (status, _) = get(&format!("http://{}/slow?ms=1500", sc.addr), &[]).await;
    assert_eq!(status, StatusCode::OK);

    // A client that asks for 64 MiB and stops reading: its connection is closed once nothing
    // has moved for body_idle_timeout.
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET /bytes?n=67108864 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Drain what the kernel buffered: the stream must end well short of 64 MiB.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total < 64 << 20, "the whole body was sent to a client that stopped reading");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, "[connections]\nmax_per_address = 3\n").await;
    let held: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(sc.addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut first = [0u8; 12];
            s.read_exact(&mut first).await.unwrap();
            v.push(s);
        }
        v
    };
    let mut fourth = TcpStream::connect(sc.addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await.is_some(), "the fourth connection was served");
    assert_eq!(metric(sc.admin, "rampart_connections_refused_total").await, Some(1.0));
    // Once the address's connections close, it is served again.
    drop(held);
    let served = || async {
        let Ok(mut s) = TcpStream::connect(sc.addr).await else { return false };
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut first = [0u8; 12];
        s.read_exact(&mut first).await.is_ok() && &first == b"HTTP/1.1 200"
    };
    assert!(eventually(Duration::from_secs(5), served).await);
}

/// On shutdown an idle keep-alive connection is closed at once, a request in flight on another
/// connection still gets its response, and the sidecar's run ends: drained, not cut at the drain
/// deadline nor closed by the idle timeout (a minute each, far past this test's waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_finishes_requests_in_flight() {
    let mut up = upstream().await;
    let minute = "drain_timeout = \"60s\"\n[connections]\nidle_timeout = \"60s\"\n";
    let mut sc = sidecar(up.addr, FLAGS, minute).await;
    let mut idle = TcpStream::connect(sc.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let url = sc.url("/slow?ms=500");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    assert_eq!(up.arrivals.recv().await.as_deref(), Some("/slow"));

    sc.stop.cancel();
    // Well before hyper's header read timeout (10 s), which would close it too.
    let closed = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the idle connection is still open");
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(30), &mut sc.done).await;
    assert!(matches!(ended, Ok(Ok(()))), "the sidecar did not finish draining: {ended:?}");
}
