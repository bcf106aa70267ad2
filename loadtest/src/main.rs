//! `rampart-loadtest`: the load generators behind Rampart's published figures, one subcommand (and
//! one module) per mode. Every mode is bounded in time and talks only to loopback addresses.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod bare;
mod compare;
mod fanin;
mod http;
mod load;
mod loopback;
mod procfs;
mod procs;
mod prometheus;
mod queries;
mod scenario;
mod simulate;
mod soak;
mod upstream;

/// Load generators for Rampart's figures (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "rampart-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Simulated sidecars: N concurrent control streams, one stats report per interval each;
    /// measures the ack latency and the control plane's CPU and memory.
    Fanin(fanin::Args),
    /// HTTP load: open loop at a fixed rate (latency from the intended start) or closed loop
    /// (saturation); HTTP/1.1 or h2c.
    Load(load::Args),
    /// Side by side: direct, Rampart, nginx and HAProxy, interleaved rounds, pinned to cores;
    /// writes JSON and a markdown table.
    Compare(compare::Args),
    /// A ramp end to end: control plane, sidecars, an upstream whose treatment misbehaves (or
    /// not, `--aa`); time to detect, time to stop, requests served by the bad variant.
    Scenario(scenario::Args),
    /// Simulated ramps: the real decision code on declarative scenarios (`scenarios/*.toml`),
    /// many seeded runs each; false rollbacks, time to rollback and to 100%.
    Simulate(simulate::Args),
    /// Soak: a release proxy under every attack of issue 14 at once while normal traffic runs at a
    /// fixed rate; normal-request p99 and the proxy's RSS every interval; writes JSON and markdown.
    Soak(soak::Args),
    /// The sidecar's flag queries per core: flagd v2 `ResolveBoolean` and OFREP single
    /// evaluations against a pinned `rampart proxy`; calls/s and its CPU per call.
    Queries(queries::Args),
    /// The fast upstream (`200 ok`) as its own process, for `compare`.
    Upstream(upstream::Args),
    /// The least a hyper reverse proxy does (hyper's HTTP/1.1 server and client, 10 constant
    /// headers, nothing else): the floor under any hyper-based sidecar, for instruction counts.
    BareProxy(bare::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // fanin: worker threads follow the CPU affinity (`taskset`), so a pinned run stays on its
    // core. The HTTP modes run on one thread: the load generator owns one core, and a
    // single-threaded runtime drives it with the least overhead.
    let runtime = match cli.mode {
        Mode::Fanin(_) => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .context("cannot start the runtime")?;
    runtime.block_on(async move {
        match cli.mode {
            Mode::Fanin(args) => fanin::run(args).await,
            Mode::Load(args) => load::run(args).await,
            Mode::Compare(args) => compare::run(args).await,
            Mode::Scenario(args) => scenario::run(args).await,
            Mode::Upstream(args) => upstream::run(args).await,
            Mode::BareProxy(args) => bare::run(args).await,
            Mode::Queries(args) => queries::run(args).await,
            Mode::Soak(args) => soak::run(args).await,
            // CPU work on scoped threads of its own; nothing else runs on this runtime.
            Mode::Simulate(args) => simulate::run(args),
        }
    })
}
