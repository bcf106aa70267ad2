//! `rampart demo`: the whole loop on one machine with no setup. A service whose new checkout hides
//! a regression and whose new search backend is healthy, the control plane (SQLite in a temporary
//! directory, its web console served on loopback), a sidecar and a traffic generator start in this
//! process; two ramps start side by side; a live view follows them until the healthy one reaches
//! 100% and the regression is rolled back, then their decisions and the DORA summary are printed.
//! On a terminal the console stays up afterwards until Ctrl-C. Ctrl-C stops everything.

mod upstream;
mod view;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{JsonClient, call_async, client};

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Stop after this long even if the ramp has not finished (e.g. 90s, 3m).
    #[arg(long, default_value = "120s")]
    duration: String,
    /// Print a plain line per second instead of the live view (the default when stdout is not a
    /// terminal).
    #[arg(long)]
    plain: bool,
    /// Requests per second from the traffic generator.
    #[arg(long, default_value_t = 400)]
    rps: u32,
    /// Where the control plane serves its API and web console (a free port when taken).
    #[arg(long, default_value = "127.0.0.1:8401")]
    console: SocketAddr,
}

/// The hidden regression, and the healthy change ramped with a time-compressed policy.
const BAD: (&str, &str) = ("new-checkout", "on");
const GOOD: (&str, &str) = ("search-backend", "v2");
/// Both ramps' false-rollback rate (see `drive`).
const DEMO_ALPHA: f64 = 0.001;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    metadata: { owner: payments, description: "The one-page checkout (hides a regression)" }
  search-backend:
    state: ENABLED
    variants: { v1: "elastic", v2: "tantivy" }
    defaultVariant: v1
    metadata: { owner: search, description: "Search served by the new tantivy backend" }
"#;

pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let duration =
        humantime::parse_duration(&args.duration).with_context(|| format!("--duration {}", args.duration))?;
    let plain = args.plain || !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(demo(duration, plain, args.rps.max(1), args.console))
}

async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await.context("bind a loopback port")?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// `preferred`, or any free loopback port when it is taken.
async fn bind_console(preferred: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    match TcpListener::bind(preferred).await {
        Ok(l) => {
            let addr = l.local_addr()?;
            Ok((l, addr))
        }
        Err(_) => bind().await,
    }
}

async fn demo(duration: Duration, plain: bool, rps: u32, console: SocketAddr) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    std::fs::write(dir.path().join("flags.yaml"), FLAGS)?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    let (up_listener, up) = bind().await?;
    tasks.spawn(upstream::serve(up_listener, stop.clone()));

    let control_config = rampart_control::Config {
        flags: Some(dir.path().join("flags.yaml")),
        store: rampart_control::Location::Sqlite(dir.path().join("demo.db")),
        ..rampart_control::Config::default()
    };
    let control = rampart_control::Control::open(&control_config)?;
    let ((grpc_l, grpc), (api_l, api)) = (bind().await?, bind_console(console).await?);
    let control_stop = CancellationToken::new();
    let control_task = tokio::spawn(control.run(grpc_l, api_l, control_stop.clone()));

    let proxy = sidecar(dir.path(), up, grpc)?;
    let ((listen_l, listen), (admin_l, _)) = (bind().await?, bind().await?);
    let proxy_stop = CancellationToken::new();
    let proxy_task = tokio::spawn(proxy.run(listen_l, admin_l, proxy_stop.clone()));

    let api = format!("http://{api}");
    println!("Rampart demo: the web console is at {api}/ (open it in a browser; it follows both ramps live)\n");
    let http = client();
    let outcome = tokio::select! {
        r = drive(&http, &api, listen, duration, plain, rps, &tasks, &stop) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping");
            Ok(None)
        }
    };
    // Stop the generator and the service, then the sidecar (it drains and reports), then the
    // control plane.
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    proxy_stop.cancel();
    proxy_task.await.context("sidecar task")?;
    let finished = outcome?;
    if let Some(final_status) = &finished {
        view::summary(final_status, &dora(&http, &api).await?);
    }
    // On a terminal the console stays up to look around, until Ctrl-C.
    if finished.is_some() && !plain {
        println!("\nThe console stays up at {api}/ — Ctrl-C stops it.");
        let _ = tokio::signal::ctrl_c().await;
    }
    control_stop.cancel();
    control_task.await.context("control plane task")??;
    Ok(ExitCode::SUCCESS)
}

fn sidecar(dir: &Path, upstream: SocketAddr, grpc: SocketAddr) -> anyhow::Result<rampart_proxy::Proxy> {
    let path = dir.join("proxy.toml");
    let text = format!(
        "upstream = \"http://{upstream}\"\ncontrol_plane = \"http://{grpc}\"\nservice = \"demo-shop\"\n\
         proxy_id = \"demo-sidecar\"\nreport_interval = \"250ms\"\n[context]\ntargetingKey = [\"header:x-user-id\"]\n"
    );
    std::fs::write(&path, &text)?;
    Ok(rampart_proxy::Proxy::new(rampart_proxy::Config::parse(&path, &text)?)?)
}

/// Waits for the sidecar's flags, starts traffic and both ramps, and shows them until both end or
/// `duration` passes. Returns the ramps' final status.
#[allow(clippy::too_many_arguments)]
async fn drive(
    http: &JsonClient,
    api: &str,
    sidecar: SocketAddr,
    duration: Duration,
    plain: bool,
    rps: u32,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Value>> {
    let started = Instant::now();
    // The sidecar is connected once the control plane lists it with the current flags.
    loop {
        let (_, proxies) = call_async(http, Method::GET, api, "/api/v1/proxies", None).await?;
        if proxies["proxies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["connected"] == true && p["flags_version"] == 1))
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the sidecar did not connect to the control plane"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.spawn(traffic(sidecar, rps, stop.clone()));
    let commit = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    let commit = commit.format(&time::format_description::well_known::Rfc3339)?;
    // Both ramps at α = 0.001, not the default 0.05: a demo must not roll its healthy change back
    // by chance. At 0.05 that happens in up to 5% of runs, about 1–1.5% in a simulation of the
    // demo's traffic (`harm_stays_valid_at_a_one_percent_share_with_bursts`); at 0.001 in under 0.1%.
    // The regression's evidence grows exponentially, so it is rolled back within seconds either way.
    let bad = json!({
        "flag": BAD.0, "treatment": BAD.1, "steps": [5, 25, 50, 100], "min_dwell": "15s", "alpha": DEMO_ALPHA,
        "change_id": "demo-change-1", "commit_time": commit,
    });
    // Time-compressed so that a healthy change reaches 100% within a minute of demo traffic: a
    // production ramp dwells minutes per step and shows non-inferiority on far more users.
    let good = json!({
        "flag": GOOD.0, "treatment": GOOD.1, "steps": [1, 5, 25, 50, 95, 100], "min_dwell": "5s",
        "min_samples": 40, "error_budget": 30000, "alpha": DEMO_ALPHA, "change_id": "demo-change-2",
        "commit_time": commit,
    });
    println!("Two changes ramp side by side:");
    println!("  {} → {}: hides a regression (more errors, twice the latency)", BAD.0, BAD.1);
    println!(
        "  {} → {}: healthy, ramped through every step to 100% with a TIME-COMPRESSED policy (5 s dwell, 40 users \
         per step, an error budget of 30 000 excess failing users/h) so that the demo takes about a minute",
        GOOD.0, GOOD.1
    );
    println!(
        "  both decide at a false-rollback rate α = {DEMO_ALPHA} (the default is 0.05), so the healthy change is not \
         rolled back by chance\n"
    );
    for body in [&bad, &good] {
        let (status, answer) = call_async(http, Method::POST, api, "/api/v1/ramps", Some(body)).await?;
        anyhow::ensure!(status.is_success(), "starting the ramp failed: {answer}");
    }
    let mut screen = view::Screen::new(plain);
    let deadline = started + duration;
    loop {
        tokio::time::sleep(Duration::from_millis(if plain { 1000 } else { 250 })).await;
        let mut shown = Vec::with_capacity(2);
        for flag in [BAD.0, GOOD.0] {
            let (_, ramp) = call_async(http, Method::GET, api, &format!("/api/v1/ramps/{flag}"), None).await?;
            let (_, stats) = call_async(http, Method::GET, api, &format!("/api/v1/stats/{flag}"), None).await?;
            shown.push((ramp, stats));
        }
        screen.draw(started.elapsed(), &shown);
        let finished = shown.iter().all(|(ramp, _)| match ramp["state"].as_str() {
            Some("rolled_back") => ramp["rollback_acked_ms"].is_i64(),
            Some("completed" | "aborted") => true,
            _ => false,
        });
        if finished || Instant::now() >= deadline {
            return Ok(Some(Value::Array(shown.into_iter().map(|(ramp, _)| ramp).collect())));
        }
    }
}

/// Open-loop traffic at `rps` from ever-new users, at most 256 requests in flight.
async fn traffic(sidecar: SocketAddr, rps: u32, stop: CancellationToken) {
    let http = client();
    let in_flight = Arc::new(Semaphore::new(256));
    let requests = TaskTracker::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let url = format!("http://{sidecar}/checkout");
    for user in 0u64.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
        let (http, url) = (http.clone(), url.clone());
        requests.spawn(async move {
            let req = http::Request::get(&url).header("x-user-id", format!("user-{user}")).body(Default::default());
            if let Ok(req) = req {
                // Errors are the point of the demo; the sidecar records them.
                let _ = http.request(req).await;
            }
            drop(permit);
        });
    }
    requests.close();
    requests.wait().await;
}

async fn dora(http: &JsonClient, api: &str) -> anyhow::Result<Value> {
    Ok(call_async(http, Method::GET, api, "/api/v1/dora?window=1d", None).await?.1)
}
