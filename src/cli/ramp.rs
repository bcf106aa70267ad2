//! `rampart ramp start|status|pause|resume|abort` and `rampart dora`: the operator's interface,
//! over the control plane's HTTP API.

use std::process::ExitCode;

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};

use super::http::{DEFAULT_CONTROL_PLANE, call, expect_ok};

#[derive(Debug, clap::Args)]
pub(crate) struct RampArgs {
    #[command(subcommand)]
    command: RampCommand,
    /// The control plane's HTTP API.
    #[arg(long, global = true, env = "RAMPART_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    control_plane: String,
}

#[derive(Debug, clap::Subcommand)]
enum RampCommand {
    /// Start ramping FLAG's treatment variant.
    Start {
        flag: String,
        #[arg(long)]
        treatment: String,
        /// Percent steps, ending at 100; the step before 100 keeps a holdback (a concurrent
        /// control), and 100% is reached only once it passes.
        #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,95,100")]
        steps: Vec<f64>,
        /// Least time at each step, e.g. 60s or 2m.
        #[arg(long, default_value = "60s")]
        min_dwell: String,
        /// The ramp's false-rollback / false-promotion budget.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        /// Least treatment units (users) at each step before advancing.
        #[arg(long)]
        min_samples: Option<u64>,
        /// Advance when the treatment's relative risk of failing (and of being slow) is shown
        /// below 1 + DELTA.
        #[arg(long, default_value_t = 0.5)]
        delta: f64,
        /// Or, where traffic is too low to show that, when the excess failing (or slow) requests
        /// per hour the next step could add stay under this many.
        #[arg(long)]
        error_budget: Option<f64>,
        /// The change being deployed (commit, PR), for DORA.
        #[arg(long)]
        change_id: Option<String>,
        /// When the change was committed (RFC 3339), for lead time (default: from a deployment
        /// the pipeline recorded for this flag).
        #[arg(long)]
        commit_time: Option<String>,
        /// Block until the ramp completes (exit 0), is rolled back (exit 2) or aborted (exit 3):
        /// a pipeline can gate on it.
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this long (exit 4), e.g. 2h; default: wait as long as it takes.
        #[arg(long, requires = "wait")]
        timeout: Option<String>,
    },
    /// Show a ramp (the latest per flag), or all ramps.
    Status {
        flag: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop deciding; the treatment stays at its percent.
    Pause { flag: String },
    /// Decide again (the dwell at the current step restarts).
    Resume { flag: String },
    /// End the ramp and turn the treatment off.
    Abort { flag: String },
}

#[derive(Debug, clap::Args)]
pub(crate) struct DoraArgs {
    /// The period, e.g. 30d, 7d, 12h.
    #[arg(long, default_value = "30d")]
    window: String,
    #[arg(long)]
    json: bool,
    #[arg(long, env = "RAMPART_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    control_plane: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// Only the changes of this flag.
    #[arg(long)]
    flag: Option<String>,
    /// How many of the latest changes.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long)]
    json: bool,
    #[arg(long, env = "RAMPART_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    control_plane: String,
}

/// `rampart audit`: who changed what, oldest first.
pub(crate) fn audit(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    if let Some(flag) = &args.flag {
        path.push_str("&flag=");
        path.extend(form_urlencoded::byte_serialize(flag.as_bytes()));
    }
    let answer = expect_ok(call(Method::GET, &args.control_plane, &path, None)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    for a in answer["audit"].as_array().into_iter().flatten() {
        let at = a["at_ms"]
            .as_i64()
            .and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        let version = a["version"].as_u64().map_or_else(|| "–".to_owned(), |v| format!("v{v}"));
        println!(
            "{at}  {:<12} {:<15} {:<20} {:>5}  {}",
            a["actor"].as_str().unwrap_or(""),
            a["action"].as_str().unwrap_or(""),
            a["flag"].as_str().unwrap_or("–"),
            version,
            a["detail"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn ramp(args: &RampArgs) -> anyhow::Result<ExitCode> {
    let base = args.control_plane.as_str();
    match &args.command {
        RampCommand::Start {
            flag,
            treatment,
            steps,
            min_dwell,
            alpha,
            min_samples,
            delta,
            error_budget,
            change_id,
            commit_time,
            wait,
            timeout,
        } => {
            let body = json!({
                "flag": flag, "treatment": treatment, "steps": steps, "min_dwell": min_dwell, "alpha": alpha,
                "min_samples": min_samples, "delta": delta, "error_budget": error_budget,
                "change_id": change_id, "commit_time": commit_time,
            });
            let body = strip_nulls(body);
            let status = expect_ok(call(Method::POST, base, "/api/v1/ramps", Some(&body))?)?;
            println!("started: {}", summary(&status));
            if *wait {
                let limit = timeout
                    .as_deref()
                    .map(|t| humantime::parse_duration(t).with_context(|| format!("--timeout {t}")))
                    .transpose()?;
                return wait_for(base, flag, status["id"].as_i64(), limit);
            }
        }
        RampCommand::Status { flag: Some(flag), json } => {
            let status = expect_ok(call(Method::GET, base, &format!("/api/v1/ramps/{flag}"), None)?)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        RampCommand::Status { flag: None, json } => {
            let list = expect_ok(call(Method::GET, base, "/api/v1/ramps", None)?)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for r in list["ramps"].as_array().into_iter().flatten() {
                    println!("{}", summary(r));
                }
            }
        }
        RampCommand::Pause { flag } | RampCommand::Resume { flag } | RampCommand::Abort { flag } => {
            let action = match &args.command {
                RampCommand::Pause { .. } => "pause",
                RampCommand::Resume { .. } => "resume",
                _ => "abort",
            };
            let status = expect_ok(call(Method::POST, base, &format!("/api/v1/ramps/{flag}/{action}"), None)?)?;
            println!("{}", summary(&status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ramp start --wait`: follows ramp `id` of `flag` until it finishes; prints each change of step
/// or state.
fn wait_for(base: &str, flag: &str, id: Option<i64>, limit: Option<std::time::Duration>) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    let mut failures = 0;
    loop {
        match call(Method::GET, base, &format!("/api/v1/ramps/{flag}"), None).and_then(expect_ok) {
            Ok(status) => {
                failures = 0;
                if id.is_some() && status["id"].as_i64() != id {
                    anyhow::bail!("another ramp of {flag} replaced the one started");
                }
                let now = summary(&status);
                if now != last {
                    println!("{now}");
                    last = now;
                }
                let reason = || {
                    let decisions = status["decisions"].as_array();
                    decisions.and_then(|d| d.last()).and_then(|d| d["reason"].as_str()).unwrap_or("").to_owned()
                };
                match status["state"].as_str() {
                    Some("completed") => return Ok(ExitCode::SUCCESS),
                    Some("rolled_back") => {
                        eprintln!("rolled back: {}", reason());
                        return Ok(ExitCode::from(2));
                    }
                    Some("aborted") => {
                        eprintln!("aborted by an operator");
                        return Ok(ExitCode::from(3));
                    }
                    _ => {}
                }
            }
            // The control plane may be restarting or failing over: keep asking for a while.
            Err(e) => {
                failures += 1;
                if failures >= 30 {
                    return Err(e.context("the control plane stopped answering"));
                }
            }
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            eprintln!("still {last} after {:?}", started.elapsed());
            return Ok(ExitCode::from(4));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

pub(crate) fn dora(args: &DoraArgs) -> anyhow::Result<ExitCode> {
    let d = expect_ok(call(Method::GET, &args.control_plane, &format!("/api/v1/dora?window={}", args.window), None)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let secs = |v: &Value| v.as_f64().map_or("–".to_owned(), |s| format!("{s:.1} s"));
    println!("DORA over {}", args.window);
    println!("  deployments started       {}", d["deployments"]);
    println!(
        "  deployment frequency      {:.2} per day ({} completed)",
        d["deployment_frequency_per_day"].as_f64().unwrap_or(0.0),
        d["completed"]
    );
    println!("  lead time for changes     {}", secs(&d["lead_time_s"]));
    let cfr = d["change_failure_rate"].as_f64().map_or("–".to_owned(), |r| format!("{:.1}%", r * 100.0));
    println!("  change failure rate       {cfr} ({} rolled back)", d["rolled_back"]);
    println!("  recovery time             {}", secs(&d["recovery_time_s"]));
    println!("  time to detect            {}", secs(&d["time_to_detect_s"]));
    println!("  bad-variant requests      {}", d["bad_variant_requests"]);
    let c = &d["confidence"];
    let pct = |v: &Value| v.as_f64().map_or("–".to_owned(), |r| format!("{:.1}%", r * 100.0));
    println!("developer confidence ({} ramps finished)", c["finished"]);
    println!("  completion rate           {}", pct(&c["completion_rate"]));
    println!("  abandon rate              {}", pct(&c["abandon_rate"]));
    let per = c["interventions_per_ramp"].as_f64().map_or("–".to_owned(), |n| format!("{n:.2}"));
    println!("  interventions per ramp    {per}");
    println!("  rollbacks                 {} automatic, {} by people", c["automatic_rollbacks"], c["human_rollbacks"]);
    println!("  time to 100% (median)     {}", secs(&c["median_time_to_100_s"]));
    println!("  untouched deployments     {}", pct(&c["untouched_share"]));
    Ok(ExitCode::SUCCESS)
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, value| !value.is_null());
    }
    v
}

fn summary(r: &Value) -> String {
    format!(
        "{} → {}: {} at step {} ({}%)",
        r["flag"].as_str().unwrap_or("?"),
        r["treatment"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["step"],
        r["percent"]
    )
}

fn print_status(s: &Value) {
    println!("{}", summary(s));
    let p = &s["plan"];
    if !p.is_null() {
        let t = |v: &Value| v.as_f64().map_or("never at this traffic".to_owned(), |s| format!("{:.0} s", s));
        println!(
            "  plan     at {:.1} units/s: a 2× error regression rolls back in ≈ {}, a 2× latency one in ≈ {}; \
             an equal treatment reaches 100% in ≈ {}",
            p["units_per_second"].as_f64().unwrap_or(0.0),
            t(&p["detect_2x_errors_s"]),
            t(&p["detect_2x_latency_s"]),
            t(&p["to_full_s"])
        );
    }
    for e in s["events"].as_array().into_iter().flatten() {
        println!(
            "  event    {:>13}  {:<22} {}",
            e["at_ms"],
            e["kind"].as_str().unwrap_or(""),
            e["detail"].as_str().unwrap_or("")
        );
    }
    if let Some(last) = s["decisions"].as_array().and_then(|d| d.last()) {
        println!(
            "  latest   {:>13}  {:<22} {}",
            last["at_ms"],
            last["action"].as_str().unwrap_or(""),
            last["reason"].as_str().unwrap_or("")
        );
    }
}
