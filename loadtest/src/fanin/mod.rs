//! `fanin`: many simulated sidecars against one control plane. Each stream says Hello, then sends
//! one stats report per interval (starts staggered evenly over the interval); the figures are the
//! ack latency (send → `StatsAck`, the ingest delay as a sidecar sees it) and, given its PID and
//! `/metrics`, the control plane's CPU time, peak RSS and its own ingest-delay and batch histograms.
//!
//! Streams share HTTP/2 connections: one tonic `Channel` (one TCP connection) carries
//! `--streams-per-connection` streams (default 4, the most the control plane allows), so 1 000
//! streams need 250 sockets. Real sidecars have a connection each; `--streams-per-connection 1`
//! reproduces that.
//!
//! A stream the control plane sheds (`RESOURCE_EXHAUSTED`) waits its pushback and reconnects, as a
//! sidecar does; every interval is counted until acknowledged, so "nothing lost" is checked.

mod report;
mod sidecar;
mod synth;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::Uri;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::{loopback, procfs, prometheus};

use self::report::Summary;
use self::sidecar::{Schedule, Tally};
use self::synth::Pool;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The control plane's gRPC address (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8400")]
    control: Uri,
    /// The control plane's Prometheus endpoint, scraped before and after the run (loopback only).
    #[arg(long)]
    metrics: Option<Uri>,
    /// The control plane's PID, for its CPU time and peak RSS from /proc.
    #[arg(long)]
    control_pid: Option<u32>,
    /// Concurrent streams (simulated sidecars).
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Flag×variant entries per report.
    #[arg(long, default_value_t = 20)]
    series: usize,
    /// Mean requests per series per report (drives the histograms' sparseness).
    #[arg(long, default_value_t = 100)]
    requests_per_series: u64,
    /// Time between two reports of one stream.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long reports are sent, from the moment every stream is open.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to wait for the last acknowledgements after the sending stops.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Streams multiplexed on one HTTP/2 connection (the control plane allows 4).
    #[arg(long, default_value_t = 4)]
    streams_per_connection: usize,
    /// Reports a stream keeps unacknowledged before it holds back new ones (the sidecar's limit).
    #[arg(long, default_value_t = 16)]
    max_in_flight: usize,
}

/// How long opening every stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.streams > 0 && args.series > 0, "--streams and --series must be positive");
    anyhow::ensure!(args.streams_per_connection > 0 && args.max_in_flight > 0, "limits must be positive");
    anyhow::ensure!(!args.interval.is_zero() && args.duration >= args.interval, "need 0 < --interval <= --duration");
    loopback::check(&args.control).await?;
    if let Some(m) = &args.metrics {
        loopback::check(m).await?;
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let signals = tokio::spawn(async move {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { if r.is_ok() { signal.cancel(); } }
            () = signal.cancelled() => {}
        }
    });
    let result = fan_in(&args, &shutdown).await;
    shutdown.cancel();
    signals.await.context("signal task")?;
    let summary = result?;
    summary.print(&args);
    Ok(if summary.healthy() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn fan_in(args: &Args, shutdown: &CancellationToken) -> anyhow::Result<Summary> {
    let pool = Arc::new(Pool::new(args.series, args.requests_per_series));
    let run_id = fastrand::u64(..) & 0xffff_ffff;
    let control_at_start = args.control_pid.map(procfs::sample).transpose()?;

    // Phase 1: connections and streams, each Hello answered by a Welcome.
    let opening = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..args.streams.div_ceil(args.streams_per_connection) {
        let channel = Endpoint::from(args.control.clone())
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connect to {}", args.control))?;
        channels.push(channel);
    }
    let mut opens = JoinSet::new();
    for i in 0..args.streams {
        let channel = channels[i / args.streams_per_connection].clone();
        opens.spawn(sidecar::open(channel, run_id, i));
    }
    let mut open = Vec::with_capacity(args.streams);
    let deadline = Instant::now() + OPEN_TIMEOUT;
    while let Some(joined) = tokio::select! {
        j = opens.join_next() => j,
        () = tokio::time::sleep_until(deadline) => anyhow::bail!("{} streams not open after {OPEN_TIMEOUT:?}", opens.len()),
        () = shutdown.cancelled() => anyhow::bail!("interrupted"),
    } {
        open.push(joined.context("open task")?.context("open a stream")?);
    }
    let open_time = opening.elapsed();

    // Phase 2: reports, measured from here.
    let before_metrics = match &args.metrics {
        Some(uri) => Some(prometheus::scrape(uri).await?),
        None => None,
    };
    let control_before = args.control_pid.map(procfs::sample).transpose()?;
    let self_before = procfs::sample(std::process::id())?;
    let t0 = Instant::now() + Duration::from_millis(100);
    let stop = t0 + args.duration;
    let n = args.streams as u32;
    let mut streams = JoinSet::new();
    for (i, o) in open.into_iter().enumerate() {
        let schedule = Schedule {
            first: t0 + args.interval * i as u32 / n,
            interval: args.interval,
            stop,
            drain_until: stop + args.interval + args.drain,
            max_in_flight: args.max_in_flight,
        };
        streams.spawn(sidecar::run(o, schedule, pool.clone(), shutdown.clone()));
    }
    let mut tallies: Vec<Tally> = Vec::with_capacity(args.streams);
    while let Some(t) = streams.join_next().await {
        tallies.push(t.context("stream task")?);
    }
    let wall = t0.elapsed();
    let control_after = args.control_pid.map(procfs::sample).transpose()?;
    let self_after = procfs::sample(std::process::id())?;
    let after_metrics = match &args.metrics {
        Some(uri) => Some(prometheus::scrape(uri).await?),
        None => None,
    };
    drop(channels);

    Ok(Summary::new(report::Inputs {
        tallies,
        open_time,
        wall,
        control: control_at_start.zip(control_before).zip(control_after).map(|((a, b), c)| [a, b, c]),
        load_tool: [self_before, self_after],
        metrics: before_metrics.zip(after_metrics),
        mean_buckets: pool.mean_buckets(),
    }))
}
