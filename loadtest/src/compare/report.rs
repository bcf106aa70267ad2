//! A comparison's results: every run as measured, the medians over rounds per target and phase,
//! the ratios against direct and nginx, and the markdown table for the README.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::targets::{Server, UpstreamKind};
use super::tls::TlsSetup;
use super::{Args, TargetKind, UnderTest};
use crate::load::Summary;
use crate::procfs;

/// One kind of run.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub(crate) enum Phase {
    /// Saturation: back-to-back requests on every connection.
    Closed,
    /// A fixed rate, req/s.
    Open(f64),
}

impl Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

impl Phase {
    fn label(&self) -> String {
        match self {
            Phase::Closed => "closed".to_owned(),
            Phase::Open(r) => format!("open@{r}"),
        }
    }
}

/// Where and how the comparison ran.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) date: String,
    pub(crate) started: String,
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) loadavg_before: String,
    pub(crate) loadavg_after: String,
    pub(crate) pinned: bool,
    pub(crate) loadgen_cpu: String,
    pub(crate) server_cpu: String,
    /// Workers of every proxy.
    pub(crate) workers: u16,
    pub(crate) upstream: UpstreamKind,
    pub(crate) versions: BTreeMap<String, String>,
    pub(crate) rampart_rev: String,
    pub(crate) command: String,
    pub(crate) rounds: usize,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) connections: usize,
    pub(crate) open_connections: usize,
    /// Set for `--tls`: TLS on the proxies' listeners.
    pub(crate) tls: Option<TlsSetup>,
}

fn first_line_of(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

fn git_rev(dir: &Path) -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git").args(args).current_dir(dir).output().ok().filter(|o| o.status.success())
    };
    let Some(rev) = run(&["rev-parse", "--short", "HEAD"]) else { return "unknown".to_owned() };
    let mut rev = String::from_utf8_lossy(&rev.stdout).trim().to_owned();
    if run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty()) {
        rev.push_str(" (uncommitted changes in the tree)");
    }
    rev
}

/// The commit the Rampart under test says it was built from (`rampart --version`: "rampart 0.1.0
/// (abc1234)"); `None` for a build that does not say.
fn built_from(under_test: &[UnderTest]) -> Option<String> {
    let t = under_test.iter().find(|t| t.kind.name() == "rampart")?;
    let version = &t.proxy.as_ref()?.version;
    let commit = version.split_once('(')?.1.split_once(')')?.0;
    (!commit.is_empty() && commit != "unknown").then(|| commit.to_owned())
}

impl Machine {
    pub(crate) fn here(
        rampart: &Path,
        upstream: &Server,
        under_test: &[UnderTest],
        kind: UpstreamKind,
        pinned: bool,
        nproc: usize,
        args: &Args,
    ) -> Machine {
        let now = time::OffsetDateTime::now_utc();
        let mut versions = BTreeMap::from([("upstream".to_owned(), upstream.version.clone())]);
        for t in under_test {
            if let Some(p) = &t.proxy {
                versions.insert(t.kind.name().to_owned(), p.version.clone());
            }
        }
        Machine {
            date: now.date().to_string(),
            started: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            nproc,
            cpu_model: first_line_of("/proc/cpuinfo", "model name"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            loadavg_before: procfs::loadavg(),
            loadavg_after: String::new(),
            pinned,
            loadgen_cpu: args.layout.loadgen_cpu.clone(),
            server_cpu: args.layout.server_cpu.clone(),
            workers: args.workers,
            upstream: kind,
            versions,
            rampart_rev: built_from(under_test).unwrap_or_else(|| git_rev(rampart.parent().unwrap_or(Path::new(".")))),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            rounds: args.rounds,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            connections: args.connections,
            open_connections: args.open_connections,
            tls: None,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) round: usize,
    pub(crate) target: TargetKind,
    pub(crate) phase: Phase,
    pub(crate) summary: Summary,
    /// The proxy's CPU time over the run (warm-up included), seconds; none for `direct`.
    pub(crate) proxy_cpu_s: Option<f64>,
    pub(crate) upstream_cpu_s: f64,
    /// The load generator's CPU time ÷ the run's wall time: near 1.0, the generator was the limit.
    pub(crate) loadgen_busy: f64,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        round: usize,
        target: TargetKind,
        phase: Phase,
        summary: Summary,
        proxy_cpu: Option<Duration>,
        upstream_cpu: Duration,
        loadgen_cpu: Duration,
        wall: Duration,
    ) -> Run {
        Run {
            round,
            target,
            phase,
            summary,
            proxy_cpu_s: proxy_cpu.map(|d| d.as_secs_f64()),
            upstream_cpu_s: upstream_cpu.as_secs_f64(),
            loadgen_busy: loadgen_cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        }
    }

    /// Every request the processes served during the run, warm-up included.
    fn served(&self) -> u64 {
        self.summary.requests + self.summary.warmup_requests
    }

    pub(crate) fn line(&self) -> String {
        let s = &self.summary;
        format!(
            "round {} {:<8} {:<10} {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  errors {}  proxy {} CPU-µs/req  loadgen busy {:.0}%",
            self.round,
            self.target.name(),
            self.phase.label(),
            s.rps,
            s.p50_us,
            s.p99_us,
            s.p999_us,
            s.errors(),
            self.proxy_cpu_s.map_or("–".to_owned(), |c| format!("{:.1}", c * 1e6 / self.served().max(1) as f64)),
            self.loadgen_busy * 100.0
        )
    }
}

/// The median; the mean of the middle two for an even count.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// One target in one phase, over all rounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) target: TargetKind,
    pub(crate) phase: Phase,
    pub(crate) rounds: usize,
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) errors: u64,
    /// Total proxy CPU ÷ total requests served, over all rounds (µs).
    pub(crate) proxy_cpu_us_per_req: Option<f64>,
    pub(crate) upstream_cpu_us_per_req: f64,
    pub(crate) late_p99_us: f64,
    pub(crate) loadgen_busy: f64,
    pub(crate) rps_vs_direct: Option<f64>,
    pub(crate) rps_vs_nginx: Option<f64>,
    /// p99 minus direct's p99 in the same phase.
    pub(crate) p99_added_us: Option<f64>,
    /// This target's added p99 ÷ nginx's.
    pub(crate) p99_added_vs_nginx: Option<f64>,
}

fn row(target: TargetKind, phase: Phase, runs: &[&Run]) -> Row {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let served: u64 = runs.iter().map(|r| r.served()).sum::<u64>().max(1);
    let proxy: Option<f64> = runs.iter().map(|r| r.proxy_cpu_s).sum();
    Row {
        target,
        phase,
        rounds: runs.len(),
        rps: m(&|r| r.summary.rps),
        p50_us: m(&|r| r.summary.p50_us as f64),
        p99_us: m(&|r| r.summary.p99_us as f64),
        p999_us: m(&|r| r.summary.p999_us as f64),
        errors: runs.iter().map(|r| r.summary.errors()).sum(),
        proxy_cpu_us_per_req: proxy.map(|c| c * 1e6 / served as f64),
        upstream_cpu_us_per_req: runs.iter().map(|r| r.upstream_cpu_s).sum::<f64>() * 1e6 / served as f64,
        late_p99_us: m(&|r| r.summary.late_p99_us as f64),
        loadgen_busy: m(&|r| r.loadgen_busy),
        rps_vs_direct: None,
        rps_vs_nginx: None,
        p99_added_us: None,
        p99_added_vs_nginx: None,
    }
}

/// Everything a comparison writes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) skipped: Vec<TargetKind>,
    /// Peak RSS (VmHWM) of each target's process at the end, bytes (`direct`: the upstream).
    pub(crate) peak_rss: BTreeMap<String, u64>,
    pub(crate) upstream_peak_rss: u64,
    pub(crate) rows: Vec<Row>,
    pub(crate) runs: Vec<Run>,
}

impl Report {
    pub(crate) fn new(
        mut machine: Machine,
        runs: Vec<Run>,
        rss: Vec<(TargetKind, u64)>,
        upstream_peak_rss: u64,
        skipped: Vec<TargetKind>,
    ) -> Report {
        machine.loadavg_after = procfs::loadavg();
        if let Some(tls) = &mut machine.tls {
            for r in &runs {
                if let Some(n) = &r.summary.tls {
                    tls.negotiated.entry(r.target.name().to_owned()).or_insert_with(|| n.clone());
                }
            }
            let targets: Vec<TargetKind> = tls.negotiated.keys().filter_map(|k| TargetKind::from_name(k)).collect();
            for t in targets {
                let per_run = runs.iter().filter(|r| r.target == t).map(|r| r.summary.tls_handshakes as f64).collect();
                tls.handshakes_per_run.insert(t.name().to_owned(), median(per_run));
            }
        }
        let mut keys: Vec<(Phase, TargetKind)> = Vec::new();
        for r in &runs {
            if !keys.contains(&(r.phase, r.target)) {
                keys.push((r.phase, r.target));
            }
        }
        let mut rows: Vec<Row> = keys
            .iter()
            .map(|&(phase, target)| {
                let of: Vec<&Run> = runs.iter().filter(|r| r.phase == phase && r.target == target).collect();
                row(target, phase, &of)
            })
            .collect();
        let find = |rows: &[Row], t: TargetKind, p: Phase| rows.iter().find(|r| r.target == t && r.phase == p).cloned();
        let snapshot = rows.clone();
        for r in &mut rows {
            let direct = find(&snapshot, TargetKind::Direct, r.phase);
            let nginx = find(&snapshot, TargetKind::Nginx, r.phase);
            r.rps_vs_direct = direct.as_ref().filter(|d| d.rps > 0.0).map(|d| r.rps / d.rps);
            r.rps_vs_nginx = nginx.as_ref().filter(|n| n.rps > 0.0).map(|n| r.rps / n.rps);
            r.p99_added_us = direct.as_ref().map(|d| r.p99_us - d.p99_us);
            let nginx_added = nginx.as_ref().zip(direct.as_ref()).map(|(n, d)| n.p99_us - d.p99_us);
            r.p99_added_vs_nginx = r
                .p99_added_us
                .filter(|_| r.target != TargetKind::Direct)
                .zip(nginx_added.filter(|a| *a > 0.0))
                .map(|(a, n)| a / n);
        }
        let peak_rss = rss.into_iter().map(|(k, v)| (k.name().to_owned(), v)).collect();
        Report { machine, skipped, peak_rss, upstream_peak_rss, rows, runs }
    }

    /// The markdown report: the setup, then throughput and latency tables.
    pub(crate) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut o = String::new();
        let ratio = |x: Option<f64>| x.map_or("–".to_owned(), |v| format!("{v:.2}"));
        let us = |x: Option<f64>| x.map_or("–".to_owned(), |v| format!("{v:.1}"));
        let mib = |t: TargetKind| {
            self.peak_rss.get(t.name()).map_or("–".to_owned(), |b| format!("{:.1}", *b as f64 / 1048576.0))
        };
        let tls_mark = if m.tls.is_some() { " — TLS on the listener" } else { "" };
        let name = |t: TargetKind| match t {
            TargetKind::Direct if m.tls.is_some() => "direct (plaintext)",
            _ => t.name(),
        };
        let _ = writeln!(o, "# Rampart vs direct, nginx and HAProxy{tls_mark} — {}\n", m.date);
        let _ = writeln!(o, "- machine: {} CPUs, {}, kernel {}; started {}", m.nproc, m.cpu_model, m.kernel, m.started);
        let _ = writeln!(o, "- load average (1/5/15 min) before: {}; after: {}", m.loadavg_before, m.loadavg_after);
        if m.pinned {
            let _ = writeln!(
                o,
                "- layout: the load generator (`rampart-loadtest`, one thread) on CPU {}; upstream and proxy on CPU {} (`taskset`); {}",
                m.loadgen_cpu,
                m.server_cpu,
                if m.workers == 1 {
                    "every proxy single-threaded".to_owned()
                } else {
                    format!("every proxy with {} workers", m.workers)
                }
            );
        } else {
            let _ = writeln!(o, "- layout: **unpinned** (fewer than 2 CPUs or no taskset)");
        }
        let v = |k: &str| m.versions.get(k).cloned().unwrap_or_default();
        let _ = writeln!(o, "- upstream: {} — `200 ok`, one process, keep-alive", v("upstream"));
        let _ = writeln!(
            o,
            "- rampart ({}, rev {}): `rampart proxy`, `workers = {}`, 10 flags evaluated and injected per request \
             (5 static, 5 ramps at 50% bucketed by `x-user-id`)",
            v("rampart"),
            m.rampart_rev,
            m.workers
        );
        if m.versions.contains_key("nginx") {
            let _ = writeln!(
                o,
                "- nginx ({}): {}, `keepalive 64` upstream, the same 10 headers as `proxy_set_header` constants",
                v("nginx"),
                if m.workers == 1 {
                    "1 worker, no master process".to_owned()
                } else {
                    format!("a master and {} worker processes (CPU and RSS summed over them)", m.workers)
                }
            );
        }
        if m.versions.contains_key("haproxy") {
            let _ = writeln!(
                o,
                "- haproxy ({}): `nbthread {}`, `http-reuse always`, the same 10 headers as `http-request set-header` constants",
                v("haproxy"),
                m.workers
            );
        }
        for s in &self.skipped {
            let _ = writeln!(o, "- {}: skipped (not installed)", s.name());
        }
        if let Some(tls) = &m.tls {
            let _ = writeln!(
                o,
                "- **TLS** on every proxy's listener with the same certificate and key ({}); the load generator (rustls, ring) \
                 trusts that certificate, offers ALPN http/1.1 and makes a full handshake per connection (no resumption); \
                 `direct` and the upstream leg stay plaintext",
                tls.certificate
            );
            for l in &tls.listeners {
                let _ = writeln!(o, "  - {l}");
            }
            let negotiated: Vec<String> = tls.negotiated.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(o, "  - negotiated: {}", negotiated.join("; "));
            let per_run: Vec<String> = tls.handshakes_per_run.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
            let _ = writeln!(
                o,
                "  - TLS handshakes per run (median; one per connection, reconnects included): {}",
                per_run.join(", ")
            );
        }
        let _ = writeln!(
            o,
            "- runs: {} interleaved rounds; each round runs every phase against every target in turn; {} s measured after a {} s warm-up per run; \
             closed loop on {} connections, open loop on {}; HTTP/1.1{}; a random `x-user-id` per request; figures are medians of the rounds",
            m.rounds,
            m.duration_s,
            m.warmup_s,
            m.connections,
            m.open_connections,
            if m.tls.is_some() { " (over TLS to the proxies)" } else { "" }
        );
        let _ = writeln!(
            o,
            "- CPU-µs/req: the process's utime+stime (`/proc/PID/stat`) over all rounds ÷ requests it served; peak RSS: `VmHWM` at the end"
        );
        let _ = writeln!(o, "- command: `{}`\n", m.command);

        let _ = writeln!(o, "## Throughput (closed loop, {} connections){tls_mark}\n", m.connections);
        let _ = writeln!(
            o,
            "| target | req/s | vs direct | vs nginx | proxy CPU-µs/req | upstream CPU-µs/req | peak RSS MiB | errors | load generator busy |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in self.rows.iter().filter(|r| r.phase == Phase::Closed) {
            let _ = writeln!(
                o,
                "| {} | {:.0} | {} | {} | {} | {:.1} | {} | {} | {:.0}% |",
                name(r.target),
                r.rps,
                ratio(r.rps_vs_direct),
                ratio(r.rps_vs_nginx),
                us(r.proxy_cpu_us_per_req),
                r.upstream_cpu_us_per_req,
                mib(r.target),
                r.errors,
                r.loadgen_busy * 100.0
            );
        }
        let _ = writeln!(
            o,
            "\n## Latency at fixed rates (open loop, measured from each request's intended start){tls_mark}\n"
        );
        let _ = writeln!(
            o,
            "| target | req/s | p50 µs | p99 µs | p99.9 µs | p99 added over direct µs | added p99 ÷ nginx's | proxy CPU-µs/req | errors |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in self.rows.iter().filter(|r| r.phase != Phase::Closed) {
            let Phase::Open(rate) = r.phase else { continue };
            let _ = writeln!(
                o,
                "| {} | {rate:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                name(r.target),
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.p99_added_us.map_or("–".to_owned(), |a| format!("{a:.0}")),
                ratio(r.p99_added_vs_nginx),
                us(r.proxy_cpu_us_per_req),
                r.errors
            );
        }
        let lateness: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.target == TargetKind::Direct && r.phase != Phase::Closed)
            .map(|r| format!("{}: p99 {:.0} µs", r.phase.label(), r.late_p99_us))
            .collect();
        let _ = writeln!(
            o,
            "\nThe open-loop latency includes the generator's own lateness against the schedule (same for every target; \
             against direct {}). For `direct` the CPU column is empty: the upstream column is its cost. \
             Upstream MiB (VmHWM): {:.1}. \
             A load generator near 100% busy in the closed loop means the generator, not the target, set the pace.",
            lateness.join(", "),
            self.upstream_peak_rss as f64 / 1048576.0
        );
        o
    }
}

#[cfg(test)]
mod tests;
