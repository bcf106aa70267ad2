//! `[queries]`: the flag query servers (flagd gRPC + Connect, OFREP), their addresses and how they
//! build the evaluation context (static attributes, request headers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use serde::Deserialize;

use super::ConfigError;

fn default_grpc() -> String {
    "127.0.0.1:8013".to_owned()
}

fn default_ofrep() -> String {
    "127.0.0.1:8016".to_owned()
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(20)
}

/// `[queries]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueries {
    #[serde(default = "default_grpc")]
    grpc: String,
    #[serde(default = "default_ofrep")]
    ofrep: String,
    unix_socket: Option<PathBuf>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    keep_alive: Duration,
    #[serde(default)]
    context: toml::Table,
    #[serde(default)]
    headers: toml::Table,
}

impl Default for RawQueries {
    fn default() -> Self {
        RawQueries {
            grpc: default_grpc(),
            ofrep: default_ofrep(),
            unix_socket: None,
            keep_alive: default_keep_alive(),
            context: toml::Table::new(),
            headers: toml::Table::new(),
        }
    }
}

/// The flag query servers (flagd gRPC + Connect, OFREP) and how they build the context.
#[derive(Debug, Clone)]
pub struct Queries {
    /// flagd's gRPC evaluation service and Connect unary JSON; `None` when `"off"`.
    pub grpc: Option<SocketAddr>,
    /// OFREP; `None` when `"off"`.
    pub ofrep: Option<SocketAddr>,
    /// The gRPC/Connect service on a unix socket too.
    pub unix_socket: Option<PathBuf>,
    /// Interval of `keep_alive` events on an `EventStream`.
    pub keep_alive: Duration,
    /// Attributes added to every query's context (they override the caller's).
    pub context: serde_json::Map<String, serde_json::Value>,
    /// Request header → context key, applied last (a header overrides the caller and `context`).
    pub headers: Vec<(HeaderName, String)>,
}

/// Validates `[queries]`.
pub(super) fn validate(
    raw: RawQueries,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Queries, ConfigError> {
    let addr = |key: &str, text: &str| -> Result<Option<SocketAddr>, ConfigError> {
        if text == "off" {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| invalid(key, format!("\"{text}\" is not an address like 127.0.0.1:8013 (or \"off\")")))
    };
    let grpc = addr("queries.grpc", &raw.grpc)?;
    let ofrep = addr("queries.ofrep", &raw.ofrep)?;
    // Port 0 asks the system for a free port each, so two of them never clash.
    if grpc.is_some_and(|a| a.port() != 0) && grpc == ofrep {
        return Err(invalid("queries.ofrep", "must differ from queries.grpc".to_owned()));
    }
    if raw.keep_alive.is_zero() {
        return Err(invalid("queries.keep_alive", "must be above zero".to_owned()));
    }
    let mut context = serde_json::Map::new();
    for (name, value) in raw.context {
        let json = serde_json::to_value(&value)
            .ok()
            .filter(|v| !v.is_null())
            .ok_or_else(|| invalid(&format!("queries.context.{name}"), "cannot be a context value".to_owned()))?;
        context.insert(name, json);
    }
    let mut headers = Vec::new();
    for (name, value) in raw.headers {
        let key = format!("queries.headers.{name}");
        let header = HeaderName::try_from(name.as_str())
            .map_err(|_| invalid(&key, format!("\"{name}\" is not a valid header name")))?;
        let target = value
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid(&key, "must name a context key, e.g. \"targetingKey\"".to_owned()))?;
        headers.push((header, target.to_owned()));
    }
    Ok(Queries {
        grpc,
        ofrep,
        unix_socket: raw.unix_socket.map(|p| base.join(p)),
        keep_alive: raw.keep_alive,
        context,
        headers,
    })
}
