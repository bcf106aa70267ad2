//! A sidecar given a list of control-plane replicas (`control_plane = [...]`) tries them in turn:
//! the first is a dead port, so it connects to the second; that one is SIGKILLed mid-test and the
//! sidecar fails over to the third at once, resending what it had not had acknowledged. Each
//! replica here has its own SQLite store, so each one's totals are what it acknowledged: together
//! exactly the requests the upstream served, none lost, none counted twice. (Replicas sharing one
//! PostgreSQL store, where a report applied but not acknowledged before a kill is recognised by the
//! other replica, are tested with the PostgreSQL store.)

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use process::{Running, start, start_control};
use serde_json::Value;
use support::*;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    ramp: { treatment: "on", percent: 50 }
"#;

async fn totals(http: SocketAddr) -> BTreeMap<String, u64> {
    let (status, body) = get(&format!("http://{http}/api/v1/stats/new-checkout"), &[]).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["variants"].as_object().unwrap().iter().map(|(k, s)| (k.clone(), s["requests"].as_u64().unwrap())).collect()
}

/// Sends `n` requests with distinct users; tallies the variant the upstream received.
async fn send(sidecar: SocketAddr, n: usize, offset: usize) -> BTreeMap<String, u64> {
    let mut served = BTreeMap::new();
    for i in offset..offset + n {
        let h = seen(&format!("http://{sidecar}/order"), &[("x-user-id", &format!("user-{i}"))]).await;
        let variant = header(&h, "x-flag-new-checkout").expect("the ramped flag is injected");
        *served.entry(variant).or_default() += 1;
    }
    served
}

async fn readyz(admin: SocketAddr) -> String {
    get(&format!("http://{admin}/readyz"), &[]).await.1
}

fn sidecar(dir: &std::path::Path, upstream: SocketAddr, replicas: &[SocketAddr]) -> Running {
    let list: Vec<String> = replicas.iter().map(|a| format!("\"http://{a}\"")).collect();
    let config = dir.join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
             control_plane = [{}]\nservice = \"shop\"\nproxy_id = \"failover\"\n\
             report_interval = \"200ms\"\nflags_cache = \"sidecar.cache.json\"\n\
             [queries]\ngrpc = \"off\"\nofrep = \"off\"\n",
            list.join(", ")
        ),
    )
    .unwrap();
    start(&["proxy"], &config, "rampart proxy serving")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_fails_over_to_the_next_replica_and_every_request_is_counted_once() {
    let up = upstream().await;
    let (dir_a, dir_b, dir_s) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&dir_a, &dir_b] {
        std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    }
    let mut a = start_control(dir_a.path(), "127.0.0.1:0", "127.0.0.1:0");
    let b = start_control(dir_b.path(), "127.0.0.1:0", "127.0.0.1:0");
    let dead = dead_addr().await;
    let s = sidecar(dir_s.path(), up.addr, &[dead, a.addr("grpc"), b.addr("grpc")]);
    let (listen, admin) = (s.addr("listen"), s.addr("admin"));

    // The dead first entry is skipped: the stream is up with the second.
    let on_a = format!("connected to http://{}", a.addr("grpc"));
    let ready = eventually(Duration::from_secs(10), || async {
        let r = readyz(admin).await;
        r.contains(&on_a) && r.contains("flags version 1")
    });
    assert!(ready.await, "{}", readyz(admin).await);
    let gauge = |addr: SocketAddr| format!("rampart_control_plane_connected{{url=\"http://{addr}/\"}}");
    assert_eq!(metric(admin, &gauge(a.addr("grpc"))).await, Some(1.0));

    let served_a = send(listen, 120, 0).await;
    // Every report acknowledged by A (nothing left to resend), then A dies without warning.
    let settled = eventually(Duration::from_secs(15), || async {
        totals(a.addr("http")).await == served_a && metric(admin, "rampart_stats_pending_reports").await == Some(0.0)
    })
    .await;
    assert!(settled, "A {:?} != served {served_a:?}", totals(a.addr("http")).await);
    a.kill();
    let killed = Instant::now();

    // Traffic goes on while the sidecar fails over; its reports wait and go to B.
    let served_b = send(listen, 150, 120).await;
    let on_b = format!("connected to http://{}", b.addr("grpc"));
    assert!(eventually(Duration::from_secs(5), || async { readyz(admin).await.contains(&on_b) }).await);
    eprintln!("failed over to B within {:?} of the kill", killed.elapsed());
    assert_eq!(metric(admin, &gauge(a.addr("grpc"))).await, Some(0.0));
    assert_eq!(metric(admin, &gauge(b.addr("grpc"))).await, Some(1.0));

    let settled = eventually(Duration::from_secs(15), || async { totals(b.addr("http")).await == served_b }).await;
    assert!(settled, "B {:?} != served {served_b:?}", totals(b.addr("http")).await);
    // Nothing arrives twice later on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(totals(b.addr("http")).await, served_b);
    assert_eq!(served_a.values().sum::<u64>() + served_b.values().sum::<u64>(), 270);
    assert_eq!(served_b.len(), 2, "a 50% ramp serves both variants: {served_b:?}");
}
