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

/// A TLS server on 127.0.0.1:0 with the certificate `compare --tls` generates: ALPN h2 and
/// http/1.1, `200 ok` to everything, counting requests.
async fn tls_server(
    files: &crate::compare::tls::CertFiles,
    served: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) -> (Uri, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(&files.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: Uri = format!("https://{}/", listener.local_addr().unwrap()).parse().unwrap();
    let server = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = stop.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (acceptor, served) = (acceptor.clone(), served.clone());
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |_req| {
                    served.fetch_add(1, Ordering::Relaxed);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            hyper::body::Bytes::from_static(b"ok\n"),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
        conns.abort_all();
    });
    (url, server)
}

#[tokio::test]
async fn load_runs_over_tls_with_one_handshake_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let files = crate::compare::tls::generate(dir.path()).unwrap();
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (url, server) = tls_server(&files, served.clone(), stop.clone()).await;

    let by_ca = Trust::Ca(files.cert.clone());
    for (protocol, pace, trust, alpn) in [
        (Protocol::Http1, Pace::Closed, &by_ca, "http/1.1"),
        (Protocol::Http1, Pace::Open { rate: 400.0 }, &Trust::Insecure, "http/1.1"),
        (Protocol::H2c, Pace::Closed, &Trust::Insecure, "h2"),
        (Protocol::H2c, Pace::Open { rate: 400.0 }, &by_ca, "h2"),
    ] {
        let plan = Plan {
            protocol,
            connections: 2,
            streams: 2,
            duration: Duration::from_millis(250),
            warmup: Duration::from_millis(50),
            max_requests: Some(50),
            headers: vec![HeaderTemplate::parse("x-user-id: u-{random}").unwrap()],
            ..Plan::new(vec![target_with(&url, protocol, Some(trust)).await.unwrap()], pace)
        }
        .validate()
        .unwrap();
        let before = served.load(Ordering::Relaxed);
        let s = execute(Arc::new(plan), CancellationToken::new()).await.unwrap();
        let what = format!("{protocol:?} {pace:?} {trust:?}: {s:?}");
        assert!(s.ok > 0 && s.requests <= 50 && s.errors() == 0, "{what}");
        assert!(served.load(Ordering::Relaxed) - before >= s.ok, "{what}");
        // Connections are reused: a handshake per connection, not per request.
        assert_eq!((s.tls_handshakes, s.connections_opened), (2, 2), "{what}");
        let negotiated = s.tls.as_deref().unwrap_or_default();
        assert!(negotiated.ends_with(alpn) && negotiated.starts_with("TLSv1_3"), "{what}");
    }

    // The check before a run goes through the same TLS client.
    let t = target_with(&url, Protocol::Http1, Some(&by_ca)).await.unwrap();
    assert_eq!(fetch(&t, &[("x-user-id", "u-1")]).await.unwrap(), (200, "ok\n".to_owned()));

    // A certificate the client does not trust fails the run before it starts; no CA at all is refused.
    let other = crate::compare::tls::generate(&dir.path().join("other")).unwrap();
    let plan =
        Plan::new(vec![target_with(&url, Protocol::Http1, Some(&Trust::Ca(other.cert))).await.unwrap()], Pace::Closed)
            .validate()
            .unwrap();
    let err = execute(Arc::new(plan), CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    let err = target(&url, Protocol::Http1).await.unwrap_err();
    assert!(err.to_string().contains("--ca"), "{err}");

    stop.cancel();
    server.await.unwrap();
}
