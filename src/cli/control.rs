//! `rampart control [--config FILE]`: config → store → bind → serve → drain on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use rampart_control::{Config, Control};
use tokio_util::sync::CancellationToken;

use super::shutdown;

#[derive(Debug, clap::Args)]
pub(crate) struct ControlArgs {
    /// The control plane's TOML configuration (default: every default, store in the working
    /// directory).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

pub(crate) fn run(args: &ControlArgs) -> anyhow::Result<ExitCode> {
    shutdown::init_tracing();
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let control = Control::open(&config)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
            .await
            .with_context(|| format!("bind grpc_listen {}", config.grpc_listen))?;
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("bind http_listen {}", config.http_listen))?;
        tracing::info!(grpc = %grpc.local_addr()?, http = %http.local_addr()?, store = ?config.store,
            flags_version = control.flags_version(), "rampart control serving");
        let token = CancellationToken::new();
        let signals = tokio::spawn(shutdown::on_signal(token.clone()));
        control.run(grpc, http, token.clone()).await?;
        token.cancel();
        signals.await.context("signal task")?.context("signal handler")?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
