//! Ramps end to end with real processes: a control plane, two sidecars, an upstream that fails
//! for the treatment. A ramp started with the CLI is rolled back automatically and the sidecars
//! stop sending the treatment; a ramp survives a SIGKILL of the control plane at the same step
//! with its history, and the sidecars' flags agree.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use process::checkout::checkout_upstream;
use process::{cli, ramp_status, start_control, start_sidecar};
use serde_json::Value;
use support::*;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
"#;

/// Fails every treatment request while `broken` is set.
async fn broken_treatment(broken: Arc<AtomicBool>) -> SocketAddr {
    checkout_upstream(Arc::new(move |variant| variant == Some("on") && broken.load(Ordering::Relaxed))).await
}

fn status(http: SocketAddr) -> Value {
    ramp_status(http, "new-checkout")
}

async fn flags_version(admin: SocketAddr) -> u64 {
    let (_, body) = get(&format!("http://{admin}/flags"), &[]).await;
    serde_json::from_str::<Value>(&body).unwrap()["version"].as_u64().unwrap()
}

async fn ramp_percent(admin: SocketAddr) -> Option<f64> {
    let (_, body) = get(&format!("http://{admin}/flags"), &[]).await;
    serde_json::from_str::<Value>(&body).unwrap()["flags"]["flags"]["new-checkout"]["ramp"]["percent"].as_f64()
}

/// Sends traffic from many users through the sidecars until `stop`, at most `limit` requests.
fn traffic(
    sidecars: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    limit: usize,
) -> tokio::task::JoinHandle<BTreeMap<String, u64>> {
    tokio::spawn(async move {
        let mut seen = BTreeMap::new();
        for i in 0..limit {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (_, body) =
                get(&format!("http://{}/buy", sidecars[i % sidecars.len()]), &[("x-user-id", &format!("u{i}"))]).await;
            *seen.entry(body).or_insert(0) += 1;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_treatment_is_rolled_back_and_the_sidecars_stop_sending_it() {
    let broken = Arc::new(AtomicBool::new(true));
    let up = broken_treatment(broken.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let control = start_control(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let (grpc, http) = (control.addr("grpc"), control.addr("http"));
    let a = start_sidecar(dir.path(), "a", up, grpc);
    let b = start_sidecar(dir.path(), "b", up, grpc);
    for admin in [a.addr("admin"), b.addr("admin")] {
        assert!(eventually(Duration::from_secs(10), || async { flags_version(admin).await >= 1 }).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(vec![a.addr("listen"), b.addr("listen")], stop.clone(), 200_000);

    let started = cli(
        http,
        &[
            "ramp",
            "start",
            "new-checkout",
            "--treatment",
            "on",
            "--steps",
            "10,50,100",
            "--min-dwell",
            "5s",
            "--change-id",
            "pr-42",
            "--commit-time",
            "2026-11-26T09:30:00+01:00",
        ],
    );
    assert!(started.starts_with("started: new-checkout → on: running at step 1 (10"), "{started}");

    let rolled_back = eventually(Duration::from_secs(60), || async {
        let s = status(http);
        s["state"] == "rolled_back" && s["rollback_acked_ms"].is_i64()
    })
    .await;
    let s = status(http);
    assert!(rolled_back, "{s:#}");
    assert_eq!(s["percent"], 0.0);
    let decision = s["decisions"].as_array().unwrap().iter().find(|d| d["action"] == "ROLLBACK").unwrap().clone();
    assert!(!decision["reason"].as_str().unwrap().is_empty());
    assert!(decision["numbers"]["treatment_units"].as_u64().unwrap() > 0);
    let (decided, acked) = (s["rollback_ms"].as_i64().unwrap(), s["rollback_acked_ms"].as_i64().unwrap());
    println!("rollback decision → last sidecar acknowledgement: {} ms (target ≤ 1 s)", acked - decided);
    println!("rollback reason: {}", decision["reason"]);

    // From now on no request carries the treatment.
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let after = traffic(vec![a.addr("listen"), b.addr("listen")], Arc::new(AtomicBool::new(false)), 200).await.unwrap();
    assert_eq!(after.keys().collect::<Vec<_>>(), ["off"], "{after:?}");

    let dora: Value = serde_json::from_str(&cli(http, &["dora", "--json"])).unwrap();
    assert_eq!(dora["rolled_back"], 1);
    assert_eq!(dora["change_failure_rate"], 1.0);
    assert!(dora["bad_variant_requests"].as_u64().unwrap() > 0);
    assert!(dora["recovery_time_s"].as_f64().unwrap() > 0.0);
    let text = cli(http, &["dora"]);
    assert!(text.contains("change failure rate       100.0%"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_resumes_at_its_step_with_its_history_after_a_sigkill() {
    let up = broken_treatment(Arc::new(AtomicBool::new(false))).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let mut control = start_control(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let (grpc, http) = (control.addr("grpc"), control.addr("http"));
    let a = start_sidecar(dir.path(), "a", up, grpc);
    let b = start_sidecar(dir.path(), "b", up, grpc);
    for admin in [a.addr("admin"), b.addr("admin")] {
        assert!(eventually(Duration::from_secs(10), || async { flags_version(admin).await >= 1 }).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(vec![a.addr("listen"), b.addr("listen")], stop.clone(), 400_000);
    // The service never fails, so there is no error rate to compare: the error budget lets the
    // healthy treatment advance once its latency is shown non-inferior.
    cli(
        http,
        &[
            "ramp",
            "start",
            "new-checkout",
            "--treatment",
            "on",
            "--steps",
            "30,60,100",
            "--min-dwell",
            "1s",
            "--error-budget",
            "1000000",
            "--alpha",
            process::HEALTHY_ALPHA,
        ],
    );
    // A healthy treatment advances to the second step once its bounds show non-inferiority.
    let advanced = eventually(Duration::from_secs(120), || async { status(http)["step"] == 2 }).await;
    assert!(advanced, "{:#}", status(http));
    cli(http, &["ramp", "pause", "new-checkout"]);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let before = status(http);

    control.kill();
    let _control = start_control(dir.path(), &grpc.to_string(), &http.to_string());
    let after = status(http);
    assert_eq!(after["state"], "paused");
    assert_eq!(after["step"], 2);
    assert_eq!(after["percent"], 60.0);
    assert_eq!(after["events"], before["events"], "the history survives");
    assert!(after["decisions"].as_array().unwrap().iter().any(|d| d["action"] == "ADVANCE"));
    for admin in [a.addr("admin"), b.addr("admin")] {
        assert!(eventually(Duration::from_secs(10), || async { ramp_percent(admin).await == Some(60.0) }).await);
    }
    // The restarted control plane carries on: resume, then abort turns the treatment off.
    assert!(cli(http, &["ramp", "resume", "new-checkout"]).contains("running at step 2"));
    assert!(cli(http, &["ramp", "abort", "new-checkout"]).contains("aborted"));
    for admin in [a.addr("admin"), b.addr("admin")] {
        assert!(eventually(Duration::from_secs(5), || async { ramp_percent(admin).await == Some(0.0) }).await);
    }
}
