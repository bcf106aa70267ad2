//! `rampart-loadtest`: the load generators behind Rampart's published figures, one subcommand (and
//! one module) per mode. Every mode is bounded in time and talks only to loopback addresses.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod fanin;
mod loopback;
mod procfs;
mod prometheus;

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
    // Worker threads follow the CPU affinity (`taskset`), so a pinned run stays on its core.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async move {
        match cli.mode {
            Mode::Fanin(args) => fanin::run(args).await,
        }
    })
}
