//! A small JSON-over-HTTP(S) client for the operator commands and the demo, talking to the control
//! plane's API. `https://` control planes are verified against `--ca-file` (`RAMPART_CA_FILE`), or
//! the system's roots without it.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

/// The control plane's HTTP API when `--control-plane` is not given.
pub(crate) const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:8401";

/// The operator token from `--token-file`, which takes precedence over `RAMPART_TOKEN`.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(crate) fn set_token(token: &str) {
    let _ = TOKEN.set(token.to_owned());
}

/// The operator token sent as `Authorization: Bearer`, if any.
fn token() -> Option<String> {
    TOKEN.get().cloned().or_else(|| std::env::var("RAMPART_TOKEN").ok()).filter(|t| !t.trim().is_empty())
}

/// The roots `https://` control planes are verified against, from `--ca-file`.
static CA: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();

/// Trusts the certificates in the PEM file at `path` (instead of the system's roots).
pub(crate) fn set_ca_file(path: &std::path::Path) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>())? {
        roots.add(cert)?;
    }
    if roots.is_empty() {
        bail!("no certificate in the file");
    }
    let _ = CA.set(roots);
    Ok(())
}

/// A client for [`call_async`].
pub(crate) type JsonClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(crate) fn client() -> JsonClient {
    let roots = CA.get().cloned().unwrap_or_else(|| {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates leave https:// unverifiable: the request then fails and says so.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    });
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|e| unreachable!("ring supports the default protocol versions: {e}"));
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends `body` (JSON) with `method` to `base` + `path`; returns the status and the JSON answer.
pub(crate) async fn call_async(
    client: &JsonClient,
    method: Method,
    base: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let mut req = Request::builder().method(method).uri(&url).header("content-type", "application/json");
    if let Some(token) = token() {
        req = req.header("authorization", format!("Bearer {}", token.trim()));
    }
    // Who is at the keyboard, for the audit trail of an API without operator tokens (one with
    // tokens records the token's name and ignores this).
    if let Some(user) =
        std::env::var("RAMPART_ACTOR").ok().or_else(|| std::env::var("USER").ok()).filter(|u| !u.is_empty())
    {
        req = req.header("x-rampart-actor", user);
    }
    let req = req.body(Full::new(payload)).with_context(|| format!("bad control-plane URL {url}"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .with_context(|| format!("{url}: no answer within 10 s"))?
        .with_context(|| format!("cannot reach the control plane at {base}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    match serde_json::from_slice(&bytes) {
        Ok(json) => Ok((status, json)),
        Err(_) => bail!("{url}: {status}: {}", String::from_utf8_lossy(&bytes)),
    }
}

/// [`call_async`] for the one-shot commands, on a runtime of its own.
pub(crate) fn call(
    method: Method,
    base: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async { call_async(&client(), method, base, path, body).await })
}

/// The answer, or an error carrying the API's `error` message.
pub(crate) fn expect_ok((status, json): (StatusCode, Value)) -> anyhow::Result<Value> {
    if status.is_success() {
        return Ok(json);
    }
    let message = json.get("error").and_then(Value::as_str).unwrap_or("request failed");
    bail!("{status}: {message}")
}
