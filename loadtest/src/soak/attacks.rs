//! The attack traffic of a soak, from another loopback address (127.0.0.2) than the normal
//! traffic: silent connections, slowloris heads, an h2c preface then silence, header tricks
//! (underscores, `Connection:` naming Host or a flag header, `Upgrade: h2c`, duplicate Host,
//! absolute-form targets, a client-chosen variant), malformed chunked bodies, clients that stop
//! reading a 4 MiB response, and hostile swaps of the flags file. Every loop is paced and capped
//! in concurrency; every connection has a time limit of ours after which it counts as held.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where attack connections come from: another address than the normal traffic's 127.0.0.1.
const ATTACKER: [u8; 4] = [127, 0, 0, 2];

/// One kind of attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Silent,
    Slowloris,
    H2cQuiet,
    HeaderTricks,
    BadChunked,
    NoRead,
    FlagSwaps,
}

impl Kind {
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Silent,
        Kind::Slowloris,
        Kind::H2cQuiet,
        Kind::HeaderTricks,
        Kind::BadChunked,
        Kind::NoRead,
        Kind::FlagSwaps,
    ];

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Silent => "TCP connections that send nothing",
            Kind::Slowloris => "request head, one header line every 2 s (slowloris)",
            Kind::H2cQuiet => "h2c preface and SETTINGS, then silence (PINGs unanswered)",
            Kind::HeaderTricks => {
                "x_flag_ underscores, Connection: x-flag-…/host, Upgrade: h2c, duplicate Host, absolute-form, x-flag-* from the client"
            }
            Kind::BadChunked => "malformed chunked bodies (bad size, overflow, short chunk, CL+TE, stalled chunk)",
            Kind::NoRead => "GET of a 4 MiB response, never read",
            Kind::FlagSwaps => {
                "flags file swapped for a 100 000-deep YAML, a FIFO, a /dev/zero symlink, a 17 MiB file, 10 001 flags (good file in between)"
            }
        }
    }
}

/// Paces and limits of each attack.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Pace {
    /// New connections (or swaps) per second.
    pub(crate) per_second: f64,
    /// Connections of this attack open at once at most (new ones wait).
    pub(crate) max_open: usize,
    /// How long we keep a connection before counting it as held.
    #[serde(with = "humantime_serde")]
    pub(crate) hold: Duration,
}

/// Every attack's pace.
pub(crate) fn paces(swap_every: Duration) -> Vec<(Kind, Pace)> {
    let p = |per_second, max_open, hold_s| Pace { per_second, max_open, hold: Duration::from_secs(hold_s) };
    vec![
        (Kind::Silent, p(50.0, 1500, 30)),
        (Kind::Slowloris, p(10.0, 300, 60)),
        (Kind::H2cQuiet, p(5.0, 300, 120)),
        (Kind::HeaderTricks, p(30.0, 100, 5)),
        (Kind::BadChunked, p(10.0, 200, 90)),
        (Kind::NoRead, p(2.0, 200, 120)),
        (Kind::FlagSwaps, Pace { per_second: 1.0 / swap_every.as_secs_f64(), max_open: 1, hold: swap_every }),
    ]
}

/// What one attack did so far.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    started: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    answered_4xx: AtomicU64,
    answered_other: AtomicU64,
    held: AtomicU64,
    leaks: AtomicU64,
    close_ms_max: AtomicU64,
    close_ms_sum: AtomicU64,
}

/// A copy of a [`Tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub(crate) struct Counts {
    /// Connections opened (swaps made, for the flags file).
    pub(crate) started: u64,
    /// Connections the proxy did not accept (connect failed or timed out).
    pub(crate) refused: u64,
    /// Connections the proxy closed without an answer.
    pub(crate) closed: u64,
    /// Answered with a 4xx (a refusal).
    pub(crate) answered_4xx: u64,
    /// Answered with anything else (for header tricks: served, cleaned).
    pub(crate) answered_other: u64,
    /// Still open when our own limit ran out: the proxy held them.
    pub(crate) held: u64,
    /// A trick that got through (the upstream saw it, a 101, a 2xx for a duplicate Host).
    pub(crate) leaks: u64,
    /// Longest time until the proxy closed a connection, ms.
    pub(crate) close_ms_max: u64,
    /// Mean of those times, ms.
    pub(crate) close_ms_mean: f64,
}

impl Tally {
    pub(crate) fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let closed = get(&self.closed);
        Counts {
            started: get(&self.started),
            refused: get(&self.refused),
            closed,
            answered_4xx: get(&self.answered_4xx),
            answered_other: get(&self.answered_other),
            held: get(&self.held),
            leaks: get(&self.leaks),
            close_ms_max: get(&self.close_ms_max),
            close_ms_mean: if closed == 0 { 0.0 } else { get(&self.close_ms_sum) as f64 / closed as f64 },
        }
    }

    fn add(field: &AtomicU64) {
        field.fetch_add(1, Ordering::Relaxed);
    }

    fn closed_after(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Tally::add(&self.closed);
        self.close_ms_max.fetch_max(ms, Ordering::Relaxed);
        self.close_ms_sum.fetch_add(ms, Ordering::Relaxed);
    }

    fn answered(&self, status: u16) {
        if (400..500).contains(&status) { Tally::add(&self.answered_4xx) } else { Tally::add(&self.answered_other) }
    }
}

/// The tallies of all attacks, by kind.
#[derive(Debug, Default)]
pub(crate) struct Tallies(Vec<(Kind, Tally)>);

impl Tallies {
    pub(crate) fn new() -> Tallies {
        Tallies(Kind::ALL.iter().map(|&k| (k, Tally::default())).collect())
    }

    pub(crate) fn get(&self, kind: Kind) -> &Tally {
        let (_, t) = self.0.iter().find(|(k, _)| *k == kind).unwrap_or_else(|| unreachable!("every kind has a tally"));
        t
    }

    pub(crate) fn counts(&self) -> Vec<(Kind, Counts)> {
        self.0.iter().map(|(k, t)| (*k, t.counts())).collect()
    }
}

/// Where the attacks go.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub(crate) proxy: SocketAddr,
    pub(crate) flags: PathBuf,
    /// The good flags file, restored between hostile ones.
    pub(crate) good_flags: String,
}

async fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ATTACKER, 0)))?;
    match tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// How a connection we attack with ended.
enum End {
    /// The proxy closed it (EOF or reset) after this long, having sent these bytes first.
    Closed(Duration, Vec<u8>),
    /// Our own limit ran out first.
    Held,
}

/// Reads until the proxy closes the connection or `hold` (since `opened`) runs out; keeps the
/// first 64 KiB of what it sent. With `drip`, writes one header line every 2 s meanwhile.
async fn until_closed(stream: &mut TcpStream, opened: Instant, hold: Duration, drip: bool) -> End {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = opened + hold;
    let mut next_drip = Instant::now() + Duration::from_secs(2);
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return End::Closed(opened.elapsed(), seen),
                Ok(n) => if seen.len() < 64 * 1024 { seen.extend_from_slice(&buf[..n]) },
            },
            () = tokio::time::sleep_until(next_drip), if drip => {
                if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
                    return End::Closed(opened.elapsed(), seen);
                }
                next_drip += Duration::from_secs(2);
            }
            () = tokio::time::sleep_until(deadline) => return End::Held,
        }
    }
}

/// The status code of an HTTP/1.1 response that begins `bytes`.
fn status(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

fn record(tally: &Tally, end: End) {
    match end {
        End::Held => Tally::add(&tally.held),
        End::Closed(after, seen) => match status(&seen) {
            Some(s) => tally.answered(s),
            None => tally.closed_after(after),
        },
    }
}

/// One connection of `kind`.
async fn one(kind: Kind, n: u64, to: SocketAddr, pace: Pace, tally: Arc<Tallies>) {
    let tally = tally.get(kind);
    let opened = Instant::now();
    let Ok(mut s) = connect(to).await else {
        Tally::add(&tally.refused);
        return;
    };
    Tally::add(&tally.started);
    match kind {
        Kind::Silent => record(tally, until_closed(&mut s, opened, pace.hold, false).await),
        Kind::Slowloris => {
            let head = format!("GET /?n={n} HTTP/1.1\r\nHost: soak\r\nx-user-id: slow-{n}\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return tally.closed_after(opened.elapsed());
            }
            record(tally, until_closed(&mut s, opened, pace.hold, true).await);
        }
        Kind::H2cQuiet => {
            // The connection preface and an empty SETTINGS frame, then nothing (not even a SETTINGS ack).
            let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
            if s.write_all(&preface).await.is_err() {
                return tally.closed_after(opened.elapsed());
            }
            match until_closed(&mut s, opened, pace.hold, false).await {
                End::Held => Tally::add(&tally.held),
                End::Closed(after, _) => tally.closed_after(after),
            }
        }
        Kind::HeaderTricks => trick(&mut s, n, opened, pace.hold, tally).await,
        Kind::BadChunked => {
            let bodies: [&[u8]; 5] = [
                b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
                b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nabc\r\n0\r\n\r\n",
                b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: soak\r\n\r\n",
                b"Transfer-Encoding: chunked\r\n\r\n400\r\nab",
            ];
            let mut req = format!("POST /?n={n} HTTP/1.1\r\nHost: soak\r\nx-user-id: chunk-{n}\r\n").into_bytes();
            req.extend_from_slice(bodies[(n % 5) as usize]);
            if s.write_all(&req).await.is_err() {
                return tally.closed_after(opened.elapsed());
            }
            record(tally, until_closed(&mut s, opened, pace.hold, false).await);
        }
        Kind::NoRead => {
            let req = format!("GET /big HTTP/1.1\r\nHost: soak\r\nx-user-id: noread-{n}\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_err() {
                return tally.closed_after(opened.elapsed());
            }
            // Never read: the proxy's close is seen in the kernel's socket table (its end of the
            // connection leaves ESTABLISHED), not by reading or writing anything.
            let (Ok(local), Ok(remote)) = (s.local_addr(), s.peer_addr()) else { return };
            let deadline = opened + pace.hold;
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if Instant::now() >= deadline {
                    return Tally::add(&tally.held);
                }
                if matches!(s.take_error(), Ok(Some(_)) | Err(_)) || peer_closed(local, remote) {
                    return tally.closed_after(opened.elapsed());
                }
            }
        }
        Kind::FlagSwaps => {}
    }
}

/// Whether the peer (on this host) closed the connection `local → remote`: its own end of it in
/// `/proc/net/tcp` (local `remote`, remote `local`) is no longer `ESTABLISHED`, or gone. Our end
/// cannot tell: a FIN queued behind the unread response never reaches a client that stopped
/// reading.
fn peer_closed(local: SocketAddr, remote: SocketAddr) -> bool {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => String::new(),
    };
    let (theirs, ours) = (hex(remote), hex(local));
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let state = table.lines().find_map(|line| {
        let mut f = line.split_whitespace().skip(1);
        (f.next() == Some(theirs.as_str()) && f.next() == Some(ours.as_str())).then(|| f.next().map(str::to_owned))?
    });
    state.as_deref() != Some("01")
}

/// One header trick on its own connection; counts a leak when it got through.
async fn trick(s: &mut TcpStream, n: u64, opened: Instant, hold: Duration, tally: &Tally) {
    let (extra, target, check): (&str, &str, fn(u16, &str) -> bool) = match n % 6 {
        // Leak: the upstream saw the underscore header.
        0 => ("x_flag_banner: b\r\nx_flag_checkout: on\r\nConnection: close\r\n", "/headers", |_, b| {
            b.contains("x_flag_")
        }),
        // Leak: the injected header was removed after injection.
        1 => ("Connection: x-flag-banner, host\r\n", "/headers", |s, b| s == 200 && !b.contains("banner=a")),
        // Leak: an upgrade to h2c was honoured.
        2 => (
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
            "/headers",
            |s, _| s == 101,
        ),
        // Leak: a duplicate Host was served.
        3 => ("Host: other\r\nConnection: close\r\n", "/headers", |s, _| (200..300).contains(&s)),
        // Absolute-form: served with the flags injected, or refused; a leak if served without them.
        4 => ("Connection: close\r\n", "http://evil.example/headers", |s, b| s == 200 && !b.contains("banner=a")),
        // Leak: the client chose its own variant.
        _ => ("x-flag-banner: forced\r\nConnection: close\r\n", "/headers", |_, b| b.contains("banner=forced")),
    };
    let req = format!("GET {target} HTTP/1.1\r\nHost: soak\r\nx-user-id: trick-{n}\r\n{extra}\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return tally.closed_after(opened.elapsed());
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = opened + hold;
    loop {
        let read = tokio::time::timeout_at(deadline, s.read(&mut buf)).await;
        match read {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                if complete(&seen) {
                    break;
                }
            }
            Err(_) if seen.is_empty() => return Tally::add(&tally.held),
            Err(_) => break,
        }
    }
    match status(&seen) {
        Some(code) => {
            tally.answered(code);
            if check(code, &String::from_utf8_lossy(&seen)) {
                Tally::add(&tally.leaks);
            }
        }
        None => tally.closed_after(opened.elapsed()),
    }
}

/// Whether `bytes` hold a whole response: the head, and the body its `content-length` announces
/// (a 101 or a head without a length is whole at the head).
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
    length.is_none_or(|len| bytes.len() >= end + 4 + len)
}

/// Runs every attack until `cancel` or `until`.
pub(crate) async fn run(
    targets: Targets,
    paces: Vec<(Kind, Pace)>,
    tallies: Arc<Tallies>,
    until: Instant,
    cancel: CancellationToken,
) {
    let mut loops = JoinSet::new();
    for (kind, pace) in paces {
        let (targets, tallies, cancel) = (targets.clone(), tallies.clone(), cancel.clone());
        loops.spawn(async move {
            if kind == Kind::FlagSwaps {
                swaps(&targets, pace, &tallies, until, &cancel).await;
            } else {
                connections(kind, targets.proxy, pace, tallies, until, &cancel).await;
            }
        });
    }
    while loops.join_next().await.is_some() {}
}

/// Opens connections of `kind` at its pace, at most `max_open` at once, until `until`; then
/// lets the open ones end (each has its own limit) unless cancelled.
async fn connections(
    kind: Kind,
    to: SocketAddr,
    pace: Pace,
    tallies: Arc<Tallies>,
    until: Instant,
    cancel: &CancellationToken,
) {
    let mut open = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / pace.per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep_until(until) => break,
            _ = tick.tick() => {
                while open.try_join_next().is_some() {}
                if open.len() < pace.max_open {
                    n += 1;
                    open.spawn(one(kind, n, to, pace, tallies.clone()));
                }
            }
        }
    }
    // What is still open when the run ends is neither closed nor held to our limit: not counted.
    open.abort_all();
    while open.join_next().await.is_some() {}
}

/// The hostile flags files, made once.
struct Hostile {
    deep: String,
    huge: String,
    many: String,
}

fn hostile(good: &str) -> Hostile {
    let deep = format!("{good}    targeting: {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!("{good}# {}\n", "x".repeat(17 << 20));
    let mut many = String::from("flags:\n");
    for i in 0..10_001 {
        many.push_str(&format!("  f{i}: {{ state: ENABLED, variants: {{ a: 1 }}, defaultVariant: a }}\n"));
    }
    Hostile { deep, huge, many }
}

/// Replaces `path` by what `make` puts at a temporary path next to it (then a rename, as tools do).
fn swap(path: &Path, make: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let tmp = path.with_extension("swap");
    let _ = std::fs::remove_file(&tmp);
    make(&tmp)?;
    std::fs::rename(&tmp, path)
}

/// Every `1 / per_second`: the next hostile file, then the good one, in turn.
async fn swaps(targets: &Targets, pace: Pace, tallies: &Tallies, until: Instant, cancel: &CancellationToken) {
    let tally = tallies.get(Kind::FlagSwaps);
    let files = hostile(&targets.good_flags);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / pace.per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut step = 0usize;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep_until(until) => break,
            _ = tick.tick() => {}
        }
        let path = &targets.flags;
        let made = match step % 10 {
            0 => swap(path, |t| std::fs::write(t, &files.deep)),
            2 => swap(path, |t| {
                let ok = std::process::Command::new("mkfifo").arg(t).status()?.success();
                if ok { Ok(()) } else { Err(std::io::Error::other("mkfifo failed")) }
            }),
            4 => swap(path, |t| std::os::unix::fs::symlink("/dev/zero", t)),
            6 => swap(path, |t| std::fs::write(t, &files.huge)),
            8 => swap(path, |t| std::fs::write(t, &files.many)),
            _ => swap(path, |t| std::fs::write(t, &targets.good_flags)),
        };
        if step.is_multiple_of(2) {
            match made {
                Ok(()) => Tally::add(&tally.started),
                Err(e) => {
                    eprintln!("warning: flags swap {step}: {e}");
                    Tally::add(&tally.refused);
                }
            }
        }
        step += 1;
    }
    // Leave the good file in place.
    if let Err(e) = swap(&targets.flags, |t| std::fs::write(t, &targets.good_flags)) {
        eprintln!("warning: cannot restore the good flags file: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_statuses_and_whole_responses() {
        assert_eq!(status(b"HTTP/1.1 400 Bad Request\r\n"), Some(400));
        assert_eq!(status(b"HTTP/1.0 101 Switching\r\n"), Some(101));
        assert_eq!(status(b"garbage"), None);
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"));
        assert!(complete(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"));
    }

    #[test]
    fn sees_a_closed_peer_in_the_socket_table() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert!(!peer_closed(local, remote));
        drop(server);
        // Polled (at most 1 s): the table is read while other tests open and close sockets.
        let closed = (0..50).any(|_| {
            let seen = peer_closed(local, remote);
            if !seen {
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        assert!(closed, "{local} → {remote}");
    }

    #[test]
    fn every_attack_has_a_pace_and_a_tally() {
        let paces = paces(Duration::from_secs(3));
        assert_eq!(paces.len(), Kind::ALL.len());
        let tallies = Tallies::new();
        for (kind, pace) in paces {
            assert!(pace.per_second > 0.0 && pace.max_open > 0 && !pace.hold.is_zero());
            assert_eq!(tallies.get(kind).counts(), Counts::default());
        }
    }
}
