//! Routing: the ordered routes of the configuration, matched per request against the assigned
//! variants, request headers and path; the first match picks the upstream cluster, its timeout and
//! retries. Everything is precomputed: header names and values at start, each route's flag
//! condition as `(injected index, variant index)` pairs per snapshot, so a match is `&str`, byte
//! and integer comparisons with no allocation.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::header::{HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::cluster::Cluster;
use crate::config::Route as RouteConfig;
use crate::inject::Tracked;
use crate::snapshot::Snapshot;

/// One route, as the request path reads it.
#[derive(Debug)]
pub(crate) struct Route {
    headers: Box<[(HeaderName, HeaderValue)]>,
    path_prefix: Option<Box<str>>,
    /// Whether the route has a flag condition (resolved per snapshot in [`Resolved`]).
    has_flags: bool,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
}

/// The routes and the fallback for requests no route matches.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Box<[Route]>,
    fallback: Route,
}

/// A route's flag condition resolved against one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    /// Every `(injected index, variant index)` must be among the request's assignments.
    Variants(SmallVec<[(u32, u32); 2]>),
    /// A flag or variant the snapshot does not inject: the route matches nothing.
    Never,
}

/// Per snapshot: each route's flag condition, by route index (`None`: no flag condition).
#[derive(Debug, Default)]
pub(crate) struct Resolved(Box<[Option<Condition>]>);

impl Router {
    /// Builds the routes of `config` over `clusters` (by config index); unmatched requests go to
    /// `clusters[0]` (`default`) with the global `timeout` and no retries.
    pub(crate) fn new(config: &[RouteConfig], clusters: &[Arc<Cluster>], timeout: Duration) -> Router {
        let routes = config
            .iter()
            .map(|r| Route {
                headers: r.headers.clone().into_boxed_slice(),
                path_prefix: r.path_prefix.as_deref().map(Box::from),
                has_flags: !r.flags.is_empty(),
                cluster: clusters[r.cluster].clone(),
                timeout: r.timeout,
                retries: r.retries,
            })
            .collect();
        let fallback = Route {
            headers: Box::default(),
            path_prefix: None,
            has_flags: false,
            cluster: clusters[0].clone(),
            timeout,
            retries: 0,
        };
        Router { routes, fallback }
    }

    /// The first route `req` matches, given its assignments and the snapshot they came from.
    pub(crate) fn select<B>(&self, resolved: &Resolved, assigned: &Tracked, req: &Request<B>) -> &Route {
        let path = req.uri().path();
        let headers = req.headers();
        self.routes
            .iter()
            .enumerate()
            .find(|(i, route)| {
                let flags_match = !route.has_flags
                    || match resolved.0.get(*i) {
                        Some(Some(Condition::Variants(all))) => all
                            .iter()
                            .all(|&(flag, variant)| assigned.iter().any(|a| (a.flag, a.variant) == (flag, variant))),
                        _ => false,
                    };
                flags_match
                    && route.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
                    && route.headers.iter().all(|(name, value)| headers.get(name) == Some(value))
            })
            .map_or(&self.fallback, |(_, route)| route)
    }
}

/// Marks the injected flags `routes` match on (so `inject_flags` returns their assignments) and
/// resolves each route's flag condition against `snapshot`. A condition naming a flag or variant
/// the snapshot does not inject is logged, and that route matches nothing until a snapshot has it.
pub(crate) fn prepare(routes: &[RouteConfig], snapshot: &mut Snapshot) {
    let flags = snapshot.flags.flags();
    for inj in &mut snapshot.injected {
        let key = flags[inj.flag].key();
        inj.routed = routes.iter().any(|r| r.flags.iter().any(|(k, _)| k == key));
    }
    let resolve = |(index, route): (usize, &RouteConfig)| {
        if route.flags.is_empty() {
            return None;
        }
        let mut pairs = SmallVec::new();
        for (key, variant) in &route.flags {
            let found = snapshot.injected.iter().enumerate().find(|(_, inj)| flags[inj.flag].key() == key);
            let Some((i, inj)) = found else {
                tracing::warn!(route = index, flag = %key, "route matches on a flag that is not injected; it matches nothing");
                return Some(Condition::Never);
            };
            let Some(v) = flags[inj.flag].variants().iter().position(|v| v.name() == variant) else {
                tracing::warn!(route = index, flag = %key, variant = %variant, "route matches on an unknown variant; it matches nothing");
                return Some(Condition::Never);
            };
            // Both fit: a snapshot has far fewer than 2^32 flags or variants.
            pairs.push((i as u32, v as u32));
        }
        Some(Condition::Variants(pairs))
    };
    snapshot.routes = Resolved(routes.iter().enumerate().map(resolve).collect());
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rampart_flags::{FlagSet, Format};
    use rampart_stats::Registry;

    use super::*;
    use crate::config::Config;
    use crate::inject::Assigned;
    use crate::metrics::Metrics;
    use crate::snapshot::Outputs;

    const FLAGS: &str = r#"{"flags": {
        "color": {"state": "ENABLED", "variants": {"red": 1, "blue": 2}, "defaultVariant": "red"},
        "new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}
    }}"#;

    fn setup(routes: &str) -> (Router, Snapshot) {
        let text = format!(
            "flags = \"f\"\n[clusters.canary]\nendpoints = [\"http://127.0.0.1:1\"]\n[clusters.debug]\nendpoints = [\"http://127.0.0.1:2\"]\n{routes}"
        );
        let config = Config::parse(Path::new("proxy.toml"), &text).unwrap();
        let metrics = Metrics::new();
        let clusters: Vec<_> = config.clusters.iter().map(|c| Arc::new(Cluster::new(c, &config, &metrics))).collect();
        let router = Router::new(&config.routes, &clusters, Duration::from_secs(30));
        let stats = Registry::new(10);
        let out = Outputs { prefix: "x-flag-", inject: None, metrics: &metrics, stats: &stats };
        let flags = FlagSet::from_text("f", FLAGS, Format::Json).unwrap();
        let mut snapshot = Snapshot::build(1, flags, out).unwrap();
        prepare(&config.routes, &mut snapshot);
        (router, snapshot)
    }

    fn pick(router: &Router, snapshot: &Snapshot, assigned: &[(u32, u32)], req: &Request<()>) -> String {
        let assigned = assigned.iter().map(|&(flag, variant)| Assigned { flag, variant, unit: None }).collect();
        router.select(&snapshot.routes, &assigned, req).cluster.name().to_owned()
    }

    #[test]
    fn first_match_wins_and_no_match_is_default() {
        let (router, snapshot) = setup(
            "[[routes]]\nflag = { new-checkout = \"on\" }\ncluster = \"canary\"\n\
             [[routes]]\nheaders = { x-debug = \"1\" }\npath_prefix = \"/api\"\ncluster = \"debug\"\n",
        );
        // Injected order follows the file: color is 0, new-checkout 1; variant "on" is 0.
        assert!(snapshot.injected[1].routed && !snapshot.injected[0].routed);
        let get = |path: &str| Request::get(path).body(()).unwrap();
        let debug = || Request::get("/api/x").header("x-debug", "1").body(()).unwrap();
        assert_eq!(pick(&router, &snapshot, &[(1, 0)], &get("/")), "canary");
        assert_eq!(pick(&router, &snapshot, &[(1, 1)], &get("/")), "default");
        assert_eq!(pick(&router, &snapshot, &[(1, 0)], &debug()), "canary", "the first matching route wins");
        assert_eq!(pick(&router, &snapshot, &[(1, 1)], &debug()), "debug");
        let wrong_value = Request::get("/api").header("x-debug", "2").body(()).unwrap();
        assert_eq!(pick(&router, &snapshot, &[], &wrong_value), "default");
        let wrong_path = Request::get("/web").header("x-debug", "1").body(()).unwrap();
        assert_eq!(pick(&router, &snapshot, &[], &wrong_path), "default");
    }

    #[test]
    fn unknown_flags_and_variants_match_nothing() {
        let (router, snapshot) = setup(
            "[[routes]]\nflag = { gone = \"on\" }\ncluster = \"canary\"\n\
             [[routes]]\nflag = { color = \"green\" }\ncluster = \"canary\"\n\
             [[routes]]\nflag = { color = \"blue\", new-checkout = \"on\" }\ncluster = \"debug\"\n",
        );
        assert_eq!(snapshot.routes.0[0], Some(Condition::Never));
        assert_eq!(snapshot.routes.0[1], Some(Condition::Never));
        let get = || Request::get("/").body(()).unwrap();
        assert_eq!(pick(&router, &snapshot, &[(0, 1)], &get()), "default", "both flags must match");
        assert_eq!(pick(&router, &snapshot, &[(0, 1), (1, 0)], &get()), "debug");
    }
}
