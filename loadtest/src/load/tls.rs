//! TLS for `https://` targets: a rustls client (ring) that trusts a CA file (`--ca`) or, for
//! loopback targets only, any certificate (`--insecure`); ALPN offers `h2` or `http/1.1` to match
//! the protocol. The handshake happens once per connection (see `conn`), never per request, and
//! is always a full one (no session resumption), so every server pays the same per connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::conn::Protocol;

/// Why a TLS client cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error("--ca {}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("--ca {}: no certificate in the file", path.display())]
    Empty { path: PathBuf },
    #[error("TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{host}: not a TLS server name: {source}")]
    Name {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
}

/// Which server certificates the client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trust {
    /// Certificates issued by (or equal to, for a self-signed one) the certificates in this PEM file.
    Ca(PathBuf),
    /// Any certificate: only ever used against loopback targets (the one kind `load` accepts).
    Insecure,
}

/// What a connection needs for its handshake: the config and the name to verify (and send as SNI).
#[derive(Clone)]
pub(crate) struct TlsClient {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("server_name", &self.server_name).field("alpn", &self.alpn()).finish()
    }
}

impl TlsClient {
    /// A client for `host` (a DNS name or an IP address) with `trust`, offering the ALPN of `protocol`.
    pub(crate) fn new(host: &str, trust: &Trust, protocol: Protocol) -> Result<TlsClient, TlsSetupError> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|source| TlsSetupError::Name { host: host.to_owned(), source })?;
        Ok(TlsClient { config: client_config(trust, protocol)?, server_name })
    }

    fn alpn(&self) -> Vec<String> {
        self.config.alpn_protocols.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN id that `protocol` offers over TLS.
pub(crate) fn alpn(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Http1 => b"http/1.1",
        Protocol::H2c => b"h2",
    }
}

/// Reads every certificate of a PEM file into a root store.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Pem { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty { path: path.to_owned() });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// TLS 1.3 and 1.2 (rustls' safe defaults), no client certificate, ALPN of `protocol` only.
pub(crate) fn client_config(trust: &Trust, protocol: Protocol) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = match trust {
        Trust::Ca(path) => builder.with_root_certificates(roots(path)?).with_no_client_auth(),
        Trust::Insecure => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCert(provider()))).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![alpn(protocol).to_vec()];
    // Every connection pays a full handshake: no session resumption, whichever server keeps tickets.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// `--insecure`: accepts whatever certificate the (loopback) server presents, but still checks the
/// handshake signatures, so the key exchange is the real one and costs what it costs.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
