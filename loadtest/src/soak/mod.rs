//! `soak`: a release `rampart proxy` (its defaults, one worker) in front of this tool's upstream,
//! normal traffic at a fixed open-loop rate from 127.0.0.1 while every attack of issue 14 runs at
//! once from 127.0.0.2 (see [`attacks`]); every interval it prints and records the normal
//! traffic's latency (HdrHistogram, from the intended start) and the proxy's RSS, descriptors and
//! CPU, then writes JSON and markdown naming the commit measured. Loopback only; every loop is
//! bounded in count and time; both processes are stopped by PID.

mod attacks;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::attacks::{Tallies, Targets};
use self::report::{AttackLine, Report, Row};
use crate::load::{self, HeaderTemplate, Pace, Plan, Protocol};
use crate::procfs;
use crate::procs::{self, Proc};

/// The longest soak.
const MAX_DURATION: Duration = Duration::from_secs(3600);
const READY: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The `rampart` binary (default: next to this one, i.e. target/release/rampart).
    #[arg(long)]
    rampart: Option<PathBuf>,
    /// How long the attacks run (after a quiet baseline interval).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// One row per interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Normal traffic, requests per second (open loop).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Connections of the normal traffic.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// A hostile flags file (or the good one back) this often.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    swap_every: Duration,
    /// Output path without extension; `.json` and `.md` are written.
    #[arg(long, default_value = "loadtest/results/soak")]
    out: PathBuf,
    /// No attacks: the normal traffic alone for `--duration`, for the proxy's memory and latency
    /// over a plain soak.
    #[arg(long)]
    no_attacks: bool,
}

/// The good flags file: a static flag whose header every request must carry, and ramps.
const GOOD_FLAGS: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { a: 1, b: 2 }\n    defaultVariant: a\n  \
checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    defaultVariant: \"off\"\n    \
ramp: { treatment: \"on\", percent: 50 }\n  search:\n    state: ENABLED\n    variants: { v1: 1, v2: 2 }\n    \
defaultVariant: v1\n    ramp: { treatment: v2, percent: 5 }\n";

fn proxy_config(upstream: std::net::SocketAddr) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\nflags = \"flags.yaml\"\n\n\
         [context]\ntargetingKey = [\"header:x-user-id\"]\n\n[queries]\ngrpc = \"off\"\nofrep = \"off\"\n"
    )
}

fn git_describe() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, kernel {}", kernel.trim())
}

/// The upstream (this tool, `upstream` mode) and the proxy, as processes of their own.
async fn start(
    dir: &Path,
    rampart: &Path,
    config: &mut String,
) -> anyhow::Result<(Proc, Proc, std::net::SocketAddr, std::net::SocketAddr)> {
    let up_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let me = std::env::current_exe().context("current_exe")?;
    let lifetime = "2h";
    let listen = up_addr.to_string();
    let mut upstream =
        Proc::start("upstream", &me, &["upstream", "--listen", &listen, "--max-lifetime", lifetime], None, dir, &[])?;
    upstream.wait_for_port(up_addr, READY).await?;
    std::fs::write(dir.join("flags.yaml"), GOOD_FLAGS)?;
    *config = proxy_config(up_addr);
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config.as_str())?;
    let path = path.display().to_string();
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
    let mut proxy = Proc::start("rampart", rampart, &["proxy", "--config", &path], None, dir, &env)?;
    let line = proxy.wait_for_log("rampart proxy serving", READY).await?;
    let addrs = procs::addrs(&line);
    let listen = procs::addr(&addrs, "listen").context("no listen address in the proxy's log")?;
    let admin = procs::addr(&addrs, "admin").context("no admin address in the proxy's log")?;
    Ok((upstream, proxy, listen, admin))
}

/// One interval of normal traffic, then the proxy's figures.
async fn interval(
    target: &load::Target,
    args: &Args,
    cancel: &CancellationToken,
) -> (Option<load::Summary>, Option<String>, bool) {
    let plan = Plan {
        connections: args.connections,
        duration: args.interval,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(5),
        headers: vec![
            HeaderTemplate::parse("x-user-id: u-{random}").unwrap_or_else(|_| unreachable!("a valid header")),
        ],
        ..Plan::new(vec![target.clone()], Pace::Open { rate: args.rate })
    };
    let result = match plan.validate() {
        Ok(plan) => load::execute(Arc::new(plan), cancel.clone()).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut probe = target.clone();
    probe.uri = "/headers".parse().unwrap_or_else(|_| unreachable!("a valid path"));
    let live =
        matches!(load::fetch(&probe, &[("x-user-id", "probe")]).await, Ok((200, body)) if body.contains("banner=a"));
    match result {
        Ok(s) => (Some(s), None, live),
        Err(e) => (None, Some(e), live),
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.duration.is_zero() && args.duration <= MAX_DURATION, "--duration: 0 < d ≤ 1h");
    anyhow::ensure!(
        args.interval >= Duration::from_secs(1) && args.interval <= args.duration,
        "--interval: 1s ≤ i ≤ --duration"
    );
    anyhow::ensure!(args.swap_every >= Duration::from_millis(500), "--swap-every: at least 500ms");
    let rampart = match &args.rampart {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("rampart"),
    };
    anyhow::ensure!(rampart.exists(), "{} not found (cargo build --release -p rampart)", rampart.display());
    let dir = tempfile::tempdir()?;
    let (started_utc, commit, loadavg_before) = (
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        git_describe(),
        procfs::loadavg(),
    );
    let mut config = String::new();
    let (mut upstream, mut proxy, listen, admin) = start(dir.path(), &rampart, &mut config).await?;
    let rampart_version = std::process::Command::new(&rampart)
        .arg("--version")
        .output()
        .map_or_else(|_| "?".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let target = load::target(&format!("http://{listen}/").parse()?, Protocol::Http1).await?;

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });

    let mut rows = Vec::new();
    let mut cpu_before = procfs::sample(proxy.pid()).map_or(Duration::ZERO, |s| s.cpu);
    let mut sample = |attacked: bool,
                      t_s: f64,
                      normal: Option<load::Summary>,
                      error: Option<String>,
                      live: bool,
                      proxy: &Proc| {
        let pid = proxy.pid();
        let s = procfs::sample(pid).ok();
        let cpu = s.map_or(cpu_before, |s| s.cpu);
        let row = Row {
            t_s,
            attacked,
            normal: normal.unwrap_or_default(),
            error,
            rss_bytes: procfs::rss(pid).unwrap_or(0),
            peak_rss_bytes: s.map_or(0, |s| s.peak_rss),
            open_fds: procfs::open_fds(pid).unwrap_or(0),
            cpu_percent: cpu.saturating_sub(cpu_before).as_secs_f64() / args.interval.as_secs_f64() * 100.0,
            flags_live: live,
        };
        cpu_before = cpu;
        println!(
            "{:>8} {:>6.0} req/s  p50 {:>6} µs  p99 {:>7} µs  max {:>8} µs  errors {:>4}  RSS {:>6.1} MiB  fds {:>5}  CPU {:>3.0}%  flags {}{}",
            if attacked { format!("t={t_s:.0}s") } else { "baseline".to_owned() },
            row.normal.rps,
            row.normal.p50_us,
            row.normal.p99_us,
            row.normal.max_us,
            row.normal.errors(),
            row.rss_bytes as f64 / 1048576.0,
            row.open_fds,
            row.cpu_percent,
            if live { "live" } else { "NOT LIVE" },
            row.error.as_deref().map_or(String::new(), |e| format!("  ({e})")),
        );
        row
    };

    // A quiet baseline interval, then the attacks start and run for `duration`.
    let (normal, error, live) = interval(&target, &args, &cancel).await;
    rows.push(sample(false, 0.0, normal, error, live, &proxy));

    let tallies = Arc::new(Tallies::new());
    let paces = attacks::paces(args.swap_every);
    let attack_start = Instant::now();
    let until = attack_start + args.duration;
    let targets = Targets { proxy: listen, flags: dir.path().join("flags.yaml"), good_flags: GOOD_FLAGS.to_owned() };
    let attack_thread = if args.no_attacks {
        None
    } else {
        let (tallies, cancel, paces) = (tallies.clone(), cancel.clone(), paces.clone());
        let until = until.into_std();
        Some(std::thread::Builder::new().name("attacks".to_owned()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match rt {
                Ok(rt) => rt.block_on(attacks::run(targets, paces, tallies, Instant::from_std(until), cancel)),
                Err(e) => eprintln!("error: cannot start the attack runtime: {e}"),
            }
        })?)
    };
    while Instant::now() + args.interval <= until + Duration::from_millis(500) && !cancel.is_cancelled() {
        let (normal, error, live) = interval(&target, &args, &cancel).await;
        let t = attack_start.elapsed().as_secs_f64();
        rows.push(sample(true, t, normal, error, live, &proxy));
    }
    cancel.cancel();
    if let Some(thread) = attack_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    signal.abort();

    let metrics = match crate::prometheus::scrape(&format!("http://{admin}/metrics").parse()?).await {
        Ok(text) => text.lines().find_map(|l| {
            l.strip_prefix("rampart_config_reload_failures_total ").and_then(|v| v.trim().parse::<f64>().ok())
        }),
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    };
    let alive = procfs::sample(proxy.pid()).is_ok() && load::fetch(&target, &[]).await.is_ok_and(|(s, _)| s == 200);
    let report = Report {
        mode: "soak",
        commit,
        rampart_version,
        started_utc,
        machine: machine(),
        loadavg_before,
        loadavg_after: procfs::loadavg(),
        rate: args.rate,
        connections: args.connections,
        interval_s: args.interval.as_secs_f64(),
        duration_s: attack_start.elapsed().as_secs_f64(),
        proxy_config: config,
        attacks_run: !args.no_attacks,
        attacks: paces
            .into_iter()
            .filter(|_| !args.no_attacks)
            .zip(tallies.counts())
            .map(|((kind, pace), (_, counts))| AttackLine { kind, what: kind.describe(), pace, counts })
            .collect(),
        rows,
        reload_failures: metrics,
        proxy_alive_at_end: alive,
    };
    proxy.stop(Duration::from_secs(3));
    upstream.stop(Duration::from_secs(3));
    report.write(&args.out)?;
    println!("{}", report.summary());
    println!("wrote {0}.json and {0}.md", args.out.display());
    Ok(if alive { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
