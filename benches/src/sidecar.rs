//! Fixtures for the sidecar benches: flag files of untargeted (static + ramp) or targeted flags,
//! a proxy configuration written to a temp dir and loaded with `Config::load`, and the request a
//! client sends, laid out as hyper's HTTP/1.1 parser would hand it to the proxy.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use rampart_proxy::{Config, Proxy};
use serde_json::{Map, Value, json};
use tempfile::TempDir;

use crate::{EMAIL, Shape, TARGETING_KEY};

/// The context mapping every proxy fixture uses.
pub const CONTEXT_TOML: &str = "[context]\ntargetingKey = [\"header:x-user-id\"]\nemail = [\"header:x-user-email\"]\n";

/// The headers of a typical request, in the order a client sends them.
pub const REQUEST_HEADERS: [(&str, &str); 5] = [
    ("host", "shop.example"),
    ("user-agent", "bench/1.0"),
    ("accept", "*/*"),
    ("x-user-id", TARGETING_KEY),
    ("x-user-email", EMAIL),
];

/// The flag set a proxy fixture serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFlags {
    /// `n` flags without JSONLogic: even ones static, odd ones a 25 % ramp.
    Untargeted(usize),
    /// `n` flags with the typical `if`/`in`/`==` rule (see [`Shape::Targeting`]).
    Targeting(usize),
}

impl ProxyFlags {
    /// Every case the sidecar benches measure.
    pub const ALL: [ProxyFlags; 4] =
        [ProxyFlags::Untargeted(0), ProxyFlags::Untargeted(10), ProxyFlags::Untargeted(100), ProxyFlags::Targeting(10)];

    /// `untargeted` or `targeting`, the bench group name.
    pub fn kind(self) -> &'static str {
        match self {
            ProxyFlags::Untargeted(_) => "untargeted",
            ProxyFlags::Targeting(_) => "targeting",
        }
    }

    pub fn len(self) -> usize {
        match self {
            ProxyFlags::Untargeted(n) | ProxyFlags::Targeting(n) => n,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Whether evaluation runs JSONLogic (and so is not held to zero allocations).
    pub fn uses_jsonlogic(self) -> bool {
        matches!(self, ProxyFlags::Targeting(_))
    }

    /// The flag file, flagd JSON, keyed `flag-000`, `flag-001`, ….
    pub fn document(self) -> Value {
        let flags: Map<String, Value> = (0..self.len())
            .map(|i| {
                let shape = match self {
                    ProxyFlags::Untargeted(_) if i % 2 == 0 => Shape::Static,
                    ProxyFlags::Untargeted(_) => Shape::Ramp,
                    ProxyFlags::Targeting(_) => Shape::Targeting,
                };
                (format!("flag-{i:03}"), shape.definition())
            })
            .collect();
        json!({ "flags": flags })
    }
}

/// A proxy configuration and the temp dir holding its files (kept alive: the proxy watches it).
#[derive(Debug)]
pub struct Fixture {
    pub dir: TempDir,
    pub config: Config,
}

impl Fixture {
    /// Writes `flags.json` and `proxy.toml` (upstream `upstream`, [`CONTEXT_TOML`]) into a temp
    /// dir and loads the configuration as the binary does.
    ///
    /// # Panics
    /// If the fixture cannot be written or does not load: a broken fixture must stop the bench.
    pub fn new(flags: ProxyFlags, upstream: SocketAddr) -> Fixture {
        Fixture::with_config(flags, upstream, "")
    }

    /// As [`Fixture::new`], with `extra` TOML appended to `proxy.toml` (e.g. a `[propagation]` table).
    ///
    /// # Panics
    /// As [`Fixture::new`].
    pub fn with_config(flags: ProxyFlags, upstream: SocketAddr, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("flags.json"), flags.document().to_string()).expect("write flags.json");
        let path = dir.path().join("proxy.toml");
        let toml = format!("upstream = \"http://{upstream}\"\nflags = \"flags.json\"\n{CONTEXT_TOML}{extra}");
        std::fs::write(&path, toml).expect("write proxy.toml");
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("fixture config does not load: {e}"),
        };
        Fixture { dir, config }
    }

    /// The proxy of this fixture, its flags loaded.
    ///
    /// # Panics
    /// If the flags do not load.
    pub fn proxy(&self) -> Proxy {
        match Proxy::new(self.config.clone()) {
            Ok(p) => p,
            Err(e) => panic!("fixture flags do not load: {e}"),
        }
    }
}

/// A request as hyper's HTTP/1.1 server parser builds it: a `HeaderMap` reserved for exactly the
/// received headers, custom names copied into fresh buffers, then `extra` more slots reserved
/// (0: as hyper leaves it). `spoofed` adds a client-sent `x-flag-flag-000` header, which the proxy
/// must strip.
///
/// # Panics
/// Never for the constant headers used here.
pub fn request(extra: usize, spoofed: bool) -> Request<()> {
    let mut headers = HeaderMap::with_capacity(REQUEST_HEADERS.len() + usize::from(spoofed));
    let spoof = spoofed.then_some(("x-flag-flag-000", "on"));
    for (name, value) in REQUEST_HEADERS.into_iter().chain(spoof) {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.reserve(extra);
    let mut req = Request::new(());
    *req.uri_mut() = http::Uri::from_static("/checkout");
    *req.headers_mut() = headers;
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixture loads, serves one header per flag, and maps the user headers into the context.
    #[test]
    fn fixtures_load_and_inject_one_header_per_flag() {
        for flags in ProxyFlags::ALL {
            let fixture = Fixture::new(flags, SocketAddr::from(([127, 0, 0, 1], 9)));
            let proxy = fixture.proxy();
            let snapshot = proxy.snapshot();
            assert_eq!(snapshot.flags.len(), flags.len());
            let mut req = request(0, true);
            rampart_proxy::inject_flags(&snapshot, &proxy.config().context, &proxy.config().header_prefix, &mut req);
            let injected = req.headers().keys().filter(|k| k.as_str().starts_with("x-flag-")).count();
            assert_eq!(injected, flags.len(), "{flags:?}");
            assert_eq!(req.headers().len(), REQUEST_HEADERS.len() + flags.len(), "the spoofed header is stripped");
        }
    }
}
