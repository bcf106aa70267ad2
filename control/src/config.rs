//! The control plane's TOML configuration, validated before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_grpc")]
    grpc_listen: SocketAddr,
    #[serde(default = "default_http")]
    http_listen: SocketAddr,
    flags: Option<PathBuf>,
    /// A SQLite file, or a `postgres://…` URL shared by replicas.
    #[serde(default = "default_store")]
    store: String,
    /// This replica's name in the replicas list (default: host name and process id).
    replica: Option<String>,
    tls: Option<RawTls>,
    /// Bearer tokens for sidecars: `token`, `service token` to bind it to a service, or
    /// `service/proxy_id token` to bind it to one sidecar.
    tokens_file: Option<PathBuf>,
    /// Operators of the HTTP API: `name role token` per line.
    api_tokens_file: Option<PathBuf>,
    /// Serve the API without operator tokens on an address other than loopback.
    #[serde(default)]
    allow_unauthenticated: bool,
    /// Series of removed flags, and sequences of sidecar processes, that no report touched for
    /// this long are deleted.
    #[serde(default = "default_retention", with = "humantime_serde")]
    retention: std::time::Duration,
    /// Most stats reports queued for ingest or being applied; past it (or past
    /// `ingest_queue_bytes`) a stream waits for room and reads nothing more meanwhile.
    #[serde(default = "default_ingest_queue")]
    ingest_queue: std::num::NonZeroUsize,
    /// Most bytes of stats reports (encoded) queued for ingest or being applied.
    #[serde(default = "default_ingest_queue_bytes")]
    ingest_queue_bytes: std::num::NonZeroUsize,
    #[serde(default)]
    lifecycle: RawLifecycle,
}

/// `[lifecycle]`: when a flag counts as launched or unused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    #[serde(default = "default_launched_after", with = "humantime_serde")]
    launched_after: std::time::Duration,
    #[serde(default = "default_unused_after", with = "humantime_serde")]
    unused_after: std::time::Duration,
}

impl Default for RawLifecycle {
    fn default() -> Self {
        RawLifecycle { launched_after: default_launched_after(), unused_after: default_unused_after() }
    }
}

fn default_launched_after() -> std::time::Duration {
    std::time::Duration::from_secs(7 * 86_400)
}
fn default_unused_after() -> std::time::Duration {
    std::time::Duration::from_secs(30 * 86_400)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    /// Sidecars presenting a certificate from this CA are accepted without a token.
    client_ca: Option<PathBuf>,
}

/// A sidecar's bearer token; with a service, a stream presenting it may only say it is that
/// service, and with a proxy id only that sidecar (which then no other credential may be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarToken {
    pub service: Option<String>,
    pub proxy: Option<String>,
    pub token: String,
}

/// TLS for the sidecar streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8400))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8401))
}
fn default_retention() -> std::time::Duration {
    std::time::Duration::from_secs(30 * 86_400)
}
fn default_ingest_queue() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(4096).unwrap_or(std::num::NonZeroUsize::MIN)
}
fn default_ingest_queue_bytes() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(64 << 20).unwrap_or(std::num::NonZeroUsize::MIN)
}
fn default_store() -> String {
    "rampart-control.db".to_owned()
}

/// A validated control-plane configuration. Relative paths resolve against the config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Flags to start with when the store has none yet.
    pub flags: Option<PathBuf>,
    /// The SQLite database, or the PostgreSQL database replicas share.
    pub store: crate::store::Location,
    /// This replica's name (with PostgreSQL), unique among the replicas.
    pub replica: Option<String>,
    /// TLS on the gRPC listener.
    pub tls: Option<Tls>,
    /// Bearer tokens accepted from sidecars. When tokens or a client CA are configured, a stream
    /// must present a valid client certificate or one of these.
    pub tokens: Vec<SidecarToken>,
    /// Operators of the HTTP API and their roles; `None`: the API is open (and then on loopback
    /// unless `allow_unauthenticated`).
    pub operators: Option<crate::operators::Operators>,
    /// How long idle series of removed flags and sequences of gone sidecars are kept.
    pub retention: std::time::Duration,
    /// When flags count as launched or unused.
    pub lifecycle: crate::lifecycle::Policy,
    /// Most stats reports queued for ingest or being applied before reports are shed.
    pub ingest_queue: std::num::NonZeroUsize,
    /// Most bytes of stats reports queued for ingest or being applied before reports are shed.
    pub ingest_queue_bytes: std::num::NonZeroUsize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_listen: default_grpc(),
            http_listen: default_http(),
            flags: None,
            store: crate::store::Location::parse(&default_store()),
            replica: None,
            tls: None,
            tokens: Vec::new(),
            operators: None,
            retention: default_retention(),
            lifecycle: crate::lifecycle::Policy::default(),
            ingest_queue: default_ingest_queue(),
            ingest_queue_bytes: default_ingest_queue_bytes(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start).min(text.len());
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
            ConfigError::Syntax { path: path.to_owned(), line, column, message: e.message().to_owned() }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { path: path.to_owned(), key: key.to_owned(), message };
        let tokens = match raw.tokens_file {
            None => Vec::new(),
            Some(f) => {
                let file = base.join(f);
                let text = read_small(&file).map_err(|e| invalid("tokens_file", e))?;
                let mut tokens = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let at = || format!("{} line {}", file.display(), i + 1);
                    let token = match line.split_whitespace().collect::<Vec<_>>()[..] {
                        [token] => SidecarToken { service: None, proxy: None, token: token.to_owned() },
                        [name, token] => {
                            let (service, proxy) = match name.split_once('/') {
                                Some((service, proxy)) => (service, Some(proxy.to_owned())),
                                None => (name, None),
                            };
                            let bad =
                                |s: &str| s.is_empty() || s.len() > rampart_flags::MAX_NAME_BYTES || s.contains('/');
                            if bad(service) || proxy.as_deref().is_some_and(bad) {
                                let message = format!(
                                    "{}: `{name}`: a service, or service/proxy_id, each 1 to {} bytes",
                                    at(),
                                    rampart_flags::MAX_NAME_BYTES
                                );
                                return Err(invalid("tokens_file", message));
                            }
                            SidecarToken { service: Some(service.to_owned()), proxy, token: token.to_owned() }
                        }
                        _ => {
                            let message =
                                format!("{}: expected `token`, `service token` or `service/proxy_id token`", at());
                            return Err(invalid("tokens_file", message));
                        }
                    };
                    tokens.push(token);
                }
                if tokens.is_empty() {
                    return Err(invalid("tokens_file", format!("{} holds no token", file.display())));
                }
                tokens
            }
        };
        let operators = match raw.api_tokens_file {
            None => None,
            Some(f) => {
                let file = base.join(f);
                let text = read_small(&file).map_err(|e| invalid("api_tokens_file", e))?;
                let operators = crate::operators::Operators::parse(&text)
                    .map_err(|e| invalid("api_tokens_file", format!("{}: {e}", file.display())))?;
                Some(operators)
            }
        };
        if operators.is_none() && !raw.http_listen.ip().is_loopback() && !raw.allow_unauthenticated {
            return Err(invalid(
                "http_listen",
                format!(
                    "{} is not a loopback address and there is no api_tokens_file: anyone who reaches it could \
                     change flags and ramps (set api_tokens_file, or allow_unauthenticated = true)",
                    raw.http_listen
                ),
            ));
        }
        if let Some(name) = &raw.replica
            && (name.is_empty() || name.len() > rampart_flags::MAX_NAME_BYTES)
        {
            return Err(invalid("replica", format!("1 to {} bytes", rampart_flags::MAX_NAME_BYTES)));
        }
        let tls = raw.tls.map(|t| Tls {
            cert: base.join(t.cert),
            key: base.join(t.key),
            client_ca: t.client_ca.map(|c| base.join(c)),
        });
        for (key, file) in tls.iter().flat_map(|t| {
            [("tls.cert", Some(&t.cert)), ("tls.key", Some(&t.key)), ("tls.client_ca", t.client_ca.as_ref())]
        }) {
            if let Some(file) = file
                && let Err(e) = std::fs::metadata(file)
            {
                return Err(invalid(key, format!("{}: {e}", file.display())));
            }
        }
        Ok(Config {
            grpc_listen: raw.grpc_listen,
            http_listen: raw.http_listen,
            flags: raw.flags.map(|f| base.join(f)),
            store: match crate::store::Location::parse(&raw.store) {
                crate::store::Location::Sqlite(file) => crate::store::Location::Sqlite(base.join(file)),
                url => url,
            },
            replica: raw.replica,
            tls,
            tokens,
            operators,
            retention: raw.retention,
            lifecycle: crate::lifecycle::Policy {
                launched_after_ms: i64::try_from(raw.lifecycle.launched_after.as_millis()).unwrap_or(i64::MAX),
                unused_after_ms: i64::try_from(raw.lifecycle.unused_after.as_millis()).unwrap_or(i64::MAX),
            },
            ingest_queue: raw.ingest_queue,
            ingest_queue_bytes: raw.ingest_queue_bytes,
        })
    }
}

/// A token file: a regular file (not a FIFO or a device) of at most 1 MiB.
fn read_small(file: &Path) -> Result<String, String> {
    rampart_flags::read_file(file, 1 << 20).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse(Path::new("/srv/control.toml"), "flags = \"flags.yaml\"\n").unwrap();
        assert_eq!(c.grpc_listen.port(), 8400);
        assert_eq!(c.http_listen.port(), 8401);
        assert_eq!(c.store, crate::store::Location::Sqlite("/srv/rampart-control.db".into()));
        let pg =
            Config::parse(Path::new("/srv/c.toml"), "store = \"postgres://rampart@db/rampart\"\nreplica = \"a\"\n");
        let pg = pg.unwrap();
        assert_eq!(pg.store, crate::store::Location::Postgres("postgres://rampart@db/rampart".into()));
        assert_eq!(pg.replica.as_deref(), Some("a"));
        assert_eq!(c.flags.as_deref(), Some(Path::new("/srv/flags.yaml")));
        let e = Config::parse(Path::new("c.toml"), "store = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("c.toml:1:9: "), "{e}");
        let e = Config::parse(Path::new("c.toml"), "\nstroe = \"x\"\n").unwrap_err().to_string();
        assert!(e.starts_with("c.toml:2:1: unknown field"), "{e}");
    }

    #[test]
    fn an_open_api_stays_on_loopback_unless_allowed() {
        let open = "http_listen = \"0.0.0.0:8401\"\n";
        let e = Config::parse(Path::new("c.toml"), open).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: http_listen: 0.0.0.0:8401 is not a loopback address"), "{e}");
        let allowed = format!("{open}allow_unauthenticated = true\n");
        assert!(Config::parse(Path::new("c.toml"), &allowed).unwrap().operators.is_none());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ops"), "ann admin aaaaaaaaaaaaaaaaaaaa\nbob boss bbbbbbbbbbbbbbbbbbbb\n")
            .unwrap();
        let e = Config::parse(&dir.path().join("c.toml"), &format!("{open}api_tokens_file = \"ops\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_tokens_file: ") && e.contains("line 2: unknown role \"boss\""), "{e}");
    }

    #[test]
    fn sidecar_tokens_bind_a_service_or_one_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let config = |tokens: &str| {
            std::fs::write(dir.path().join("tokens"), tokens).unwrap();
            Config::parse(&dir.path().join("c.toml"), "tokens_file = \"tokens\"\n")
        };
        let c = config("# any\nt0\nshop t1\nshop/shop-1 t2\n").unwrap();
        let token = |service: Option<&str>, proxy: Option<&str>, token: &str| SidecarToken {
            service: service.map(Into::into),
            proxy: proxy.map(Into::into),
            token: token.into(),
        };
        assert_eq!(
            c.tokens,
            [token(None, None, "t0"), token(Some("shop"), None, "t1"), token(Some("shop"), Some("shop-1"), "t2")]
        );
        for bad in ["shop/ t", "/p t", "a/b/c t", "a b c\n"] {
            let e = config(bad).unwrap_err().to_string();
            assert!(e.contains("tokens_file: ") && e.contains("line 1"), "{bad}: {e}");
        }
    }
}
