//! Hot reload of the flags file: a valid change is served within a second; an invalid one keeps the
//! previous flags and moves `rampart_config_reload_failures_total`; in-flight requests keep theirs.

mod support;

use std::time::Duration;

use support::*;

fn flags(variant: &str) -> String {
    format!(
        "flags:\n  banner:\n    state: ENABLED\n    variants: {{ a: 1, b: 2, c: 3 }}\n    defaultVariant: {variant}\n"
    )
}

async fn banner(sc: &Sidecar) -> Option<String> {
    header(&seen(&sc.url("/"), &[]).await, "x-flag-banner")
}

#[tokio::test]
async fn a_valid_change_is_live_within_a_second() {
    let up = upstream().await;
    let sc = sidecar(up.addr, &flags("a"), "").await;
    assert_eq!(banner(&sc).await.as_deref(), Some("a"));
    replace_file(&sc.flags_path(), &flags("b"));
    assert!(eventually(Duration::from_secs(1), || async { banner(&sc).await.as_deref() == Some("b") }).await);
    // Writing in place (not rename) is seen too.
    std::fs::write(sc.flags_path(), flags("c")).unwrap();
    assert!(eventually(Duration::from_secs(1), || async { banner(&sc).await.as_deref() == Some("c") }).await);
    let (_, body) = get(&format!("http://{}/flags", sc.admin), &[]).await;
    let version = serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"].as_u64().unwrap();
    assert!(version >= 3, "every reload makes a new version, got {version}");
}

#[tokio::test]
async fn an_invalid_change_keeps_the_old_flags_and_is_counted() {
    let up = upstream().await;
    let sc = sidecar(up.addr, &flags("a"), "").await;
    assert_eq!(metric(sc.admin, "rampart_config_reload_failures_total").await, Some(0.0));
    replace_file(&sc.flags_path(), &flags("nope"));
    let failures = "rampart_config_reload_failures_total";
    assert!(
        eventually(Duration::from_secs(2), || async { metric(sc.admin, failures).await >= Some(1.0) }).await,
        "the failed reload is counted"
    );
    assert_eq!(banner(&sc).await.as_deref(), Some("a"), "the previous flags stay live");
    replace_file(&sc.flags_path(), "flags: {broken");
    assert!(eventually(Duration::from_secs(2), || async { metric(sc.admin, failures).await >= Some(2.0) }).await);
    assert_eq!(banner(&sc).await.as_deref(), Some("a"));
    // And a good file after bad ones is picked up.
    replace_file(&sc.flags_path(), &flags("b"));
    assert!(eventually(Duration::from_secs(1), || async { banner(&sc).await.as_deref() == Some("b") }).await);
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_snapshot() {
    let mut up = upstream().await;
    let sc = sidecar(up.addr, &flags("a"), "").await;
    let url = sc.url("/slow?ms=700");
    let slow = tokio::spawn(async move { seen(&url, &[]).await });
    assert_eq!(up.arrivals.recv().await.as_deref(), Some("/slow"));
    replace_file(&sc.flags_path(), &flags("b"));
    assert!(eventually(Duration::from_secs(1), || async { banner(&sc).await.as_deref() == Some("b") }).await);
    let h = slow.await.unwrap();
    assert_eq!(header(&h, "x-flag-banner").as_deref(), Some("a"), "evaluated when it arrived");
}

/// Flags `f0` … `f3`; only `ramped` under a ramp.
fn ramps(ramped: usize) -> String {
    let mut text = String::from("flags:\n");
    for i in 0..4 {
        text.push_str(&format!("  f{i}:\n    state: ENABLED\n    variants: {{ a: 1, b: 2 }}\n    defaultVariant: a\n"));
        if i == ramped {
            text.push_str("    ramp: { treatment: b, percent: 50 }\n");
        }
    }
    text
}

async fn stats_flags(sc: &Sidecar) -> Vec<String> {
    let (_, body) = get(&format!("http://{}/stats", sc.admin), &[]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["series"].as_array().unwrap().iter().map(|s| s["flag"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_reload_that_ends_a_ramp_frees_its_series_for_the_next() {
    let up = upstream().await;
    // Room for one ramp's two series.
    let sc = sidecar(up.addr, &ramps(0), "max_series = 2").await;
    for ramp in 0..4 {
        if ramp > 0 {
            replace_file(&sc.flags_path(), &ramps(ramp));
        }
        let now = format!("f{ramp}");
        let live =
            eventually(Duration::from_secs(2), || async { stats_flags(&sc).await == [now.as_str(), now.as_str()] })
                .await;
        assert!(live, "{now}: {:?}", stats_flags(&sc).await);
        seen(&sc.url("/"), &[("x-user-id", "u")]).await;
    }
    assert_eq!(metric(sc.admin, "rampart_stats_overflow_total").await, Some(0.0));
}
