//! `rampart demo` as a user runs it (plain output): it names the web console, ships two changes
//! side by side — the healthy one reaches 100% through every step, the hidden regression is rolled
//! back — prints their decisions and a DORA summary with both outcomes, and exits cleanly.

use std::process::Command;

#[test]
fn the_demo_completes_the_healthy_change_rolls_back_the_regression_and_exits_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--plain", "--duration", "150s", "--console", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("the web console is at http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("TIME-COMPRESSED policy"), "{stdout}");
    assert!(stdout.contains("Ramp of new-checkout → on: rolled_back at 0"), "{stdout}");
    assert!(stdout.contains(" ROLLBACK "), "{stdout}");
    assert!(stdout.contains("rollback_acknowledged"), "{stdout}");
    assert!(stdout.contains("Ramp of search-backend → v2: completed at 100"), "{stdout}");
    assert_eq!(stdout.matches(" ADVANCE ").count(), 4, "1 → 5 → 25 → 50 → 95%: {stdout}");
    assert!(stdout.contains(" COMPLETE "), "{stdout}");
    assert!(stdout.contains("deployments 2   completed 1   rolled back 1"), "{stdout}");
    assert!(stdout.contains("change failure rate 50%"), "{stdout}");
    assert!(stdout.contains("completion rate 50%"), "{stdout}");
}
