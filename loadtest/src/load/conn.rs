//! One client connection to a target, HTTP/1.1 or h2c (prior knowledge), with `TCP_NODELAY`.
//! An HTTP/1.1 connection carries one request at a time and belongs to one worker; an h2c
//! connection is shared by several workers, each with its own stream.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::stats::Outcome;

/// The wire protocol to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    Http1,
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
    pub(crate) async fn open(target: &Target, protocol: Protocol) -> Result<Conn, ConnError> {
        let addr = target.addr;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnError::Connect { addr, source }),
            Err(_) => return Err(ConnError::Connect { addr, source: std::io::ErrorKind::TimedOut.into() }),
        };
        stream.set_nodelay(true).map_err(|source| ConnError::Connect { addr, source })?;
        let io = TokioIo::new(stream);
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
