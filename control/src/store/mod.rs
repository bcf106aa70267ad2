//! The control plane's store, behind one interface with two implementations: embedded SQLite
//! (`sqlite.rs`, the default, for one control plane) and PostgreSQL (`postgres.rs`, shared by
//! replicas). It holds flag versions, the last applied report sequence per sidecar process, the
//! aggregated stats, ramps with their decisions and events, the audit trail and sidecar owners.
//!
//! The interface is synchronous: its callers are the ingest commit and the ramp engine on the
//! blocking pool, and the engine decides under the ramps lock. The PostgreSQL implementation
//! drives its async driver on a runtime of its own behind the same calls.
//!
//! Replicas write partial aggregates: each keeps its own totals rows (never one hot row per
//! variant that every replica updates) and appends the randomised windows of its reports, which
//! the leading replica's engine takes.

mod postgres;
mod sqlite;

use rampart_stats::{Delta, SparseHistogram};

use crate::ramp::window::Arm;

pub(crate) use postgres::{Notice, Postgres, ReplicaRow};
pub(crate) use sqlite::Sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store (PostgreSQL): {0}")]
    Postgres(String),
    #[error("store holds a histogram that does not decode: {0}")]
    Corrupt(String),
    /// Another writer got there first (a flags version taken, a sidecar's sequence moved on at
    /// another replica): reload and retry.
    #[error("store: {0}")]
    Conflict(String),
    /// A write only the leading replica may make, attempted by one whose lease has lapsed.
    #[error("store: this replica no longer leads")]
    NotLeader,
}

/// A sidecar process: its id and the epoch it chose at start.
pub(crate) type ProxyKey = (String, u64);

/// One series' new totals (this replica's share of them, on PostgreSQL).
#[derive(Debug)]
pub(crate) struct TotalRow<'a> {
    pub(crate) flag: &'a str,
    pub(crate) variant: &'a str,
    pub(crate) totals: &'a Delta,
}

/// A sidecar's sequence moving from `prior` (what this replica believes is applied) to `last`.
#[derive(Debug)]
pub(crate) struct SeqRow<'a> {
    pub(crate) key: &'a ProxyKey,
    pub(crate) prior: u64,
    pub(crate) last: u64,
}

/// One series' randomised window, for the leader's engine.
#[derive(Debug)]
pub(crate) struct WindowRow<'a> {
    pub(crate) flag: &'a str,
    pub(crate) variant: &'a str,
    pub(crate) arm: &'a Arm,
    pub(crate) latency: &'a SparseHistogram,
}

/// Everything one ingest batch writes, all or nothing.
#[derive(Debug, Default)]
pub(crate) struct Batch<'a> {
    pub(crate) totals: Vec<TotalRow<'a>>,
    pub(crate) seqs: Vec<SeqRow<'a>>,
    /// Written only where replicas share the store (one control plane keeps them in memory).
    pub(crate) windows: Vec<WindowRow<'a>>,
}

/// What an expiry pass deleted: series (flag, variant) and sidecar sequences.
pub(crate) type Expired = (Vec<(String, String)>, Vec<ProxyKey>);

/// A decision row as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct DecisionRow {
    pub(crate) at_ms: i64,
    pub(crate) step: u32,
    pub(crate) percent: f64,
    pub(crate) action: String,
    pub(crate) reason: String,
    pub(crate) numbers: serde_json::Value,
}

/// An event row as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct EventRow {
    pub(crate) at_ms: i64,
    pub(crate) kind: String,
    pub(crate) detail: String,
}

/// A stored flags version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlagVersionRow {
    pub(crate) version: u64,
    pub(crate) created_ms: i64,
    /// `file`, `api` or `ramp`.
    pub(crate) source: String,
    pub(crate) definition: String,
}

/// A ramp's decisions as a series: the rows kept, and how many there were in all.
pub(crate) type Series = (Vec<DecisionRow>, u64);

/// One change in the audit trail.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct AuditRow {
    pub(crate) at_ms: i64,
    /// An operator's name, `engine`, or `anonymous` (an API without operators).
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) flag: Option<String>,
    /// The flags version the change produced, if it published one.
    pub(crate) version: Option<u64>,
    pub(crate) detail: String,
}

/// A deployment recorded from the pipeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct DeploymentRow {
    pub(crate) id: i64,
    pub(crate) service: String,
    pub(crate) commit: String,
    pub(crate) commit_ms: i64,
    pub(crate) pr: Option<String>,
    /// The flags it ships behind.
    pub(crate) flags: Vec<String>,
    pub(crate) recorded_ms: i64,
    /// Who recorded it.
    pub(crate) actor: String,
}

/// The store's interface; see the module docs.
pub(crate) trait Store: Send + Sync + std::fmt::Debug {
    /// The newest flag version and its definition.
    fn latest_flags(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// The first version, from the configured file, unless a version exists already (another
    /// replica wrote it first).
    fn init_flags(&self, definition: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Stores `version`; [`StoreError::Conflict`] when it exists already.
    fn insert_flags(&self, version: u64, definition: &str, source: &str, now_ms: i64) -> Result<(), StoreError>;

    fn load_seqs(&self) -> Result<Vec<(ProxyKey, u64)>, StoreError>;
    /// The last sequence applied for one sidecar process (0 when none).
    fn seq(&self, key: &ProxyKey) -> Result<u64, StoreError>;
    /// Each known sidecar id: (proxy_id, service, pinned).
    fn load_owners(&self) -> Result<Vec<(String, String, bool)>, StoreError>;
    /// Records `service` as the owner of `proxy_id` unless it has one already (another replica
    /// may have recorded it); the owner now stored: (service, pinned).
    fn claim_owner(
        &self,
        proxy_id: &str,
        service: &str,
        pinned: bool,
        at_ms: i64,
    ) -> Result<(String, bool), StoreError>;
    /// Pins `proxy_id` (its service unchanged) to a credential of its own.
    fn pin_owner(&self, proxy_id: &str) -> Result<(), StoreError>;

    /// The totals this control plane wrote (with replicas: this replica's share).
    fn load_totals(&self) -> Result<Vec<(String, String, Delta)>, StoreError>;
    /// One flag's totals per variant over every replica.
    fn flag_totals(&self, flag: &str) -> Result<Vec<(String, Delta)>, StoreError>;
    /// Writes a batch; with `prior` sequences checked where replicas share the store
    /// ([`StoreError::Conflict`] when one moved on elsewhere, and nothing is written).
    fn commit_batch(&self, batch: &Batch<'_>) -> Result<(), StoreError>;
    /// Takes (removes and returns) the randomised windows replicas appended.
    fn take_windows(&self) -> Result<Vec<(String, String, Arm, SparseHistogram)>, StoreError>;
    /// Deletes what no report touched since `cutoff_ms`: series of flags not in `current`, and
    /// sidecar sequences (a sidecar process gone that long).
    fn expire(&self, cutoff_ms: i64, current: &dyn Fn(&str) -> bool) -> Result<Expired, StoreError>;

    fn add_audit(&self, a: &AuditRow) -> Result<(), StoreError>;
    /// The latest `limit` changes (of `flag`, when given), oldest first.
    fn audit(&self, flag: Option<&str>, limit: u32) -> Result<Vec<AuditRow>, StoreError>;

    /// Inserts or replaces a ramp's record (only the leader's, with replicas).
    fn put_ramp(&self, id: i64, flag: &str, state: &str, started_ms: i64, record: &str) -> Result<(), StoreError>;
    fn load_ramps(&self) -> Result<Vec<String>, StoreError>;
    fn load_ramp(&self, id: i64) -> Result<Option<String>, StoreError>;
    fn add_decision(&self, ramp: i64, d: &DecisionRow) -> Result<(), StoreError>;
    fn add_event(&self, ramp: i64, e: &EventRow) -> Result<(), StoreError>;
    /// The ramp's decisions that changed something, plus its latest `recent` decisions, in time order.
    fn decisions(&self, ramp: i64, recent: u32) -> Result<Vec<DecisionRow>, StoreError>;
    fn events(&self, ramp: i64) -> Result<Vec<EventRow>, StoreError>;

    /// Records a deployment; its id.
    fn add_deployment(&self, d: &DeploymentRow) -> Result<i64, StoreError>;
    /// Deployments recorded at or after `since_ms`, newest first, at most `limit`.
    fn deployments(&self, since_ms: i64, limit: u32) -> Result<Vec<DeploymentRow>, StoreError>;
    /// Notes that flags were evaluated at these times (keeping the latest per flag).
    fn touch_flags(&self, evaluated: &[(String, i64)]) -> Result<(), StoreError>;
    /// When each flag was last evaluated.
    fn flag_usage(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// A ramp's decisions after `after_ms`, in time order, about `max` of them at most: beyond
    /// that, every n-th HOLD (n chosen so that about `max` remain), every decision that changed
    /// something and the last one. With how many there were after `after_ms` in all.
    fn decision_series(&self, ramp: i64, after_ms: i64, max: u32) -> Result<Series, StoreError>;
    /// The latest decision of each of `ramps` that has one.
    fn latest_decisions(&self, ramps: &[i64]) -> Result<Vec<(i64, DecisionRow)>, StoreError>;
    /// The stored flags versions among `versions`, in version order.
    fn flag_versions(&self, versions: &[u64]) -> Result<Vec<FlagVersionRow>, StoreError>;
    /// Per flag, the newest flags version that the audit trail says changed it.
    fn flag_changes(&self) -> Result<Vec<(String, u64)>, StoreError>;
}

/// The SQL shared by both stores' `decision_series` (`{rid}`: the row id column, `$1` ramp,
/// `$2` after_ms, `$3` max): numbers each row, keeps all when there are at most `max`, else every
/// `ceil(n / max)`-th HOLD with every other decision and the last.
pub(crate) fn series_sql(rid: &str, p: [&str; 3]) -> String {
    let [ramp, after, max] = p;
    format!(
        "WITH s AS (SELECT at_ms, step, percent, action, reason, numbers,
                ROW_NUMBER() OVER (ORDER BY at_ms, {rid}) AS rn, COUNT(*) OVER () AS n
              FROM ramp_decisions WHERE ramp_id = {ramp} AND at_ms > {after})
         SELECT at_ms, step, percent, action, reason, numbers, n FROM s
          WHERE n <= {max} OR action != 'HOLD' OR rn = n OR (rn - 1) % ((n + {max} - 1) / {max}) = 0
          ORDER BY rn"
    )
}

/// Histogram blob: little-endian (u32 bucket, u64 count) pairs.
pub(crate) fn encode_histogram(h: &SparseHistogram) -> Vec<u8> {
    let mut out = Vec::with_capacity(h.iter().len() * 12);
    for (bucket, count) in h.iter() {
        out.extend_from_slice(&bucket.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out
}

pub(crate) fn decode_histogram(blob: &[u8]) -> Result<SparseHistogram, String> {
    if !blob.len().is_multiple_of(12) {
        return Err(format!("{} bytes is not a whole number of pairs", blob.len()));
    }
    let pairs = blob.chunks_exact(12).map(|c| {
        let (b, n) = c.split_at(4);
        (u32::from_le_bytes(b.try_into().unwrap_or_default()), u64::from_le_bytes(n.try_into().unwrap_or_default()))
    });
    SparseHistogram::from_pairs(pairs).map_err(|e| e.to_string())
}

/// Where the store lives: a SQLite file, or a PostgreSQL URL shared by replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
}

impl Location {
    /// `store = "…"`: a URL with a PostgreSQL scheme, else a file path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_owned())
        } else {
            Location::Sqlite(std::path::PathBuf::from(text))
        }
    }
}

/// Shown in logs without a password the URL may hold.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                // `user:password@host/db`: keep the user, drop the password.
                match rest.rsplit_once('@') {
                    Some((credentials, host)) => {
                        let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
                        write!(f, "{scheme}://{user}@{host}")
                    }
                    None => write!(f, "{scheme}://{rest}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_is_logged_without_its_password() {
        let at = Location::parse("postgres://rampart:s3cret@db:5432/rampart");
        assert_eq!(at.to_string(), "postgres://rampart@db:5432/rampart");
        assert_eq!(Location::parse("postgresql://db/r").to_string(), "postgresql://db/r");
        assert_eq!(Location::parse("c.db"), Location::Sqlite("c.db".into()));
    }
}
