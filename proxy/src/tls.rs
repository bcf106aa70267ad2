//! TLS with rustls: the listener's server config (certificate and key files, reloaded when they
//! change; ALPN `h2` and `http/1.1`; optional client-certificate verification against a CA), and
//! the client config for connecting to TLS endpoints (a CA file, or the system's when none).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

impl ListenerTls {
    /// Reads the files into a server config.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|source| TlsError::Pem { path: self.key.clone(), source })?;
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|source| TlsError::ClientCa { path: ca.clone(), source })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client config trusting `ca` (PEM), or nothing but `ca`; with an optional client identity.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert, key)) => {
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem { path: key.to_owned(), source })?;
            builder.with_client_auth_cert(certs(cert)?, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The listener's live TLS config: swapped whole when the files change.
pub(crate) type LiveServerConfig = Arc<ArcSwap<ServerConfig>>;

/// Reloads the listener's certificate when its files change, until `shutdown`. A bad file keeps
/// the previous certificate, logs the error and counts it as a reload failure.
pub(crate) async fn watch(
    tls: ListenerTls,
    live: LiveServerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut files: Vec<PathBuf> = vec![tls.cert.clone(), tls.key.clone()];
    files.extend(tls.client_ca.clone());
    let names: Vec<_> = files.iter().filter_map(|p| p.file_name().map(|n| n.to_owned())).collect();
    let mut watcher = RecommendedWatcher::new(
        move |event: notify::Result<notify::Event>| {
            let ours = event.as_ref().map_or(true, |ev| {
                !ev.kind.is_access()
                    && ev.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
            });
            if ours {
                // A full channel already has a reload pending.
                let _ = tx.try_send(());
            }
        },
        notify::Config::default(),
    )?;
    let mut dirs: Vec<&Path> =
        files.iter().map(|f| f.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))).collect();
    dirs.dedup();
    for dir in dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            got = rx.recv() => if got.is_none() { return Ok(()) },
        }
        // Certificate and key are usually replaced together: let both land.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        match tls.server_config() {
            Ok(config) => {
                live.store(config);
                metrics.tls_reloads.increment(1);
                tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.reload_failures.increment(1);
                tracing::error!("TLS reload failed, the previous certificate stays: {e}");
            }
        }
    }
}
