//! The PostgreSQL store, shared by control-plane replicas (see `mod.rs` and `replicas.rs`).
//!
//! The driver is tokio-postgres, run on a one-worker runtime of the store's own thread, so
//! the synchronous [`Store`] calls work from anywhere: a call hands its future to that runtime
//! and waits for the answer. Two connections (ingest commits; everything else) reconnect on the
//! next call after a failure, and a third listens for notifications (`rampart_flags`,
//! `rampart_ramps`, `rampart_commands`, `rampart_command_done`), reconnecting on its own.
//!
//! Exactly once across replicas: a batch writes each sidecar's new sequence only where the
//! stored one is still what this replica read (`prior_seq`), else nothing is written and the
//! caller rereads. Writes only the leader may make (flag versions, ramp records) are fenced by
//! its lease, on the database's clock. Migrations (`control/migrations/postgres/`) run under an
//! advisory lock, so replicas starting together migrate once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rampart_stats::{Delta, SparseHistogram};
use tokio::sync::{Mutex, broadcast};
use tokio_postgres::{Client, NoTls};

use super::{
    AuditRow, Batch, DecisionRow, DeploymentRow, EventRow, Expired, FlagVersionRow, ProxyKey, Series, Store, StoreError,
};
use super::{decode_histogram, encode_histogram};
use crate::ramp::window::Arm;

/// The migrations, in order; `rampart_schema` counts how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_platform.sql"),
];

/// The advisory lock key migrations run under ("rampart" in ASCII, roughly).
const MIGRATION_LOCK: i64 = 0x7261_6d70_6172;

/// The database's clock in Unix ms, so leases do not depend on replicas' clocks agreeing.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Longest a store call may take before its connection is given up (a network partition must not
/// hang the caller: the lease lapses, the ingest fails and sidecars resend).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A notification from another replica (or this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A new flags version was stored.
    Flags(u64),
    /// A ramp record changed.
    Ramp(i64),
    /// A write was queued for the leader.
    Command,
    /// The leader answered a queued write.
    CommandDone(i64),
    /// The listening connection was re-established: notifications may have been missed.
    Resync,
}

/// A replica as the `replicas` table knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ReplicaRow {
    pub(crate) id: String,
    pub(crate) grpc: String,
    pub(crate) http: String,
    pub(crate) started_ms: i64,
    pub(crate) seen_ms: i64,
    pub(crate) leader: bool,
    /// Connected sidecars: (proxy_id, service, flags version).
    #[serde(skip)]
    pub(crate) sidecars: Vec<(String, String, u64)>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

struct Inner {
    url: String,
    replica: String,
    general: Mutex<Option<Client>>,
    ingest: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("replica", &self.replica).finish_non_exhaustive()
    }
}

/// Which connection a call uses: ingest commits do not wait behind API reads.
#[derive(Debug, Clone, Copy)]
enum Conn {
    General,
    Ingest,
}

#[derive(Debug)]
pub(crate) struct Postgres {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    notices: broadcast::Sender<Notice>,
    /// Dropping it stops the store's runtime thread.
    _stop: std::sync::mpsc::SyncSender<()>,
}

fn pg(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Postgres(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Postgres(e.to_string()),
    }
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(std::time::Duration::from_secs(5)).keepalives_idle(std::time::Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "store connection lost; reconnecting on the next call");
        }
    });
    Ok(client)
}

impl Postgres {
    /// Connects, migrates, and starts listening; `replica` names this control plane.
    pub(crate) fn open(url: &str, replica: &str) -> Result<Postgres, StoreError> {
        let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(0);
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("rampart-store".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Parks until the store is dropped; the runtime's worker serves the store.
                let _ = stopped.recv();
                rt.shutdown_background();
            })
            .map_err(|e| StoreError::Postgres(format!("cannot start the store's thread: {e}")))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| StoreError::Postgres("the store's thread stopped".to_owned()))?
            .map_err(|e| StoreError::Postgres(format!("cannot start the store's runtime: {e}")))?;
        let (notices, _) = broadcast::channel(1024);
        let store = Postgres {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                replica: replica.to_owned(),
                general: Mutex::new(None),
                ingest: Mutex::new(None),
            }),
            handle,
            notices,
            _stop: stop,
        };
        store.run(Conn::General, |c| {
            Box::pin(async move {
                c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).await?;
                let migrated = migrate(c).await;
                c.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).await?;
                migrated
            })
        })?;
        store.handle.spawn(listen(store.inner.url.clone(), store.notices.clone()));
        Ok(store)
    }

    /// This replica's id.
    pub(crate) fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// Notifications, from now on.
    pub(crate) fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Runs `f` with a live connection on the store's runtime and waits for it. A connection
    /// that failed is replaced on the next call.
    fn run<T, F>(&self, which: Conn, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let slot = match which {
                Conn::General => &inner.general,
                Conn::Ingest => &inner.ingest,
            };
            let mut guard = slot.lock().await;
            let result = async {
                if guard.as_ref().is_none_or(Client::is_closed) {
                    *guard = Some(connect(&inner.url).await.map_err(|e| pg(&e))?);
                }
                let Some(client) = guard.as_mut() else { return Err(StoreError::Postgres("no connection".to_owned())) };
                match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                    Ok(result) => result.map_err(|e| pg(&e)),
                    Err(_) => {
                        // A connection that stopped answering is dropped; the next call reconnects.
                        *guard = None;
                        Err(StoreError::Postgres(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))
                    }
                }
            }
            .await;
            let _ = tx.send(result);
        });
        rx.recv().map_err(|_| StoreError::Postgres("the store's runtime stopped".to_owned()))?
    }

    /// [`Store::seq`] without blocking a thread: for the Hello of every stream, which would
    /// otherwise take a blocking-pool thread each while they wait their turn on the connection.
    pub(crate) async fn seq_async(&self, key: &ProxyKey) -> Result<u64, StoreError> {
        let (id, epoch) = (key.0.clone(), key.1 as i64);
        let inner = self.inner.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.handle.spawn(async move {
            let result = async {
                let mut guard = inner.general.lock().await;
                if guard.as_ref().is_none_or(Client::is_closed) {
                    *guard = Some(connect(&inner.url).await.map_err(|e| pg(&e))?);
                }
                let Some(c) = guard.as_mut() else { return Err(StoreError::Postgres("no connection".to_owned())) };
                let sql = "SELECT last_seq FROM proxy_seq WHERE proxy_id = $1 AND epoch = $2";
                match tokio::time::timeout(CALL_TIMEOUT, c.query_opt(sql, &[&id, &epoch])).await {
                    Ok(Ok(row)) => Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64)),
                    Ok(Err(e)) => Err(pg(&e)),
                    Err(_) => {
                        *guard = None;
                        Err(StoreError::Postgres(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))
                    }
                }
            }
            .await;
            let _ = tx.send(result);
        });
        rx.await.map_err(|_| StoreError::Postgres("the store's runtime stopped".to_owned()))?
    }

    /// Takes or renews the leader lease for `ttl_ms`; the term while leading, else `None`.
    pub(crate) fn try_lead(&self, ttl_ms: i64) -> Result<Option<i64>, StoreError> {
        let me = self.inner.replica.clone();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let sql = format!(
                    "INSERT INTO leader (id, holder, term, expires_ms) VALUES (1, $1, 1, {DB_NOW} + $2)
                     ON CONFLICT (id) DO UPDATE SET holder = $1, expires_ms = {DB_NOW} + $2,
                       term = CASE WHEN leader.holder = $1 THEN leader.term ELSE leader.term + 1 END
                     WHERE leader.holder = $1 OR leader.expires_ms < {DB_NOW}
                     RETURNING term"
                );
                Ok(c.query_opt(&sql, &[&me, &ttl_ms]).await?.map(|r| r.get::<_, i64>(0)))
            })
        })
    }

    /// Gives the lease up (at shutdown), so another replica takes over at once.
    pub(crate) fn resign(&self) -> Result<(), StoreError> {
        let me = self.inner.replica.clone();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute("UPDATE leader SET expires_ms = 0 WHERE holder = $1", &[&me]).await?;
                Ok(())
            })
        })
    }

    /// This replica's heartbeat, with its addresses and connected sidecars.
    pub(crate) fn heartbeat(
        &self,
        grpc: &str,
        http: &str,
        started_ms: i64,
        sidecars: &[(String, String, u64)],
    ) -> Result<(), StoreError> {
        let (me, grpc, http) = (self.inner.replica.clone(), grpc.to_owned(), http.to_owned());
        let sidecars = serde_json::to_string(sidecars).unwrap_or_else(|_| "[]".to_owned());
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let sql = format!(
                    "INSERT INTO replicas (id, grpc, http, started_ms, seen_ms, sidecars)
                     VALUES ($1, $2, $3, $4, {DB_NOW}, $5)
                     ON CONFLICT (id) DO UPDATE SET grpc = $2, http = $3, seen_ms = {DB_NOW}, sidecars = $5"
                );
                c.execute(&sql, &[&me, &grpc, &http, &started_ms, &sidecars]).await?;
                Ok(())
            })
        })
    }

    /// Replicas seen within `within_ms`, with which one leads.
    pub(crate) fn replicas(&self, within_ms: i64) -> Result<Vec<ReplicaRow>, StoreError> {
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT r.id, r.grpc, r.http, r.started_ms, r.seen_ms, r.sidecars,
                            COALESCE(l.holder = r.id AND l.expires_ms > {DB_NOW}, false)
                     FROM replicas r LEFT JOIN leader l ON l.id = 1
                     WHERE r.seen_ms > {DB_NOW} - $1 ORDER BY r.id"
                );
                let rows = c.query(&sql, &[&within_ms]).await?;
                Ok(rows
                    .iter()
                    .map(|r| ReplicaRow {
                        id: r.get(0),
                        grpc: r.get(1),
                        http: r.get(2),
                        started_ms: r.get(3),
                        seen_ms: r.get(4),
                        sidecars: serde_json::from_str(r.get::<_, &str>(5)).unwrap_or_default(),
                        leader: r.get(6),
                    })
                    .collect())
            })
        })
    }

    /// Queues a write for the leader; its id.
    pub(crate) fn submit_command(&self, body: String) -> Result<i64, StoreError> {
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let sql = format!("INSERT INTO commands (body, created_ms) VALUES ($1, {DB_NOW}) RETURNING id");
                let id: i64 = tx.query_one(&sql, &[&body]).await?.get(0);
                tx.execute("SELECT pg_notify('rampart_commands', $1)", &[&id.to_string()]).await?;
                tx.commit().await?;
                Ok(id)
            })
        })
    }

    /// Writes not yet carried out, oldest first: (id, body, age in ms).
    pub(crate) fn pending_commands(&self) -> Result<Vec<(i64, String, i64)>, StoreError> {
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT id, body, {DB_NOW} - created_ms FROM commands WHERE done_ms IS NULL ORDER BY id LIMIT 100"
                );
                let rows = c.query(&sql, &[]).await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
            })
        })
    }

    /// Records the answer to a queued write and tells the replica waiting for it.
    pub(crate) fn finish_command(&self, id: i64, status: u16, result: String) -> Result<(), StoreError> {
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let sql = format!(
                    "UPDATE commands SET done_ms = {DB_NOW}, status = $2, result = $3 WHERE id = $1 AND done_ms IS NULL"
                );
                tx.execute(&sql, &[&id, &i32::from(status), &result]).await?;
                tx.execute("SELECT pg_notify('rampart_command_done', $1)", &[&id.to_string()]).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    /// The answer to a queued write, once there is one; answered writes a day old are deleted.
    pub(crate) fn command_result(&self, id: i64) -> Result<Option<(u16, String)>, StoreError> {
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT status, result FROM commands WHERE id = $1 AND done_ms IS NOT NULL", &[&id])
                    .await?;
                let sql = format!("DELETE FROM commands WHERE done_ms < {DB_NOW} - 86400000");
                c.execute(&sql, &[]).await?;
                Ok(row.map(|r| (u16::try_from(r.get::<_, i32>(0)).unwrap_or(500), r.get(1))))
            })
        })
    }

    fn totals_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<(String, String, Delta)>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (flag, variant): (String, String) = (r.get(0), r.get(1));
            let latency = decode_histogram(r.get::<_, &[u8]>(5))
                .map_err(|e| StoreError::Corrupt(format!("{flag}/{variant}: {e}")))?;
            let delta = Delta {
                requests: r.get::<_, i64>(2) as u64,
                errors: r.get::<_, i64>(3) as u64,
                timeouts: r.get::<_, i64>(4) as u64,
                latency,
                split: Default::default(),
            };
            out.push((flag, variant, delta));
        }
        Ok(out)
    }

    /// Inserts `sql` (with `$1` the replica id) when this replica holds the lease, then notifies
    /// `channel`; [`StoreError::NotLeader`] otherwise.
    fn fenced_write(
        &self,
        sql: &'static str,
        args: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
        channel: &'static str,
        payload: String,
    ) -> Result<u64, StoreError> {
        let me = self.inner.replica.clone();
        let written = self.run(Conn::General, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let sql = format!(
                    "WITH lease AS (SELECT 1 FROM leader WHERE id = 1 AND holder = $1 AND expires_ms > {DB_NOW}) {sql}"
                );
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&me];
                params.extend(args.iter().map(|a| &**a as &(dyn tokio_postgres::types::ToSql + Sync)));
                let n = tx.execute(&sql, &params).await?;
                if n > 0 {
                    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await?;
                }
                tx.commit().await?;
                Ok(n)
            })
        })?;
        Ok(written)
    }
}

async fn migrate(c: &mut Client) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("CREATE TABLE IF NOT EXISTS rampart_schema (version INTEGER NOT NULL)").await?;
    let done = c.query_opt("SELECT version FROM rampart_schema", &[]).await?.map_or(0, |r| r.get::<_, i32>(0));
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(done).unwrap_or(0)) {
        let tx = c.transaction().await?;
        tx.batch_execute(sql).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("DELETE FROM rampart_schema", &[]).await?;
        tx.execute("INSERT INTO rampart_schema (version) VALUES ($1)", &[&version]).await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn connect_listener(
    url: &str,
) -> Result<
    (Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>),
    tokio_postgres::Error,
> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(std::time::Duration::from_secs(5)).keepalives_idle(std::time::Duration::from_secs(10));
    config.connect(NoTls).await
}

/// Listens for the replicas' notifications and forwards them, reconnecting after a failure (and
/// then announcing [`Notice::Resync`]).
async fn listen(url: String, notices: broadcast::Sender<Notice>) {
    let mut first = true;
    loop {
        match connect_listener(&url).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let pump = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if tx.send((n.channel().to_owned(), n.payload().to_owned())).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "store notifications lost; reconnecting");
                                break;
                            }
                        }
                    }
                });
                let listening = client
                    .batch_execute(
                        "LISTEN rampart_flags; LISTEN rampart_ramps; LISTEN rampart_commands; LISTEN rampart_command_done",
                    )
                    .await;
                if listening.is_ok() {
                    if !first {
                        let _ = notices.send(Notice::Resync);
                    }
                    first = false;
                    while let Some((channel, payload)) = rx.recv().await {
                        let notice = match channel.as_str() {
                            "rampart_flags" => payload.parse().ok().map(Notice::Flags),
                            "rampart_ramps" => payload.parse().ok().map(Notice::Ramp),
                            "rampart_commands" => Some(Notice::Command),
                            "rampart_command_done" => payload.parse().ok().map(Notice::CommandDone),
                            _ => None,
                        };
                        if let Some(n) = notice {
                            let _ = notices.send(n);
                        }
                    }
                }
                pump.abort();
                drop(client);
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for store notifications; retrying"),
        }
        if notices.receiver_count() == 0 && !first {
            // Nobody listens any more: the control plane is gone.
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

impl Store for Postgres {
    fn latest_flags(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.run(Conn::General, |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT version, definition FROM flag_versions ORDER BY version DESC LIMIT 1", &[])
                    .await?;
                Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
            })
        })
    }

    fn init_flags(&self, definition: &str, now_ms: i64) -> Result<(), StoreError> {
        let definition = definition.to_owned();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO flag_versions (version, definition, source, created_ms) VALUES (1, $1, 'file', $2)
                     ON CONFLICT (version) DO NOTHING",
                    &[&definition, &now_ms],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn insert_flags(&self, version: u64, definition: &str, source: &str, now_ms: i64) -> Result<(), StoreError> {
        let v = version as i64;
        let args: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>> =
            vec![Box::new(v), Box::new(definition.to_owned()), Box::new(source.to_owned()), Box::new(now_ms)];
        let sql = "INSERT INTO flag_versions (version, definition, source, created_ms)
                   SELECT $2, $3, $4, $5 FROM lease ON CONFLICT (version) DO NOTHING";
        if self.fenced_write(sql, args, "rampart_flags", version.to_string())? == 1 {
            return Ok(());
        }
        let exists = self.run(Conn::General, move |c| {
            Box::pin(async move {
                Ok(c.query_opt("SELECT 1 FROM flag_versions WHERE version = $1", &[&v]).await?.is_some())
            })
        })?;
        if exists {
            Err(StoreError::Conflict(format!("flags version {version} exists already")))
        } else {
            Err(StoreError::NotLeader)
        }
    }

    fn load_seqs(&self) -> Result<Vec<(ProxyKey, u64)>, StoreError> {
        self.run(Conn::General, |c| {
            Box::pin(async move {
                let rows = c.query("SELECT proxy_id, epoch, last_seq FROM proxy_seq", &[]).await?;
                Ok(rows.iter().map(|r| ((r.get(0), r.get::<_, i64>(1) as u64), r.get::<_, i64>(2) as u64)).collect())
            })
        })
    }

    fn seq(&self, key: &ProxyKey) -> Result<u64, StoreError> {
        let (id, epoch) = (key.0.clone(), key.1 as i64);
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT last_seq FROM proxy_seq WHERE proxy_id = $1 AND epoch = $2", &[&id, &epoch])
                    .await?;
                Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
            })
        })
    }

    fn load_owners(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        self.run(Conn::General, |c| {
            Box::pin(async move {
                let rows = c.query("SELECT proxy_id, service, pinned FROM proxy_owner", &[]).await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
            })
        })
    }

    fn claim_owner(
        &self,
        proxy_id: &str,
        service: &str,
        pinned: bool,
        at_ms: i64,
    ) -> Result<(String, bool), StoreError> {
        let (proxy_id, service) = (proxy_id.to_owned(), service.to_owned());
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO proxy_owner (proxy_id, service, pinned, since_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (proxy_id) DO NOTHING",
                    &[&proxy_id, &service, &pinned, &at_ms],
                )
                .await?;
                let row =
                    c.query_one("SELECT service, pinned FROM proxy_owner WHERE proxy_id = $1", &[&proxy_id]).await?;
                Ok((row.get(0), row.get(1)))
            })
        })
    }

    fn pin_owner(&self, proxy_id: &str) -> Result<(), StoreError> {
        let proxy_id = proxy_id.to_owned();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute("UPDATE proxy_owner SET pinned = true WHERE proxy_id = $1", &[&proxy_id]).await?;
                Ok(())
            })
        })
    }

    fn load_totals(&self) -> Result<Vec<(String, String, Delta)>, StoreError> {
        let me = self.inner.replica.clone();
        let rows = self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT flag, variant, requests, errors, timeouts, histogram FROM variant_totals WHERE replica = $1",
                    &[&me],
                )
                .await
            })
        })?;
        Postgres::totals_rows(&rows)
    }

    fn flag_totals(&self, flag: &str) -> Result<Vec<(String, Delta)>, StoreError> {
        let flag = flag.to_owned();
        let rows = self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT flag, variant, requests, errors, timeouts, histogram FROM variant_totals WHERE flag = $1",
                    &[&flag],
                )
                .await
            })
        })?;
        let mut sums: std::collections::BTreeMap<String, Delta> = std::collections::BTreeMap::new();
        for (_, variant, d) in Postgres::totals_rows(&rows)? {
            sums.entry(variant).or_default().merge(&d);
        }
        Ok(sums.into_iter().collect())
    }

    fn commit_batch(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let me = self.inner.replica.clone();
        let (mut s_ids, mut s_epochs, mut s_priors, mut s_lasts) = (vec![], vec![], vec![], vec![]);
        for s in &batch.seqs {
            s_ids.push(s.key.0.clone());
            s_epochs.push(s.key.1 as i64);
            s_priors.push(s.prior as i64);
            s_lasts.push(s.last as i64);
        }
        let (mut t_flags, mut t_variants, mut t_req, mut t_err, mut t_to, mut t_hist) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for t in &batch.totals {
            t_flags.push(t.flag.to_owned());
            t_variants.push(t.variant.to_owned());
            t_req.push(t.totals.requests as i64);
            t_err.push(t.totals.errors as i64);
            t_to.push(t.totals.timeouts as i64);
            t_hist.push(encode_histogram(&t.totals.latency));
        }
        let (mut w_flags, mut w_variants, mut w_arms, mut w_lat) = (vec![], vec![], vec![], vec![]);
        for w in &batch.windows {
            w_flags.push(w.flag.to_owned());
            w_variants.push(w.variant.to_owned());
            w_arms.push(serde_json::to_string(w.arm).unwrap_or_default());
            w_lat.push(encode_histogram(w.latency));
        }
        let now = crate::state::now_ms();
        let expected = s_ids.len() as u64;
        let moved = self.run(Conn::Ingest, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                // A row is written only where the stored sequence is the one this replica read.
                let written = tx
                    .execute(
                        "INSERT INTO proxy_seq (proxy_id, epoch, prior_seq, last_seq, updated_ms)
                         SELECT *, $5::bigint FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
                         ON CONFLICT (proxy_id, epoch) DO UPDATE
                           SET prior_seq = excluded.prior_seq, last_seq = excluded.last_seq, updated_ms = excluded.updated_ms
                           WHERE proxy_seq.last_seq = excluded.prior_seq",
                        &[&s_ids, &s_epochs, &s_priors, &s_lasts, &now],
                    )
                    .await?;
                if written != expected {
                    tx.rollback().await?;
                    return Ok(true);
                }
                tx.execute(
                    "INSERT INTO variant_totals (replica, flag, variant, requests, errors, timeouts, histogram, updated_ms)
                     SELECT $1::text, *, $8::bigint
                       FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bytea[])
                     ON CONFLICT (replica, flag, variant) DO UPDATE SET requests = excluded.requests,
                       errors = excluded.errors, timeouts = excluded.timeouts, histogram = excluded.histogram,
                       updated_ms = excluded.updated_ms",
                    &[&me, &t_flags, &t_variants, &t_req, &t_err, &t_to, &t_hist, &now],
                )
                .await?;
                if !w_flags.is_empty() {
                    tx.execute(
                        "INSERT INTO ramp_windows (flag, variant, arm, latency)
                         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])",
                        &[&w_flags, &w_variants, &w_arms, &w_lat],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(false)
            })
        })?;
        if moved {
            return Err(StoreError::Conflict("a sidecar's sequence moved on at another replica".to_owned()));
        }
        Ok(())
    }

    fn take_windows(&self) -> Result<Vec<(String, String, Arm, SparseHistogram)>, StoreError> {
        let rows = self.run(Conn::General, |c| {
            Box::pin(
                async move { c.query("DELETE FROM ramp_windows RETURNING flag, variant, arm, latency", &[]).await },
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let (flag, variant): (String, String) = (r.get(0), r.get(1));
            let arm: Arm = serde_json::from_str(r.get::<_, &str>(2))
                .map_err(|e| StoreError::Corrupt(format!("window {flag}/{variant}: {e}")))?;
            let latency = decode_histogram(r.get::<_, &[u8]>(3))
                .map_err(|e| StoreError::Corrupt(format!("window {flag}/{variant}: {e}")))?;
            out.push((flag, variant, arm, latency));
        }
        Ok(out)
    }

    fn expire(&self, cutoff_ms: i64, current: &dyn Fn(&str) -> bool) -> Result<Expired, StoreError> {
        let idle: Vec<(String, String)> = self.run(Conn::General, move |c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT DISTINCT flag, variant FROM variant_totals WHERE updated_ms < $1", &[&cutoff_ms])
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })?;
        let idle: Vec<(String, String)> = idle.into_iter().filter(|(flag, _)| !current(flag)).collect();
        let (flags, variants): (Vec<String>, Vec<String>) = idle.iter().cloned().unzip();
        let seqs = self.run(Conn::General, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                tx.execute(
                    "DELETE FROM variant_totals t USING unnest($1::text[], $2::text[]) AS x(flag, variant)
                     WHERE t.flag = x.flag AND t.variant = x.variant AND t.updated_ms < $3",
                    &[&flags, &variants, &cutoff_ms],
                )
                .await?;
                let rows = tx
                    .query("DELETE FROM proxy_seq WHERE updated_ms < $1 RETURNING proxy_id, epoch", &[&cutoff_ms])
                    .await?;
                tx.commit().await?;
                Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect::<Vec<_>>())
            })
        })?;
        Ok((idle, seqs))
    }

    fn add_audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        let a = a.clone();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO audit (at_ms, actor, action, flag, version, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&a.at_ms, &a.actor, &a.action, &a.flag, &a.version.map(|v| v as i64), &a.detail],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn audit(&self, flag: Option<&str>, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let flag = flag.map(str::to_owned);
        let limit = i64::from(limit);
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT at_ms, actor, action, flag, version, detail FROM audit
                         WHERE $1::text IS NULL OR flag = $1 ORDER BY id DESC LIMIT $2",
                        &[&flag, &limit],
                    )
                    .await?;
                let mut out: Vec<AuditRow> = rows
                    .iter()
                    .map(|r| AuditRow {
                        at_ms: r.get(0),
                        actor: r.get(1),
                        action: r.get(2),
                        flag: r.get(3),
                        version: r.get::<_, Option<i64>>(4).map(|v| v as u64),
                        detail: r.get(5),
                    })
                    .collect();
                out.reverse();
                Ok(out)
            })
        })
    }

    fn put_ramp(&self, id: i64, flag: &str, state: &str, started_ms: i64, record: &str) -> Result<(), StoreError> {
        let args: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>> = vec![
            Box::new(id),
            Box::new(flag.to_owned()),
            Box::new(state.to_owned()),
            Box::new(started_ms),
            Box::new(record.to_owned()),
        ];
        let sql = "INSERT INTO ramps (id, flag, state, started_ms, record) SELECT $2, $3, $4, $5, $6 FROM lease
                   ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record";
        match self.fenced_write(sql, args, "rampart_ramps", id.to_string())? {
            0 => Err(StoreError::NotLeader),
            _ => Ok(()),
        }
    }

    fn load_ramps(&self) -> Result<Vec<String>, StoreError> {
        self.run(Conn::General, |c| {
            Box::pin(async move {
                let rows = c.query("SELECT record FROM ramps ORDER BY id", &[]).await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
        })
    }

    fn load_ramp(&self, id: i64) -> Result<Option<String>, StoreError> {
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                Ok(c.query_opt("SELECT record FROM ramps WHERE id = $1", &[&id]).await?.map(|r| r.get(0)))
            })
        })
    }

    fn add_decision(&self, ramp: i64, d: &DecisionRow) -> Result<(), StoreError> {
        let d = d.clone();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO ramp_decisions (ramp_id, at_ms, step, percent, action, reason, numbers)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &ramp,
                        &d.at_ms,
                        &i32::try_from(d.step).unwrap_or(i32::MAX),
                        &d.percent,
                        &d.action,
                        &d.reason,
                        &d.numbers.to_string(),
                    ],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn add_event(&self, ramp: i64, e: &EventRow) -> Result<(), StoreError> {
        let e = e.clone();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO ramp_events (ramp_id, at_ms, kind, detail) VALUES ($1, $2, $3, $4)",
                    &[&ramp, &e.at_ms, &e.kind, &e.detail],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn decisions(&self, ramp: i64, recent: u32) -> Result<Vec<DecisionRow>, StoreError> {
        let recent = i64::from(recent);
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT at_ms, step, percent, action, reason, numbers FROM ramp_decisions WHERE ramp_id = $1
                           AND (action != 'HOLD' OR id IN
                                (SELECT id FROM ramp_decisions WHERE ramp_id = $1 ORDER BY at_ms DESC, id DESC LIMIT $2))
                         ORDER BY at_ms, id",
                        &[&ramp, &recent],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| DecisionRow {
                        at_ms: r.get(0),
                        step: u32::try_from(r.get::<_, i32>(1)).unwrap_or(0),
                        percent: r.get(2),
                        action: r.get(3),
                        reason: r.get(4),
                        numbers: serde_json::from_str(r.get::<_, &str>(5)).unwrap_or(serde_json::Value::Null),
                    })
                    .collect())
            })
        })
    }

    fn events(&self, ramp: i64) -> Result<Vec<EventRow>, StoreError> {
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT at_ms, kind, detail FROM ramp_events WHERE ramp_id = $1 ORDER BY at_ms, id",
                        &[&ramp],
                    )
                    .await?;
                Ok(rows.iter().map(|r| EventRow { at_ms: r.get(0), kind: r.get(1), detail: r.get(2) }).collect())
            })
        })
    }

    fn decision_series(&self, ramp: i64, after_ms: i64, max: u32) -> Result<Series, StoreError> {
        let max = i64::from(max.max(1));
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let sql = super::series_sql("id", ["$1", "$2", "$3"]);
                let rows = c.query(sql.as_str(), &[&ramp, &after_ms, &max]).await?;
                let total = rows.first().map_or(0, |r| r.get::<_, i64>(6) as u64);
                Ok((rows.iter().map(decision_row).collect(), total))
            })
        })
    }

    fn latest_decisions(&self, ramps: &[i64]) -> Result<Vec<(i64, DecisionRow)>, StoreError> {
        let ramps = ramps.to_vec();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT DISTINCT ON (ramp_id) at_ms, step, percent, action, reason, numbers, ramp_id
                           FROM ramp_decisions WHERE ramp_id = ANY($1) ORDER BY ramp_id, at_ms DESC, id DESC",
                        &[&ramps],
                    )
                    .await?;
                Ok(rows.iter().map(|r| (r.get::<_, i64>(6), decision_row(r))).collect())
            })
        })
    }

    fn flag_versions(&self, versions: &[u64]) -> Result<Vec<FlagVersionRow>, StoreError> {
        let versions: Vec<i64> = versions.iter().map(|&v| v as i64).collect();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT version, created_ms, source, definition FROM flag_versions WHERE version = ANY($1)
                          ORDER BY version",
                        &[&versions],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| FlagVersionRow {
                        version: r.get::<_, i64>(0) as u64,
                        created_ms: r.get(1),
                        source: r.get(2),
                        definition: r.get(3),
                    })
                    .collect())
            })
        })
    }

    fn flag_changes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(Conn::General, |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT flag, MAX(version) FROM audit WHERE flag IS NOT NULL AND version IS NOT NULL
                          GROUP BY flag",
                        &[],
                    )
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1) as u64)).collect())
            })
        })
    }

    fn add_deployment(&self, d: &DeploymentRow) -> Result<i64, StoreError> {
        let d = d.clone();
        let flags = serde_json::to_string(&d.flags).unwrap_or_default();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "INSERT INTO deployments (service, commit_sha, commit_ms, pr, flags, recorded_ms, actor)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                        &[&d.service, &d.commit, &d.commit_ms, &d.pr, &flags, &d.recorded_ms, &d.actor],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })
    }

    fn deployments(&self, since_ms: i64, limit: u32) -> Result<Vec<DeploymentRow>, StoreError> {
        let limit = i64::from(limit);
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id, service, commit_sha, commit_ms, pr, flags, recorded_ms, actor FROM deployments
                         WHERE recorded_ms >= $1 ORDER BY recorded_ms DESC, id DESC LIMIT $2",
                        &[&since_ms, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| DeploymentRow {
                        id: r.get(0),
                        service: r.get(1),
                        commit: r.get(2),
                        commit_ms: r.get(3),
                        pr: r.get(4),
                        flags: serde_json::from_str(r.get::<_, &str>(5)).unwrap_or_default(),
                        recorded_ms: r.get(6),
                        actor: r.get(7),
                    })
                    .collect())
            })
        })
    }

    fn touch_flags(&self, evaluated: &[(String, i64)]) -> Result<(), StoreError> {
        let (flags, times): (Vec<String>, Vec<i64>) = evaluated.iter().cloned().unzip();
        self.run(Conn::General, move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO flag_usage (flag, last_ms) SELECT * FROM unnest($1::text[], $2::bigint[])
                     ON CONFLICT (flag) DO UPDATE SET last_ms = GREATEST(flag_usage.last_ms, excluded.last_ms)",
                    &[&flags, &times],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn flag_usage(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(Conn::General, |c| {
            Box::pin(async move {
                let rows = c.query("SELECT flag, last_ms FROM flag_usage", &[]).await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }
}

/// A decision from the columns `at_ms, step, percent, action, reason, numbers`.
fn decision_row(r: &tokio_postgres::Row) -> DecisionRow {
    DecisionRow {
        at_ms: r.get(0),
        step: u32::try_from(r.get::<_, i32>(1)).unwrap_or(0),
        percent: r.get(2),
        action: r.get(3),
        reason: r.get(4),
        numbers: serde_json::from_str(r.get::<_, &str>(5)).unwrap_or(serde_json::Value::Null),
    }
}
