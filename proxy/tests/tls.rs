//! TLS on the listener: h2 and http/1.1 by ALPN with certificates generated here, client
//! certificates verified by an mTLS listener, and the certificate reloaded when its files change.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { a: 1, b: 2 }\n    defaultVariant: b\n";

fn tls_config(pki: &certs::Pki, client_ca: bool) -> String {
    let mut s = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", pki.server_cert.display(), pki.server_key.display());
    if client_ca {
        s.push_str(&format!("client_ca = \"{}\"\n", pki.ca.display()));
    }
    s
}

fn client(ca: &Path, identity: Option<(&Path, &Path)>, alpn: &[u8]) -> TlsConnector {
    let mut config = (*rampart_proxy::tls::client_config(ca, identity).unwrap()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// One GET over TLS: (status, body, negotiated ALPN, the server certificate's DER).
async fn get_tls(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<(StatusCode, String, Vec<u8>, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().unwrap_or_default().to_vec();
    let peer = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let io = TokioIo::new(tls);
    let req = Request::get("https://localhost/x").header("x-user-id", "u1").body(Empty::<Bytes>::new()).unwrap();
    let resp = if alpn == b"h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(std::io::Error::other)?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(std::io::Error::other)?
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned(), alpn, peer))
}

#[tokio::test]
async fn h2_and_http1_over_tls_with_flags_injected() {
    let pki = certs::pki();
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, &tls_config(&pki, false)).await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (status, body, negotiated, _) = get_tls(sc.addr, &client(&pki.ca, None, alpn)).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(negotiated, alpn);
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(header(&seen["headers"], "x-flag-banner").as_deref(), Some("b"));
        assert_eq!(header(&seen["headers"], "x-forwarded-proto").as_deref(), Some("https"));
    }
    // Plain HTTP on a TLS listener gets no answer.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        client.get(format!("http://{}/", sc.addr).parse().unwrap()).await
    })
    .await
    .unwrap();
    assert!(plain.is_err());
}

#[tokio::test]
async fn an_mtls_listener_refuses_clients_without_a_valid_certificate() {
    let pki = certs::pki();
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, &tls_config(&pki, true)).await;
    let ok = get_tls(sc.addr, &client(&pki.ca, Some((&pki.client_cert, &pki.client_key)), b"h2")).await.unwrap();
    assert_eq!(ok.0, StatusCode::OK);
    assert!(get_tls(sc.addr, &client(&pki.ca, None, b"h2")).await.is_err(), "no certificate");
    assert!(
        get_tls(sc.addr, &client(&pki.ca, Some((&pki.rogue_cert, &pki.rogue_key)), b"http/1.1")).await.is_err(),
        "a certificate from another CA"
    );
    assert!(metric(sc.admin, "rampart_tls_handshake_failures_total").await >= Some(2.0));
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let pki = certs::pki();
    let up = upstream().await;
    let sc = sidecar(up.addr, FLAGS, &tls_config(&pki, false)).await;
    let connector = client(&pki.ca, None, b"h2");
    let (_, _, _, before) = get_tls(sc.addr, &connector).await.unwrap();
    // A new certificate from a new CA, written over the old files.
    let fresh = certs::pki();
    std::fs::copy(&fresh.server_key, &pki.server_key).unwrap();
    std::fs::copy(&fresh.server_cert, &pki.server_cert).unwrap();
    let fresh_client = client(&fresh.ca, None, b"h2");
    let reloaded = eventually(Duration::from_secs(2), || async {
        matches!(get_tls(sc.addr, &fresh_client).await, Ok((StatusCode::OK, _, _, ref after)) if *after != before)
    })
    .await;
    assert!(reloaded, "the new certificate is served");
    assert_eq!(metric(sc.admin, "rampart_tls_reloads_total").await, Some(1.0));
}

#[test]
fn bad_tls_files_are_refused_at_load() {
    let pki = certs::pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.yaml"), FLAGS).unwrap();
    let text = format!(
        "flags = \"f.yaml\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.ca.display(),
        dir.path().join("nope.key").display()
    );
    let err = rampart_proxy::Config::parse(&dir.path().join("p.toml"), &text).unwrap_err().to_string();
    assert!(err.contains("tls: ") && err.contains("nope.key"), "{err}");
}

/// A TLS upstream with `pki`'s server certificate that answers with the `x-flag-banner` it got.
async fn tls_upstream(pki: &certs::Pki) -> SocketAddr {
    let files =
        rampart_proxy::tls::ListenerTls { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca: None };
    let acceptor = tokio_rustls::TlsAcceptor::from(files.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let banner = req
                        .headers()
                        .get("x-flag-banner")
                        .map(|v| v.to_str().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from(
                        banner,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_to_an_upstream_cluster_verifies_its_certificate() {
    let pki = certs::pki();
    let up = tls_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let start = |ca: &Path| {
        let text = format!(
            "flags = \"flags.yaml\"\n[clusters.default]\nendpoints = [\"https://127.0.0.1:{}\"]\ntls = {{ ca = \"{}\", sni = \"localhost\" }}\n",
            up.port(),
            ca.display()
        );
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        rampart_proxy::Proxy::new(rampart_proxy::Config::load(&path).unwrap()).unwrap()
    };
    for (ca, ok) in [(pki.ca.clone(), true), (certs::pki().ca.clone(), false)] {
        let proxy = start(&ca);
        let (listener, admin) = (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(proxy.run(listener, admin, stop.clone()));
        let (status, body) = get(&format!("http://{addr}/"), &[]).await;
        if ok {
            assert_eq!((status, body.as_str()), (StatusCode::OK, "b"), "over TLS, with the flag injected");
        } else {
            assert_eq!(status, StatusCode::BAD_GATEWAY, "an upstream certificate from another CA is refused");
        }
        stop.cancel();
    }
}
