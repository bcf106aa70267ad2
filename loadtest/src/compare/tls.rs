//! `compare --tls`: one self-signed certificate (rcgen, ECDSA P-256) for `localhost` and
//! `127.0.0.1`, generated into the run's directory and given to every proxy — nginx and Rampart as
//! certificate and key files, HAProxy as one PEM holding both — and to the load generator as the
//! one CA it trusts. The upstream leg stays plaintext.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair};
use serde::Serialize;

/// The names the certificate is valid for (the targets are `https://127.0.0.1:PORT/`).
pub(crate) const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The first nginx with the `http2 on;` directive (older ones only have `listen … http2`).
const NGINX_HTTP2_ON: (u32, u32, u32) = (1, 25, 1);

/// Why the certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The certificate's files in the run's directory.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertFiles {
    /// The certificate, PEM (also the load generator's CA file).
    pub(crate) cert: PathBuf,
    /// Its private key, PEM (PKCS#8).
    pub(crate) key: PathBuf,
    /// Certificate then key in one PEM, as HAProxy's `crt` wants it.
    pub(crate) combined: PathBuf,
    /// What it is, for the report.
    pub(crate) describe: String,
}

/// Generates the certificate and key into `dir/tls/`.
pub(crate) fn generate(dir: &Path) -> Result<CertFiles, CertError> {
    let mut params = CertificateParams::new(NAMES.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, "rampart-loadtest compare");
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let d = dir.join("tls");
    std::fs::create_dir_all(&d).map_err(|source| CertError::Write { path: d.clone(), source })?;
    let write = |name: &str, text: &str| {
        let path = d.join(name);
        std::fs::write(&path, text).map_err(|source| CertError::Write { path: path.clone(), source })?;
        Ok::<_, CertError>(path)
    };
    Ok(CertFiles {
        cert: write("cert.pem", &cert_pem)?,
        key: write("key.pem", &key_pem)?,
        combined: write("haproxy.pem", &format!("{cert_pem}{key_pem}"))?,
        describe: format!("self-signed, ECDSA P-256 (rcgen), for {}", NAMES.join(", ")),
    })
}

/// Whether this nginx (`"nginx/1.22.1"`, as `nginx -v` says it) has `http2 on;`.
pub(crate) fn nginx_has_http2_on(version: &str) -> bool {
    let numbers = version.rsplit('/').next().unwrap_or("");
    let mut parts = numbers.split('.').map(|p| p.trim().parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b), c) => (a, b, c.unwrap_or(0)) >= NGINX_HTTP2_ON,
        _ => false,
    }
}

/// The TLS side of a comparison, as the report records it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TlsSetup {
    pub(crate) certificate: String,
    /// How each proxy was configured, one line each.
    pub(crate) listeners: Vec<String>,
    /// What the load generator negotiated with each target (version, cipher suite, ALPN).
    pub(crate) negotiated: std::collections::BTreeMap<String, String>,
    /// TLS handshakes per run, per target (median over the runs): one per connection.
    pub(crate) handshakes_per_run: std::collections::BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;

    #[test]
    fn the_certificate_and_key_parse_and_match() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let certs: Vec<_> = CertificateDer::pem_file_iter(&files.cert).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(certs.len(), 1);
        PrivateKeyDer::from_pem_file(&files.key).unwrap();
        // HAProxy's file: the same certificate, then the same key.
        let combined = std::fs::read_to_string(&files.combined).unwrap();
        let (cert, key) = (std::fs::read_to_string(&files.cert).unwrap(), std::fs::read_to_string(&files.key).unwrap());
        assert_eq!(combined, format!("{cert}{key}"));
        PrivateKeyDer::from_pem_file(&files.combined).unwrap();
        // A rustls server accepts the pair; a client trusting the file as its CA accepts the server.
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, PrivateKeyDer::from_pem_file(&files.key).unwrap())
            .unwrap();
        assert!(files.describe.contains("127.0.0.1"));
    }

    #[test]
    fn http2_on_needs_nginx_1_25_1() {
        assert!(!nginx_has_http2_on("nginx/1.22.1"));
        assert!(!nginx_has_http2_on("nginx/1.25.0"));
        assert!(nginx_has_http2_on("nginx/1.25.1"));
        assert!(nginx_has_http2_on("nginx/1.27"));
        assert!(!nginx_has_http2_on(""));
    }
}
