//! The control stream end to end, with real processes: one control plane, two sidecars, a real
//! upstream. Exactly N requests are sent; the control plane's totals per variant must equal what
//! the upstream served — also across a SIGKILL and restart of the control plane and a cut stream.
//! And: a flags change reaches every sidecar within a second; a sidecar started while the control
//! plane is down serves its cached flags.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use process::{start_control, start_sidecar};
use serde_json::Value;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const FLAGS: &str = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    ramp: { treatment: "on", percent: 50 }
  untracked:
    state: ENABLED
    variants: { a: 1, b: 2 }
    defaultVariant: a
"#;

/// A TCP relay whose open connections can be cut, to break a sidecar's stream on purpose.
struct Relay {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let stop = CancellationToken::new();
        let (cuts, token) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { addr, cut, stop }
    }

    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn api(http: SocketAddr, path: &str) -> Value {
    let (status, body) = get(&format!("http://{http}{path}"), &[]).await;
    assert_eq!(status, http::StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn connected(http: SocketAddr) -> usize {
    let v = api(http, "/api/v1/proxies").await;
    v["proxies"].as_array().unwrap().iter().filter(|p| p["connected"] == true).count()
}

/// Sends `n` requests spread over the sidecars with distinct users; tallies the variant the
/// upstream received for `new-checkout`.
async fn send(sidecars: &[SocketAddr], n: usize, offset: usize, served: &mut BTreeMap<String, u64>) {
    for i in 0..n {
        let user = format!("user-{}", offset + i);
        let sidecar = sidecars[i % sidecars.len()];
        let h = seen(&format!("http://{sidecar}/order"), &[("x-user-id", &user)]).await;
        let variant = header(&h, "x-flag-new-checkout").expect("the ramped flag is injected");
        *served.entry(variant).or_default() += 1;
    }
}

async fn totals(http: SocketAddr) -> BTreeMap<String, u64> {
    let v = api(http, "/api/v1/stats/new-checkout").await;
    v["variants"].as_object().unwrap().iter().map(|(k, s)| (k.clone(), s["requests"].as_u64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_match_what_the_upstream_served_across_kills_and_cuts() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let mut control = start_control(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let (grpc, http) = (control.addr("grpc"), control.addr("http"));
    let relay = Relay::start(grpc).await;
    let a = start_sidecar(dir.path(), "sidecar-a", up.addr, grpc);
    let b = start_sidecar(dir.path(), "sidecar-b", up.addr, relay.addr);
    let sidecars = [a.addr("listen"), b.addr("listen")];
    for admin in [a.addr("admin"), b.addr("admin")] {
        assert!(eventually(Duration::from_secs(10), || async { flags_version(admin).await == 1 }).await);
    }

    let mut served = BTreeMap::new();
    send(&sidecars, 200, 0, &mut served).await;

    // The control plane dies without warning, traffic goes on, it comes back on the same ports.
    control.kill();
    send(&sidecars, 150, 200, &mut served).await;
    let _control = start_control(dir.path(), &grpc.to_string(), &http.to_string());
    assert!(eventually(Duration::from_secs(10), || async { connected(http).await == 2 }).await);
    send(&sidecars, 100, 350, &mut served).await;

    // Sidecar b's stream is cut mid-run; it reconnects through the relay and resumes.
    relay.cut();
    send(&sidecars, 150, 450, &mut served).await;

    let n: u64 = served.values().sum();
    assert_eq!(n, 600);
    assert_eq!(served.len(), 2, "a 50% ramp serves both variants: {served:?}");
    let settled = eventually(Duration::from_secs(15), || async { totals(http).await == served }).await;
    assert!(settled, "control plane {:?} != upstream {served:?}", totals(http).await);
    // Nothing arrives twice later on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(totals(http).await, served);
    let stats = api(http, "/api/v1/stats/new-checkout").await;
    for v in stats["variants"].as_object().unwrap().values() {
        assert_eq!(v["errors"], 0);
        assert!(v["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(v["p99_ms"].as_f64().unwrap() >= v["p50_ms"].as_f64().unwrap());
    }
    // Only tracked flags (ramped or `metadata.track`) are recorded.
    assert_eq!(api(http, "/api/v1/stats/untracked").await["variants"], serde_json::json!({}));
    let proxies = api(http, "/api/v1/proxies").await;
    for p in proxies["proxies"].as_array().unwrap() {
        assert_eq!(p["service"], "shop");
        assert!(p["last_report_ms"].as_i64().is_some(), "{p}");
    }
}

async fn flags_version(admin: SocketAddr) -> u64 {
    let (_, body) = get(&format!("http://{admin}/flags"), &[]).await;
    serde_json::from_str::<Value>(&body).unwrap()["version"].as_u64().unwrap()
}

async fn put_flags(http: SocketAddr, body: &str) -> (http::StatusCode, Value) {
    let req = http::Request::put(format!("http://{http}/api/v1/flags"))
        .header("content-type", "application/yaml")
        .body(Full::new(bytes::Bytes::from(body.to_owned())).map_err(|never| match never {}).boxed())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_changes_reach_every_sidecar_and_the_cache_survives_an_outage() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    let mut control = start_control(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let (grpc, http) = (control.addr("grpc"), control.addr("http"));
    let a = start_sidecar(dir.path(), "a", up.addr, grpc);
    let b = start_sidecar(dir.path(), "b", up.addr, grpc);
    let admins = [a.addr("admin"), b.addr("admin")];
    for admin in admins {
        assert!(eventually(Duration::from_secs(10), || async { flags_version(admin).await == 1 }).await);
    }

    // Invalid definitions: 400 with the located problems; nothing changes.
    let (status, body) =
        put_flags(http, "flags:\n  x:\n    state: ENABLED\n    variants: {a: 1}\n    defaultVariant: b\n").await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    assert!(body["problems"][0].as_str().unwrap().contains("flags.x.defaultVariant"), "{body}");
    // Strict where a person writes flags: a rule that cannot compile is refused (a sidecar reading
    // such a file keeps only that flag out of service).
    let broken = "flags:\n  x:\n    state: ENABLED\n    variants: {a: 1}\n    defaultVariant: a\n    targeting: {\"$ref\": nowhere}\n";
    let (status, body) = put_flags(http, broken).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    assert!(body["problems"][0].as_str().unwrap().contains("flags.x.targeting: $ref to missing evaluator"), "{body}");

    let changed = FLAGS.replace("percent: 50", "percent: 100");
    let (status, body) = put_flags(http, &changed).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    for admin in admins {
        let pushed = eventually(Duration::from_secs(1), || async { flags_version(admin).await == 2 }).await;
        assert!(pushed, "version 2 reached {admin} within a second");
    }
    let h = seen(&format!("http://{}/", a.addr("listen")), &[("x-user-id", "anyone")]).await;
    assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("on"), "100% ramp served");
    assert!(
        eventually(Duration::from_secs(2), || async {
            api(http, "/api/v1/proxies").await["proxies"].as_array().unwrap().iter().all(|p| p["flags_version"] == 2)
        })
        .await
    );

    // The control plane goes away; a sidecar that starts now serves the cached version 2.
    control.kill();
    drop(a);
    let a2 = start_sidecar(dir.path(), "a", up.addr, grpc);
    assert_eq!(flags_version(a2.addr("admin")).await, 2);
    let h = seen(&format!("http://{}/", a2.addr("listen")), &[("x-user-id", "anyone")]).await;
    assert_eq!(header(&h, "x-flag-new-checkout").as_deref(), Some("on"));
    let (_, ready) = get(&format!("http://{}/readyz", a2.addr("admin")), &[]).await;
    assert!(ready.contains("control stream: disconnected"), "{ready}");
}
