//! The sidecar's TOML configuration: parsed into real types at load, validated before any port is
//! bound; every error names the file and the key (and, for syntax, line and column).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use serde::Deserialize;

mod connections;
mod control;
mod propagation;
mod queries;
mod tls;

pub use self::tls::ControlAuth;
pub use connections::{Connections, Headers};
pub use propagation::Propagation;
pub use queries::Queries;

mod routing;

pub use routing::{Balance, Cluster, DEFAULT_CLUSTER, Route, UpstreamTls};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {key}: {message}", path.display())]
    Invalid { path: PathBuf, key: String, message: String },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "defaults::listen")]
    listen: SocketAddr,
    #[serde(default = "defaults::upstream")]
    upstream: String,
    flags: Option<PathBuf>,
    /// One URL, or a list of URLs tried in turn.
    control_plane: Option<toml::Value>,
    #[serde(default = "defaults::service")]
    service: String,
    proxy_id: Option<String>,
    #[serde(default = "defaults::report_interval", with = "humantime_serde")]
    report_interval: Duration,
    #[serde(default = "defaults::max_series")]
    max_series: usize,
    flags_cache: Option<PathBuf>,
    #[serde(default = "defaults::admin")]
    admin: SocketAddr,
    #[serde(default = "defaults::header_prefix")]
    header_prefix: String,
    /// Flag keys to inject; absent means every flag.
    inject: Option<Vec<String>>,
    #[serde(default)]
    context: toml::Table,
    workers: Option<NonZeroUsize>,
    #[serde(default = "defaults::max_connections")]
    max_connections: NonZeroUsize,
    #[serde(default = "defaults::max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "defaults::upstream_timeout", with = "humantime_serde")]
    upstream_timeout: Duration,
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pool_idle_timeout: Duration,
    #[serde(default)]
    queries: queries::RawQueries,
    #[serde(default)]
    clusters: std::collections::BTreeMap<String, routing::RawCluster>,
    #[serde(default)]
    routes: Vec<routing::RawRoute>,
    tls: Option<tls::RawListenerTls>,
    control_auth: Option<tls::RawControlAuth>,
    propagation: Option<propagation::RawPropagation>,
    #[serde(default)]
    connections: connections::RawConnections,
    #[serde(default)]
    headers: connections::RawHeaders,
}

mod defaults {
    use std::net::SocketAddr;
    use std::num::NonZeroUsize;
    use std::time::Duration;

    pub(super) fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub(super) fn admin() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9901))
    }
    pub(super) fn upstream() -> String {
        "http://127.0.0.1:3000".to_owned()
    }
    pub(super) fn service() -> String {
        "default".to_owned()
    }
    pub(super) fn report_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn max_series() -> usize {
        1000
    }
    pub(super) fn header_prefix() -> String {
        "x-flag-".to_owned()
    }
    pub(super) fn max_connections() -> NonZeroUsize {
        NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN)
    }
    pub(super) fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub(super) fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn upstream_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
}

/// Where a context attribute comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Method,
    Path,
    Host,
}

impl Source {
    fn parse(spec: &str) -> Result<Source, String> {
        let (kind, name) = spec.split_once(':').unwrap_or((spec, ""));
        match (kind, name) {
            ("header", n) if !n.is_empty() => {
                HeaderName::try_from(n).map(Source::Header).map_err(|_| format!("\"{n}\" is not a valid header name"))
            }
            ("cookie", n) if !n.is_empty() => Ok(Source::Cookie(n.to_owned())),
            ("query", n) if !n.is_empty() => Ok(Source::Query(n.to_owned())),
            ("method", "") => Ok(Source::Method),
            ("path", "") => Ok(Source::Path),
            ("host", "") => Ok(Source::Host),
            _ => Err(format!(
                "\"{spec}\" is not a source (expected header:NAME, cookie:NAME, query:NAME, method, path or host)"
            )),
        }
    }
}

/// One context attribute and its sources, first present wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub sources: Vec<Source>,
}

/// The upstream as the request path needs it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// Where the sidecar streams its stats and gets its flags from.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The control plane's replicas, tried in turn (never empty): after a failed connect or a
    /// stream that ends, the next one at once; a full round without a stream, then a backoff.
    pub uris: Vec<http::Uri>,
    pub service: String,
    pub proxy_id: String,
    pub report_interval: Duration,
    /// The last flags pushed, kept on disk to serve when the control plane is unreachable at start.
    pub cache: PathBuf,
    /// TLS and credentials for the stream (`[control_auth]`).
    pub auth: Option<ControlAuth>,
}

/// A validated sidecar configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file (errors and relative paths refer to it).
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// The flags file, resolved against the config file's directory. With a control plane it only
    /// bootstraps the sidecar (when there is no cache) and is not watched.
    pub flags: Option<PathBuf>,
    pub control_plane: Option<ControlPlane>,
    /// Most (flag, variant) stats series recorded at once (ended ramps' series give up their
    /// slots at once and are freed once reported); requests beyond are counted as overflow.
    pub max_series: usize,
    pub admin: SocketAddr,
    pub header_prefix: String,
    pub inject: Option<Vec<String>>,
    pub context: Vec<Attribute>,
    /// Serving threads, each a current-thread runtime with its own listening socket and upstream
    /// pools (`workers.rs`); `None` is one (a sidecar shares its host with the service).
    pub workers: Option<NonZeroUsize>,
    pub max_connections: NonZeroUsize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub drain_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub queries: Queries,
    /// Upstream clusters; index 0 is `default` (the top-level `upstream` unless `[clusters.default]`).
    pub clusters: Vec<Cluster>,
    /// Ordered routes: the first match picks the cluster; no match → `default`.
    pub routes: Vec<Route>,
    /// TLS termination on the listener (`[tls]`).
    pub tls: Option<crate::tls::ListenerTls>,
    /// Signed assignments across hops; `None` strips the propagation headers.
    pub propagation: Option<Propagation>,
    /// `[connections]`: per-state timeouts and the per-address cap.
    pub connections: Connections,
    /// `[headers]`: underscores and Host.
    pub headers: Headers,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text`, named `path` (relative `flags` paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Syntax { path: path.to_owned(), line, column, message: e.message().to_owned() }
        })?;
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { path: path.to_owned(), key: key.to_owned(), message };

        let uri: http::Uri =
            raw.upstream.parse().map_err(|e| invalid("upstream", format!("\"{}\" is not a URI: {e}", raw.upstream)))?;
        let upstream = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) if *scheme == Scheme::HTTP => {
                if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                    return Err(invalid("upstream", "must be scheme://host:port, without a path".to_owned()));
                }
                Upstream { scheme: scheme.clone(), authority: authority.clone() }
            }
            (Some(_), Some(_)) => {
                return Err(invalid("upstream", "only http:// upstreams are supported".to_owned()));
            }
            _ => {
                return Err(invalid(
                    "upstream",
                    format!("\"{}\" needs a scheme and host, e.g. http://127.0.0.1:3000", raw.upstream),
                ));
            }
        };

        let prefix = raw.header_prefix.to_ascii_lowercase();
        if prefix.is_empty() || HeaderName::try_from(format!("{prefix}x")).is_err() {
            return Err(invalid("header_prefix", format!("\"{prefix}\" cannot start a header name")));
        }
        if let Some(keys) = &raw.inject
            && let Some(bad) = keys.iter().find(|k| HeaderName::try_from(format!("{prefix}{k}")).is_err())
        {
            return Err(invalid("inject", format!("\"{bad}\" cannot be part of a header name")));
        }

        let mut context = Vec::new();
        for (name, value) in &raw.context {
            let key = format!("context.{name}");
            let specs: Vec<&str> = match value {
                toml::Value::String(s) => vec![s.as_str()],
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().ok_or_else(|| invalid(&key, "sources must be strings".to_owned())))
                    .collect::<Result<_, _>>()?,
                _ => return Err(invalid(&key, "must be a source or a list of sources".to_owned())),
            };
            let sources =
                specs.into_iter().map(Source::parse).collect::<Result<Vec<_>, _>>().map_err(|m| invalid(&key, m))?;
            if let Some(Source::Header(h)) =
                sources.iter().find(|s| matches!(s, Source::Header(h) if h.as_str().starts_with(&prefix)))
            {
                return Err(invalid(&key, format!("\"{h}\" is under the flag-header prefix; clients may not set it")));
            }
            context.push(Attribute { name: name.clone(), sources });
        }
        if raw.context.is_empty() {
            context.push(Attribute {
                name: rampart_flags::TARGETING_KEY.to_owned(),
                sources: vec![Source::Header(HeaderName::from_static("x-user-id"))],
            });
        }
        if raw.max_header_bytes < 8192 {
            return Err(invalid("max_header_bytes", "must be at least 8192".to_owned()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let located = |(key, message): (String, String)| invalid(&key, message);
        let listener_tls = raw.tls.map(|t| tls::listener(t, base)).transpose().map_err(located)?;
        let control_auth = raw.control_auth.map(|a| tls::control(a, base)).transpose().map_err(located)?;
        if raw.control_plane.is_none() && control_auth.is_some() {
            return Err(invalid("control_auth", "needs control_plane".to_owned()));
        }
        let control_plane = match &raw.control_plane {
            None => None,
            Some(value) => {
                let needs_https = control_auth.as_ref().is_some_and(|a| a.ca.is_some());
                let uris = control::urls(value, needs_https).map_err(located)?;
                if raw.report_interval.is_zero() {
                    return Err(invalid("report_interval", "must be above zero".to_owned()));
                }
                Some(ControlPlane {
                    uris,
                    service: raw.service.clone(),
                    proxy_id: raw.proxy_id.clone().unwrap_or_else(default_proxy_id),
                    report_interval: raw.report_interval,
                    cache: base
                        .join(raw.flags_cache.clone().unwrap_or_else(|| PathBuf::from("rampart-flags.cache.json"))),
                    auth: control_auth,
                })
            }
        };
        if raw.flags.is_none() && control_plane.is_none() {
            return Err(invalid("flags", "missing: a flags file is needed unless control_plane is set".to_owned()));
        }
        let queries = queries::validate(raw.queries, base, &invalid)?;
        let written = (&upstream, raw.upstream != defaults::upstream());
        let (clusters, routes) =
            routing::validate(raw.clusters, raw.routes, written, raw.upstream_timeout, base, &invalid)?;
        let propagation = raw.propagation.map(|p| p.validate(base, &prefix, &invalid)).transpose()?;
        let connections = raw.connections.validate(&invalid)?;
        Ok(Config {
            path: path.to_owned(),
            listen: raw.listen,
            upstream,
            flags: raw.flags.map(|f| base.join(f)),
            control_plane,
            max_series: raw.max_series,
            admin: raw.admin,
            header_prefix: prefix,
            inject: raw.inject,
            context,
            workers: raw.workers,
            max_connections: raw.max_connections,
            max_header_bytes: raw.max_header_bytes,
            header_read_timeout: raw.header_read_timeout,
            connect_timeout: raw.connect_timeout,
            upstream_timeout: raw.upstream_timeout,
            drain_timeout: raw.drain_timeout,
            pool_idle_timeout: raw.pool_idle_timeout,
            queries,
            clusters,
            routes,
            propagation,
            tls: listener_tls,
            connections,
            headers: raw.headers.validate(),
        })
    }
}

/// Host name and process id: unique per sidecar process on a host.
fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sidecar".to_owned());
    format!("{host}-{}", std::process::id())
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
