//! One client connection to a target, HTTP/1.1 or h2c (prior knowledge), with `TCP_NODELAY`;
//! over TLS for an `https://` target (one handshake per connection, ALPN `http/1.1` or `h2`).
//! An HTTP/1.1 connection carries one request at a time and belongs to one worker; an h2
//! connection is shared by several workers, each with its own stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::stats::Outcome;
use super::tls::{self, TlsClient};

/// The wire protocol to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    Http1,
    /// h2c with prior knowledge for `http://`, h2 by ALPN for `https://`.
    #[value(alias = "h2")]
    H2c,
}

/// Where requests go: the resolved address and the request URI as the protocol wants it
/// (origin-form plus `host` for HTTP/1.1, absolute for h2).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) uri: Uri,
    /// The `host` header for HTTP/1.1.
    pub(crate) host: hyper::header::HeaderValue,
    /// Set for an `https://` target.
    pub(crate) tls: Option<Arc<TlsClient>>,
}

/// Connections a run opened, shared by its workers: every TCP connect that succeeded, every TLS
/// handshake that completed, and what the first handshake negotiated.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub(crate) connects: AtomicU64,
    pub(crate) tls_handshakes: AtomicU64,
    /// e.g. "TLSv1_3 TLS13_AES_256_GCM_SHA384 h2".
    pub(crate) negotiated: OnceLock<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {addr}: the server chose ALPN {got:?}, not {wanted:?}")]
    Alpn { addr: SocketAddr, wanted: String, got: Option<String> },
}

/// How long a connect may take before it counts as a transport error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The sending half; the connection's driver task is aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: Sender,
    driver: JoinHandle<()>,
}

#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    pub(crate) async fn open(target: &Target, protocol: Protocol, stats: &ConnStats) -> Result<Conn, ConnError> {
        let addr = target.addr;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnError::Connect { addr, source }),
            Err(_) => return Err(ConnError::Connect { addr, source: std::io::ErrorKind::TimedOut.into() }),
        };
        stream.set_nodelay(true).map_err(|source| ConnError::Connect { addr, source })?;
        stats.connects.fetch_add(1, Ordering::Relaxed);
        let Some(client) = &target.tls else { return Conn::handshake(TokioIo::new(stream), addr, protocol).await };
        let connector = tokio_rustls::TlsConnector::from(client.config.clone());
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(client.server_name.clone(), stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => return Err(ConnError::Tls { addr, source }),
                Err(_) => return Err(ConnError::Tls { addr, source: std::io::ErrorKind::TimedOut.into() }),
            };
        let (_, session) = stream.get_ref();
        let wanted = tls::alpn(protocol);
        let got = session.alpn_protocol();
        // A server without ALPN speaks HTTP/1.1; h2 must be agreed on explicitly.
        if got.is_some_and(|g| g != wanted) || (got.is_none() && protocol == Protocol::H2c) {
            let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
            return Err(ConnError::Alpn { addr, wanted: text(wanted), got: got.map(text) });
        }
        stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        stats.negotiated.get_or_init(|| {
            let version = session.protocol_version().map_or("?".to_owned(), |v| format!("{v:?}"));
            let suite = session.negotiated_cipher_suite().map_or("?".to_owned(), |c| format!("{:?}", c.suite()));
            let alpn = got.map_or("no ALPN".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
            format!("{version} {suite} {alpn}")
        });
        Conn::handshake(TokioIo::new(stream), addr, protocol).await
    }

    /// The HTTP handshake on a connected (plain or TLS) stream; the driver runs in its own task.
    async fn handshake<I>(io: I, addr: SocketAddr, protocol: Protocol) -> Result<Conn, ConnError>
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let (sender, driver) = match protocol {
            Protocol::Http1 => {
                let (send, conn) =
                    http1::handshake(io).await.map_err(|source| ConnError::Handshake { addr, source })?;
                (Sender::H1(send), tokio::spawn(async move { drop(conn.await) }))
            }
            Protocol::H2c => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|source| ConnError::Handshake { addr, source })?;
                (Sender::H2(send), tokio::spawn(async move { drop(conn.await) }))
            }
        };
        Ok(Conn { sender, driver })
    }

    /// Sends `req` and returns the status and the body as text (checks before a run, not the
    /// measured path).
    pub(crate) async fn fetch(&mut self, req: Request<Empty<Bytes>>) -> Result<(u16, String), hyper::Error> {
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub(crate) fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// A second handle on an h2 connection (streams multiplex); `None` for HTTP/1.1.
    pub(crate) fn h2_handle(&self) -> Option<H2Handle> {
        match &self.sender {
            Sender::H2(s) => Some(H2Handle(s.clone())),
            Sender::H1(_) => None,
        }
    }

    /// Sends `req` and reads the response body to its end.
    pub(crate) async fn send(&mut self, req: Request<Empty<Bytes>>) -> Outcome {
        match &mut self.sender {
            Sender::H1(s) => {
                if s.ready().await.is_err() {
                    return Outcome::Transport;
                }
                finish(s.send_request(req).await).await
            }
            Sender::H2(s) => finish(s.send_request(req).await).await,
        }
    }
}

/// A worker's handle on a shared h2c connection.
#[derive(Debug, Clone)]
pub(crate) struct H2Handle(http2::SendRequest<Empty<Bytes>>);

impl H2Handle {
    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    pub(crate) async fn send(&mut self, req: Request<Empty<Bytes>>) -> Outcome {
        if self.0.ready().await.is_err() {
            return Outcome::Transport;
        }
        finish(self.0.send_request(req).await).await
    }
}

async fn finish(response: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>) -> Outcome {
    let Ok(response) = response else { return Outcome::Transport };
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(_) => Outcome::Status(status),
        Err(_) => Outcome::Transport,
    }
}
