//! The embedded SQLite store: flag versions, the last applied report sequence per sidecar process,
//! and the aggregated stats. Migrations live in `control/migrations/` and run in order, tracked by
//! SQLite's `user_version`. Writes that must be atomic (a batch of reports and their sequences) go
//! in one transaction.

use std::path::Path;

use rampart_stats::{Delta, SparseHistogram};
use rusqlite::{Connection, OptionalExtension, params};

/// The migrations, in order; `user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_ramps.sql"),
    include_str!("../migrations/0003_audit.sql"),
    include_str!("../migrations/0004_proxy_owners.sql"),
    include_str!("../migrations/0005_retention.sql"),
];

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
    #[error("store holds a histogram that does not decode: {0}")]
    Corrupt(String),
}

/// A sidecar process: its id and the epoch it chose at start.
pub(crate) type ProxyKey = (String, u64);

/// One series' new totals.
#[derive(Debug)]
pub(crate) struct TotalRow<'a> {
    pub(crate) flag: &'a str,
    pub(crate) variant: &'a str,
    pub(crate) totals: &'a Delta,
}

#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        let open = |source| StoreError::Open { path: path.display().to_string(), source };
        let mut conn = Connection::open(path).map_err(open)?;
        // WAL + NORMAL: a committed transaction survives the process being killed.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open)?;
        migrate(&mut conn)?;
        Ok(Store { conn })
    }

    /// The newest flag version and its definition.
    pub(crate) fn latest_flags(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT version, definition FROM flag_versions ORDER BY version DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    pub(crate) fn insert_flags(
        &self,
        version: u64,
        definition: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO flag_versions (version, definition, source, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![version as i64, definition, source, now_ms],
        )?;
        Ok(())
    }

    pub(crate) fn load_seqs(&self) -> Result<Vec<(ProxyKey, u64)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT proxy_id, epoch, last_seq FROM proxy_seq")?;
        let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get::<_, i64>(1)? as u64), r.get::<_, i64>(2)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each known sidecar id: (proxy_id, service, pinned).
    pub(crate) fn load_owners(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT proxy_id, service, pinned FROM proxy_owner")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn put_owner(&self, proxy_id: &str, service: &str, pinned: bool, at_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO proxy_owner (proxy_id, service, pinned, since_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (proxy_id) DO UPDATE SET service = excluded.service, pinned = excluded.pinned",
            rusqlite::params![proxy_id, service, pinned as i64, at_ms],
        )?;
        Ok(())
    }

    pub(crate) fn load_totals(&self) -> Result<Vec<(String, String, Delta)>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT flag, variant, requests, errors, timeouts, histogram FROM variant_totals")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, i64>(4)? as u64,
                r.get::<_, Vec<u8>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (flag, variant, requests, errors, timeouts, blob) = row?;
            let latency = decode_histogram(&blob).map_err(|e| StoreError::Corrupt(format!("{flag}/{variant}: {e}")))?;
            out.push((flag, variant, Delta { requests, errors, timeouts, latency, split: Default::default() }));
        }
        Ok(out)
    }

    /// Deletes what no report touched since `cutoff_ms`: series of flags not in `current`, and
    /// sidecar sequences (a sidecar process gone that long). Returns the series and sequences
    /// deleted.
    pub(crate) fn expire(&mut self, cutoff_ms: i64, current: &dyn Fn(&str) -> bool) -> Result<Expired, StoreError> {
        let tx = self.conn.transaction()?;
        let idle: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT flag, variant FROM variant_totals WHERE updated_ms < ?1")?;
            let rows = stmt.query_map([cutoff_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|(flag, _): &(String, String)| !current(flag))
                .collect()
        };
        let seqs: Vec<ProxyKey> = {
            let mut stmt = tx.prepare("SELECT proxy_id, epoch FROM proxy_seq WHERE updated_ms < ?1")?;
            let rows = stmt.query_map([cutoff_ms], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect::<Result<_, _>>()?
        };
        {
            let mut del = tx.prepare_cached("DELETE FROM variant_totals WHERE flag = ?1 AND variant = ?2")?;
            for (flag, variant) in &idle {
                del.execute(params![flag, variant])?;
            }
            let mut del = tx.prepare_cached("DELETE FROM proxy_seq WHERE proxy_id = ?1 AND epoch = ?2")?;
            for (id, epoch) in &seqs {
                del.execute(params![id, *epoch as i64])?;
            }
        }
        tx.commit()?;
        Ok((idle, seqs))
    }

    /// Writes new totals and applied sequences in one transaction: all or nothing.
    pub(crate) fn commit_batch(
        &mut self,
        totals: &[TotalRow<'_>],
        seqs: &[(&ProxyKey, u64)],
    ) -> Result<(), StoreError> {
        let now = crate::state::now_ms();
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO variant_totals (flag, variant, requests, errors, timeouts, histogram, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (flag, variant) DO UPDATE SET requests = ?3, errors = ?4, timeouts = ?5, histogram = ?6,
                 updated_ms = ?7",
            )?;
            for row in totals {
                let t = row.totals;
                put.execute(params![
                    row.flag,
                    row.variant,
                    t.requests as i64,
                    t.errors as i64,
                    t.timeouts as i64,
                    encode_histogram(&t.latency),
                    now
                ])?;
            }
            let mut seq = tx.prepare_cached(
                "INSERT INTO proxy_seq (proxy_id, epoch, last_seq, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (proxy_id, epoch) DO UPDATE SET last_seq = ?3, updated_ms = ?4",
            )?;
            for ((id, epoch), last) in seqs {
                seq.execute(params![id, *epoch as i64, *last as i64, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
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

impl Store {
    pub(crate) fn add_audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit (at_ms, actor, action, flag, version, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![a.at_ms, a.actor, a.action, a.flag, a.version.map(|v| v as i64), a.detail])?;
        Ok(())
    }

    /// The latest `limit` changes (of `flag`, when given), oldest first.
    pub(crate) fn audit(&self, flag: Option<&str>, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, actor, action, flag, version, detail FROM audit
             WHERE ?1 IS NULL OR flag = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![flag, limit], |r| {
            Ok(AuditRow {
                at_ms: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                flag: r.get(3)?,
                version: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                detail: r.get(5)?,
            })
        })?;
        let mut out: Vec<AuditRow> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Inserts or replaces a ramp's record.
    pub(crate) fn put_ramp(
        &self,
        id: i64,
        flag: &str,
        state: &str,
        started_ms: i64,
        record: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO ramps (id, flag, state, started_ms, record) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET state = ?3, record = ?5",
            params![id, flag, state, started_ms, record],
        )?;
        Ok(())
    }

    pub(crate) fn load_ramps(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT record FROM ramps ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn add_decision(&self, ramp: i64, d: &DecisionRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO ramp_decisions (ramp_id, at_ms, step, percent, action, reason, numbers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![ramp, d.at_ms, d.step, d.percent, d.action, d.reason, d.numbers.to_string()])?;
        Ok(())
    }

    pub(crate) fn add_event(&self, ramp: i64, e: &EventRow) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO ramp_events (ramp_id, at_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![ramp, e.at_ms, e.kind, e.detail])?;
        Ok(())
    }

    /// The ramp's decisions that changed something, plus its latest `recent` decisions, in time order.
    pub(crate) fn decisions(&self, ramp: i64, recent: u32) -> Result<Vec<DecisionRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, step, percent, action, reason, numbers FROM ramp_decisions WHERE ramp_id = ?1
               AND (action != 'HOLD' OR rowid IN
                    (SELECT rowid FROM ramp_decisions WHERE ramp_id = ?1 ORDER BY at_ms DESC, rowid DESC LIMIT ?2))
             ORDER BY at_ms, rowid",
        )?;
        let rows = stmt.query_map(params![ramp, recent], |r| {
            let numbers: String = r.get(5)?;
            Ok(DecisionRow {
                at_ms: r.get(0)?,
                step: r.get(1)?,
                percent: r.get(2)?,
                action: r.get(3)?,
                reason: r.get(4)?,
                numbers: serde_json::from_str(&numbers).unwrap_or(serde_json::Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn events(&self, ramp: i64) -> Result<Vec<EventRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT at_ms, kind, detail FROM ramp_events WHERE ramp_id = ?1 ORDER BY at_ms, rowid")?;
        let rows =
            stmt.query_map(params![ramp], |r| Ok(EventRow { at_ms: r.get(0)?, kind: r.get(1)?, detail: r.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Histogram blob: little-endian (u32 bucket, u64 count) pairs.
fn encode_histogram(h: &SparseHistogram) -> Vec<u8> {
    let mut out = Vec::with_capacity(h.iter().len() * 12);
    for (bucket, count) in h.iter() {
        out.extend_from_slice(&bucket.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out
}

fn decode_histogram(blob: &[u8]) -> Result<SparseHistogram, String> {
    if !blob.len().is_multiple_of(12) {
        return Err(format!("{} bytes is not a whole number of pairs", blob.len()));
    }
    let pairs = blob.chunks_exact(12).map(|c| {
        let (b, n) = c.split_at(4);
        (u32::from_le_bytes(b.try_into().unwrap_or_default()), u64::from_le_bytes(n.try_into().unwrap_or_default()))
    });
    SparseHistogram::from_pairs(pairs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_through_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut d = Delta {
            requests: 5,
            errors: 1,
            timeouts: 0,
            latency: SparseHistogram::default(),
            split: Default::default(),
        };
        d.latency.record(250);
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.latest_flags().unwrap(), None);
            s.insert_flags(1, "{\"flags\":{}}", "test", 0).unwrap();
            s.insert_flags(2, "{\"flags\":{\"a\":1}}", "test", 0).unwrap();
            let key = ("p1".to_owned(), 7);
            s.commit_batch(&[TotalRow { flag: "f", variant: "on", totals: &d }], &[(&key, 3)]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.latest_flags().unwrap().unwrap().0, 2);
        assert_eq!(s.load_seqs().unwrap(), [(("p1".to_owned(), 7), 3)]);
        assert_eq!(s.load_totals().unwrap(), [("f".to_owned(), "on".to_owned(), d)]);
    }
}
