//! `rampart proxy --config FILE`: config → flags → bind → serve → drain on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use rampart_proxy::{Config, Proxy};
use tokio_util::sync::CancellationToken;

use super::shutdown;

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// The sidecar's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
}

pub(crate) fn run(args: &ProxyArgs) -> anyhow::Result<ExitCode> {
    shutdown::init_tracing();
    // Everything that can fail on input fails here, before a port is bound.
    let config = Config::load(&args.config)?;
    let proxy = Proxy::new(config)?;
    let workers = proxy.config().workers.map_or(1, |w| w.get());
    // Thread per core: this runtime is worker 0; the proxy starts the others, each on a
    // current-thread runtime of its own.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let c = proxy.config();
        let listener = rampart_proxy::bind(c.listen, workers).with_context(|| format!("bind listen {}", c.listen))?;
        let admin = tokio::net::TcpListener::bind(c.admin).await.with_context(|| format!("bind admin {}", c.admin))?;
        let queries = rampart_proxy::QueryListeners::bind(&c.queries).await?;
        let token = CancellationToken::new();
        let signals = tokio::spawn(shutdown::on_signal(token.clone()));
        proxy.run_with_queries(listener, admin, queries, token.clone()).await;
        token.cancel();
        signals.await.context("signal task")?.context("signal handler")?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
