//! Request timeouts without a timer per request: one coarse ticker per worker thread, for the
//! upstream timeout ([`timeout`]) and for hyper's own timers ([`WorkerTimer`]: the header-read
//! timeout it arms for every request head, and HTTP/2 keep-alive pings).
//!
//! A tokio timer registers an entry in the runtime's timer wheel when its task first waits (a
//! locked insert) and removes it when dropped (another lock), for every request, although almost
//! none times out. Here a waiting request puts its deadline and its waker in its thread's slab;
//! one ticker task per thread wakes every [`TICK`] while any deadline is pending, and wakes those
//! whose deadline passed. A deadline fires within a tick after it (the upstream timeout also
//! within the coarse clock's granularity, a few milliseconds, as it is read on that clock).
//!
//! A worker's requests are polled on its thread only (thread per core, current-thread runtimes),
//! so the slab is a thread-local `RefCell`. That holds only on a current-thread runtime: a worker
//! marks its thread ([`use_on_this_thread`]) when it runs on one; anywhere else (an embedder's
//! multi-thread runtime, where a task may move between threads) [`timeout`] is tokio's. A request
//! dropped on another thread cannot remove its entry (it checks the entry's id): that entry fires
//! at its deadline into a waker nobody awaits.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioTimer;
use slab::Slab;

/// How often a thread's pending deadlines are checked.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The upstream did not answer in time.
#[derive(Debug)]
pub(crate) struct Elapsed;

struct Entry {
    id: u64,
    deadline: When,
    waker: Waker,
}

/// When an entry fires.
#[derive(Debug, Clone, Copy)]
enum When {
    /// On this thread's coarse clock ([`now_ms`]).
    CoarseMs(u64),
    At(Instant),
}

/// What a [`Coarse`] waits for before it registers.
#[derive(Debug, Clone, Copy)]
enum Limit {
    After(Duration),
    At(Instant),
}

#[derive(Default)]
struct Deadlines {
    entries: Slab<Entry>,
    next_id: u64,
    /// A ticker task runs on this thread's runtime.
    ticking: bool,
    /// The ticker, parked while nothing waits.
    parked: Option<Waker>,
}

thread_local! {
    /// This thread runs a current-thread runtime: its tasks never leave it.
    static COARSE: Cell<bool> = const { Cell::new(false) };
    static DEADLINES: RefCell<Deadlines> = RefCell::new(Deadlines::default());
    static ORIGIN: coarsetime::Instant = coarsetime::Instant::now_without_cache_update();
}

/// Milliseconds on this thread's coarse clock.
fn now_ms() -> u64 {
    ORIGIN.with(|origin| coarse_now().duration_since(*origin).as_millis())
}

/// `CLOCK_MONOTONIC_COARSE`: the kernel's last tick, read without the TSC. Not `Instant::now`,
/// which also stores into a process-wide cache (a write every worker would contend on).
pub(crate) fn coarse_now() -> coarsetime::Instant {
    coarsetime::Instant::now_without_cache_update()
}

/// Lets [`timeout`] use this thread's coarse deadlines from now on, when the runtime driving the
/// caller is a current-thread one (its tasks are polled on this thread only).
pub(crate) fn use_on_this_thread() {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    COARSE.set(matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)));
}

/// Runs `future` until it completes or `timeout` has passed.
pub(crate) fn timeout<F: Future>(timeout: Duration, future: F) -> Timeout<F> {
    if COARSE.get() {
        Timeout::Coarse { inner: Coarse { future, limit: Limit::After(timeout), slot: None } }
    } else {
        Timeout::Tokio { inner: tokio::time::timeout(timeout, future) }
    }
}

pin_project_lite::pin_project! {
    /// See [`timeout`].
    #[project = TimeoutProj]
    #[derive(Debug)]
    pub(crate) enum Timeout<F> {
        Coarse { #[pin] inner: Coarse<F> },
        Tokio { #[pin] inner: tokio::time::Timeout<F> },
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TimeoutProj::Coarse { inner } => inner.poll(cx),
            TimeoutProj::Tokio { inner } => inner.poll(cx).map(|out| out.map_err(|_| Elapsed)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A deadline in this thread's slab.
    #[derive(Debug)]
    pub(crate) struct Coarse<F> {
        #[pin]
        future: F,
        limit: Limit,
        // The slab key and the entry's id, once waiting.
        slot: Option<(usize, u64)>,
    }

    impl<F> PinnedDrop for Coarse<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((key, id)) = *this.project().slot {
                // `try_with`: a request dropped while its thread's locals are torn down.
                let _ = DEADLINES.try_with(|d| {
                    let mut d = d.borrow_mut();
                    if d.entries.get(key).is_some_and(|e| e.id == id) {
                        d.entries.remove(key);
                    }
                });
            }
        }
    }
}

impl<F: Future> Future for Coarse<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let (limit, slot) = (*this.limit, this.slot);
        let waiting = DEADLINES.with_borrow_mut(|d| match *slot {
            None => {
                let id = d.next_id;
                d.next_id += 1;
                let deadline = match limit {
                    Limit::After(t) => {
                        When::CoarseMs(now_ms().saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)))
                    }
                    Limit::At(at) => When::At(at),
                };
                let key = d.entries.insert(Entry { id, deadline, waker: cx.waker().clone() });
                *slot = Some((key, id));
                if !d.ticking {
                    d.ticking = true;
                    tokio::spawn(tick());
                } else if let Some(ticker) = d.parked.take() {
                    ticker.wake();
                }
                true
            }
            Some((key, id)) => match d.entries.get_mut(key) {
                Some(entry) if entry.id == id => {
                    entry.waker.clone_from(cx.waker());
                    true
                }
                _ => false,
            },
        });
        if waiting { Poll::Pending } else { Poll::Ready(Err(Elapsed)) }
    }
}

/// hyper's timer for a worker's connections: this thread's slab on a current-thread runtime,
/// tokio's timer elsewhere (as [`timeout`]). hyper still boxes each sleep it asks for.
#[derive(Debug, Clone)]
pub(crate) struct WorkerTimer {
    /// `None`: the coarse slab.
    tokio: Option<TokioTimer>,
}

impl WorkerTimer {
    /// For connections served on this thread (after [`use_on_this_thread`]).
    pub(crate) fn for_this_thread() -> WorkerTimer {
        WorkerTimer { tokio: (!COARSE.get()).then(TokioTimer::new) }
    }
}

impl hyper::rt::Timer for WorkerTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        match &self.tokio {
            Some(tokio) => tokio.sleep(duration),
            None => Box::pin(Sleep {
                inner: Coarse { future: std::future::pending(), limit: Limit::After(duration), slot: None },
            }),
        }
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        match &self.tokio {
            Some(tokio) => tokio.sleep_until(deadline),
            None => Box::pin(Sleep {
                inner: Coarse { future: std::future::pending(), limit: Limit::At(deadline), slot: None },
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// A hyper sleep on this thread's slab.
    #[derive(Debug)]
    struct Sleep {
        #[pin]
        inner: Coarse<std::future::Pending<()>>,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for Sleep {}

/// The thread's ticker: every tick while deadlines are pending, wakes those that passed; parks
/// while none are. Ends with its runtime (the guard lets the next runtime on this thread start one).
async fn tick() {
    struct Ticking;
    impl Drop for Ticking {
        fn drop(&mut self) {
            let _ = DEADLINES.try_with(|d| {
                let mut d = d.borrow_mut();
                d.ticking = false;
                d.parked = None;
            });
        }
    }
    let _ticking = Ticking;
    loop {
        std::future::poll_fn(|cx| {
            DEADLINES.with_borrow_mut(|d| {
                if d.entries.is_empty() {
                    d.parked = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
        })
        .await;
        tokio::time::sleep(TICK).await;
        let (now_ms, now) = (now_ms(), Instant::now());
        DEADLINES.with_borrow_mut(|d| {
            d.entries.retain(|_, entry| {
                let due = match entry.deadline {
                    When::CoarseMs(ms) => ms <= now_ms,
                    When::At(at) => at <= now,
                };
                if !due {
                    return true;
                }
                entry.waker.wake_by_ref();
                false
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn coarse() {
        use_on_this_thread();
        assert!(COARSE.get(), "#[tokio::test] is a current-thread runtime");
    }

    fn pending_entries() -> usize {
        DEADLINES.with_borrow(|d| d.entries.len())
    }

    #[tokio::test]
    async fn a_request_that_never_answers_times_out_after_its_timeout() {
        coarse();
        let started = Instant::now();
        let out = timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
        assert!(out.is_err());
        // The coarse clock may lag the precise one by a tick of the kernel's (≤ 10 ms).
        assert!(started.elapsed() >= Duration::from_millis(40), "fired after {:?}", started.elapsed());
        assert_eq!(pending_entries(), 0);
    }

    #[tokio::test]
    async fn an_answer_in_time_is_returned_and_leaves_no_deadline_behind() {
        coarse();
        let answer = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        };
        assert_eq!(timeout(Duration::from_secs(5), answer).await.ok(), Some(7));
        assert_eq!(pending_entries(), 0);
        // Ready at once: nothing is registered at all.
        let ids = DEADLINES.with_borrow(|d| d.next_id);
        assert_eq!(timeout(Duration::from_secs(5), async { 8 }).await.ok(), Some(8));
        assert_eq!(DEADLINES.with_borrow(|d| d.next_id), ids);
    }

    #[tokio::test]
    async fn abandoned_requests_remove_their_deadlines_and_the_ticker_parks() {
        coarse();
        let mut waiting: Vec<_> =
            (0..100).map(|_| Box::pin(timeout(Duration::from_secs(60), std::future::pending::<()>()))).collect();
        let mut cx = Context::from_waker(Waker::noop());
        for w in &mut waiting {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(pending_entries(), 100);
        waiting.truncate(40);
        assert_eq!(pending_entries(), 40);
        drop(waiting);
        assert_eq!(pending_entries(), 0);
        // The ticker parks at its next tick (bounded: a loaded machine may delay the tick).
        let parked = || DEADLINES.with_borrow(|d| d.ticking && d.parked.is_some());
        for _ in 0..500 {
            if parked() {
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        assert!(parked(), "the ticker parks while nothing waits");
        // A new deadline wakes it, and it fires.
        assert!(timeout(Duration::from_millis(20), std::future::pending::<()>()).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_multi_thread_runtime_the_timeout_is_tokios() {
        use_on_this_thread();
        let out = timeout(Duration::from_millis(20), std::future::pending::<()>());
        assert!(matches!(out, Timeout::Tokio { .. }));
        assert!(out.await.is_err());
        assert_eq!(pending_entries(), 0);
    }

    #[tokio::test]
    async fn hypers_sleeps_wait_on_the_slab_until_their_instant() {
        use hyper::rt::Timer as _;
        coarse();
        let timer = WorkerTimer::for_this_thread();
        assert!(timer.tokio.is_none());
        let started = Instant::now();
        let mut sleep = timer.sleep_until(started + Duration::from_millis(30));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert_eq!(pending_entries(), 1);
        sleep.await;
        assert!(started.elapsed() >= Duration::from_millis(30), "woke after {:?}", started.elapsed());
        assert_eq!(pending_entries(), 0);
        timer.sleep(Duration::from_millis(10)).await;
        // Dropped before its time, a sleep leaves nothing behind.
        let mut early = timer.sleep(Duration::from_secs(60));
        assert!(early.as_mut().poll(&mut cx).is_pending());
        drop(early);
        assert_eq!(pending_entries(), 0);
    }
}
