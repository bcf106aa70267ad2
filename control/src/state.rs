//! The control plane's in-memory state, mirrored from the store: aggregated totals, applied
//! sequences, the current flags (a watch channel every stream follows) and the sidecars seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use rampart_stats::{Delta, SparseHistogram};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::ramp::model::Ramp;
use crate::ramp::window::Arm;
use crate::store::{ProxyKey, Store, StoreError};

/// A flag definition as distributed: validated, versioned.
#[derive(Debug)]
pub(crate) struct Flags {
    pub(crate) version: u64,
    /// JSON text sent to sidecars.
    pub(crate) text: String,
    pub(crate) definition: serde_json::Value,
}

/// What the control plane knows about one sidecar.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ProxyInfo {
    pub(crate) proxy_id: String,
    pub(crate) service: String,
    pub(crate) epoch: u64,
    pub(crate) connected: bool,
    /// The flags version the sidecar reported serving.
    pub(crate) flags_version: u64,
    pub(crate) connected_ms: i64,
    pub(crate) last_report_ms: Option<i64>,
    pub(crate) last_seq: u64,
    /// Connected, but did not confirm a rollback's flags version within the deadline: a rollback
    /// is acknowledged without it (and it is reported), until it confirms a version again.
    pub(crate) unresponsive: bool,
    /// Identifies the stream, so a stale stream ending does not mark a newer one disconnected.
    #[serde(skip)]
    pub(crate) stream: u64,
}

/// Which service a sidecar id belongs to (see `stream.rs`): from the first credentialed stream
/// that used it, or from a token pinned to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) service: String,
    /// Only a credential naming this sidecar (a pinned token or certificate) may speak as it.
    pub(crate) pinned: bool,
}

pub(crate) type Totals = HashMap<(String, String), Delta>;

/// Per (flag, variant), what the reports applied since the last engine tick brought: the
/// randomised part (see `ramp::window`) and the variant's latencies.
pub(crate) type Windows = HashMap<(String, String), (Arm, SparseHistogram)>;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    /// When flags count as launched or unused.
    pub(crate) lifecycle: crate::lifecycle::Policy,
    /// Held while a flags version is numbered and stored.
    pub(crate) publishing: Mutex<()>,
    /// When each flag's last evaluation time was last written to the store (see `ingest`).
    pub(crate) usage_written: Mutex<HashMap<String, i64>>,
    /// Set when replicas share a PostgreSQL store.
    pub(crate) replicas: Option<Arc<crate::replicas::Replicas>>,
    pub(crate) totals: Mutex<Totals>,
    /// Drained by every engine tick.
    pub(crate) windows: Mutex<Windows>,
    pub(crate) seqs: Mutex<HashMap<ProxyKey, u64>>,
    pub(crate) proxies: Mutex<BTreeMap<String, ProxyInfo>>,
    /// Sidecar ids by owner; kept in the store.
    pub(crate) owners: Mutex<HashMap<String, Owner>>,
    pub(crate) flags: watch::Sender<Arc<Flags>>,
    /// Every ramp ever started, by id.
    pub(crate) ramps: Mutex<BTreeMap<i64, Ramp>>,
    pub(crate) metrics: Metrics,
}

impl Shared {
    /// One variant's totals over every sidecar: from memory for one control plane, from the
    /// store's partial aggregates of every replica otherwise.
    pub(crate) fn variant_totals(&self, flag: &str, variant: &str) -> Result<Delta, StoreError> {
        if self.replicas.is_none() {
            return Ok(lock(&self.totals).get(&(flag.to_owned(), variant.to_owned())).cloned().unwrap_or_default());
        }
        Ok(self.store.flag_totals(flag)?.into_iter().find(|(v, _)| v == variant).map(|(_, d)| d).unwrap_or_default())
    }

    /// A flag's totals per variant (see [`Shared::variant_totals`]).
    pub(crate) fn flag_totals(&self, flag: &str) -> Result<Vec<(String, Delta)>, StoreError> {
        if self.replicas.is_none() {
            let totals = lock(&self.totals);
            let mut out: Vec<(String, Delta)> =
                totals.iter().filter(|((f, _), _)| f == flag).map(|((_, v), d)| (v.clone(), d.clone())).collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(out);
        }
        self.store.flag_totals(flag)
    }
}

/// Locks a mutex, recovering the data if a panicking holder poisoned it: every critical section
/// here leaves the data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
