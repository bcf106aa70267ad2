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
    let got = stdout_json(&out);
    assert_eq!(
        (&got["flag"], &got["variant"], &got["value"], &got["reason"]),
        (&json!("search-backend"), &json!("v2"), &json!("tantivy"), &json!("TARGETING_MATCH"))
    );
    assert!(got["metadata"].is_object(), "{got}");
    let out = rampart(&["eval", FLAGS, "legacy-export"]);
    let got = stdout_json(&out);
    assert_eq!(
        (&got["variant"], &got["value"], &got["reason"]),
        (&json!(null), &json!(null), &json!("DISABLED")),
        "a disabled flag: reason DISABLED, no value"
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

/// Strict where a person writes flags, tolerant where a flag file is read as flagd reads it: a
/// flag whose rule cannot compile fails `check`, while `eval` answers it with flagd's error and
/// evaluates the others, with the set's and the flag's metadata merged.
#[test]
fn a_broken_rule_fails_check_and_evaluates_to_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    std::fs::write(
        &file,
        r#"{"metadata": {"flagSetId": "shop", "team": "core"},
            "flags": {
              "good": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a",
                       "metadata": {"team": "web", "version": 2}},
              "bad": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
                      "targeting": {"if": [{"$ref": "nowhere"}, "b", "a"]}},
              "odd": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a",
                      "targeting": {"no_such_operator": [1]}}}}"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = rampart(&["check", path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{path}: flags.bad.targeting: $ref to missing evaluator \"nowhere\"")), "{err}");
    assert!(err.contains(&format!("{path}: flags.odd.targeting:")), "{err}");

    for key in ["bad", "odd"] {
        let out = rampart(&["eval", path, key]);
        assert!(out.status.success());
        let got = stdout_json(&out);
        assert_eq!(
            (&got["reason"], &got["errorCode"], &got["value"]),
            (&json!("ERROR"), &json!("PARSE_ERROR"), &json!(null))
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("flags.{key}.targeting")));
    }
    let got = stdout_json(&rampart(&["eval", path, "good"]));
    assert_eq!(
        got,
        json!({"flag": "good", "variant": "a", "value": "A", "reason": "STATIC",
               "metadata": {"flagSetId": "shop", "team": "web", "version": 2}})
    );
}
