//! `[tls]` (the listener's certificate) and `[control_auth]` (how the sidecar proves itself to the
//! control plane) as written, and their validation: files resolve against the config file's
//! directory and the TLS material is loaded once here, so a bad file fails before any port is bound.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tls::ListenerTls;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControlAuth {
    /// CA that signed the control plane's certificate; switches the stream to TLS.
    ca: Option<PathBuf>,
    /// This sidecar's client certificate and key (mTLS).
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// The name to verify in the control plane's certificate (default: the URI's host).
    server_name: Option<String>,
    /// A file holding the bearer token sent with the stream.
    token_file: Option<PathBuf>,
}

/// How the sidecar authenticates to the control plane (and verifies it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAuth {
    pub ca: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
    pub server_name: Option<String>,
    pub token: Option<String>,
}

pub(super) fn listener(raw: RawListenerTls, base: &Path) -> Result<ListenerTls, (String, String)> {
    let tls = ListenerTls {
        cert: base.join(raw.cert),
        key: base.join(raw.key),
        client_ca: raw.client_ca.map(|c| base.join(c)),
    };
    tls.server_config().map_err(|e| ("tls".to_owned(), e.to_string()))?;
    Ok(tls)
}

pub(super) fn control(raw: RawControlAuth, base: &Path) -> Result<ControlAuth, (String, String)> {
    let identity = match (raw.cert, raw.key) {
        (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
        (None, None) => None,
        _ => return Err(("control_auth".to_owned(), "cert and key go together".to_owned())),
    };
    let ca = raw.ca.map(|c| base.join(c));
    if identity.is_some() && ca.is_none() {
        return Err((
            "control_auth.ca".to_owned(),
            "a client certificate needs TLS: set the control plane's ca".to_owned(),
        ));
    }
    if let Some(ca) = &ca {
        crate::tls::client_config(ca, identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
            .map_err(|e| ("control_auth".to_owned(), e.to_string()))?;
    }
    let token = match raw.token_file {
        None => None,
        Some(f) => {
            let path = base.join(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ("control_auth.token_file".to_owned(), format!("{}: {e}", path.display())))?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(("control_auth.token_file".to_owned(), format!("{} is empty", path.display())));
            }
            Some(token)
        }
    };
    Ok(ControlAuth { ca, identity, server_name: raw.server_name, token })
}
