//! An upstream cluster at run time: its endpoints (each a connection [`Pool`]), the balancing
//! (round robin, or least requests by power of two choices over in-flight counts), passive health
//! and retries.
//!
//! Passive health: `eject_after` consecutive connect failures take an endpoint out of rotation for
//! `eject_for`, doubled on each repeated ejection up to `eject_for_max` (the streak is forgotten
//! once the endpoint stayed in rotation for `eject_for_max`). When that time is over, one request
//! probes it: a connection lets it back in, a failure ejects it again. The last endpoint in
//! rotation is never ejected, and if none is usable all are (panic mode). All of it is atomics:
//! no lock on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header;
use http::{Method, Request, Response};
use hyper::body::{Body, Incoming};
use metrics::{Counter, Gauge};

use crate::config::{self, Balance, Config};
use crate::metrics::Metrics;
use crate::pool::{ConnectError, Lease, Pool, SendError, Settings};

/// One endpoint: its connections, health and metric handles.
#[derive(Debug)]
struct Endpoint {
    /// One pool per worker (`workers`): a connection is used only on the thread that drives it.
    pools: Box<[Arc<Pool>]>,
    authority: Box<str>,
    /// Connect failures since the last connection.
    failures: AtomicU32,
    /// Nanoseconds since the cluster's epoch until which the endpoint is out of rotation; 0 while
    /// in rotation.
    ejected_until: AtomicU64,
    /// A request is probing the ejected endpoint.
    probing: AtomicBool,
    /// Ejections in a row, each doubling the next.
    streak: AtomicU32,
    /// When it last came back into rotation (nanoseconds since the epoch).
    readmitted_at: AtomicU64,
    requests: Counter,
    ejections: Counter,
    healthy: Gauge,
}

impl Endpoint {
    /// This worker's connections to the endpoint.
    fn pool(&self) -> &Arc<Pool> {
        &self.pools[crate::workers::index().min(self.pools.len() - 1)]
    }
}

/// The endpoints of one upstream deployment.
#[derive(Debug)]
pub(crate) struct Cluster {
    name: Box<str>,
    endpoints: Box<[Endpoint]>,
    balance: Balance,
    next: AtomicUsize,
    /// Endpoints not ejected; never brought below one by an ejection.
    in_rotation: AtomicUsize,
    eject_after: u32,
    eject_for: Duration,
    eject_for_max: Duration,
    epoch: Instant,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("cannot connect to the upstream")]
    Connect(#[source] ConnectError),
    #[error("upstream request failed")]
    Request(#[source] hyper::Error),
}

impl Failure {
    /// Whether the request failed because reading the *client's* body failed (malformed chunked
    /// encoding, a client that went away mid-body): hyper reports the body stream's own error as
    /// a user error whose source is the incoming body's `hyper::Error`.
    pub(crate) fn client_body_failed(&self) -> bool {
        match self {
            Failure::Request(e) => {
                e.is_user()
                    && std::error::Error::source(e).is_some_and(|cause| cause.downcast_ref::<hyper::Error>().is_some())
            }
            Failure::Connect(_) => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pick {
    index: usize,
    probe: bool,
}

/// Clears an unsettled probe (the request was cancelled before it connected or failed).
struct ProbeGuard<'a>(Option<&'a AtomicBool>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(probing) = self.0 {
            probing.store(false, Ordering::Release);
        }
    }
}

/// Methods safe to send twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

impl Cluster {
    pub(crate) fn new(cluster: &config::Cluster, config: &Config, metrics: &Metrics) -> Cluster {
        let settings = Settings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle: cluster.max_idle,
        };
        let workers = config.workers.map_or(1, std::num::NonZeroUsize::get);
        let endpoints: Box<[Endpoint]> = cluster
            .endpoints
            .iter()
            .map(|e| {
                let authority = e.authority.as_str();
                let labels = [("cluster", cluster.name.as_str()), ("endpoint", authority)];
                let healthy = metrics.gauge("rampart_upstream_endpoint_healthy", &labels);
                healthy.set(1.0);
                let pools = (0..workers).map(|_| Arc::new(Pool::new(&e.authority, settings, cluster.tls.as_ref())));
                Endpoint {
                    pools: pools.collect(),
                    authority: authority.into(),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                    streak: AtomicU32::new(0),
                    readmitted_at: AtomicU64::new(0),
                    requests: metrics.counter("rampart_upstream_requests_total", &labels),
                    ejections: metrics.counter("rampart_upstream_ejections_total", &labels),
                    healthy,
                }
            })
            .collect();
        Cluster {
            name: cluster.name.as_str().into(),
            in_rotation: AtomicUsize::new(endpoints.len()),
            endpoints,
            balance: cluster.balance,
            next: AtomicUsize::new(0),
            eject_after: cluster.eject_after.get(),
            eject_for: cluster.eject_for,
            eject_for_max: cluster.eject_for_max,
            epoch: Instant::now(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Sends `req` (origin-form URI) to an endpoint. An idempotent request without a body is sent
    /// again after a connect failure, up to `retries` times, to another endpoint when there is one.
    pub(crate) async fn send(
        &self,
        mut req: Request<Incoming>,
        retries: u32,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        let retryable = retries > 0 && idempotent(req.method()) && req.body().is_end_stream();
        let set_host = !req.headers().contains_key(header::HOST);
        let mut exclude = None;
        let mut attempt = 0;
        loop {
            let pick = self.pick(exclude);
            let endpoint = &self.endpoints[pick.index];
            let _probe = ProbeGuard(pick.probe.then_some(&endpoint.probing));
            endpoint.requests.increment(1);
            if set_host {
                req.headers_mut().insert(header::HOST, endpoint.pool().host.clone());
            }
            let mut lease = Lease::new(endpoint.pool());
            match lease.send(req).await {
                Ok(resp) => {
                    self.connected(pick);
                    return Ok((resp, lease));
                }
                Err(SendError::Request(e)) => {
                    self.connected(pick);
                    return Err(Failure::Request(e));
                }
                Err(SendError::Connect(unsent, e)) => {
                    tracing::debug!(cluster = %self.name, endpoint = %endpoint.authority, error = %e, "connect failed");
                    self.connect_failed(pick);
                    if !retryable || attempt >= retries {
                        return Err(Failure::Connect(e));
                    }
                    attempt += 1;
                    req = *unsent;
                    exclude = Some(pick.index);
                }
            }
        }
    }

    /// Drops idle connections that expired or closed.
    pub(crate) fn sweep(&self) {
        for pool in self.endpoints.iter().flat_map(|e| &e.pools) {
            pool.sweep();
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// The endpoint for the next request (never `exclude` when another can be had).
    fn pick(&self, exclude: Option<usize>) -> Pick {
        let n = self.endpoints.len();
        if self.in_rotation.load(Ordering::Relaxed) < n
            && let Some(index) = self.claim_probe(exclude)
        {
            return Pick { index, probe: true };
        }
        let usable = |i: usize| Some(i) != exclude && self.endpoints[i].ejected_until.load(Ordering::Relaxed) == 0;
        let chosen = match self.balance {
            _ if n == 1 => None,
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balance::LeastRequests => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                match (usable(a), usable(b)) {
                    (true, true) => {
                        let load = |i: usize| self.endpoints[i].pools.iter().map(|p| p.in_flight()).sum::<usize>();
                        Some(if load(b) < load(a) { b } else { a })
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => (0..n).map(|k| (a + k) % n).find(|&i| usable(i)),
                }
            }
        };
        // One endpoint, or nothing usable: any but the excluded one (panic mode), else that one.
        let index = chosen.or_else(|| (0..n).find(|&i| Some(i) != exclude)).unwrap_or(0);
        Pick { index, probe: false }
    }

    /// An ejected endpoint whose time is over and that no other request is probing.
    fn claim_probe(&self, exclude: Option<usize>) -> Option<usize> {
        let now = self.now();
        self.endpoints.iter().enumerate().find_map(|(i, e)| {
            let until = e.ejected_until.load(Ordering::Acquire);
            let due = until != 0 && now >= until && Some(i) != exclude;
            (due && e.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()).then_some(i)
        })
    }

    fn connected(&self, pick: Pick) {
        let e = &self.endpoints[pick.index];
        if e.failures.load(Ordering::Relaxed) != 0 {
            e.failures.store(0, Ordering::Relaxed);
        }
        if pick.probe && e.ejected_until.swap(0, Ordering::AcqRel) != 0 {
            e.readmitted_at.store(self.now(), Ordering::Relaxed);
            e.probing.store(false, Ordering::Release);
            self.in_rotation.fetch_add(1, Ordering::AcqRel);
            e.healthy.set(1.0);
            tracing::info!(cluster = %self.name, endpoint = %e.authority, "endpoint back in rotation after a probe");
        }
    }

    fn connect_failed(&self, pick: Pick) {
        let e = &self.endpoints[pick.index];
        let now = self.now();
        if pick.probe {
            // Still down: out again, for twice as long.
            let streak = e.streak.fetch_add(1, Ordering::Relaxed);
            e.ejected_until.store(now.saturating_add(self.ejection(streak)), Ordering::Release);
            e.probing.store(false, Ordering::Release);
            e.ejections.increment(1);
            tracing::warn!(cluster = %self.name, endpoint = %e.authority, "probe failed; endpoint ejected again");
            return;
        }
        let failures = e.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if failures < self.eject_after || e.ejected_until.load(Ordering::Relaxed) != 0 {
            return;
        }
        let forgotten = now.saturating_sub(e.readmitted_at.load(Ordering::Relaxed)) >= nanos(self.eject_for_max);
        let streak = if forgotten { 0 } else { e.streak.load(Ordering::Relaxed) };
        let until = now.saturating_add(self.ejection(streak));
        if e.ejected_until.compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return; // another request ejected it meanwhile
        }
        let last = self.in_rotation.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n > 1).then(|| n - 1));
        if last.is_err() {
            e.ejected_until.store(0, Ordering::Release);
            return;
        }
        e.streak.store(streak.saturating_add(1), Ordering::Relaxed);
        e.failures.store(0, Ordering::Relaxed);
        e.ejections.increment(1);
        e.healthy.set(0.0);
        tracing::warn!(
            cluster = %self.name, endpoint = %e.authority, failures,
            "endpoint ejected after consecutive connect failures"
        );
    }

    /// How long the ejection after `streak` earlier ones in a row lasts, in nanoseconds.
    fn ejection(&self, streak: u32) -> u64 {
        let doubled = self.eject_for.saturating_mul(1 << streak.min(20));
        nanos(doubled.min(self.eject_for_max))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Drops expired idle connections of `clusters` every `period` until `shutdown`.
pub(crate) async fn sweep(
    clusters: Vec<Arc<Cluster>>,
    idle_timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let period = (idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        for cluster in &clusters {
            cluster.sweep();
        }
    }
}

#[cfg(test)]
mod tests;
