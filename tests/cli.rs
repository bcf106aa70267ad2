//! The CLI contract of `rampart check` and `rampart eval`, run as a real process.

use std::process::{Command, Output};

use serde_json::{Value, json};

const FLAGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/flags.yaml");

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart")).args(args).output().expect("run rampart")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn check_accepts_a_valid_file() {
    let out = rampart(&["check", FLAGS]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn check_reports_every_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "flags:\n  a:\n    state: ENABLED\n    variants: {x: 1}\n    defaultVariant: y\n  b:\n    state: ON\n    variants: {x: 1}\n",
    )
    .unwrap();
    let out = rampart(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    assert!(err.contains(&format!("{file}: flags.a.defaultVariant:")), "{err}");
    assert!(err.contains(&format!("{file}: flags.b.state:")), "{err}");

    let syntax = dir.path().join("syntax.json");
    std::fs::write(&syntax, "{\"flags\": {\n  \"a\": }\n").unwrap();
    let out = rampart(&["check", syntax.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:8: syntax error", syntax.display())), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn eval_prints_one_resolution() {
    let out =
        rampart(&["eval", FLAGS, "search-backend", "--context", r#"{"targetingKey":"u1","email":"a@example.com"}"#]);
    assert!(out.status.success());
    assert_eq!(
        stdout_json(&out),
        json!({"flag": "search-backend", "variant": "v2", "value": "tantivy", "reason": "TARGETING_MATCH"})
    );
    let out = rampart(&["eval", FLAGS, "legacy-export"]);
    assert_eq!(
        stdout_json(&out),
        json!({"flag": "legacy-export", "variant": null, "value": null, "reason": "DISABLED"})
    );
    let out = rampart(&["eval", FLAGS, "new-checkout", "--context", r#"{"targetingKey":"u1"}"#]);
    assert_eq!(stdout_json(&out)["reason"], "SPLIT");
}

#[test]
fn eval_unknown_flag_or_bad_context_fails() {
    let out = rampart(&["eval", FLAGS, "no-such-flag"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLAG_NOT_FOUND"));
    let out = rampart(&["eval", FLAGS, "new-checkout", "--context", "[1]"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSON object"));
    let out = rampart(&["eval", FLAGS, "new-checkout", "--context", "{"]);
    assert_eq!(out.status.code(), Some(1));
}
