//! `rampart demo` as a user runs it (plain output): it ends with the automatic rollback, the
//! decisions and the DORA summary, and exits cleanly.

use std::process::Command;

#[test]
fn the_demo_rolls_back_the_hidden_regression_and_exits_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--plain", "--duration", "90s"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Ramp of new-checkout → on: rolled_back at 0"), "{stdout}");
    assert!(stdout.contains(" ROLLBACK "), "{stdout}");
    assert!(stdout.contains("rollback_acknowledged"), "{stdout}");
    assert!(stdout.contains("change failure rate 100%"), "{stdout}");
}
