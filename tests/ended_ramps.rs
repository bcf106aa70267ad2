//! A sidecar frees the stats series of ramps that ended: with room for one ramp's series
//! (`max_series = 2`), ramps started and ended one after another — some ended by the very flags
//! change that starts the next — each get their series (nothing overflows), the last counts of
//! every ended ramp still reach the control plane, and `/stats` shows an ended ramp's series gone
//! once they are reported.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use process::{start, start_control};
use serde_json::Value;
use support::*;

const RAMPS: usize = 6;

/// Flags `ramp-0` … `ramp-5`, all defined; only `active` (if any) under a 50% ramp.
fn flags(active: Option<usize>) -> String {
    let mut text = String::from("flags:\n");
    for i in 0..RAMPS {
        text.push_str(&format!(
            "  ramp-{i}:\n    state: ENABLED\n    variants: {{ \"on\": true, \"off\": false }}\n    defaultVariant: \"off\"\n"
        ));
        if active == Some(i) {
            text.push_str("    ramp: { treatment: \"on\", percent: 50 }\n");
        }
    }
    text
}

async fn json(url: &str) -> Value {
    let (status, body) = get(url, &[]).await;
    assert_eq!(status, http::StatusCode::OK, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn put_flags(http: SocketAddr, body: String) -> u64 {
    let req = http::Request::put(format!("http://{http}/api/v1/flags"))
        .header("content-type", "application/yaml")
        .body(Full::new(bytes::Bytes::from(body)).map_err(|never| match never {}).boxed())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&bytes).unwrap()["version"].as_u64().unwrap()
}

/// Waits until the sidecar serves flags `version`.
async fn serves(admin: SocketAddr, version: u64) {
    let at = || async { json(&format!("http://{admin}/flags")).await["version"].as_u64() == Some(version) };
    assert!(eventually(Duration::from_secs(10), at).await, "version {version} never reached the sidecar");
}

/// The flags of the series the sidecar holds (`/stats`).
async fn stats_flags(admin: SocketAddr) -> Vec<String> {
    let v = json(&format!("http://{admin}/stats")).await;
    v["series"].as_array().unwrap().iter().map(|s| s["flag"].as_str().unwrap().to_owned()).collect()
}

async fn totals(http: SocketAddr, flag: &str) -> BTreeMap<String, u64> {
    let v = json(&format!("http://{http}/api/v1/stats/{flag}")).await;
    v["variants"].as_object().unwrap().iter().map(|(k, s)| (k.clone(), s["requests"].as_u64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramps_in_turn_never_exhaust_max_series_and_their_last_counts_arrive() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), flags(None)).unwrap();
    let control = start_control(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let (grpc, http) = (control.addr("grpc"), control.addr("http"));
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{}\"\n\
             control_plane = \"http://{grpc}\"\nproxy_id = \"s\"\nreport_interval = \"300ms\"\n\
             max_series = 2\nflags_cache = \"s.cache.json\"\n[queries]\ngrpc = \"off\"\nofrep = \"off\"\n",
            up.addr
        ),
    )
    .unwrap();
    let sidecar = start(&["proxy"], &config, "rampart proxy serving");
    let (listen, admin) = (sidecar.addr("listen"), sidecar.addr("admin"));
    serves(admin, 1).await;

    // Even ramps end on their own (their block removed); odd ones are ended by the flags change
    // that starts the next ramp, which needs their slots at once.
    let mut running: Option<(String, BTreeMap<String, u64>)> = None;
    for ramp in 0..=RAMPS {
        let next = (ramp < RAMPS).then_some(ramp);
        serves(admin, put_flags(http, flags(next)).await).await;
        if let Some((flag, served)) = running.take() {
            // Ended before its last interval was reported: those counts still arrive.
            let arrived = eventually(Duration::from_secs(10), || async { totals(http, &flag).await == served }).await;
            assert!(arrived, "{flag}: control plane {:?} != served {served:?}", totals(http, &flag).await);
            // Reported, and no request holds them: the ended ramp's series are freed.
            let freed = eventually(Duration::from_secs(10), || async {
                stats_flags(admin).await.iter().all(|f| next.is_some_and(|n| *f == format!("ramp-{n}")))
            })
            .await;
            assert!(freed, "{flag}: {:?}", stats_flags(admin).await);
        }
        let Some(ramp) = next else { break };
        let flag = format!("ramp-{ramp}");
        let mut served = BTreeMap::<String, u64>::new();
        for user in 0..40 {
            let h = seen(&format!("http://{listen}/"), &[("x-user-id", &format!("u{ramp}-{user}"))]).await;
            *served.entry(header(&h, &format!("x-flag-{flag}")).unwrap()).or_default() += 1;
        }
        assert_eq!(stats_flags(admin).await, [flag.as_str(), flag.as_str()], "the ramp got its series");
        if ramp % 2 == 0 {
            serves(admin, put_flags(http, flags(None)).await).await;
            let arrived = eventually(Duration::from_secs(10), || async { totals(http, &flag).await == served }).await;
            assert!(arrived, "{flag}: control plane {:?} != served {served:?}", totals(http, &flag).await);
            let freed = eventually(Duration::from_secs(10), || async { stats_flags(admin).await.is_empty() }).await;
            assert!(freed, "{flag}: {:?}", stats_flags(admin).await);
        } else {
            running = Some((flag, served));
        }
    }
    assert_eq!(metric(admin, "rampart_stats_overflow_total").await, Some(0.0));
    // Nothing counted twice later on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for ramp in 0..RAMPS {
        assert_eq!(totals(http, &format!("ramp-{ramp}")).await.values().sum::<u64>(), 40);
    }
}
