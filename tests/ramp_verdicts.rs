//! Ramp verdicts that hold up in production, end to end with real processes (a control plane, two
//! sidecars, a real upstream): an incident that hits both arms does not roll an A/A ramp back;
//! requests whose variant was not randomised (a targeting match, no bucketing key) stay out of the
//! ramp's statistics; a flags write racing a rollback does not bring the treatment back; clients
//! sending malformed bodies as treatment users cannot roll a ramp back.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use process::checkout::checkout_upstream;
use process::{cli, ramp_status, start_control, start_sidecar};
use serde_json::{Value, json};
use support::*;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    targeting:
      if: [{ starts_with: [{ var: targetingKey }, "qa-"] }, "on", null]
"#;

fn status(http: SocketAddr) -> Value {
    ramp_status(http, "new-checkout")
}

async fn ramp_block(admin: SocketAddr) -> Value {
    let (_, body) = get(&format!("http://{admin}/flags"), &[]).await;
    serde_json::from_str::<Value>(&body).unwrap()["flags"]["flags"]["new-checkout"]["ramp"].clone()
}

/// A control plane and two sidecars following it, in `dir`, in front of `upstream`.
async fn stack(dir: &std::path::Path, upstream: SocketAddr) -> (process::Running, [process::Running; 2]) {
    std::fs::write(dir.join("flags.yaml"), FLAGS).unwrap();
    let control = start_control(dir, "127.0.0.1:0", "127.0.0.1:0");
    let grpc = control.addr("grpc");
    let sidecars = [start_sidecar(dir, "a", upstream, grpc), start_sidecar(dir, "b", upstream, grpc)];
    for s in &sidecars {
        let admin = s.addr("admin");
        assert!(
            eventually(Duration::from_secs(10), || async {
                let (_, body) = get(&format!("http://{admin}/flags"), &[]).await;
                serde_json::from_str::<Value>(&body).unwrap()["version"].as_u64() >= Some(1)
            })
            .await
        );
    }
    (control, sidecars)
}

/// A healthy upstream behind a control plane and two sidecars, and a ramp of `new-checkout` at
/// 50% that stays there (10 minutes' dwell): the processes, the API and the sidecars' listeners.
async fn ramped_at_half(
    dir: &std::path::Path,
) -> (process::Running, [process::Running; 2], SocketAddr, Vec<SocketAddr>) {
    let up = checkout_upstream(Arc::new(|_| false)).await;
    let (control, sidecars) = stack(dir, up).await;
    let http = control.addr("http");
    let listen: Vec<SocketAddr> = sidecars.iter().map(|s| s.addr("listen")).collect();
    cli(http, &["ramp", "start", "new-checkout", "--treatment", "on", "--steps", "50,100", "--min-dwell", "10m"]);
    (control, sidecars, http, listen)
}

/// Requests from ever-new users (`{prefix}{i}`; no `x-user-id` at all when `prefix` is empty)
/// through the sidecars, 4 at a time, until `stop` or `limit` requests; how many were answered.
fn traffic(
    sidecars: Vec<SocketAddr>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    limit: u64,
) -> tokio::task::JoinHandle<u64> {
    let (next, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    tokio::spawn(async move {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (sidecars, stop, next, sent) = (sidecars.clone(), stop.clone(), next.clone(), sent.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= limit || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let url = format!("http://{}/buy", sidecars[i as usize % sidecars.len()]);
                        let user = format!("{prefix}{i}");
                        let headers: &[(&str, &str)] = if prefix.is_empty() { &[] } else { &[("x-user-id", &user)] };
                        get(&url, headers).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        sent.load(Ordering::Relaxed)
    })
}

/// PUT a JSON body; the answer must be a success.
async fn put(url: &str, body: &str) {
    let req = http::Request::put(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())).map_err(|never| match never {}).boxed())
        .unwrap();
    let (code, _, answer) = send(req).await;
    assert!(code.is_success(), "{answer}");
}

/// Requests the control plane counted for `new-checkout`, over both variants.
async fn served(http: SocketAddr) -> u64 {
    let (_, body) = get(&format!("http://{http}/api/v1/stats/new-checkout"), &[]).await;
    let variants = serde_json::from_str::<Value>(&body).unwrap()["variants"].clone();
    variants.as_object().into_iter().flatten().map(|(_, v)| v["requests"].as_u64().unwrap_or(0)).sum()
}

/// Waits until the control plane's count for the flag stops moving: the sidecars report every
/// 200 ms, so two equal readings 500 ms apart mean their last reports are in.
async fn settled(http: SocketAddr) {
    let mut last = served(http).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = served(http).await;
        if now == last && now > 0 {
            return;
        }
        last = now;
    }
    panic!("the control plane's count never settled (last {last})");
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Waits until the ramp's latest decision was made after `at_ms` (the engine decides every second).
async fn decided_after(http: SocketAddr, at_ms: i64) {
    let latest = || status(http)["decisions"].as_array().and_then(|d| d.last()).and_then(|d| d["at_ms"].as_i64());
    assert!(
        eventually(Duration::from_secs(10), || async { latest().is_some_and(|at| at > at_ms) }).await,
        "no decision after {at_ms}"
    );
}

fn rollbacks(s: &Value) -> usize {
    s["decisions"].as_array().into_iter().flatten().filter(|d| d["action"] == "ROLLBACK").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_that_hits_both_arms_does_not_roll_an_aa_ramp_back() {
    // Treatment and control are the same service: while the incident lasts, 5% of all requests
    // fail, whatever their variant.
    let incident = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let (i, c) = (incident.clone(), counter.clone());
    let up =
        checkout_upstream(Arc::new(move |_| i.load(Ordering::Relaxed) && c.fetch_add(1, Ordering::Relaxed) % 20 == 0))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let (control, sidecars) = stack(dir.path(), up).await;
    let http = control.addr("http");
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(sidecars.iter().map(|s| s.addr("listen")).collect(), "user-", stop.clone(), 2_000_000);
    cli(http, &["ramp", "start", "new-checkout", "--treatment", "on", "--steps", "25,50,100", "--min-dwell", "10m"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    incident.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(12)).await;
    incident.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    // The sidecars' last reports reached the control plane, and the engine decided on all of it.
    settled(http).await;
    decided_after(http, now_ms()).await;
    let s = status(http);
    let failing = s["decisions"].as_array().unwrap().last().unwrap()["numbers"]["errors"].clone();
    println!("{sent} requests; errors guardrail at the end: {failing}");
    assert!(failing["treatment_units"].as_u64().unwrap() > 0, "the incident reached the treatment: {failing}");
    assert!(failing["control_units"].as_u64().unwrap() > 0, "and the control: {failing}");
    assert_eq!(s["state"], "running", "{:#}", s["events"]);
    assert_eq!(rollbacks(&s), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeting_matches_and_keyless_requests_stay_out_of_the_ramp() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, _sidecars, http, listen) = ramped_at_half(dir.path()).await;
    // QA users get the treatment by targeting; requests without a user get the control by
    // default. Neither was randomised.
    let never = Arc::new(AtomicBool::new(false));
    assert_eq!(traffic(listen.clone(), "qa-", never.clone(), 300).await.unwrap(), 300);
    assert_eq!(traffic(listen.clone(), "", never.clone(), 300).await.unwrap(), 300);
    let variants = || async move {
        let (_, body) = get(&format!("http://{http}/api/v1/stats/new-checkout"), &[]).await;
        let v = serde_json::from_str::<Value>(&body).unwrap()["variants"].clone();
        (v["on"]["requests"].as_u64().unwrap_or(0), v["off"]["requests"].as_u64().unwrap_or(0))
    };
    assert!(eventually(Duration::from_secs(10), || async { variants().await == (300, 300) }).await);
    // The engine's next decision, made with all of that traffic, has seen no randomised unit.
    decided_after(http, now_ms()).await;
    let numbers = status(http)["decisions"].as_array().unwrap().last().unwrap()["numbers"].clone();
    assert_eq!(
        (numbers["treatment_units"].as_u64(), numbers["control_units"].as_u64()),
        (Some(0), Some(0)),
        "{numbers}"
    );
    // Randomised users do count (so the check above could fail).
    assert_eq!(traffic(listen, "user-", never, 300).await.unwrap(), 300);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let n = status(http)["decisions"].as_array().unwrap().last().unwrap()["numbers"].clone();
            n["treatment_units"].as_u64().unwrap_or(0) + n["control_units"].as_u64().unwrap_or(0) == 300
        })
        .await,
        "{:#}",
        status(http)["decisions"].as_array().unwrap().last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flags_write_racing_a_rollback_leaves_the_treatment_off() {
    let up = checkout_upstream(Arc::new(|variant| variant == Some("on"))).await;
    let dir = tempfile::tempdir().unwrap();
    let (control, sidecars) = stack(dir.path(), up).await;
    let http = control.addr("http");
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(sidecars.iter().map(|s| s.addr("listen")).collect(), "user-", stop.clone(), 2_000_000);
    cli(http, &["ramp", "start", "new-checkout", "--treatment", "on", "--steps", "50,100", "--min-dwell", "10m"]);
    // An operator's stale copy of the flags, with the ramp at 50%, written again and again
    // while the engine rolls the broken treatment back.
    let stale = json!({"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false},
        "defaultVariant": "off", "ramp": {"treatment": "on", "percent": 50}}}})
    .to_string();
    let url = format!("http://{http}/api/v1/flags");
    let mut writes = 0;
    while status(http)["state"] == "running" && writes < 2_000 {
        put(&url, &stale).await;
        writes += 1;
    }
    for _ in 0..20 {
        put(&url, &stale).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let s = status(http);
    assert_eq!(s["state"], "rolled_back", "{:#}", s["events"]);
    println!("{writes} flag writes raced the rollback");
    for sidecar in &sidecars {
        let admin = sidecar.addr("admin");
        assert!(
            eventually(Duration::from_secs(5), || async { ramp_block(admin).await["percent"].as_f64() == Some(0.0) })
                .await,
            "{}",
            ramp_block(admin).await
        );
    }
    let (_, body) = get(&format!("http://{http}/api/v1/flags"), &[]).await;
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["flags"]["flags"]["new-checkout"]["ramp"]["percent"], 0.0, "{served}");
}

/// Sends a POST whose chunked body is malformed (a bad chunk size) as `user`; the status line.
async fn malformed_body(sidecar: SocketAddr, user: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(sidecar).await.unwrap();
    let head = format!(
        "POST /buy HTTP/1.1\r\nHost: x\r\nx-user-id: {user}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_from_treatment_users_do_not_roll_a_ramp_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, _sidecars, http, listen) = ramped_at_half(dir.path()).await;
    let never = Arc::new(AtomicBool::new(false));
    assert_eq!(traffic(listen.clone(), "user-", never.clone(), 400).await.unwrap(), 400);
    // Treatment users (the upstream answers with the variant it was given), each sending
    // malformed bodies — the attack that rolled a ramp back in a second when they counted as 502s.
    let mut treatment = Vec::new();
    for i in 0.. {
        let user = format!("attacker-{i}");
        let (_, variant) = get(&format!("http://{}/buy", listen[0]), &[("x-user-id", &user)]).await;
        if variant == "on" {
            treatment.push(user);
        }
        if treatment.len() == 20 {
            break;
        }
    }
    for (i, user) in treatment.iter().cycle().take(100).enumerate() {
        let status = malformed_body(listen[i % 2], user).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    }
    settled(http).await;
    decided_after(http, now_ms()).await;
    let (_, body) = get(&format!("http://{http}/api/v1/stats/new-checkout"), &[]).await;
    let on = serde_json::from_str::<Value>(&body).unwrap()["variants"]["on"].clone();
    assert!(on["requests"].as_u64().unwrap() >= 20, "the treatment's good requests are counted: {on}");
    assert_eq!(on["errors"].as_u64(), Some(0), "{on}");
    let s = status(http);
    assert_eq!(s["state"], "running", "{:#}", s["events"]);
    assert_eq!(rollbacks(&s), 0);
}
