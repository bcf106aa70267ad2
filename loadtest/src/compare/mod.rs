//! `compare`: the upstream direct, through Rampart, through nginx and through HAProxy, in one
//! invocation and interleaved: every round runs every phase (closed-loop saturation, then each
//! open-loop rate) against every target in turn, so a change in the machine's background load
//! hits all targets alike. The load generator (this process) is pinned to one CPU, the proxies
//! and the upstream to the other; every proxy runs one thread. `--tls`: the proxies terminate TLS
//! on their listener with one generated certificate (the upstream leg stays plaintext).

mod report;
mod targets;
pub(crate) mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::Uri;
use tokio_util::sync::CancellationToken;

use crate::load::{self, HeaderTemplate, Pace, Plan, Protocol, Trust};
use crate::procfs;
use crate::procs::{self, Proc};

use self::report::{Machine, Phase, Report, Run};
use self::targets::{Server, UpstreamKind};
use self::tls::TlsSetup;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TargetKind {
    Direct,
    Rampart,
    Nginx,
    Haproxy,
}

impl TargetKind {
    pub(crate) fn from_name(name: &str) -> Option<TargetKind> {
        [TargetKind::Direct, TargetKind::Rampart, TargetKind::Nginx, TargetKind::Haproxy]
            .into_iter()
            .find(|t| t.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Rampart => "rampart",
            TargetKind::Nginx => "nginx",
            TargetKind::Haproxy => "haproxy",
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The `rampart` binary (default: next to this one, i.e. target/release/rampart).
    #[arg(long)]
    rampart: Option<PathBuf>,
    /// Which targets, in this order within a round.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "direct,rampart,nginx,haproxy")]
    targets: Vec<TargetKind>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured time of each run.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured lead-in of each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Open-loop rates (req/s), each a phase of every round.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<f64>,
    /// Connections of the closed-loop (saturation) phase.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Connections of the open-loop phases.
    #[arg(long, default_value_t = 32)]
    open_connections: usize,
    /// The upstream: nginx `return 200` (default when nginx is installed) or this tool's hyper server.
    #[arg(long, value_enum)]
    upstream: Option<UpstreamKind>,
    #[command(flatten)]
    layout: procs::Layout,
    /// Output path without extension; `.json` and `.md` are written
    /// (default benches/compare/results-<date>, `-tls` appended with `--tls`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// TLS on every proxy's listener, one generated self-signed certificate for all (the load
    /// generator trusts it; one full handshake per connection); `direct` stays plaintext, as does
    /// the upstream leg.
    #[arg(long)]
    tls: bool,
    /// Workers of every proxy: Rampart's `workers`, nginx's `worker_processes` (with its master
    /// process when more than one), HAProxy's `nbthread`. The upstream stays one process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
}

/// A target under test: where the load goes, and the processes whose CPU is its cost.
#[derive(Debug)]
struct UnderTest {
    kind: TargetKind,
    url: Uri,
    /// The proxy (none for `direct`).
    proxy: Option<Server>,
}

fn cpu_of(proc: &Proc) -> Duration {
    procfs::sample_tree(proc.pid()).map_or(Duration::ZERO, |s| s.cpu)
}

fn peak_rss(proc: &Proc) -> u64 {
    procfs::sample_tree(proc.pid()).map_or(0, |s| s.peak_rss)
}

/// Checks that the upstream, reached through `url` (TLS for `https://`, trusting `trust`),
/// received the 10 flag headers.
async fn check_injection(url: &Uri, trust: Option<&Trust>) -> anyhow::Result<()> {
    let scheme = url.scheme_str().unwrap_or("http");
    let uri: Uri = format!("{scheme}://{}/headers", url.authority().context("no authority")?).parse()?;
    let target = load::target_with(&uri, Protocol::Http1, trust).await?;
    let (status, body) = load::fetch(&target, &[("x-user-id", "u-123")]).await.with_context(|| format!("GET {uri}"))?;
    let seen = body.split_whitespace().filter(|kv| kv.split_once('=').is_some_and(|(_, v)| !v.is_empty())).count();
    anyhow::ensure!(status == 200 && seen == targets::FLAGS, "{uri}: the upstream saw {seen} flag headers: {body:?}");
    Ok(())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.rounds > 0 && args.rounds <= 20, "--rounds: 1..=20");
    anyhow::ensure!(args.duration + args.warmup <= Duration::from_secs(120), "a run is bounded to 2 minutes");
    anyhow::ensure!(args.targets.contains(&TargetKind::Direct), "--targets must include direct (the baseline)");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && procs::available("taskset");
    if !pinned {
        eprintln!("notice: {cores} CPU(s) or no taskset: running unpinned; figures are not comparable to a pinned run");
    }
    let server_cpu = pinned.then_some(args.layout.server_cpu.as_str());
    if let Some(cpu) = pinned.then_some(args.layout.loadgen_cpu.as_str()) {
        procs::pin(std::process::id(), cpu).context("pinning the load generator")?;
    }
    let rampart = match &args.rampart {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("rampart"),
    };
    anyhow::ensure!(
        rampart.exists(),
        "no rampart binary at {} (cargo build --release, or --rampart)",
        rampart.display()
    );

    let nginx_here = procs::available("nginx");
    let upstream_kind = match args.upstream {
        Some(UpstreamKind::Nginx) if !nginx_here => {
            eprintln!("notice: nginx is not installed: the upstream is this tool's hyper server");
            UpstreamKind::Hyper
        }
        Some(k) => k,
        None if nginx_here => UpstreamKind::Nginx,
        None => UpstreamKind::Hyper,
    };

    let dir = tempfile::Builder::new().prefix("rampart-compare.").tempdir()?;
    let cert = if args.tls { Some(tls::generate(dir.path())?) } else { None };
    let trust = cert.as_ref().map(|c| Trust::Ca(c.cert.clone()));
    let nginx_http2_on = cert.is_some() && nginx_here && tls::nginx_has_http2_on(&targets::version_of("nginx", "-v"));
    let mut listeners = Vec::new();
    let server_cpu_or_all = server_cpu.unwrap_or("0-1023");
    let upstream = targets::upstream(upstream_kind, dir.path(), server_cpu_or_all).await?;
    let mut under_test = Vec::new();
    let mut skipped = Vec::new();
    for &kind in &args.targets {
        let proxy = match kind {
            TargetKind::Direct => None,
            TargetKind::Rampart => {
                listeners.push("rampart: `[tls] cert/key` (rustls, ring; ALPN h2, http/1.1)".to_owned());
                Some(
                    targets::rampart(
                        &rampart,
                        upstream.addr,
                        dir.path(),
                        server_cpu_or_all,
                        cert.as_ref(),
                        args.workers,
                    )
                    .await?,
                )
            }
            TargetKind::Nginx if !nginx_here => {
                eprintln!("notice: nginx is not installed (apt-get install nginx-light): skipping it");
                skipped.push(kind);
                continue;
            }
            TargetKind::Nginx => {
                listeners.push(format!(
                    "nginx: `listen … ssl; ssl_certificate …; ssl_protocols TLSv1.3 TLSv1.2;` (OpenSSL){}",
                    if nginx_http2_on {
                        "; `http2 on;`"
                    } else {
                        "; no `http2 on;` (this nginx predates 1.25.1: ALPN offers http/1.1 only — the load is HTTP/1.1 anyway)"
                    }
                ));
                Some(
                    targets::nginx(
                        upstream.addr,
                        dir.path(),
                        server_cpu_or_all,
                        cert.as_ref(),
                        nginx_http2_on,
                        args.workers,
                    )
                    .await?,
                )
            }
            TargetKind::Haproxy if !procs::available("haproxy") => {
                eprintln!("notice: haproxy is not installed (apt-get install haproxy): skipping it");
                skipped.push(kind);
                continue;
            }
            TargetKind::Haproxy => {
                listeners.push(
                    "haproxy: `bind … ssl crt <certificate + key PEM> alpn h2,http/1.1 ssl-min-ver TLSv1.2` (OpenSSL)"
                        .to_owned(),
                );
                Some(targets::haproxy(upstream.addr, dir.path(), server_cpu_or_all, cert.as_ref(), args.workers).await?)
            }
        };
        let addr = proxy.as_ref().map_or(upstream.addr, |p| p.addr);
        // The proxies' listeners speak TLS with --tls; the upstream (direct) never does.
        let scheme = if cert.is_some() && proxy.is_some() { "https" } else { "http" };
        let url: Uri = format!("{scheme}://{addr}/").parse()?;
        if proxy.is_some() {
            check_injection(&url, trust.as_ref())
                .await
                .with_context(|| format!("{} does not inject the flags", kind.name()))?;
        }
        under_test.push(UnderTest { kind, url, proxy });
    }

    let mut machine = Machine::here(&rampart, &upstream, &under_test, upstream_kind, pinned, cores, &args);
    machine.tls = cert.as_ref().map(|c| TlsSetup {
        certificate: c.describe.clone(),
        listeners: listeners.clone(),
        negotiated: Default::default(),
        handshakes_per_run: Default::default(),
    });
    eprintln!("load average before: {}", machine.loadavg_before);
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });

    let mut phases = vec![Phase::Closed];
    phases.extend(args.rates.iter().map(|&r| Phase::Open(r)));
    let user = HeaderTemplate::parse("x-user-id: u-{random}")?;
    let plan_for = async |t: &UnderTest, phase: Phase, duration: Duration, warmup: Duration| -> anyhow::Result<Plan> {
        let (pace, connections) = match phase {
            Phase::Closed => (Pace::Closed, args.connections),
            Phase::Open(rate) => (Pace::Open { rate }, args.open_connections),
        };
        Plan {
            connections,
            duration,
            warmup,
            headers: vec![user.clone()],
            ..Plan::new(vec![load::target_with(&t.url, Protocol::Http1, trust.as_ref()).await?], pace)
        }
        .validate()
    };

    // Warm every path up once (connection pools, page cache, CPU frequency).
    for t in &under_test {
        let plan = plan_for(t, Phase::Closed, Duration::from_secs(2), Duration::ZERO).await?;
        load::execute(Arc::new(plan), cancel.clone()).await?;
    }

    let mut runs = Vec::new();
    'rounds: for round in 1..=args.rounds {
        for &phase in &phases {
            for t in &under_test {
                if cancel.is_cancelled() {
                    break 'rounds;
                }
                let plan = plan_for(t, phase, args.duration, args.warmup).await?;
                let proxy_before = t.proxy.as_ref().map(|p| cpu_of(&p.proc));
                let up_before = cpu_of(&upstream.proc);
                let me_before = procfs::sample(std::process::id()).map_or(Duration::ZERO, |s| s.cpu);
                let summary = load::execute(Arc::new(plan), cancel.clone()).await?;
                let up = cpu_of(&upstream.proc).saturating_sub(up_before);
                let me = procfs::sample(std::process::id()).map_or(Duration::ZERO, |s| s.cpu).saturating_sub(me_before);
                let proxy = t.proxy.as_ref().zip(proxy_before).map(|(p, b)| cpu_of(&p.proc).saturating_sub(b));
                let run = Run::new(round, t.kind, phase, summary, proxy, up, me, args.warmup + args.duration);
                eprintln!("{}", run.line());
                runs.push(run);
            }
        }
    }
    signal.abort();

    let mut rss = vec![(TargetKind::Direct, peak_rss(&upstream.proc))];
    rss.extend(under_test.iter().filter_map(|t| t.proxy.as_ref().map(|p| (t.kind, peak_rss(&p.proc)))));
    let upstream_rss = peak_rss(&upstream.proc);
    let report = Report::new(machine, runs, rss, upstream_rss, skipped);
    // Stop every process (by PID) before writing: nothing is left running on an error below.
    drop(under_test);
    drop(upstream);

    let suffix = if args.tls { "-tls" } else { "" };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("benches/compare/results-{}{suffix}", report.machine.date)));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let (json_path, md_path) = (out.with_extension("json"), out.with_extension("md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let md = report.markdown();
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    eprintln!("written: {} and {}", json_path.display(), md_path.display());
    Ok(if cancel.is_cancelled() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
