//! Control-plane replicas on one real PostgreSQL (started by the test), with real processes: two
//! `rampart control` replicas, four sidecars split across them (each given both replicas, its
//! own first), a real upstream. A flags PUT on one replica reaches the other's sidecars within a
//! second; while traffic flows, the follower is SIGKILLed (its sidecars move to the leader) and
//! restarted, then the leader is SIGKILLed mid-ramp just as the treatment turns bad: the restarted
//! replica takes the lead and rolls the ramp back within 10 s of the kill, and every request sent
//! is counted exactly once.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use process::checkout::checkout_upstream;
use process::postgres::Postgres;
use process::{Running, start};
use serde_json::Value;
use support::*;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
"#;

/// The same flag, now recorded from its first request (`metadata.track`).
const TRACKED: &str = r#"{"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false},
  "defaultVariant": "off", "metadata": {"track": true}}}}"#;

/// Starts replica `name` on the shared store (same ports when restarted: `grpc`/`http` given).
fn start_replica(dir: &Path, name: &str, store: &str, grpc: &str, http: &str) -> Running {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "grpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\nflags = \"flags.yaml\"\nstore = \"{store}\"\n\
             replica = \"{name}\"\n"
        ),
    )
    .unwrap();
    start(&["control"], &config, "rampart control serving")
}

/// A sidecar of service `shop` that tries the control planes in the order given.
fn start_sidecar(dir: &Path, name: &str, upstream: SocketAddr, controls: &[SocketAddr]) -> Running {
    let list: Vec<String> = controls.iter().map(|c| format!("\"http://{c}\"")).collect();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
             control_plane = [{}]\nservice = \"shop\"\nproxy_id = \"{name}\"\n\
             report_interval = \"200ms\"\nflags_cache = \"{name}.cache.json\"\n\
             [context]\ntargetingKey = [\"header:x-user-id\"]\n\
             [queries]\ngrpc = \"127.0.0.1:0\"\nofrep = \"127.0.0.1:0\"\n",
            list.join(", ")
        ),
    )
    .unwrap();
    start(&["proxy"], &config, "rampart proxy serving")
}

async fn json(url: String) -> Value {
    let (status, body) = get(&url, &[]).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Sends a JSON body with `method` to the control plane's API: status and JSON answer.
async fn call(method: &str, url: String, body: &str) -> (u16, Value) {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(bytes::Bytes::from(body.to_owned())).map_err(|never| match never {}).boxed();
    let req =
        http::Request::builder().method(method).uri(url).header("content-type", "application/json").body(body).unwrap();
    let (status, _, body) = send(req).await;
    (status.as_u16(), serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn leader(http: SocketAddr) -> Option<String> {
    let (status, body) = get(&format!("http://{http}/api/v1/replicas"), &[]).await;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["replicas"].as_array()?.iter().find(|r| r["leader"] == true).and_then(|r| r["id"].as_str().map(str::to_owned))
}

async fn flags_version(admin: SocketAddr) -> u64 {
    json(format!("http://{admin}/flags")).await["version"].as_u64().unwrap()
}

/// Requests of every variant of the flag counted by the control planes.
async fn counted(http: SocketAddr) -> Option<u64> {
    let (status, body) = get(&format!("http://{http}/api/v1/stats/new-checkout"), &[]).await;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    Some(v["variants"].as_object()?.values().filter_map(|s| s["requests"].as_u64()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fail_over_without_losing_or_double_counting_and_the_new_leader_rolls_back() {
    let pg = Postgres::start();
    let store = pg.url();
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let up = checkout_upstream(Arc::new(move |variant| variant == Some("on") && flag.load(Ordering::Relaxed))).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();

    let mut r1 = start_replica(dir.path(), "r1", &store, "127.0.0.1:0", "127.0.0.1:0");
    let (grpc1, http1) = (r1.addr("grpc"), r1.addr("http"));
    assert!(eventually(Duration::from_secs(10), || async { leader(http1).await.as_deref() == Some("r1") }).await);
    let mut r2 = start_replica(dir.path(), "r2", &store, "127.0.0.1:0", "127.0.0.1:0");
    let (grpc2, http2) = (r2.addr("grpc"), r2.addr("http"));

    let s1 = start_sidecar(dir.path(), "s1", up, &[grpc1, grpc2]);
    let s2 = start_sidecar(dir.path(), "s2", up, &[grpc1, grpc2]);
    let s3 = start_sidecar(dir.path(), "s3", up, &[grpc2, grpc1]);
    let s4 = start_sidecar(dir.path(), "s4", up, &[grpc2, grpc1]);
    let sidecars = [&s1, &s2, &s3, &s4];
    for s in sidecars {
        let admin = s.addr("admin");
        assert!(eventually(Duration::from_secs(10), || async { flags_version(admin).await >= 1 }).await);
    }
    let replicas = json(format!("http://{http2}/api/v1/replicas")).await;
    assert_eq!(replicas["replicas"].as_array().unwrap().len(), 2, "{replicas:#}");

    // A flags PUT on the follower (carried out by the leader) reaches the leader's sidecars
    // within a second.
    let put_at = Instant::now();
    let (status, put) = call("PUT", format!("http://{http2}/api/v1/flags"), TRACKED).await;
    assert_eq!(status, 200, "{put}");
    let version = put["version"].as_u64().unwrap();
    for s in [&s1, &s2] {
        let admin = s.addr("admin");
        let reached = eventually(Duration::from_secs(1), || async { flags_version(admin).await >= version }).await;
        assert!(reached, "the PUT on r2 did not reach {admin} (connected to r1) within 1 s");
    }
    println!("flags PUT on r2 → r1's sidecars serve it: {} ms", put_at.elapsed().as_millis());

    // Traffic: exactly `TOTAL` requests, many users, across the four sidecars.
    const TOTAL: u64 = 6_000;
    let sent = Arc::new(AtomicU64::new(0));
    let listens: Vec<SocketAddr> = sidecars.iter().map(|s| s.addr("listen")).collect();
    let sent2 = sent.clone();
    let load = tokio::spawn(async move {
        for i in 0..TOTAL {
            let url = format!("http://{}/buy", listens[(i % 4) as usize]);
            let (status, _) = get(&url, &[("x-user-id", &format!("u{}", i % 3_000))]).await;
            assert!(status == 200 || status == 500, "{status}");
            sent2.fetch_add(1, Ordering::Relaxed);
            // About 400 requests a second: the run lasts long enough for both kills.
            tokio::time::sleep(Duration::from_micros(2_500)).await;
        }
    });

    // A ramp, started on the follower, holding at its first step.
    let (status, ramp) = call(
        "POST",
        format!("http://{http2}/api/v1/ramps"),
        r#"{"flag": "new-checkout", "treatment": "on", "steps": [30, 60, 100], "min_dwell": "10m"}"#,
    )
    .await;
    assert_eq!(status, 201, "{ramp}");

    // (b) The follower dies: its sidecars move to the leader. It comes back on the same ports.
    let at = |n: u64| {
        let sent = sent.clone();
        async move { eventually(Duration::from_secs(60), || async { sent.load(Ordering::Relaxed) >= n }).await }
    };
    assert!(at(TOTAL / 4).await);
    r2.kill();
    assert!(at(TOTAL / 2).await);
    r2 = start_replica(dir.path(), "r2", &store, &grpc2.to_string(), &http2.to_string());

    // (a) The leader dies mid-ramp just as the treatment turns bad.
    assert!(at(TOTAL * 5 / 8).await);
    let status = json(format!("http://{http2}/api/v1/ramps/new-checkout")).await;
    assert_eq!(status["state"], "running", "{status:#}");
    broken.store(true, Ordering::Relaxed);
    r1.kill();
    let killed_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let rolled_back = eventually(Duration::from_secs(30), || async {
        json(format!("http://{http2}/api/v1/ramps/new-checkout")).await["state"] == "rolled_back"
    })
    .await;
    let status = json(format!("http://{http2}/api/v1/ramps/new-checkout")).await;
    assert!(rolled_back, "{status:#}");
    assert_eq!(leader(http2).await.as_deref(), Some("r2"));
    let after_kill = status["rollback_ms"].as_i64().unwrap() - killed_ms;
    println!("leader SIGKILLed → rolled back by the new leader: {after_kill} ms (target ≤ 10 s)");
    assert!(after_kill <= 10_000, "rolled back {after_kill} ms after the kill: {status:#}");
    let audit = json(format!("http://{http2}/api/v1/audit?flag=new-checkout")).await;
    let rollback = audit["audit"].as_array().unwrap().iter().find(|a| a["action"] == "ramp_rollback").cloned();
    assert_eq!(rollback.as_ref().map(|a| a["actor"].clone()), Some(Value::from("engine")), "{audit:#}");

    // Every request sent is counted once: none lost at either kill, none counted twice by the
    // replica a sidecar moved to.
    load.await.unwrap();
    assert_eq!(sent.load(Ordering::Relaxed), TOTAL);
    let all = eventually(Duration::from_secs(30), || async { counted(http2).await == Some(TOTAL) }).await;
    let n = counted(http2).await;
    assert!(all, "counted {n:?} of {TOTAL}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counted(http2).await, Some(TOTAL), "counted twice after settling");
    drop(r2);
}
