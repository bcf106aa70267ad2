//! The processes of a scenario: the upstream (a task of this process), `rampart control` with its
//! store in a temporary directory, and the sidecars; stopped by PID (sidecars first) on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::{Method, Uri};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Args;
use crate::procs::{self, Proc};
use crate::upstream::{self, Behavior, Observed};

const READY: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub(super) struct Sidecar {
    pub(super) listen: SocketAddr,
    proc: Proc,
}

#[derive(Debug)]
pub(super) struct Stack {
    /// The control plane's HTTP API, `http://ip:port/`.
    pub(super) http: Uri,
    pub(super) upstream: SocketAddr,
    pub(super) sidecars: Vec<Sidecar>,
    control: Proc,
    server: JoinHandle<()>,
    stop: CancellationToken,
    /// Holds the store, configs and logs until the processes are gone.
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for s in &mut self.sidecars {
            s.proc.stop(Duration::from_secs(3));
        }
        self.control.stop(Duration::from_secs(3));
        self.stop.cancel();
        self.server.abort();
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

impl Stack {
    pub(super) fn control_pid(&self) -> u32 {
        self.control.pid()
    }

    pub(super) async fn start(
        rampart: &Path,
        args: &Args,
        behavior: Arc<Behavior>,
        seen: Arc<Observed>,
        stop: CancellationToken,
    ) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new().prefix("rampart-scenario.").tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let upstream = listener.local_addr()?;
        let server = tokio::spawn(upstream::serve(listener, behavior, seen, stop.clone()));

        let flags = format!(
            "flags:\n  {}:\n    state: ENABLED\n    variants: {{ \"{}\": true, \"off\": false }}\n    defaultVariant: \"off\"\n",
            args.flag, args.treatment
        );
        write(&dir.path().join("flags.yaml"), &flags)?;
        write(
            &dir.path().join("control.toml"),
            "grpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nflags = \"flags.yaml\"\nstore = \"control.db\"\n",
        )?;
        let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
        let config = dir.path().join("control.toml").display().to_string();
        let mut control = Proc::start("control", rampart, &["control", "--config", &config], None, dir.path(), &env)?;
        let line = control.wait_for_log("rampart control serving", READY).await?;
        let addrs = procs::addrs(&line);
        let (grpc, http) =
            procs::addr(&addrs, "grpc").zip(procs::addr(&addrs, "http")).context("control plane addresses")?;

        let mut sidecars = Vec::new();
        for i in 0..args.sidecars {
            let name = format!("sidecar-{i}");
            let config = dir.path().join(format!("{name}.toml"));
            write(
                &config,
                &format!(
                    "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
                     control_plane = \"http://{grpc}\"\nproxy_id = \"{name}\"\nservice = \"scenario\"\n\
                     report_interval = \"250ms\"\nflags_cache = \"{name}.cache.json\"\n\
                     [context]\ntargetingKey = [\"header:x-user-id\"]\n[queries]\ngrpc = \"off\"\nofrep = \"off\"\n"
                ),
            )?;
            let config = config.display().to_string();
            let mut proc = Proc::start(&name, rampart, &["proxy", "--config", &config], None, dir.path(), &env)?;
            let line = proc.wait_for_log("rampart proxy serving", READY).await?;
            let addrs = procs::addrs(&line);
            let (listen, admin) =
                procs::addr(&addrs, "listen").zip(procs::addr(&addrs, "admin")).context("sidecar addresses")?;
            wait_for_flags(admin).await.with_context(|| format!("{name} never got the control plane's flags"))?;
            sidecars.push(Sidecar { listen, proc });
        }
        Ok(Stack { http: format!("http://{http}/").parse()?, upstream, sidecars, control, server, stop, _dir: dir })
    }
}

/// Waits until the sidecar serves a flags version pushed by the control plane.
async fn wait_for_flags(admin: SocketAddr) -> anyhow::Result<()> {
    let uri: Uri = format!("http://{admin}/flags").parse()?;
    let deadline = tokio::time::Instant::now() + READY;
    while tokio::time::Instant::now() < deadline {
        if let Ok((200, body)) = crate::http::call(Method::GET, &uri, &[], None).await
            && serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["version"].as_u64())
                .is_some_and(|v| v >= 1)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no flags version ≥ 1 at {uri} within {READY:?}")
}
