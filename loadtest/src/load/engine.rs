//! Runs a [`Plan`]: workers that each own an HTTP/1.1 connection (or share an h2c one), fed by a
//! dispatcher thread at the schedule's intended times (open loop) or sending back to back
//! (closed loop). Every run ends by its schedule plus the request timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, ConnError, ConnStats, H2Handle, Protocol, Target};
use super::schedule::OpenLoop;
use super::stats::{Outcome, Recorder, Summary};
use super::{Pace, Plan};

/// Pause after a failed connect, so a dead target does not turn the run into a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Connect(#[from] ConnError),
    #[error("cannot start the dispatcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// One request to send, with the time it was meant to start.
#[derive(Debug, Clone, Copy)]
struct Job {
    seq: u64,
    intended: Instant,
    measured: bool,
}

/// A worker's way to a target.
#[derive(Debug)]
enum Link {
    H1 { target: Target, conn: Option<Conn>, stats: Arc<ConnStats> },
    H2 { slot: Arc<H2Slot>, handle: Option<H2Handle> },
}

/// An h2c connection shared by several workers; reopened by the first worker that finds it closed.
#[derive(Debug)]
struct H2Slot {
    target: Target,
    conn: Mutex<Option<Conn>>,
    stats: Arc<ConnStats>,
}

impl Link {
    fn target(&self) -> &Target {
        match self {
            Link::H1 { target, .. } => target,
            Link::H2 { slot, .. } => &slot.target,
        }
    }

    async fn send(&mut self, req: Request<Empty<Bytes>>) -> Outcome {
        let outcome = match self {
            Link::H1 { target, conn, stats } => {
                if conn.as_ref().is_none_or(Conn::is_closed) {
                    *conn = Conn::open(target, Protocol::Http1, stats).await.ok();
                }
                match conn {
                    Some(c) => c.send(req).await,
                    None => Outcome::Transport,
                }
            }
            Link::H2 { slot, handle } => {
                if handle.as_ref().is_none_or(H2Handle::is_closed) {
                    let mut shared = slot.conn.lock().await;
                    if shared.as_ref().is_none_or(Conn::is_closed) {
                        *shared = Conn::open(&slot.target, Protocol::H2c, &slot.stats).await.ok();
                    }
                    *handle = shared.as_ref().and_then(Conn::h2_handle);
                }
                match handle {
                    Some(h) => h.send(req).await,
                    None => Outcome::Transport,
                }
            }
        };
        if outcome == Outcome::Transport {
            match self {
                Link::H1 { conn, .. } => *conn = None,
                Link::H2 { handle, .. } => *handle = None,
            }
        }
        outcome
    }
}

/// Opens the connections up front (a target that is down fails the run before it starts) and
/// hands out one link per worker: `connections` for HTTP/1.1, `connections × streams` for h2c.
async fn links(plan: &Plan, stats: &Arc<ConnStats>) -> Result<Vec<Link>, ConnError> {
    let mut out = Vec::new();
    match plan.protocol {
        Protocol::Http1 => {
            for i in 0..plan.connections {
                let target = plan.targets[i % plan.targets.len()].clone();
                let conn = Conn::open(&target, Protocol::Http1, stats).await?;
                out.push(Link::H1 { target, conn: Some(conn), stats: stats.clone() });
            }
        }
        Protocol::H2c => {
            for i in 0..plan.connections {
                let target = plan.targets[i % plan.targets.len()].clone();
                let conn = Conn::open(&target, Protocol::H2c, stats).await?;
                let handle = conn.h2_handle();
                let slot = Arc::new(H2Slot { target, conn: Mutex::new(Some(conn)), stats: stats.clone() });
                for _ in 0..plan.streams {
                    out.push(Link::H2 { slot: slot.clone(), handle: handle.clone() });
                }
            }
        }
    }
    Ok(out)
}

fn request(plan: &Plan, target: &Target, seq: u64, rng: &mut fastrand::Rng) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = target.uri.clone();
    let headers = req.headers_mut();
    if plan.protocol == Protocol::Http1 {
        headers.insert(hyper::header::HOST, target.host.clone());
    }
    for h in &plan.headers {
        headers.append(h.name().clone(), h.render(seq, rng));
    }
    req
}

/// Runs the plan to its end (or until `cancel`); the summary covers the measured phase (the
/// connection counts cover the whole run, the connections opened up front included).
pub(crate) async fn execute(plan: Arc<Plan>, cancel: CancellationToken) -> Result<Summary, RunError> {
    let stats = Arc::new(ConnStats::default());
    let links = links(&plan, &stats).await?;
    let mut summary = match plan.pace {
        Pace::Open { rate } => open_loop(plan, links, rate, cancel).await,
        Pace::Closed => closed_loop(plan, links, cancel).await,
    }?;
    summary.connections_opened = stats.connects.load(Ordering::Relaxed);
    summary.tls_handshakes = stats.tls_handshakes.load(Ordering::Relaxed);
    summary.tls = stats.negotiated.get().cloned();
    Ok(summary)
}

async fn open_loop(
    plan: Arc<Plan>,
    links: Vec<Link>,
    rate: f64,
    cancel: CancellationToken,
) -> Result<Summary, RunError> {
    let schedule =
        OpenLoop::new(rate, plan.warmup + plan.duration, plan.max_requests.map(|m| m + warmup_count(&plan, rate)))
            .unwrap_or_else(|| unreachable!("the rate was validated"));
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(5);
    let stop = Arc::new(AtomicBool::new(false));

    // The dispatcher is an OS thread: `std::thread::sleep` wakes within tens of microseconds,
    // where the runtime's timer has a 1 ms granularity that would add up to 1 ms to every latency.
    let warmup = plan.warmup;
    let dispatcher = {
        let stop = stop.clone();
        let start_std = start.into_std();
        std::thread::Builder::new()
            .name("dispatch".to_owned())
            .spawn(move || {
                realtime();
                for seq in 0..schedule.count() {
                    let Some(offset) = schedule.offset(seq) else { break };
                    let due = start_std + offset;
                    loop {
                        let now = std::time::Instant::now();
                        if now >= due {
                            break;
                        }
                        std::thread::sleep(due - now);
                    }
                    let job = Job { seq, intended: Instant::from_std(due), measured: offset >= warmup };
                    if stop.load(Ordering::Relaxed) || tx.send(job).is_err() {
                        break;
                    }
                }
            })
            .map_err(RunError::Thread)?
    };

    let mut workers = JoinSet::new();
    for (i, mut link) in links.into_iter().enumerate() {
        let (plan, rx) = (plan.clone(), rx.clone());
        workers.spawn(async move {
            let mut rec = Recorder::default();
            let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
            loop {
                let Some(job) = rx.lock().await.recv().await else { break };
                let sent = Instant::now();
                // A request that waited in the queue past its timeout is not sent: it already failed.
                let outcome = if sent.duration_since(job.intended) >= plan.timeout {
                    Outcome::Timeout
                } else {
                    let req = request(&plan, link.target(), job.seq, &mut rng);
                    let left = plan.timeout - sent.duration_since(job.intended);
                    tokio::time::timeout(left, link.send(req)).await.unwrap_or(Outcome::Timeout)
                };
                let done = Instant::now();
                if job.measured {
                    rec.record(outcome, done.duration_since(job.intended), done.duration_since(sent));
                    rec.record_lateness(sent.duration_since(job.intended));
                } else {
                    rec.warm += 1;
                }
            }
            rec
        });
    }

    let deadline = start + plan.warmup + plan.duration + plan.timeout + Duration::from_secs(1);
    let total = collect(&mut workers, &cancel, deadline, plan.timeout, || stop.store(true, Ordering::Relaxed)).await;
    stop.store(true, Ordering::Relaxed);
    let ended = Instant::now();
    drop(rx);
    // The dispatcher sleeps at most one interval (or stops at its next send, now refused).
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    // The measured phase as planned, or until it was cut short.
    let measured = schedule.count().saturating_sub(warmup_count(&plan, rate));
    let elapsed = plan
        .duration
        .min(Duration::from_secs_f64(measured as f64 / rate))
        .min(ended.saturating_duration_since(start + plan.warmup));
    Ok(total.summary(elapsed))
}

/// Makes the calling (dispatcher) thread `SCHED_FIFO` with `chrt`, when allowed: a real-time
/// thread preempts the runtime thread the moment its sleep ends and has no timer slack, so
/// requests leave at their intended times instead of up to a scheduler tick later. It only sleeps
/// and hands out jobs, so it cannot starve the core. Without the privilege the run goes on
/// (noted once); its lateness is reported either way.
fn realtime() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().and_then(|t| t.to_str()).map(str::to_owned));
    let ok = tid.is_some_and(|tid| {
        std::process::Command::new("chrt")
            .args(["-f", "-p", "10", &tid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok && !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!("notice: cannot make the dispatcher thread real-time (chrt -f); the schedule may slip more");
    }
}

/// Requests of the warm-up phase at `rate`.
fn warmup_count(plan: &Plan, rate: f64) -> u64 {
    (plan.warmup.as_secs_f64() * rate).ceil() as u64
}

async fn closed_loop(plan: Arc<Plan>, links: Vec<Link>, cancel: CancellationToken) -> Result<Summary, RunError> {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let budget = Arc::new(AtomicU64::new(0));
    let halt = Arc::new(AtomicBool::new(false));
    let last_done = Arc::new(Mutex::new(measure_from));
    let mut workers = JoinSet::new();
    for (i, mut link) in links.into_iter().enumerate() {
        let (plan, budget, last_done, halt) = (plan.clone(), budget.clone(), last_done.clone(), halt.clone());
        workers.spawn(async move {
            let mut rec = Recorder::default();
            let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
            loop {
                let sent = Instant::now();
                if sent >= end || halt.load(Ordering::Relaxed) {
                    break;
                }
                let measured = sent >= measure_from;
                let seq = if measured { budget.fetch_add(1, Ordering::Relaxed) } else { 0 };
                if plan.max_requests.is_some_and(|m| seq >= m) {
                    break;
                }
                let req = request(&plan, link.target(), seq, &mut rng);
                let outcome = tokio::time::timeout(plan.timeout, link.send(req)).await.unwrap_or(Outcome::Timeout);
                let done = Instant::now();
                if outcome == Outcome::Transport {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                if measured {
                    rec.record(outcome, done - sent, done - sent);
                } else {
                    rec.warm += 1;
                }
            }
            let mut last = last_done.lock().await;
            *last = (*last).max(Instant::now().min(end));
            rec
        });
    }
    let deadline = end + plan.timeout + Duration::from_secs(1);
    let total = collect(&mut workers, &cancel, deadline, plan.timeout, || halt.store(true, Ordering::Relaxed)).await;
    let elapsed = last_done.lock().await.saturating_duration_since(measure_from);
    Ok(total.summary(elapsed))
}

/// Waits for every worker, at most until `deadline`. On `cancel`, `wind_down` is called once (the
/// senders stop starting requests) and the wait shortens to the request timeout, so what was
/// measured until then is kept. What did not finish by the deadline is dropped.
async fn collect(
    workers: &mut JoinSet<Recorder>,
    cancel: &CancellationToken,
    mut deadline: Instant,
    timeout: Duration,
    wind_down: impl Fn(),
) -> Recorder {
    let mut total = Recorder::default();
    let mut cancelled = false;
    loop {
        tokio::select! {
            next = workers.join_next() => match next {
                Some(Ok(rec)) => total.merge(&rec),
                Some(Err(_)) => {}
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
            () = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                wind_down();
                deadline = deadline.min(Instant::now() + timeout + Duration::from_millis(100));
            }
        }
    }
    workers.abort_all();
    total
}
