//! Flags as a platform primitive, end to end with real processes (a control plane, a sidecar, an
//! upstream): a flag created with `rampart flag create` ramps to 100% (`ramp start --wait` exits
//! 0), its recorded deployment gives the ramp its lead time, it becomes launched and, with the
//! clock moved past its lifetime (`--at`), stale; archiving serves its default. `ramp start
//! --wait` exits 2 on a rollback. The example CI workflow's `rampart` steps run as written.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use process::checkout::checkout_upstream;
use process::{Running, cli, start_control, start_sidecar};
use serde_json::Value;
use support::*;

const NO_FLAGS: &str = "flags: {}\n";

const CHECKOUT: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
"#;

/// `rampart <args>` against the API at `http`: exit code, stdout, stderr.
fn run(http: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .env("RAMPART_CONTROL_PLANE", format!("http://{http}"))
        .env("RAMPART_ACTOR", "ci-bot")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(http: SocketAddr, args: &[&str]) -> Value {
    serde_json::from_str(&cli(http, args)).unwrap()
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Requests through `sidecar` from many users until `stop` (bounded): the variants seen.
fn traffic(sidecar: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0;
        for i in 0..400_000u64 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let _ = get(&format!("http://{sidecar}/buy"), &[("x-user-id", &format!("u{i}"))]).await;
            n += 1;
        }
        n
    })
}

/// A control plane with `CHECKOUT`'s flags in `dir` and a ready sidecar in front of an upstream
/// failing by `fails`: both processes, and the control plane's API.
async fn control_and_sidecar(dir: &std::path::Path, fails: process::checkout::Rule) -> (Running, Running, SocketAddr) {
    let up = checkout_upstream(fails).await;
    std::fs::write(dir.join("flags.yaml"), CHECKOUT).unwrap();
    let control = start_control(dir, "127.0.0.1:0", "127.0.0.1:0");
    let (grpc, http) = (control.addr("grpc"), control.addr("http"));
    let sidecar = start_sidecar(dir, "a", up, grpc);
    let admin = sidecar.addr("admin");
    let ready = || async { get(&format!("http://{admin}/readyz"), &[]).await.0 == 200 };
    assert!(eventually(Duration::from_secs(10), ready).await);
    (control, sidecar, http)
}

/// `rampart ramp start ARGS --wait` while traffic flows through `sidecar`: exit code, stdout, stderr.
async fn ramp_and_wait(http: SocketAddr, sidecar: SocketAddr, args: &'static [&'static str]) -> (i32, String, String) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(sidecar, stop.clone());
    let mut all = vec!["ramp", "start"];
    all.extend_from_slice(args);
    all.push("--wait");
    let answer = tokio::task::spawn_blocking(move || run(http, &all)).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    answer
}

fn life(http: SocketAddr, flag: &str, at: Option<&str>) -> Value {
    let mut args = vec!["flag", "list", "--json"];
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    let list = json(http, &args);
    list["flags"].as_array().unwrap().iter().find(|f| f["flag"] == flag).cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_flag_ramps_to_100_is_launched_then_stale_after_its_lifetime() {
    let up = checkout_upstream(Arc::new(|_| false)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), NO_FLAGS).unwrap();
    let control = start_control(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let (grpc, http) = (control.addr("grpc"), control.addr("http"));

    // Ten seconds, not a ticket: one command adds the flag with its owner and lifetime.
    let created = cli(
        http,
        &[
            "flag",
            "create",
            "new-search",
            "--owner",
            "search-team",
            "--description",
            "the new search",
            "--expires",
            "90d",
        ],
    );
    assert!(created.starts_with("created new-search (owner search-team)"), "{created}");
    let (code, _, err) = run(http, &["flag", "create", "new-search", "--owner", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");
    let l = life(http, "new-search", None);
    assert_eq!((l["stage"].as_str(), l["owner"].as_str()), (Some("new"), Some("search-team")), "{l:#}");

    let sidecar = start_sidecar(dir.path(), "a", up, grpc);
    let admin = sidecar.addr("admin");
    let flags_has = |key: &'static str| async move {
        let (_, body) = get(&format!("http://{admin}/flags"), &[]).await;
        body.contains(key)
    };
    assert!(eventually(Duration::from_secs(10), || flags_has("new-search")).await);

    // The pipeline records the deployment (committed two hours ago) before the ramp.
    let commit_ms = now_ms() - 2 * 3_600_000;
    let recorded = cli(
        http,
        &[
            "deploy",
            "record",
            "--service",
            "shop",
            "--commit",
            "abc123",
            "--commit-time",
            &rfc3339(commit_ms),
            "--pr",
            "https://git.example/pr/7",
            "--flags",
            "new-search",
        ],
    );
    assert!(recorded.contains("recorded deployment"), "{recorded}");

    // The service never fails: the error budget lets the healthy treatment advance.
    let args = &[
        "new-search",
        "--treatment",
        "on",
        "--steps",
        "50,100",
        "--min-dwell",
        "1s",
        "--error-budget",
        "1000000",
        "--alpha",
        process::HEALTHY_ALPHA,
        "--timeout",
        "150s",
    ];
    let (code, out, err) = ramp_and_wait(http, sidecar.addr("listen"), args).await;
    assert_eq!(code, 0, "ramp start --wait: {out}\n{err}");
    assert!(out.contains("completed"), "{out}");

    // The deployment gave the ramp its commit: lead time from the commit, no one typed it.
    let status = json(http, &["ramp", "status", "new-search", "--json"]);
    assert_eq!(status["state"], "completed");
    assert_eq!(status["commit_ms"].as_i64(), Some(commit_ms / 1000 * 1000), "{status:#}");
    assert!(status["deployment_id"].as_i64().is_some());
    assert_eq!(status["started_by"], "ci-bot (unverified)");
    let dora = json(http, &["dora", "--json"]);
    let lead = dora["lead_time_s"].as_f64().unwrap();
    let expected = (status["finished_ms"].as_i64().unwrap() - commit_ms / 1000 * 1000) as f64 / 1000.0;
    assert!((lead - expected).abs() < 0.01, "lead time {lead} s, from the commit {expected} s");
    assert_eq!(dora["confidence"]["completion_rate"], 1.0);
    assert_eq!(dora["confidence"]["untouched_share"], 1.0);

    // At 100%: launched, and the sidecar's reports say it was evaluated.
    assert!(
        eventually(Duration::from_secs(10), || async { life(http, "new-search", None)["last_evaluated_ms"].is_i64() })
            .await
    );
    let l = life(http, "new-search", None);
    assert_eq!(l["stage"], "launched", "{l:#}");
    // Ten days on it is still launched; 91 days after its creation it is past its lifetime.
    let created_ms = l["created_ms"].as_i64().unwrap();
    assert_eq!(life(http, "new-search", Some(&rfc3339(now_ms() + 10 * 86_400_000)))["stage"], "launched");
    let later = rfc3339(created_ms + 91 * 86_400_000);
    let stale = json(http, &["flag", "stale", "--json", "--at", &later]);
    let listed = stale["flags"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{stale:#}");
    assert_eq!(listed[0]["flag"], "new-search");
    assert!(listed[0]["reason"].as_str().unwrap().contains("expected lifetime of 90d"), "{stale:#}");
    let text = cli(http, &["flag", "stale", "--at", &later]);
    assert!(text.starts_with("search-team:\n  new-search"), "{text}");

    // The gauges per stage and owner.
    let launched = eventually(Duration::from_secs(15), || async {
        let (_, metrics) = get(&format!("http://{http}/metrics"), &[]).await;
        metrics.contains("rampart_flags{stage=\"launched\",owner=\"search-team\"} 1")
    })
    .await;
    assert!(launched);

    // Archived: listed as removable, served as its default.
    assert!(cli(http, &["flag", "archive", "new-search"]).starts_with("archived new-search"));
    assert_eq!(life(http, "new-search", None)["stage"], "archived");
    let ofrep = sidecar.addr("ofrep");
    let served_default = eventually(Duration::from_secs(5), || async {
        let url = format!("http://{ofrep}/ofrep/v1/evaluate/flags/new-search");
        let (_, _, answer) = post_json(&url, r#"{"context": {"targetingKey": "u1"}}"#, &[]).await;
        answer["variant"] == "off" && answer["reason"] == "STATIC"
    })
    .await;
    assert!(served_default, "an archived flag is served as its default");
    let audit = cli(http, &["audit", "--flag", "new-search"]);
    assert!(audit.contains("ci-bot (unverified) ramp_start"), "{audit}");
    assert!(audit.contains("flag_create") && audit.contains("flag_archive"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_start_wait_exits_non_zero_on_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, sidecar, http) = control_and_sidecar(dir.path(), Arc::new(|variant| variant == Some("on"))).await;
    let args = &["new-checkout", "--treatment", "on", "--steps", "20,50,100", "--min-dwell", "5s", "--timeout", "120s"];
    let (code, out, err) = ramp_and_wait(http, sidecar.addr("listen"), args).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("rolled back:"), "{err}");
    let dora = json(http, &["dora", "--json"]);
    assert_eq!(dora["confidence"]["automatic_rollbacks"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_ci_workflow_records_the_deployment_and_gates_on_the_ramp() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, sidecar, http) = control_and_sidecar(dir.path(), Arc::new(|_| false)).await;

    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ci/github-actions.yml")).unwrap();
    let workflow: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    // What GitHub would put in the `${{ … }}` expressions.
    let commit_ms = now_ms() - 3_600_000;
    let github = [
        ("${{ vars.RAMPART_CONTROL_PLANE }}", format!("http://{http}")),
        ("${{ secrets.RAMPART_TOKEN }}", String::new()),
        ("${{ github.actor }}", "octocat".to_owned()),
        ("${{ github.sha }}", "0123abc".to_owned()),
        ("${{ github.event.head_commit.timestamp }}", rfc3339(commit_ms)),
        ("${{ github.event.head_commit.url }}", "https://git.example/commit/0123abc".to_owned()),
    ];
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in workflow["env"].as_mapping().unwrap() {
        let mut value = match v {
            serde_norway::Value::String(s) => s.clone(),
            other => serde_norway::to_string(other).unwrap().trim().to_owned(),
        };
        for (expr, with) in &github {
            value = value.replace(expr, with);
        }
        assert!(!value.contains("${{"), "an expression the test does not supply: {value}");
        env.push((k.as_str().unwrap().to_owned(), value));
    }
    // A time-compressed ramp for the test (the workflow's defaults are 10 minutes per step).
    env.extend([
        ("RAMP_STEPS".to_owned(), "50,100".to_owned()),
        ("RAMP_MIN_DWELL".to_owned(), "1s".to_owned()),
        ("RAMP_ERROR_BUDGET".to_owned(), "1000000".to_owned()),
        ("RAMP_TIMEOUT".to_owned(), "150s".to_owned()),
    ]);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_rampart")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(sidecar.addr("listen"), stop.clone());
    let steps = workflow["jobs"]["deploy"]["steps"].as_sequence().unwrap().clone();
    let mut ran = 0;
    for step in steps {
        let Some(script) = step["run"].as_str().map(str::to_owned) else { continue };
        if !script.contains("rampart ") {
            continue; // deploying the service itself is the pipeline's own business
        }
        let (env, path) = (env.clone(), path.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash").args(["-euo", "pipefail", "-c", &script]).envs(env).env("PATH", path).output().unwrap()
        })
        .await
        .unwrap();
        let name = step["name"].as_str().unwrap_or("?").to_owned();
        assert!(
            out.status.success(),
            "step {name:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(ran, 3, "record, ramp --wait, status");
    let status = json(http, &["ramp", "status", "new-checkout", "--json"]);
    assert_eq!(status["state"], "completed");
    assert_eq!(status["commit_ms"].as_i64(), Some(commit_ms / 1000 * 1000));
    assert_eq!(status["started_by"], "octocat (unverified)");
    let deployments = json(http, &["deploy", "list", "--json"]);
    assert_eq!(deployments["deployments"][0]["commit"], "0123abc");
}
