//! Who may use the control plane's HTTP API: operators named in `api_tokens_file` (`name role
//! token` per line), each with a role — `viewer` reads, `operator` also starts, pauses, resumes
//! and aborts ramps, `admin` may do everything (flags included). Requests carry
//! `Authorization: Bearer <token>`; tokens are compared in constant time. An API without a tokens
//! file is open, and then served on loopback only (see `config.rs`).

use std::collections::HashSet;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Operator {
    name: String,
    role: Role,
    token: String,
}

/// The operators allowed in, from `api_tokens_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operators {
    list: Vec<Operator>,
}

/// A line of the tokens file that cannot be used (1-based line number).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct TokensError {
    pub line: usize,
    pub message: String,
}

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN: usize = 16;

impl Operators {
    /// Parses `name role token` lines (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Operators, TokensError> {
        let mut list = Vec::new();
        let (mut names, mut tokens) = (HashSet::new(), HashSet::new());
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| TokensError { line: i + 1, message };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, token] = fields[..] else {
                return Err(err(format!("expected `name role token`, found {} fields", fields.len())));
            };
            let role =
                Role::parse(role).ok_or_else(|| err(format!("unknown role \"{role}\" (viewer, operator or admin)")))?;
            if token.len() < MIN_TOKEN {
                return Err(err(format!("the token of \"{name}\" is shorter than {MIN_TOKEN} characters")));
            }
            if !names.insert(name.to_owned()) {
                return Err(err(format!("\"{name}\" is listed twice")));
            }
            if !tokens.insert(token.to_owned()) {
                return Err(err(format!("the token of \"{name}\" is already another operator's")));
            }
            list.push(Operator { name: name.to_owned(), role, token: token.to_owned() });
        }
        if list.is_empty() {
            return Err(TokensError { line: 0, message: "no operator listed".to_owned() });
        }
        Ok(Operators { list })
    }

    /// The operator whose token `presented` is; every token is compared, whatever matches.
    fn find(&self, presented: &str) -> Option<&Operator> {
        self.list.iter().fold(None, |found, o| {
            if constant_time_eq(o.token.as_bytes(), presented.as_bytes()) { Some(o) } else { found }
        })
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The role a request needs: reading is for viewers, operating ramps for operators, anything
/// else that changes state (flags) for admins. `/healthz` is open, and so is the console's static
/// shell (`/`, `/console/…`): it holds no data, which it reads from the API with the operator's token.
fn required(method: &Method, path: &str) -> Option<Role> {
    if path == "/healthz" || (matches!(*method, Method::GET | Method::HEAD) && crate::console::is_shell(path)) {
        return None;
    }
    if matches!(*method, Method::GET | Method::HEAD) {
        return Some(Role::Viewer);
    }
    if *method == Method::POST && (path == "/api/v1/ramps" || path.starts_with("/api/v1/ramps/")) {
        return Some(Role::Operator);
    }
    // Creating and archiving a flag, and recording a deployment, are a developer's or a
    // pipeline's everyday steps; replacing every definition stays an admin's.
    if *method == Method::POST && (path == "/api/v1/deployments" || path.starts_with("/api/v1/flags/")) {
        return Some(Role::Operator);
    }
    Some(Role::Admin)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, axum::Json(json!({"error": message}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    resp
}

/// The operator behind a request, for the handlers (and the audit trail to come).
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

/// Axum middleware: lets a request through when its operator's role suffices (401 without a
/// valid token, 403 when the role is too low); everyone through when no tokens are configured.
pub(crate) async fn authorize(State(operators): State<Option<Operators>>, mut req: Request, next: Next) -> Response {
    let Some(operators) = operators else { return next.run(req).await };
    let Some(needed) = required(req.method(), req.uri().path()) else { return next.run(req).await };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return refuse(StatusCode::UNAUTHORIZED, "an operator token is required (Authorization: Bearer <token>)");
    };
    let Some(operator) = operators.find(presented) else {
        return refuse(StatusCode::UNAUTHORIZED, "unknown operator token");
    };
    if operator.role < needed {
        let message =
            format!("\"{}\" is a {}; this needs the {} role", operator.name, operator.role.as_str(), needed.as_str());
        return refuse(StatusCode::FORBIDDEN, &message);
    }
    req.extensions_mut().insert(Actor { name: operator.name.clone(), role: operator.role });
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokens_file_is_parsed_with_located_errors() {
        let ops =
            Operators::parse("# who\nann admin aaaaaaaaaaaaaaaaaaaa\n\nbob viewer bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(ops.find("bbbbbbbbbbbbbbbbbbbb").map(|o| o.role), Some(Role::Viewer));
        assert!(ops.find("bbbbbbbbbbbbbbbbbbbX").is_none());
        let e = Operators::parse("ann admin aaaaaaaaaaaaaaaaaaaa\nbob root bbbbbbbbbbbbbbbbbbbb\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unknown role \"root\""), "{e}");
        assert_eq!(Operators::parse("ann admin short\n").unwrap_err().line, 1);
        assert_eq!(Operators::parse("ann admin\n").unwrap_err().line, 1);
        let twice = "ann admin aaaaaaaaaaaaaaaaaaaa\nann viewer bbbbbbbbbbbbbbbbbbbb\n";
        assert!(Operators::parse(twice).unwrap_err().message.contains("twice"));
        assert!(Operators::parse("# nobody\n").is_err());
    }

    #[test]
    fn roles_needed() {
        assert_eq!(required(&Method::GET, "/healthz"), None);
        assert_eq!(required(&Method::GET, "/"), None);
        assert_eq!(required(&Method::GET, "/console/app.js"), None);
        assert_eq!(required(&Method::POST, "/"), Some(Role::Admin));
        assert_eq!(required(&Method::GET, "/api/v1/flags"), Some(Role::Viewer));
        assert_eq!(required(&Method::POST, "/api/v1/ramps/f/abort"), Some(Role::Operator));
        assert_eq!(required(&Method::POST, "/api/v1/ramps"), Some(Role::Operator));
        assert_eq!(required(&Method::PUT, "/api/v1/flags"), Some(Role::Admin));
        assert_eq!(required(&Method::POST, "/api/v1/flags/new-checkout"), Some(Role::Operator));
        assert_eq!(required(&Method::POST, "/api/v1/deployments"), Some(Role::Operator));
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
