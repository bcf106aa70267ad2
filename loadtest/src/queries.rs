//! `queries`: the sidecar's flag-query path per core. A release `rampart proxy` (one worker,
//! pinned to one CPU) answers `flagd.evaluation.v2.Service/ResolveBoolean` over one HTTP/2
//! connection and OFREP single evaluations over HTTP/1.1 keep-alive connections, from this
//! process pinned to the other CPU, closed loop with a fixed number of calls in flight and a
//! random `targetingKey` per call (a 50% ramp, so every call is bucketed); reports calls/s, the
//! sidecar's CPU per call (from `/proc`) and the latency, and writes JSON and markdown naming
//! the commit measured. flagd itself is not run beside it: no registry this machine reaches
//! carries it (see [`FLAGD`]). Loopback only; bounded in time; the sidecar is stopped by PID.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rampart_proto::flagd::evaluation::v2::ResolveBooleanRequest;
use rampart_proto::flagd::evaluation::v2::service_client::ServiceClient;
use serde::Serialize;
use tokio::time::Instant;

use crate::procfs;
use crate::procs::{self, Proc};

const FLAGS: &str = "flags:\n  new-checkout:\n    state: ENABLED\n    variants: { \"on\": true, \"off\": false }\n    \
defaultVariant: \"off\"\n    ramp: { treatment: \"on\", percent: 50 }\n";

/// Why flagd is not measured beside the sidecar.
const FLAGD: &str = "flagd is not measured beside it: it is a Go program published as GitHub release binaries and \
container images, and none of the registries this machine reaches carries it (no Debian package, nothing named flagd \
on npm or PyPI, and Go's module proxy is not reachable to build it)";

const READY: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The `rampart` binary (default: next to this one, i.e. target/release/rampart).
    #[arg(long)]
    rampart: Option<PathBuf>,
    /// Measured time of each path (after a 1 s warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Calls in flight: gRPC streams on the one connection; OFREP connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    layout: procs::Layout,
    /// Output path without extension; `.json` and `.md` are written (default
    /// benches/results/queries-<date>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One path's figures.
#[derive(Debug, Serialize)]
struct PathResult {
    path: &'static str,
    calls: u64,
    failed: u64,
    calls_per_s: f64,
    sidecar_cpu_us_per_call: f64,
    loadgen_busy: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    rampart_version: String,
    started_utc: String,
    machine: String,
    loadavg_before: String,
    loadavg_after: String,
    concurrency: usize,
    duration_s: f64,
    pinned: bool,
    proxy_config: String,
    paths: Vec<PathResult>,
    flagd: &'static str,
}

/// What the calls of one path did.
#[derive(Debug)]
struct Tally {
    calls: u64,
    failed: u64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            calls: 0,
            failed: 0,
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!()),
        }
    }

    fn add(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.failed += other.failed;
        let _ = self.latency.add(&other.latency);
    }

    fn record(&mut self, ok: bool, started: Instant) {
        if ok {
            self.calls += 1;
            let _ = self.latency.record((started.elapsed().as_micros() as u64).max(1));
        } else {
            self.failed += 1;
        }
    }
}

fn context(n: u64) -> prost_types::Struct {
    let mut fields = std::collections::BTreeMap::new();
    let key = prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(format!("user-{n}"))) };
    fields.insert("targetingKey".to_owned(), key);
    prost_types::Struct { fields }
}

/// `concurrency` loops of ResolveBoolean on one HTTP/2 connection until `until`.
async fn grpc_phase(addr: std::net::SocketAddr, concurrency: usize, until: Instant) -> anyhow::Result<Tally> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let client = ServiceClient::new(channel);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency as u64 {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            let mut n = worker << 32;
            while Instant::now() < until {
                n += 1;
                let request = ResolveBooleanRequest { flag_key: "new-checkout".to_owned(), context: Some(context(n)) };
                let started = Instant::now();
                let ok = client.resolve_boolean(request).await.is_ok();
                tally.record(ok, started);
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(t) = tasks.join_next().await {
        total.add(&t?);
    }
    Ok(total)
}

/// `concurrency` keep-alive HTTP/1.1 connections, each looping OFREP single evaluations until
/// `until`.
async fn ofrep_phase(addr: std::net::SocketAddr, concurrency: usize, until: Instant) -> anyhow::Result<Tally> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency as u64 {
        tasks.spawn(async move {
            let mut tally = Tally::new();
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut n = worker << 32;
            while Instant::now() < until {
                n += 1;
                let body = format!("{{\"context\":{{\"targetingKey\":\"user-{n}\"}}}}");
                let request = hyper::Request::post("/ofrep/v1/evaluate/flags/new-checkout")
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let started = Instant::now();
                let ok = match send.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.is_ok() && status == 200
                    }
                    Err(_) => false,
                };
                tally.record(ok, started);
                if !ok && send.is_closed() {
                    break;
                }
            }
            anyhow::Ok(tally)
        });
    }
    let mut total = Tally::new();
    while let Some(t) = tasks.join_next().await {
        total.add(&t??);
    }
    Ok(total)
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{nproc} CPUs, {model}")
}

/// Runs one path: a 1 s warm-up, then `duration` measured, the sidecar's CPU read around it.
async fn measure<F, Fut>(name: &'static str, args: &Args, proxy: &Proc, phase: F) -> anyhow::Result<PathResult>
where
    F: Fn(Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Tally>>,
{
    phase(Instant::now() + Duration::from_secs(1)).await?;
    let cpu = || procfs::sample(proxy.pid()).map(|s| s.cpu);
    let me = || procfs::sample(std::process::id()).map(|s| s.cpu);
    let (cpu_before, me_before, started) = (cpu()?, me()?, Instant::now());
    let tally = phase(started + args.duration).await?;
    let (wall, cpu_used, me_used) =
        (started.elapsed(), cpu()?.saturating_sub(cpu_before), me()?.saturating_sub(me_before));
    let calls = tally.calls.max(1) as f64;
    let result = PathResult {
        path: name,
        calls: tally.calls,
        failed: tally.failed,
        calls_per_s: tally.calls as f64 / wall.as_secs_f64(),
        sidecar_cpu_us_per_call: cpu_used.as_secs_f64() * 1e6 / calls,
        loadgen_busy: me_used.as_secs_f64() / wall.as_secs_f64(),
        p50_us: tally.latency.value_at_quantile(0.5),
        p99_us: tally.latency.value_at_quantile(0.99),
        p999_us: tally.latency.value_at_quantile(0.999),
    };
    println!(
        "{name:<28} {:>8.0} calls/s  sidecar {:>5.1} CPU-µs/call  p50 {:>6} µs  p99 {:>6} µs  failed {}  loadgen busy {:.0}%",
        result.calls_per_s,
        result.sidecar_cpu_us_per_call,
        result.p50_us,
        result.p99_us,
        result.failed,
        result.loadgen_busy * 100.0
    );
    Ok(result)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.duration >= Duration::from_secs(1) && args.duration <= Duration::from_secs(600),
        "--duration: 1s ≤ d ≤ 10m"
    );
    anyhow::ensure!((1..=1024).contains(&args.concurrency), "--concurrency: 1 to 1024");
    let rampart = match &args.rampart {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("rampart"),
    };
    anyhow::ensure!(rampart.exists(), "{} not found (cargo build --release -p rampart)", rampart.display());
    // Read before pinning: the count follows this process's affinity.
    let (cores, machine) = (std::thread::available_parallelism().map_or(1, |n| n.get()), machine());
    let pinned = cores >= 2 && procs::available("taskset");
    if pinned {
        procs::pin(std::process::id(), &args.layout.loadgen_cpu).context("pinning the load generator")?;
    } else {
        eprintln!("notice: {cores} CPU(s) or no taskset: running unpinned");
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("flags.yaml"), FLAGS)?;
    // The upstream is never contacted: only the query listeners are loaded.
    let config = "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n\
                  flags = \"flags.yaml\"\nworkers = 1\n\n[queries]\ngrpc = \"127.0.0.1:0\"\nofrep = \"127.0.0.1:0\"\n";
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(&config_path, config)?;
    let (started_utc, loadavg_before) = (
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        procfs::loadavg(),
    );
    let path = config_path.display().to_string();
    let mut proxy = Proc::start(
        "rampart",
        &rampart,
        &["proxy", "--config", &path],
        pinned.then_some(args.layout.server_cpu.as_str()),
        dir.path(),
        &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
    )?;
    let measured = async {
        let line = proxy.wait_for_log("rampart proxy serving", READY).await?;
        let addrs = procs::addrs(&line);
        let grpc = procs::addr(&addrs, "grpc").context("the sidecar's gRPC query address")?;
        let ofrep = procs::addr(&addrs, "ofrep").context("the sidecar's OFREP address")?;
        let c = args.concurrency;
        let grpc_result = measure("flagd v2 ResolveBoolean", &args, &proxy, |until| grpc_phase(grpc, c, until)).await?;
        let ofrep_result =
            measure("OFREP single evaluation", &args, &proxy, |until| ofrep_phase(ofrep, c, until)).await?;
        anyhow::Ok(vec![grpc_result, ofrep_result])
    }
    .await;
    proxy.stop(Duration::from_secs(3));
    let paths = measured?;
    let rampart_version = std::process::Command::new(&rampart)
        .arg("--version")
        .output()
        .map_or_else(|_| "?".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let report = Report {
        mode: "queries",
        rampart_version,
        started_utc,
        machine,
        loadavg_before,
        loadavg_after: procfs::loadavg(),
        concurrency: args.concurrency,
        duration_s: args.duration.as_secs_f64(),
        pinned,
        proxy_config: config.to_owned(),
        paths,
        flagd: FLAGD,
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let date = time::OffsetDateTime::now_utc().date();
        PathBuf::from(format!("benches/results/queries-{date}"))
    });
    write(&report, &out)?;
    println!("wrote {0}.json and {0}.md", out.display());
    let failed = report.paths.iter().any(|p| p.failed > 0 || p.calls == 0);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn write(report: &Report, out: &Path) -> anyhow::Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out.with_extension("json"), serde_json::to_string_pretty(report)?)?;
    let mut md = format!(
        "# Flag queries per core — {}\n\n\
         `rampart-loadtest queries`, {}; started {} UTC; {}; load average {} → {}.\n\
         The sidecar (one worker) {}; closed loop, {} calls in flight (gRPC: streams on one HTTP/2 connection; \
         OFREP: keep-alive HTTP/1.1 connections), a random `targetingKey` per call, one flag on a 50% ramp; \
         1 s warm-up, then {:.0} s measured per path. Sidecar CPU per call from `/proc/PID/stat`.\n\n\
         | path | calls/s | sidecar CPU-µs/call | p50 | p99 | p99.9 | failed | load generator busy |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        report.started_utc.get(..10).unwrap_or(""),
        report.rampart_version,
        report.started_utc,
        report.machine,
        report.loadavg_before,
        report.loadavg_after,
        if report.pinned { "on CPU 1, the load generator on CPU 0 (`taskset`)" } else { "unpinned" },
        report.concurrency,
        report.duration_s,
    );
    for p in &report.paths {
        md.push_str(&format!(
            "| {} | {:.0} | {:.1} | {} µs | {} µs | {} µs | {} | {:.0}% |\n",
            p.path,
            p.calls_per_s,
            p.sidecar_cpu_us_per_call,
            p.p50_us,
            p.p99_us,
            p.p999_us,
            p.failed,
            p.loadgen_busy * 100.0
        ));
    }
    md.push_str(&format!("\n{FLAGD}.\n\nThe sidecar's configuration:\n\n```toml\n{}```\n", report.proxy_config));
    std::fs::write(out.with_extension("md"), md)?;
    Ok(())
}
