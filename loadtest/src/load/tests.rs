//! A bounded smoke run of both paces and both protocols against the in-process upstream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::upstream::{self, Behavior, Observed};

#[tokio::test]
async fn load_runs_against_an_in_process_upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: Uri = format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
    let seen = Arc::new(Observed::default());
    let stop = CancellationToken::new();
    let server = tokio::spawn(upstream::serve(listener, Arc::new(Behavior::fast()), seen.clone(), stop.clone()));

    for (protocol, pace) in [
        (Protocol::Http1, Pace::Open { rate: 400.0 }),
        (Protocol::H2c, Pace::Open { rate: 400.0 }),
        (Protocol::Http1, Pace::Closed),
        (Protocol::H2c, Pace::Closed),
    ] {
        let plan = Plan {
            protocol,
            connections: 2,
            streams: 2,
            duration: Duration::from_millis(250),
            warmup: Duration::from_millis(50),
            max_requests: Some(50),
            headers: vec![HeaderTemplate::parse("x-user-id: u-{random}").unwrap()],
            ..Plan::new(vec![target(&url, protocol).await.unwrap()], pace)
        }
        .validate()
        .unwrap();
        let before = seen.requests.load(Ordering::Relaxed);
        let s = execute(Arc::new(plan), CancellationToken::new()).await.unwrap();
        assert!(s.ok > 0 && s.requests <= 50, "{protocol:?} {pace:?}: {s:?}");
        assert_eq!(s.errors(), 0, "{protocol:?} {pace:?}: {s:?}");
        assert!(seen.requests.load(Ordering::Relaxed) - before >= s.ok);
    }
    stop.cancel();
    server.await.unwrap();
}

#[tokio::test]
async fn remote_targets_are_refused() {
    let err = target(&"http://192.0.2.1/".parse().unwrap(), Protocol::Http1).await.unwrap_err();
    assert!(err.to_string().contains("non-loopback"), "{err}");
}
