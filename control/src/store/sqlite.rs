//! The embedded SQLite store, for one control plane (see `mod.rs`). Migrations live in
//! `control/migrations/sqlite/` and run in order, tracked by SQLite's `user_version`. Writes that
//! must be atomic (a batch of reports and their sequences) go in one transaction. One connection,
//! behind a mutex: SQLite has one writer at a time anyway.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rampart_stats::{Delta, SparseHistogram};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    AuditRow, Batch, DecisionRow, DeploymentRow, EventRow, Expired, FlagVersionRow, ProxyKey, Series, Store, StoreError,
};
use super::{decode_histogram, encode_histogram};
use crate::ramp::window::Arm;

/// The migrations, in order; `user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_ramps.sql"),
    include_str!("../../migrations/sqlite/0003_audit.sql"),
    include_str!("../../migrations/sqlite/0004_proxy_owners.sql"),
    include_str!("../../migrations/sqlite/0005_retention.sql"),
    include_str!("../../migrations/sqlite/0006_platform.sql"),
];

#[derive(Debug)]
pub(crate) struct Sqlite {
    conn: Mutex<Connection>,
}

impl Sqlite {
    pub(crate) fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let open = |source| StoreError::Open { path: path.display().to_string(), source };
        let mut conn = Connection::open(path).map_err(open)?;
        // WAL + NORMAL: a committed transaction survives the process being killed.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open)?;
        migrate(&mut conn)?;
        Ok(Sqlite { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        crate::state::lock(&self.conn)
    }
}

impl Store for Sqlite {
    fn latest_flags(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT version, definition FROM flag_versions ORDER BY version DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    fn init_flags(&self, definition: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO flag_versions (version, definition, source, created_ms) VALUES (1, ?1, 'file', ?2)
             ON CONFLICT (version) DO NOTHING",
            params![definition, now_ms],
        )?;
        Ok(())
    }

    fn insert_flags(&self, version: u64, definition: &str, source: &str, now_ms: i64) -> Result<(), StoreError> {
        let inserted = self.conn().execute(
            "INSERT INTO flag_versions (version, definition, source, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (version) DO NOTHING",
            params![version as i64, definition, source, now_ms],
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("flags version {version} exists already")));
        }
        Ok(())
    }

    fn load_seqs(&self) -> Result<Vec<(ProxyKey, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT proxy_id, epoch, last_seq FROM proxy_seq")?;
        let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get::<_, i64>(1)? as u64), r.get::<_, i64>(2)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn seq(&self, key: &ProxyKey) -> Result<u64, StoreError> {
        let last = self
            .conn()
            .query_row(
                "SELECT last_seq FROM proxy_seq WHERE proxy_id = ?1 AND epoch = ?2",
                params![key.0, key.1 as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()?;
        Ok(last.map_or(0, |s| s as u64))
    }

    fn load_owners(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT proxy_id, service, pinned FROM proxy_owner")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn claim_owner(
        &self,
        proxy_id: &str,
        service: &str,
        pinned: bool,
        at_ms: i64,
    ) -> Result<(String, bool), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO proxy_owner (proxy_id, service, pinned, since_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (proxy_id) DO NOTHING",
            params![proxy_id, service, pinned as i64, at_ms],
        )?;
        Ok(conn.query_row("SELECT service, pinned FROM proxy_owner WHERE proxy_id = ?1", [proxy_id], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? != 0))
        })?)
    }

    fn pin_owner(&self, proxy_id: &str) -> Result<(), StoreError> {
        self.conn().execute("UPDATE proxy_owner SET pinned = 1 WHERE proxy_id = ?1", [proxy_id])?;
        Ok(())
    }

    fn load_totals(&self) -> Result<Vec<(String, String, Delta)>, StoreError> {
        self.totals_where("1 = 1", "")
    }

    fn flag_totals(&self, flag: &str) -> Result<Vec<(String, Delta)>, StoreError> {
        Ok(self.totals_where("flag = ?1", flag)?.into_iter().map(|(_, v, d)| (v, d)).collect())
    }

    fn commit_batch(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let now = crate::state::now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO variant_totals (flag, variant, requests, errors, timeouts, histogram, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (flag, variant) DO UPDATE SET requests = ?3, errors = ?4, timeouts = ?5, histogram = ?6,
                 updated_ms = ?7",
            )?;
            for row in &batch.totals {
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
            // One writer: the sequences in memory are the store's, so `prior` needs no check.
            let mut seq = tx.prepare_cached(
                "INSERT INTO proxy_seq (proxy_id, epoch, last_seq, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (proxy_id, epoch) DO UPDATE SET last_seq = ?3, updated_ms = ?4",
            )?;
            for s in &batch.seqs {
                seq.execute(params![s.key.0, s.key.1 as i64, s.last as i64, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn take_windows(&self) -> Result<Vec<(String, String, Arm, SparseHistogram)>, StoreError> {
        Ok(Vec::new())
    }

    fn expire(&self, cutoff_ms: i64, current: &dyn Fn(&str) -> bool) -> Result<Expired, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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

    fn add_audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "INSERT INTO audit (at_ms, actor, action, flag, version, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![a.at_ms, a.actor, a.action, a.flag, a.version.map(|v| v as i64), a.detail])?;
        Ok(())
    }

    fn audit(&self, flag: Option<&str>, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
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

    fn put_ramp(&self, id: i64, flag: &str, state: &str, started_ms: i64, record: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO ramps (id, flag, state, started_ms, record) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET state = ?3, record = ?5",
            params![id, flag, state, started_ms, record],
        )?;
        Ok(())
    }

    fn load_ramps(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT record FROM ramps ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn load_ramp(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(self.conn().query_row("SELECT record FROM ramps WHERE id = ?1", [id], |r| r.get(0)).optional()?)
    }

    fn add_decision(&self, ramp: i64, d: &DecisionRow) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "INSERT INTO ramp_decisions (ramp_id, at_ms, step, percent, action, reason, numbers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![ramp, d.at_ms, d.step, d.percent, d.action, d.reason, d.numbers.to_string()])?;
        Ok(())
    }

    fn add_event(&self, ramp: i64, e: &EventRow) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached("INSERT INTO ramp_events (ramp_id, at_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![ramp, e.at_ms, e.kind, e.detail])?;
        Ok(())
    }

    fn decisions(&self, ramp: i64, recent: u32) -> Result<Vec<DecisionRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
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

    fn events(&self, ramp: i64) -> Result<Vec<EventRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT at_ms, kind, detail FROM ramp_events WHERE ramp_id = ?1 ORDER BY at_ms, rowid")?;
        let rows =
            stmt.query_map(params![ramp], |r| Ok(EventRow { at_ms: r.get(0)?, kind: r.get(1)?, detail: r.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn decision_series(&self, ramp: i64, after_ms: i64, max: u32) -> Result<Series, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&super::series_sql("rowid", ["?1", "?2", "?3"]))?;
        let mut total = 0;
        let rows =
            stmt.query_map(params![ramp, after_ms, max.max(1)], |r| Ok((decision_row(r)?, r.get::<_, i64>(6)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (d, n) = row?;
            total = n as u64;
            out.push(d);
        }
        Ok((out, total))
    }

    fn latest_decisions(&self, ramps: &[i64]) -> Result<Vec<(i64, DecisionRow)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms, step, percent, action, reason, numbers FROM ramp_decisions WHERE ramp_id = ?1
             ORDER BY at_ms DESC, rowid DESC LIMIT 1",
        )?;
        let mut out = Vec::new();
        for &id in ramps {
            if let Some(d) = stmt.query_row([id], decision_row).optional()? {
                out.push((id, d));
            }
        }
        Ok(out)
    }

    fn flag_versions(&self, versions: &[u64]) -> Result<Vec<FlagVersionRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT version, created_ms, source, definition FROM flag_versions WHERE version = ?1")?;
        let mut sorted = versions.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = Vec::new();
        for v in sorted {
            let row = stmt
                .query_row([v as i64], |r| {
                    Ok(FlagVersionRow {
                        version: r.get::<_, i64>(0)? as u64,
                        created_ms: r.get(1)?,
                        source: r.get(2)?,
                        definition: r.get(3)?,
                    })
                })
                .optional()?;
            out.extend(row);
        }
        Ok(out)
    }

    fn flag_changes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT flag, MAX(version) FROM audit WHERE flag IS NOT NULL AND version IS NOT NULL GROUP BY flag",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_deployment(&self, d: &DeploymentRow) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deployments (service, commit_sha, commit_ms, pr, flags, recorded_ms, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                d.service,
                d.commit,
                d.commit_ms,
                d.pr,
                serde_json::to_string(&d.flags).unwrap_or_default(),
                d.recorded_ms,
                d.actor
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn deployments(&self, since_ms: i64, limit: u32) -> Result<Vec<DeploymentRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, service, commit_sha, commit_ms, pr, flags, recorded_ms, actor FROM deployments
             WHERE recorded_ms >= ?1 ORDER BY recorded_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since_ms, limit], |r| {
            let flags: String = r.get(5)?;
            Ok(DeploymentRow {
                id: r.get(0)?,
                service: r.get(1)?,
                commit: r.get(2)?,
                commit_ms: r.get(3)?,
                pr: r.get(4)?,
                flags: serde_json::from_str(&flags).unwrap_or_default(),
                recorded_ms: r.get(6)?,
                actor: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn touch_flags(&self, evaluated: &[(String, i64)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO flag_usage (flag, last_ms) VALUES (?1, ?2)
                 ON CONFLICT (flag) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
            )?;
            for (flag, at) in evaluated {
                put.execute(params![flag, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn flag_usage(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT flag, last_ms FROM flag_usage")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A decision from the columns `at_ms, step, percent, action, reason, numbers`.
fn decision_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DecisionRow> {
    let numbers: String = r.get(5)?;
    Ok(DecisionRow {
        at_ms: r.get(0)?,
        step: r.get(1)?,
        percent: r.get(2)?,
        action: r.get(3)?,
        reason: r.get(4)?,
        numbers: serde_json::from_str(&numbers).unwrap_or(serde_json::Value::Null),
    })
}

impl Sqlite {
    /// Totals rows matching `filter` (with one text parameter `?1` when it has one).
    fn totals_where(&self, filter: &str, arg: &str) -> Result<Vec<(String, String, Delta)>, StoreError> {
        let conn = self.conn();
        let sql =
            format!("SELECT flag, variant, requests, errors, timeouts, histogram FROM variant_totals WHERE {filter}");
        let mut stmt = conn.prepare_cached(&sql)?;
        let map = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, i64>(4)? as u64,
                r.get::<_, Vec<u8>>(5)?,
            ))
        };
        let rows: Vec<_> = if filter.contains("?1") {
            stmt.query_map([arg], map)?.collect::<Result<_, _>>()?
        } else {
            stmt.query_map([], map)?.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (flag, variant, requests, errors, timeouts, blob) in rows {
            let latency = decode_histogram(&blob).map_err(|e| StoreError::Corrupt(format!("{flag}/{variant}: {e}")))?;
            out.push((flag, variant, Delta { requests, errors, timeouts, latency, split: Default::default() }));
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SeqRow, TotalRow};

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
            let s = Sqlite::open(&path).unwrap();
            assert_eq!(s.latest_flags().unwrap(), None);
            s.init_flags("{\"flags\":{}}", 0).unwrap();
            s.insert_flags(2, "{\"flags\":{\"a\":1}}", "test", 0).unwrap();
            assert!(matches!(s.insert_flags(2, "{}", "test", 0), Err(StoreError::Conflict(_))));
            let key = ("p1".to_owned(), 7);
            let batch = Batch {
                totals: vec![TotalRow { flag: "f", variant: "on", totals: &d }],
                seqs: vec![SeqRow { key: &key, prior: 0, last: 3 }],
                windows: Vec::new(),
            };
            s.commit_batch(&batch).unwrap();
        }
        let s = Sqlite::open(&path).unwrap();
        assert_eq!(s.latest_flags().unwrap().unwrap().0, 2);
        assert_eq!(s.load_seqs().unwrap(), [(("p1".to_owned(), 7), 3)]);
        assert_eq!(s.seq(&("p1".to_owned(), 7)).unwrap(), 3);
        assert_eq!(s.seq(&("p1".to_owned(), 8)).unwrap(), 0);
        assert_eq!(s.load_totals().unwrap(), [("f".to_owned(), "on".to_owned(), d.clone())]);
        assert_eq!(s.flag_totals("f").unwrap(), [("on".to_owned(), d)]);
    }
}
