//! `rampart control [--config FILE]`: config → store → bind → serve → drain on SIGTERM/SIGINT.
//! `rampart control status`: the control-plane replicas and which one leads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use rampart_control::{Config, Control};
use tokio_util::sync::CancellationToken;

use super::shutdown;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ControlArgs {
    /// The control plane's TOML configuration (default: every default, store in the working
    /// directory).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<ControlCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum ControlCommand {
    /// The control-plane replicas (one on SQLite) and which one leads.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "RAMPART_CONTROL_PLANE", default_value = super::http::DEFAULT_CONTROL_PLANE)]
        control_plane: String,
    },
}

/// `rampart control status`.
fn status(control_plane: &str, json: bool) -> anyhow::Result<ExitCode> {
    let answer =
        super::http::expect_ok(super::http::call(http::Method::GET, control_plane, "/api/v1/replicas", None)?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("store: {}", answer["store"].as_str().unwrap_or("?"));
    for r in answer["replicas"].as_array().into_iter().flatten() {
        let role = if r["leader"] == true { "leader" } else { "follower" };
        let me = if r["self"] == true { "  (answered this request)" } else { "" };
        println!(
            "{:<24} {:<8} grpc {:<22} http {:<22} sidecars {}{me}",
            r["id"].as_str().unwrap_or("?"),
            role,
            r["grpc"].as_str().unwrap_or("–"),
            r["http"].as_str().unwrap_or("–"),
            r["sidecars"].as_u64().map_or_else(|| "–".to_owned(), |n| n.to_string()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run(args: &ControlArgs) -> anyhow::Result<ExitCode> {
    if let Some(ControlCommand::Status { json, control_plane }) = &args.command {
        return status(control_plane, *json);
    }
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
        tracing::info!(grpc = %grpc.local_addr()?, http = %http.local_addr()?, store = %config.store,
            flags_version = control.flags_version(), "rampart control serving");
        let token = CancellationToken::new();
        let signals = tokio::spawn(shutdown::on_signal(token.clone()));
        control.run(grpc, http, token.clone()).await?;
        token.cancel();
        signals.await.context("signal task")?.context("signal handler")?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
