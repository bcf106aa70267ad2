//! `scenario`: a ramp end to end with real processes. An upstream (in this process) that fails
//! or slows down the requests carrying the treatment, `rampart control` with a temporary store,
//! sidecars (`rampart proxy`) streaming stats every 250 ms, open-loop traffic from ever-new users;
//! then a ramp started through the HTTP API. Reports the time to detect (ramp start → ROLLBACK),
//! the time until the sidecars stop sending the treatment (decision → last sidecar's ack, and
//! decision → the last treatment request the upstream saw) and the requests the bad variant
//! served. `--aa`: the treatment is as good as the control; reports that no rollback happened.

mod stack;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use hyper::header::HeaderName;
use hyper::{Method, Uri};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::load::{self, HeaderTemplate, Pace, Plan, Protocol};
use crate::upstream::{Behavior, Observed};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The `rampart` binary (default: next to this one, i.e. target/release/rampart).
    #[arg(long)]
    rampart: Option<std::path::PathBuf>,
    /// The flag ramped.
    #[arg(long, default_value = "new-checkout")]
    flag: String,
    /// Its treatment variant (the control is the default variant, "off").
    #[arg(long, default_value = "on")]
    treatment: String,
    /// Share of the treatment's requests the upstream answers 500.
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    /// The treatment's latency is the base latency × this.
    #[arg(long, default_value_t = 1.0)]
    slowdown: f64,
    /// Every response's delay.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    base_latency: Duration,
    /// Share of every request answered 500 (both variants).
    #[arg(long, default_value_t = 0.001)]
    base_fail_rate: f64,
    /// A/A: the treatment behaves exactly like the control (no failures or slowdown of its own).
    #[arg(long)]
    aa: bool,
    /// Sidecars in front of the upstream (traffic is spread over them).
    #[arg(long, default_value_t = 2)]
    sidecars: usize,
    /// Open-loop traffic, req/s over all sidecars.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Ramp steps, percent.
    #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
    steps: Vec<f64>,
    #[arg(long, default_value = "30s")]
    min_dwell: String,
    /// Traffic before the ramp starts (the control's baseline).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// The longest the ramp is watched (for --aa: how long it runs).
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Traffic kept after the rollback is acknowledged, to see the treatment stop at the upstream.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Print the result as one JSON line too.
    #[arg(long)]
    json: bool,
}

/// A ramp's status as the API shows it.
async fn ramp_status(http: &Uri, flag: &str) -> anyhow::Result<Value> {
    let uri: Uri = format!("{http}api/v1/ramps/{flag}").parse()?;
    let (status, body) = crate::http::call(Method::GET, &uri, &[], None).await?;
    anyhow::ensure!(status == 200, "GET {uri}: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!((1..=16).contains(&args.sidecars), "--sidecars: 1..=16");
    anyhow::ensure!(args.duration <= Duration::from_secs(600), "--duration is bounded to 10 minutes");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate) && (0.0..=1.0).contains(&args.base_fail_rate),
        "rates: 0..=1"
    );
    let rampart = match &args.rampart {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("rampart"),
    };
    anyhow::ensure!(
        rampart.exists(),
        "no rampart binary at {} (cargo build --release, or --rampart)",
        rampart.display()
    );
    let header = HeaderName::try_from(format!("x-flag-{}", args.flag)).context("--flag cannot be a header name")?;
    let behavior = Behavior {
        bad: Some((header, args.treatment.clone())),
        fail_rate: if args.aa { args.base_fail_rate } else { args.fail_rate.max(args.base_fail_rate) },
        base_fail_rate: args.base_fail_rate,
        base_latency: args.base_latency,
        slowdown: if args.aa { 1.0 } else { args.slowdown },
    };

    let seen = Arc::new(Observed::default());
    let stop = CancellationToken::new();
    let stack = stack::Stack::start(&rampart, &args, Arc::new(behavior), seen.clone(), stop.clone()).await?;
    eprintln!(
        "control plane {} (pid {}), sidecars {:?}, upstream {}",
        stack.http,
        stack.control_pid(),
        stack.sidecars.iter().map(|s| s.listen).collect::<Vec<_>>(),
        stack.upstream
    );

    // Traffic for the whole watch, stopped early through `traffic_stop`.
    let mut targets = Vec::new();
    for s in &stack.sidecars {
        targets.push(load::target(&format!("http://{}/buy", s.listen).parse()?, Protocol::Http1).await?);
    }
    let plan = Plan {
        connections: 8 * args.sidecars,
        duration: args.baseline + args.duration + args.settle,
        warmup: Duration::ZERO,
        headers: vec![HeaderTemplate::parse("x-user-id: u-{random}")?],
        ..Plan::new(targets, Pace::Open { rate: args.rate })
    }
    .validate()?;
    let traffic_stop = CancellationToken::new();
    let traffic = tokio::spawn(load::execute(Arc::new(plan), traffic_stop.clone()));
    let interrupted = stop.clone();
    let signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupted.cancel();
        }
    });

    tokio::time::sleep(args.baseline).await;
    let body =
        json!({ "flag": args.flag, "treatment": args.treatment, "steps": args.steps, "min_dwell": args.min_dwell });
    let uri: Uri = format!("{}api/v1/ramps", stack.http).parse()?;
    let (status, text) = crate::http::call(Method::POST, &uri, &[], Some(&body)).await?;
    anyhow::ensure!(status == 201, "POST {uri}: {status} {text}");
    let started: Value = serde_json::from_str(&text)?;
    eprintln!("ramp started: {} → {} at {}%", args.flag, args.treatment, started["percent"]);

    let deadline = tokio::time::Instant::now() + args.duration;
    let mut last = started;
    let mut bad_at_ack = None;
    while tokio::time::Instant::now() < deadline && !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = ramp_status(&stack.http, &args.flag).await?;
        if last["state"] == "rolled_back" && last["rollback_acked_ms"].is_i64() {
            bad_at_ack = Some(seen.bad_requests.load(Ordering::Relaxed));
            break;
        }
        if args.aa && last["state"] != "running" {
            break;
        }
    }
    if bad_at_ack.is_some() {
        tokio::time::sleep(args.settle).await;
        // The control plane counts the exposed requests at its ticks after the acknowledgement.
        last = ramp_status(&stack.http, &args.flag).await?;
    }
    traffic_stop.cancel();
    let load = traffic.await.context("traffic task")??;
    signal.abort();
    let result = Outcome::new(&args, &last, &seen, bad_at_ack, load);
    drop(stack);
    stop.cancel();

    println!("{}", result.text());
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    }
    Ok(if result.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a scenario found.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    mode: &'static str,
    aa: bool,
    passed: bool,
    state: String,
    step: Value,
    percent: Value,
    rollback_reason: Option<String>,
    /// Ramp start → ROLLBACK decision.
    time_to_detect_ms: Option<i64>,
    /// First tick with treatment traffic → ROLLBACK decision.
    time_to_detect_from_exposure_ms: Option<i64>,
    /// ROLLBACK decision → every sidecar serves the flags without the treatment.
    decision_to_last_ack_ms: Option<i64>,
    /// ROLLBACK decision → the last treatment request the upstream saw (≤ 0: none after the decision).
    decision_to_last_bad_at_upstream_ms: Option<i64>,
    /// Treatment requests the upstream served, in all.
    bad_requests_at_upstream: u64,
    /// …of which after the last sidecar acknowledged the rollback (in flight then).
    bad_requests_after_ack: Option<u64>,
    /// The control plane's count of treatment requests until the rollback was acknowledged.
    exposed_requests: Value,
    upstream_requests: u64,
    upstream_errors: u64,
    traffic: load::Summary,
}

impl Outcome {
    fn new(args: &Args, s: &Value, seen: &Observed, bad_at_ack: Option<u64>, traffic: load::Summary) -> Outcome {
        let ms = |k: &str| s[k].as_i64();
        let rollback = ms("rollback_ms");
        let last_bad = Some(seen.last_bad_ms.load(Ordering::Relaxed)).filter(|&t| t > 0);
        let bad = seen.bad_requests.load(Ordering::Relaxed);
        let state = s["state"].as_str().unwrap_or("?").to_owned();
        let reason = s["decisions"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["action"] == "ROLLBACK"))
            .and_then(|d| d["reason"].as_str())
            .map(str::to_owned);
        let passed = if args.aa {
            matches!(state.as_str(), "running" | "completed")
        } else {
            state == "rolled_back" && bad_at_ack.is_some()
        };
        Outcome {
            mode: "scenario",
            aa: args.aa,
            passed,
            step: s["step"].clone(),
            percent: s["percent"].clone(),
            rollback_reason: reason,
            time_to_detect_ms: rollback.zip(ms("started_ms")).map(|(r, st)| r - st),
            time_to_detect_from_exposure_ms: rollback.zip(ms("first_exposure_ms")).map(|(r, e)| r - e),
            decision_to_last_ack_ms: ms("rollback_acked_ms").zip(rollback).map(|(a, r)| a - r),
            decision_to_last_bad_at_upstream_ms: rollback.zip(last_bad).map(|(r, b)| b - r),
            bad_requests_at_upstream: bad,
            bad_requests_after_ack: bad_at_ack.map(|at| bad - at),
            exposed_requests: s["exposed_requests"].clone(),
            upstream_requests: seen.requests.load(Ordering::Relaxed),
            upstream_errors: seen.errors.load(Ordering::Relaxed),
            traffic,
            state,
        }
    }

    fn text(&self) -> String {
        let ms = |v: Option<i64>| v.map_or("–".to_owned(), |m| format!("{m} ms"));
        let mut out = format!(
            "{}: ramp {} at step {} ({}%) — {}\n",
            if self.aa { "A/A scenario" } else { "regression scenario" },
            self.state,
            self.step,
            self.percent,
            if self.passed { "as expected" } else { "NOT as expected" }
        );
        if let Some(r) = &self.rollback_reason {
            out.push_str(&format!("  rollback reason: {r}\n"));
        }
        out.push_str(&format!(
            "  time to detect (ramp start → ROLLBACK): {} (from the first exposure: {})\n\
             \x20 time to stop: decision → last sidecar ack {}; decision → last treatment request at the upstream {}\n\
             \x20 treatment requests served: {} at the upstream ({} after the ack); control plane's exposed_requests: {}\n\
             \x20 traffic: {}",
            ms(self.time_to_detect_ms),
            ms(self.time_to_detect_from_exposure_ms),
            ms(self.decision_to_last_ack_ms),
            ms(self.decision_to_last_bad_at_upstream_ms),
            self.bad_requests_at_upstream,
            self.bad_requests_after_ack.map_or("–".to_owned(), |n| n.to_string()),
            self.exposed_requests,
            self.traffic
        ));
        out
    }
}
