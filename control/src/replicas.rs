//! Control-plane replicas on one PostgreSQL store. Every replica takes its own sidecars' streams,
//! applies their reports exactly once (sequences checked in the store), serves the API, and
//! pushes every new flags version to its sidecars as soon as the store announces it
//! (`LISTEN`/`NOTIFY`). Exactly one replica leads, under a lease in the store renewed every
//! second: the leader runs the ramp engine on the windows every replica appended, and carries out
//! every write (flags replaced, ramps started or operated) — a replica that does not lead queues
//! the write in the store and waits for the leader's answer. When the leader dies its lease lapses
//! ([`LEASE_MS`]) and another replica takes over, reloading the flags and every ramp from the store
//! first, so each ramp continues at its step with its evidence.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::flags;
use crate::state::{Shared, lock, now_ms};
use crate::store::{Notice, Postgres, ReplicaRow, StoreError};
use crate::writes::{self, Write};

/// How long a lease lasts; it is renewed every second, so a leader that stops renewing is
/// replaced within this (plus a second).
pub(crate) const LEASE_MS: i64 = 3_000;
/// The leader stops acting this long before its lease lapses (clock drift, a slow renewal).
const LEASE_MARGIN_MS: u64 = 500;
/// How long a queued write may wait for a leader.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// A replica whose heartbeat is older than this is not listed.
const SEEN_WITHIN_MS: i64 = 10_000;

#[derive(Debug)]
pub(crate) struct Replicas {
    pub(crate) pg: Arc<Postgres>,
    /// Until when this replica may act as the leader (its lease, less a margin), if it leads.
    leading_until: std::sync::Mutex<Option<Instant>>,
    term: AtomicI64,
    /// The addresses this replica serves, for `GET /api/v1/replicas`.
    addresses: std::sync::Mutex<(String, String)>,
    started_ms: i64,
    /// One leader's pass over the queued writes at a time.
    commands: std::sync::Mutex<()>,
}

impl Replicas {
    pub(crate) fn new(pg: Arc<Postgres>) -> Replicas {
        Replicas {
            pg,
            leading_until: std::sync::Mutex::new(None),
            term: AtomicI64::new(0),
            addresses: std::sync::Mutex::new((String::new(), String::new())),
            started_ms: now_ms(),
            commands: std::sync::Mutex::new(()),
        }
    }

    pub(crate) fn set_addresses(&self, grpc: String, http: String) {
        *lock(&self.addresses) = (grpc, http);
    }

    /// Whether this replica holds the lease now.
    pub(crate) fn leads(&self) -> bool {
        lock(&self.leading_until).is_some_and(|until| Instant::now() < until)
    }
}

/// Every second: takes or renews the lease (taking over reloads the flags and ramps first), and
/// writes the heartbeat with the connected sidecars.
pub(crate) fn lease_tick(shared: &Shared) {
    let Some(r) = &shared.replicas else { return };
    let asked = Instant::now();
    match r.pg.try_lead(LEASE_MS) {
        Ok(Some(term)) => {
            if !r.leads() {
                // Whatever this replica missed as a follower, the store has.
                flags::reload(shared);
                if let Err(e) = reload_ramps(shared) {
                    tracing::error!(error = %e, "cannot load the ramps; not taking the lead yet");
                    return;
                }
                tracing::info!(replica = r.pg.replica(), term, "this replica leads: running the ramp engine");
            }
            r.term.store(term, Ordering::Relaxed);
            let lease = Duration::from_millis(u64::try_from(LEASE_MS).unwrap_or(0).saturating_sub(LEASE_MARGIN_MS));
            *lock(&r.leading_until) = Some(asked + lease);
        }
        Ok(None) => {
            if lock(&r.leading_until).take().is_some() {
                tracing::warn!(replica = r.pg.replica(), "this replica no longer leads");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
    }
    shared.metrics.leader.set(if r.leads() { 1.0 } else { 0.0 });
    let sidecars: Vec<(String, String, u64)> = lock(&shared.proxies)
        .values()
        .filter(|p| p.connected)
        .map(|p| (p.proxy_id.clone(), p.service.clone(), p.flags_version))
        .collect();
    let (grpc, http) = lock(&r.addresses).clone();
    if let Err(e) = r.pg.heartbeat(&grpc, &http, r.started_ms, &sidecars) {
        tracing::warn!(error = %e, "cannot write this replica's heartbeat");
    }
}

/// Before the leader's engine tick: the windows every replica appended since the last one, and
/// the writes queued for it.
pub(crate) fn before_tick(shared: &Shared) {
    match shared.store.take_windows() {
        Ok(rows) => {
            let mut windows = lock(&shared.windows);
            for (flag, variant, arm, latency) in rows {
                let (a, l) = windows.entry((flag, variant)).or_default();
                a.merge(&arm);
                l.merge(&latency);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot take the replicas' windows"),
    }
    run_commands(shared);
}

/// Replaces the ramps in memory with the store's.
pub(crate) fn reload_ramps(shared: &Shared) -> Result<(), StoreError> {
    let records = shared.store.load_ramps()?;
    let mut loaded = std::collections::BTreeMap::new();
    for record in records {
        match serde_json::from_str::<crate::ramp::model::Ramp>(&record) {
            Ok(ramp) => {
                loaded.insert(ramp.id, ramp);
            }
            Err(e) => tracing::error!(error = %e, "a stored ramp record does not decode"),
        }
    }
    *lock(&shared.ramps) = loaded;
    Ok(())
}

/// Takes one ramp's record from the store.
fn reload_ramp(shared: &Shared, id: i64) -> Result<(), StoreError> {
    let Some(record) = shared.store.load_ramp(id)? else { return Ok(()) };
    match serde_json::from_str::<crate::ramp::model::Ramp>(&record) {
        Ok(ramp) => {
            lock(&shared.ramps).insert(ramp.id, ramp);
        }
        Err(e) => tracing::error!(ramp = id, error = %e, "a stored ramp record does not decode"),
    }
    Ok(())
}

/// The leader carries out the queued writes, oldest first, and answers each.
pub(crate) fn run_commands(shared: &Shared) {
    let Some(r) = &shared.replicas else { return };
    let _one = lock(&r.commands);
    if !r.leads() {
        return;
    }
    let pending = match r.pg.pending_commands() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queued writes");
            return;
        }
    };
    let timeout = i64::try_from(COMMAND_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    for (id, body, age_ms) in pending {
        let (status, result) = if age_ms > timeout {
            (503, json!({"error": "no leader took this write in time; it was not applied"}))
        } else {
            match serde_json::from_str::<Write>(&body) {
                Ok(write) => writes::execute(shared, write),
                Err(e) => (400, json!({"error": format!("a queued write does not decode: {e}")})),
            }
        };
        if let Err(e) = r.pg.finish_command(id, status, result.to_string()) {
            tracing::error!(id, error = %e, "cannot record the answer to a queued write");
        }
    }
}

/// Queues `write` for the leader and waits for its answer (at most [`COMMAND_TIMEOUT`]).
pub(crate) async fn forward(shared: &Arc<Shared>, write: &Write) -> (u16, Value) {
    let Some(r) = shared.replicas.clone() else { return (500, json!({"error": "no replicas"})) };
    let mut notices = r.pg.notices();
    let body = serde_json::to_string(write).unwrap_or_default();
    let pg = r.pg.clone();
    let id = match tokio::task::spawn_blocking(move || pg.submit_command(body)).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return (503, json!({"error": format!("cannot queue the write for the leader: {e}")})),
        Err(e) => return (500, json!({"error": e.to_string()})),
    };
    let deadline = tokio::time::sleep(COMMAND_TIMEOUT + Duration::from_secs(1));
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut deadline => {
                return (504, json!({"error": "no leader answered within 10 s; the write was not applied"}));
            }
            notice = notices.recv() => match notice {
                Ok(Notice::CommandDone(done)) if done == id => {}
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return (503, json!({"error": "the store is gone"})),
            },
            _ = poll.tick() => {}
        }
        let pg = r.pg.clone();
        if let Ok(Ok(Some((status, result)))) = tokio::task::spawn_blocking(move || pg.command_result(id)).await {
            return (status, serde_json::from_str(&result).unwrap_or(Value::Null));
        }
    }
}

/// Follows the other replicas: new flags versions are distributed at once, changed ramps are
/// reloaded (by a replica that does not lead), queued writes are run (by the leader).
pub(crate) async fn follow(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(r) = shared.replicas.clone() else { return };
    let mut notices = r.pg.notices();
    loop {
        let notice = tokio::select! {
            () = shutdown.cancelled() => return,
            n = notices.recv() => n,
        };
        let shared = shared.clone();
        let work: Box<dyn FnOnce() + Send> = match notice {
            Ok(Notice::Flags(version)) if version > shared.flags.borrow().version => Box::new(move || {
                flags::reload(&shared);
            }),
            Ok(Notice::Ramp(id)) if !r.leads() => Box::new(move || {
                if let Err(e) = reload_ramp(&shared, id) {
                    tracing::warn!(ramp = id, error = %e, "cannot reload a ramp");
                }
            }),
            Ok(Notice::Command) if r.leads() => Box::new(move || run_commands(&shared)),
            Ok(Notice::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => Box::new(move || {
                flags::reload(&shared);
                if !shared.replicas.as_ref().is_some_and(|r| r.leads()) {
                    let _ = reload_ramps(&shared);
                }
            }),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let Err(e) = tokio::task::spawn_blocking(work).await {
            tracing::error!(error = %e, "following the replicas failed");
        }
    }
}

/// The other replicas that sent a heartbeat within `within_ms`.
fn others(shared: &Shared, within_ms: i64) -> Vec<ReplicaRow> {
    let Some(r) = &shared.replicas else { return Vec::new() };
    match r.pg.replicas(within_ms) {
        Ok(rows) => rows.into_iter().filter(|row| row.id != r.pg.replica()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the other replicas' sidecars");
            Vec::new()
        }
    }
}

/// The connected sidecars of the other live replicas (a heartbeat within [`LEASE_MS`]: the
/// sidecars of one that died have moved on): (proxy_id, flags version).
pub(crate) fn remote_sidecars(shared: &Shared) -> Vec<(String, u64)> {
    others(shared, LEASE_MS)
        .into_iter()
        .flat_map(|row| row.sidecars.into_iter().map(|(id, _, version)| (id, version)))
        .collect()
}

/// The connected sidecars of the other replicas, as `GET /api/v1/proxies` lists them.
pub(crate) fn remote_sidecar_list(shared: &Shared) -> Vec<Value> {
    others(shared, LEASE_MS)
        .into_iter()
        .flat_map(|row| {
            let replica = row.id;
            row.sidecars.into_iter().map(move |(id, service, version)| {
                json!({"proxy_id": id, "service": service, "connected": true, "flags_version": version,
                       "replica": replica})
            })
        })
        .collect()
}

/// `GET /api/v1/replicas`: every replica and which one leads (one control plane on SQLite lists
/// itself, leading).
pub(crate) fn list(shared: &Shared) -> Result<Value, StoreError> {
    let Some(r) = &shared.replicas else {
        return Ok(json!({"store": "sqlite", "replicas": [{"id": "local", "leader": true}]}));
    };
    let rows: Vec<ReplicaRow> = r.pg.replicas(SEEN_WITHIN_MS)?;
    let list: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({"id": row.id, "grpc": row.grpc, "http": row.http, "leader": row.leader,
                   "started_ms": row.started_ms, "seen_ms": row.seen_ms, "sidecars": row.sidecars.len(),
                   "self": row.id == r.pg.replica()})
        })
        .collect();
    Ok(
        json!({"store": "postgres", "replica": r.pg.replica(), "term": r.term.load(Ordering::Relaxed), "replicas": list}),
    )
}
