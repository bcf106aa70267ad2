//! Who may open a sidecar stream: with a client CA or tokens configured, a stream must come with a
//! client certificate the TLS layer verified against the CA, or an `authorization: Bearer <token>`
//! from the configured list (compared in constant time). A token bound to a service gives the
//! stream that identity ([`Identity`], read by `stream.rs`). Without either, streams are open (for
//! a control plane on loopback).

use tonic::{Request, Status};

use crate::config::SidecarToken;

#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub(crate) client_certs: bool,
    pub(crate) tokens: Vec<SidecarToken>,
}

/// What a stream's credential says it is: the service its token is bound to, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Identity {
    pub(crate) service: Option<String>,
}

impl Auth {
    fn required(&self) -> bool {
        self.client_certs || !self.tokens.is_empty()
    }

    pub(crate) fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.required() {
            return Ok(req);
        }
        // rustls verified any certificate the client presented during the handshake.
        if self.client_certs && req.peer_certs().is_some_and(|c| !c.is_empty()) {
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
        match presented {
            Some(_) if found.is_some() => {
                let mut req = req;
                req.extensions_mut().insert(Identity { service: found.and_then(|t| t.service.clone()) });
                Ok(req)
            }
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated("a client certificate or a bearer token is required")),
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

    #[test]
    fn tokens_are_checked() {
        let open = Auth { client_certs: false, tokens: vec![] };
        assert!(open.check(Request::new(())).is_ok());
        let auth = Auth { client_certs: false, tokens: vec![SidecarToken { service: None, token: "s3cret".into() }] };
        assert!(auth.check(Request::new(())).is_err());
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(auth.check(req).is_ok());
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer s3creT".parse().unwrap());
        assert_eq!(auth.check(req).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
