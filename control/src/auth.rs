//! Who may open a sidecar stream, and as whom. With a client CA or tokens configured, a stream
//! must come with a client certificate the TLS layer verified against the CA, or an
//! `authorization: Bearer <token>` from the configured list (compared in constant time). The
//! credential names the stream's [`Identity`] — never its Hello:
//! - a token line `token` (any service), `service token`, or `service/proxy_id token`;
//! - a certificate's first `spiffe://<trust-domain>/<service>[/<proxy_id>]` URI SAN, else its first
//!   DNS SAN, else its subject CN, as the service.
//!
//! `stream.rs` refuses a Hello that contradicts its identity. Without credentials configured,
//! streams are open (for a control plane on loopback).

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::SidecarToken;

#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub(crate) client_certs: bool,
    pub(crate) tokens: Vec<SidecarToken>,
}

/// What a stream's credential says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The service it may speak for; `None`: any (a token not bound to a service).
    pub(crate) service: Option<String>,
    /// The one sidecar it may speak as; `None`: any of its service's.
    pub(crate) proxy: Option<String>,
}

impl Identity {
    /// A certificate's identity; `None` when it names nothing usable.
    pub(crate) fn from_certificate(der: &[u8]) -> Option<Identity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let sans = cert.subject_alternative_name().ok().flatten();
        let names = || sans.iter().flat_map(|s| s.value.general_names.iter());
        let spiffe = names().find_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix("spiffe://"),
            _ => None,
        });
        if let Some(rest) = spiffe {
            // Trust domain, then the service and optionally the sidecar.
            let mut path = rest.split('/').skip(1).filter(|s| !s.is_empty());
            let service = path.next()?.to_owned();
            let proxy = path.next().map(str::to_owned);
            return (path.next().is_none()).then_some(Identity { service: Some(service), proxy });
        }
        let dns = names().find_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        });
        let cn = || cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
        let service = dns.or_else(cn).filter(|s| !s.is_empty())?;
        Some(Identity { service: Some(service), proxy: None })
    }
}

impl Auth {
    fn required(&self) -> bool {
        self.client_certs || !self.tokens.is_empty()
    }

    pub(crate) fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.required() {
            return Ok(req);
        }
        let mut req = req;
        // rustls verified any certificate the client presented during the handshake.
        if self.client_certs
            && let Some(certs) = req.peer_certs().filter(|c| !c.is_empty())
        {
            let identity = Identity::from_certificate(certs[0].as_ref()).ok_or_else(|| {
                Status::unauthenticated(
                    "the client certificate names no service (a spiffe:// URI SAN, a DNS SAN or a subject CN)",
                )
            })?;
            req.extensions_mut().insert(identity);
            return Ok(req);
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Every token is compared, whatever matches first.
        let found = presented.and_then(|token| {
            self.tokens.iter().fold(None, |found, t| {
                if constant_time_eq(t.token.as_bytes(), token.as_bytes()) { Some(t) } else { found }
            })
        });
        match (presented, found) {
            (Some(_), Some(t)) => {
                req.extensions_mut().insert(Identity { service: t.service.clone(), proxy: t.proxy.clone() });
                Ok(req)
            }
            (Some(_), None) => Err(Status::unauthenticated("invalid bearer token")),
            (None, _) => Err(Status::unauthenticated("a client certificate or a bearer token is required")),
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(service: Option<&str>, proxy: Option<&str>, token: &str) -> SidecarToken {
        SidecarToken { service: service.map(Into::into), proxy: proxy.map(Into::into), token: token.into() }
    }

    fn bearer(token: &str) -> Request<()> {
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    }

    #[test]
    fn tokens_are_checked_and_name_their_identity() {
        let open = Auth { client_certs: false, tokens: vec![] };
        assert!(open.check(Request::new(())).is_ok());
        let auth = Auth {
            client_certs: false,
            tokens: vec![token(None, None, "s3cret"), token(Some("shop"), Some("shop-1"), "sh0p-1-t0ken")],
        };
        assert!(auth.check(Request::new(())).is_err());
        let any = auth.check(bearer("s3cret")).unwrap();
        assert_eq!(any.extensions().get::<Identity>(), Some(&Identity::default()));
        let pinned = auth.check(bearer("sh0p-1-t0ken")).unwrap();
        let expected = Identity { service: Some("shop".into()), proxy: Some("shop-1".into()) };
        assert_eq!(pinned.extensions().get::<Identity>(), Some(&expected));
        assert_eq!(auth.check(bearer("s3creT")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(!constant_time_eq(b"ab", b"abc"));
    }

    fn certificate(sans: Vec<rcgen::SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn certificates_name_their_service_and_sidecar() {
        let uri = |u: &str| rcgen::SanType::URI(u.try_into().unwrap());
        let dns = |d: &str| rcgen::SanType::DnsName(d.try_into().unwrap());
        let id = |service: &str, proxy: Option<&str>| {
            Some(Identity { service: Some(service.into()), proxy: proxy.map(Into::into) })
        };
        let spiffe = certificate(vec![dns("ignored"), uri("spiffe://prod.example/checkout/checkout-7")], Some("x"));
        assert_eq!(Identity::from_certificate(&spiffe), id("checkout", Some("checkout-7")));
        let service_only = certificate(vec![uri("spiffe://prod.example/billing")], None);
        assert_eq!(Identity::from_certificate(&service_only), id("billing", None));
        let too_deep = certificate(vec![uri("spiffe://prod.example/ns/a/sa/b")], Some("x"));
        assert_eq!(Identity::from_certificate(&too_deep), None);
        assert_eq!(Identity::from_certificate(&certificate(vec![dns("shop")], Some("x"))), id("shop", None));
        assert_eq!(Identity::from_certificate(&certificate(vec![], Some("search"))), id("search", None));
        assert_eq!(Identity::from_certificate(&certificate(vec![], None)), None);
        assert_eq!(Identity::from_certificate(b"not a certificate"), None);
    }
}
