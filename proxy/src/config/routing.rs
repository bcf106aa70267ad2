//! `[clusters.<name>]` and `[[routes]]`: upstream clusters (endpoints, balancing, passive health)
//! and the ordered routes that pick one, validated into real types with located errors. The
//! top-level `upstream` is the cluster `default` unless `[clusters.default]` is given.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::Scheme;
use serde::Deserialize;

use super::{ConfigError, Upstream};

/// The name of the cluster requests go to when no route matches.
pub const DEFAULT_CLUSTER: &str = "default";

/// Most retries a route may ask for.
const MAX_RETRIES: u32 = 10;

/// `[clusters.<name>]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    endpoints: Vec<String>,
    #[serde(default)]
    balance: Balance,
    #[serde(default = "defaults::eject_after")]
    eject_after: NonZeroU32,
    #[serde(default = "defaults::eject_for", with = "humantime_serde")]
    eject_for: Duration,
    #[serde(default = "defaults::eject_for_max", with = "humantime_serde")]
    eject_for_max: Duration,
    #[serde(default = "defaults::max_idle")]
    max_idle: usize,
    tls: Option<RawUpstreamTls>,
}

/// `[clusters.<name>.tls]` as written: TLS to every endpoint of the cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    /// The CA that signed the endpoints' certificates (PEM).
    ca: PathBuf,
    /// The name to send (SNI) and verify; default: each endpoint's host.
    sni: Option<String>,
}

/// TLS to a cluster's endpoints.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: PathBuf,
    pub sni: Option<String>,
    /// Built once at load: trusts `ca`, offers ALPN `http/1.1`.
    pub client: Arc<rustls::ClientConfig>,
}

/// `[[routes]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(default)]
    flag: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    path_prefix: Option<String>,
    #[serde(default = "defaults::cluster")]
    cluster: String,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    #[serde(default)]
    retries: u32,
}

mod defaults {
    use std::num::NonZeroU32;
    use std::time::Duration;

    pub(super) fn eject_after() -> NonZeroU32 {
        NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN)
    }
    pub(super) fn eject_for() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn eject_for_max() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn max_idle() -> usize {
        64
    }
    pub(super) fn cluster() -> String {
        super::DEFAULT_CLUSTER.to_owned()
    }
}

/// How a cluster spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight.
    LeastRequests,
}

/// An upstream cluster: endpoints of one deployment, and how they are balanced and ejected.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Upstream>,
    pub balance: Balance,
    /// Consecutive connect failures that eject an endpoint.
    pub eject_after: NonZeroU32,
    /// The first ejection's length; each repeated ejection doubles it, up to `eject_for_max`.
    pub eject_for: Duration,
    pub eject_for_max: Duration,
    /// Idle keep-alive connections kept per endpoint.
    pub max_idle: usize,
    /// TLS to the endpoints (`[clusters.<name>.tls]`).
    pub tls: Option<UpstreamTls>,
}

/// A route: conditions (all optional, ANDed) and where a matching request goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// `(flag key, variant)`: the variant the request was assigned. A flag the snapshot does not
    /// inject makes the route match nothing (flags change; it is logged at each load).
    pub flags: Vec<(String, String)>,
    /// Exact matches of the request's first value of each header.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A plain string prefix of the path (`/api` also matches `/apiary`).
    pub path_prefix: Option<String>,
    /// Index into `Config::clusters`.
    pub cluster: usize,
    /// Until the upstream's response headers, connect and retries included.
    pub timeout: Duration,
    /// Retries of an idempotent request without a body after a connect failure.
    pub retries: u32,
}

/// Validates clusters and routes. `upstream` is the top-level upstream (the `default` cluster
/// unless `[clusters.default]` is given; `upstream_set` says whether it was written);
/// `timeout` is the global upstream timeout. The `default` cluster is always index 0.
pub(super) fn validate(
    clusters: BTreeMap<String, RawCluster>,
    routes: Vec<RawRoute>,
    upstream: (&Upstream, bool),
    timeout: Duration,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(Vec<Cluster>, Vec<Route>), ConfigError> {
    let (upstream, upstream_set) = upstream;
    if upstream_set && clusters.contains_key(DEFAULT_CLUSTER) {
        return Err(invalid("upstream", "set both here and as [clusters.default]; keep one".to_owned()));
    }
    let mut out = Vec::with_capacity(clusters.len() + 1);
    if !clusters.contains_key(DEFAULT_CLUSTER) {
        out.push(Cluster {
            name: DEFAULT_CLUSTER.to_owned(),
            endpoints: vec![upstream.clone()],
            balance: Balance::RoundRobin,
            eject_after: defaults::eject_after(),
            eject_for: defaults::eject_for(),
            eject_for_max: defaults::eject_for_max(),
            max_idle: defaults::max_idle(),
            tls: None,
        });
    }
    let mut clusters: Vec<_> = clusters.into_iter().collect();
    // `default` first, so that index 0 is always it.
    clusters.sort_by_key(|(name, _)| name != DEFAULT_CLUSTER);
    for (name, raw) in clusters {
        out.push(cluster(name, &raw, base, invalid)?);
    }

    let routes = routes
        .into_iter()
        .enumerate()
        .map(|(i, raw)| route(i, raw, &out, timeout, invalid))
        .collect::<Result<_, _>>()?;
    Ok((out, routes))
}

fn cluster(
    name: String,
    raw: &RawCluster,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Cluster, ConfigError> {
    let at = |key: &str| format!("clusters.{name}.{key}");
    if raw.endpoints.is_empty() {
        return Err(invalid(&at("endpoints"), "needs at least one endpoint".to_owned()));
    }
    let mut endpoints: Vec<Upstream> = Vec::with_capacity(raw.endpoints.len());
    for (i, text) in raw.endpoints.iter().enumerate() {
        let key = at(&format!("endpoints[{i}]"));
        let endpoint = endpoint(text).map_err(|m| invalid(&key, m))?;
        if endpoints.iter().any(|e| e.authority == endpoint.authority) {
            return Err(invalid(&key, format!("\"{text}\" is listed twice")));
        }
        endpoints.push(endpoint);
    }
    let tls = match &raw.tls {
        None => None,
        Some(t) => {
            let ca = base.join(&t.ca);
            let client = crate::tls::client_config(&ca, None).map_err(|e| invalid(&at("tls.ca"), e.to_string()))?;
            let mut client = (*client).clone();
            client.alpn_protocols = vec![b"http/1.1".to_vec()];
            if let Some(sni) = &t.sni
                && rustls::pki_types::ServerName::try_from(sni.as_str()).is_err()
            {
                return Err(invalid(&at("tls.sni"), format!("\"{sni}\" is not a server name")));
            }
            Some(UpstreamTls { ca, sni: t.sni.clone(), client: Arc::new(client) })
        }
    };
    if tls.is_none() && endpoints.iter().any(|e| e.scheme == Scheme::HTTPS) {
        return Err(invalid(
            &at("tls"),
            "https:// endpoints need [clusters.NAME.tls] with the ca that signed them".to_owned(),
        ));
    }
    if raw.eject_for.is_zero() {
        return Err(invalid(&at("eject_for"), "must be above zero".to_owned()));
    }
    if raw.eject_for_max < raw.eject_for {
        return Err(invalid(&at("eject_for_max"), "must be at least eject_for".to_owned()));
    }
    Ok(Cluster {
        name,
        endpoints,
        balance: raw.balance,
        eject_after: raw.eject_after,
        eject_for: raw.eject_for,
        eject_for_max: raw.eject_for_max,
        max_idle: raw.max_idle,
        tls,
    })
}

fn route(
    index: usize,
    raw: RawRoute,
    clusters: &[Cluster],
    default_timeout: Duration,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Route, ConfigError> {
    let at = |key: &str| format!("routes[{index}].{key}");
    let cluster = clusters.iter().position(|c| c.name == raw.cluster).ok_or_else(|| {
        let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        invalid(&at("cluster"), format!("unknown cluster \"{}\" (known: {})", raw.cluster, known.join(", ")))
    })?;
    if let Some((key, _)) = raw.flag.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
        return Err(invalid(&at("flag"), format!("\"{key}\" needs a flag key and a variant name")));
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (name, value) in raw.headers {
        let key = at(&format!("headers.{name}"));
        let header = HeaderName::try_from(name.as_str())
            .map_err(|_| invalid(&key, format!("\"{name}\" is not a valid header name")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| invalid(&key, format!("\"{value}\" is not a valid header value")))?;
        headers.push((header, value));
    }
    if let Some(prefix) = &raw.path_prefix
        && !prefix.starts_with('/')
    {
        return Err(invalid(&at("path_prefix"), format!("\"{prefix}\" must start with /")));
    }
    let timeout = raw.timeout.unwrap_or(default_timeout);
    if timeout.is_zero() {
        return Err(invalid(&at("timeout"), "must be above zero".to_owned()));
    }
    if raw.retries > MAX_RETRIES {
        return Err(invalid(&at("retries"), format!("must be at most {MAX_RETRIES}")));
    }
    Ok(Route {
        flags: raw.flag.into_iter().collect(),
        headers,
        path_prefix: raw.path_prefix,
        cluster,
        timeout,
        retries: raw.retries,
    })
}

/// Parses an endpoint: `http://host:port`, without a path.
pub(super) fn endpoint(text: &str) -> Result<Upstream, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("\"{text}\" is not a URI: {e}"))?;
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => {
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err("must be scheme://host:port, without a path".to_owned());
            }
            Ok(Upstream { scheme: scheme.clone(), authority: authority.clone() })
        }
        (Some(_), Some(_)) => Err("only http:// and https:// upstreams are supported".to_owned()),
        _ => Err(format!("\"{text}\" needs a scheme and host, e.g. http://127.0.0.1:3000")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/rampart/proxy.toml"), &format!("flags = \"f.yaml\"\n{text}"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_top_level_upstream_is_the_default_cluster() {
        let c = parse("upstream = \"http://10.0.0.1:3000\"\n").unwrap();
        assert_eq!(c.clusters.len(), 1);
        assert_eq!(c.clusters[0].name, "default");
        assert_eq!(c.clusters[0].endpoints[0].authority.as_str(), "10.0.0.1:3000");
        assert_eq!(c.clusters[0].eject_after.get(), 3);
        assert_eq!(c.clusters[0].eject_for, Duration::from_secs(10));
        assert!(c.routes.is_empty());
    }

    #[test]
    fn clusters_and_routes() {
        let c = parse(
            r#"upstream_timeout = "7s"
[clusters.canary]
endpoints = ["http://127.0.0.1:4000", "http://127.0.0.1:4001"]
balance = "least_requests"
eject_after = 5
eject_for = "2s"

[[routes]]
flag = { new-checkout = "on" }
cluster = "canary"
timeout = "5s"
retries = 1

[[routes]]
headers = { "X-Debug" = "1" }
path_prefix = "/api"
"#,
        )
        .unwrap();
        assert_eq!(c.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["default", "canary"]);
        let canary = &c.clusters[1];
        assert_eq!(canary.balance, Balance::LeastRequests);
        assert_eq!(canary.endpoints.len(), 2);
        assert_eq!((canary.eject_after.get(), canary.eject_for), (5, Duration::from_secs(2)));
        assert_eq!(c.routes[0].flags, [("new-checkout".to_owned(), "on".to_owned())]);
        assert_eq!((c.routes[0].cluster, c.routes[0].timeout, c.routes[0].retries), (1, Duration::from_secs(5), 1));
        assert_eq!(c.routes[1].headers, [(HeaderName::from_static("x-debug"), HeaderValue::from_static("1"))]);
        assert_eq!(c.routes[1].path_prefix.as_deref(), Some("/api"));
        assert_eq!((c.routes[1].cluster, c.routes[1].timeout), (0, Duration::from_secs(7)));
    }

    #[test]
    fn an_explicit_default_cluster_replaces_upstream() {
        let c = parse("[clusters.default]\nendpoints = [\"http://127.0.0.1:5000\"]\n[clusters.a]\nendpoints = [\"http://127.0.0.1:5001\"]\n")
            .unwrap();
        assert_eq!(c.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["default", "a"]);
        assert_eq!(c.clusters[0].endpoints[0].authority.as_str(), "127.0.0.1:5000");
        let e = error("upstream = \"http://127.0.0.1:1\"\n[clusters.default]\nendpoints = [\"http://127.0.0.1:2\"]\n");
        assert!(e.contains("upstream: set both"), "{e}");
    }

    #[test]
    fn errors_are_located() {
        let e = error("[[routes]]\ncluster = \"canary\"\n[[routes]]\n[[routes]]\ncluster = \"nope\"\n");
        assert!(e.starts_with("/etc/rampart/proxy.toml: routes[0].cluster: unknown cluster \"canary\""), "{e}");
        let e = error(
            "[clusters.c]\nendpoints = [\"http://127.0.0.1:1\"]\n[[routes]]\ncluster = \"c\"\n[[routes]]\ncluster = \"x\"\n",
        );
        assert!(e.contains("routes[1].cluster: unknown cluster \"x\" (known: default, c)"), "{e}");
        let e = error("[clusters.c]\nendpoints = []\n");
        assert!(e.contains("clusters.c.endpoints: needs at least one"), "{e}");
        let e = error("[clusters.c]\nendpoints = [\"http://a:1\", \"https://b:2\"]\n");
        assert!(e.contains("clusters.c.tls: https:// endpoints need"), "{e}");
        let e = error("[clusters.c]\nendpoints = [\"ftp://a:1\"]\n");
        assert!(e.contains("clusters.c.endpoints[0]: only http:// and https://"), "{e}");
        let e = error("[clusters.c]\nendpoints = [\"https://a:1\"]\ntls = { ca = \"/nonexistent/ca.pem\" }\n");
        assert!(e.contains("clusters.c.tls.ca: ") && e.contains("/nonexistent/ca.pem"), "{e}");
        let e = error("[clusters.c]\nendpoints = [\"http://a:1\", \"http://a:1\"]\n");
        assert!(e.contains("clusters.c.endpoints[1]: \"http://a:1\" is listed twice"), "{e}");
        let e = error("[clusters.c]\nendpoints = [\"http://a:1\"]\nbalance = \"random\"\n");
        assert!(e.starts_with("/etc/rampart/proxy.toml:4:"), "{e}");
        let e = error("[[routes]]\ntimeout = \"soon\"\n");
        assert!(e.starts_with("/etc/rampart/proxy.toml:3:"), "a bad duration is located by line: {e}");
        let e = error("[[routes]]\ntimeout = \"0s\"\n");
        assert!(e.contains("routes[0].timeout: must be above zero"), "{e}");
        let e = error("[[routes]]\npath_prefix = \"api\"\n");
        assert!(e.contains("routes[0].path_prefix: \"api\" must start with /"), "{e}");
        let e = error("[[routes]]\nheaders = { \"bad header\" = \"1\" }\n");
        assert!(e.contains("routes[0].headers.bad header: "), "{e}");
        let e = error("[[routes]]\nretries = 11\n");
        assert!(e.contains("routes[0].retries: must be at most 10"), "{e}");
        let e = error("[[routes]]\nmethod = \"GET\"\n");
        assert!(e.contains("unknown field `method`"), "{e}");
        let e = error("[clusters.c]\nendpoints = [\"http://a:1\"]\neject_for = \"1m\"\neject_for_max = \"10s\"\n");
        assert!(e.contains("clusters.c.eject_for_max: must be at least eject_for"), "{e}");
    }
}
