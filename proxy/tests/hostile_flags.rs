//! A flags file cannot stall or bloat the sidecar: a 100 000-deep YAML, a FIFO, a symlink to
//! `/dev/zero`, a file over the size cap and one with too many flags are each refused with a
//! located error, counted, while requests go on being served with the last good flags; the
//! metrics series of flags a reload removed are dropped. The runtime here is the test's
//! single-threaded one: a reload that held it would hold every request too.

mod support;

use std::time::Duration;

use support::*;

fn flags(keys: &[&str]) -> String {
    let mut text = String::from("flags:\n");
    for k in keys {
        text.push_str(&format!("  {k}:\n    state: ENABLED\n    variants: {{ a: 1, b: 2 }}\n    defaultVariant: a\n"));
    }
    text
}

async fn refused_then_still_served(sc: &Sidecar, failures_before: f64) {
    let failures = "rampart_config_reload_failures_total";
    assert!(
        eventually(Duration::from_secs(5), || async { metric(sc.admin, failures).await > Some(failures_before) }).await,
        "the hostile file is refused and counted"
    );
    for _ in 0..10 {
        let seen = seen(&sc.url("/"), &[]).await;
        assert_eq!(header(&seen, "x-flag-banner").as_deref(), Some("a"), "the last good flags stay live");
    }
}

#[tokio::test]
async fn hostile_files_are_refused_while_requests_are_served() {
    let up = upstream().await;
    let sc = sidecar(up.addr, &flags(&["banner"]), "").await;
    let path = sc.flags_path();
    let failures = || async { metric(sc.admin, "rampart_config_reload_failures_total").await.unwrap_or(0.0) };

    // JSONLogic nested 100 000 deep in YAML (the YAML scanner is quadratic in depth).
    let deep = format!("{}targeting: {}1{}\n", flags(&["banner"]), "[".repeat(100_000), "]".repeat(100_000));
    let before = failures().await;
    replace_file(&path, &deep);
    refused_then_still_served(&sc, before).await;

    // A FIFO at the flags path (reading it would block until someone writes).
    let before = failures().await;
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success());
    refused_then_still_served(&sc, before).await;

    // A symlink to /dev/zero (reading it never ends).
    let before = failures().await;
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    refused_then_still_served(&sc, before).await;

    // Over the 16 MiB cap, and over the flag-count cap.
    let before = failures().await;
    std::fs::remove_file(&path).unwrap();
    let mut big = flags(&["banner"]);
    big.push_str(&format!("# {}\n", "x".repeat(17 << 20)));
    replace_file(&path, &big);
    refused_then_still_served(&sc, before).await;
    let before = failures().await;
    let many: Vec<String> = (0..10_001).map(|i| format!("f{i}")).collect();
    let mut keys: Vec<&str> = many.iter().map(String::as_str).collect();
    keys.push("banner");
    replace_file(&path, &flags(&keys));
    refused_then_still_served(&sc, before).await;

    // A good file is picked up again afterwards.
    replace_file(&path, &flags(&["banner", "extra"]));
    assert!(
        eventually(Duration::from_secs(2), || async {
            header(&seen(&sc.url("/"), &[]).await, "x-flag-extra").as_deref() == Some("a")
        })
        .await
    );
}

#[tokio::test]
async fn series_of_removed_flags_are_dropped_from_metrics() {
    let up = upstream().await;
    let sc = sidecar(up.addr, &flags(&["banner", "gone"]), "").await;
    seen(&sc.url("/"), &[]).await;
    let gone = r#"rampart_flag_evaluations_total{flag="gone",variant="a"}"#;
    let kept = r#"rampart_flag_evaluations_total{flag="banner",variant="a"}"#;
    assert_eq!(metric(sc.admin, gone).await, Some(1.0));
    replace_file(&sc.flags_path(), &flags(&["banner"]));
    assert!(eventually(Duration::from_secs(2), || async { metric(sc.admin, gone).await.is_none() }).await);
    seen(&sc.url("/"), &[]).await;
    assert_eq!(metric(sc.admin, kept).await, Some(2.0), "a flag that stays keeps counting across the reload");
}
