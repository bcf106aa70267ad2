//! Regression corpus of the hostile flag files from issue 14, each refused cleanly — a located
//! error, no panic, no hang, bounded memory: JSONLogic nested 100 000 deep in YAML (block and
//! flow) and in JSON, a 1 MB flag name and variant name, too many flags, a FIFO, a `/dev/zero`
//! symlink, a file over the size cap, a file that grows past it. The texts are generated here
//! (a 100 000-deep file is 200 KB of brackets), so the corpus is this list.

use std::path::Path;

use rampart_flags::bounds::{MAX_DEPTH, MAX_FILE_BYTES, MAX_FLAGS};
use rampart_flags::{FlagSet, LoadError, MAX_NAME_BYTES, read_file};

const FLAG: &str = "flags:\n  banner:\n    state: ENABLED\n    variants: { a: 1, b: 2 }\n    defaultVariant: a\n";

fn syntax_at(result: Result<FlagSet, LoadError>) -> (usize, usize, String) {
    match result {
        Err(LoadError::Syntax { line, column, message, .. }) => (line, column, message),
        Err(other) => panic!("expected a located syntax error, got {other}"),
        Ok(_) => panic!("expected a refusal, the file loaded"),
    }
}

#[test]
fn yaml_flow_nested_100_000_deep_is_refused_at_its_position() {
    let text = format!("{FLAG}    targeting: {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let (line, column, message) = syntax_at(FlagSet::from_str("deep.yaml", &text));
    assert_eq!(line, 6, "{message}");
    assert_eq!(column, "    targeting: ".len() + MAX_DEPTH + 1, "{message}");
    assert!(message.contains("nested deeper than"), "{message}");
}

#[test]
fn yaml_block_nested_100_000_deep_is_refused() {
    let mut text = String::from(FLAG);
    text.push_str("    targeting:\n");
    for depth in 0..100_000usize {
        text.push_str(&" ".repeat(6 + 2 * depth.min(400)));
        text.push_str("- \n");
    }
    // Indentation past the bound is refused; a long run of `- - - -` on one line as well.
    let (_, _, message) = syntax_at(FlagSet::from_str("block.yaml", &text));
    assert!(message.contains("indented deeper than") || message.contains("nested deeper"), "{message}");
    let dashes = format!("{FLAG}    targeting: {}1\n", "- ".repeat(100_000));
    assert!(FlagSet::from_str("dashes.yaml", &dashes).is_err());
}

#[test]
fn json_nested_100_000_deep_is_refused() {
    let rule = format!("{}true{}", "{\"!\":".repeat(100_000), "}".repeat(100_000));
    let text = format!(
        r#"{{"flags":{{"f":{{"state":"ENABLED","variants":{{"true":1,"false":0}},"defaultVariant":"false","targeting":{rule}}}}}}}"#
    );
    let (line, _, message) = syntax_at(FlagSet::from_str("deep.json", &text));
    assert_eq!(line, 1, "{message}");
    let arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(FlagSet::from_str("arrays.json", &arrays).is_err());
    assert!(FlagSet::from_str("arrays.yaml", &arrays).is_err());
}

#[test]
fn a_one_megabyte_flag_name_or_variant_is_refused() {
    let name = "n".repeat(1 << 20);
    // YAML refuses a simple key over 1 024 characters as a syntax error; JSON gets to the bound.
    let yaml = format!("flags:\n  {name}:\n    state: ENABLED\n    variants: {{ a: 1 }}\n    defaultVariant: a\n");
    let err = FlagSet::from_str("long.yaml", &yaml).unwrap_err().to_string();
    assert!(err.len() < 4096, "the error does not echo the megabyte back");
    let json = format!(r#"{{"flags":{{"{name}":{{"state":"ENABLED","variants":{{"a":1}},"defaultVariant":"a"}}}}}}"#);
    let err = FlagSet::from_str("long.json", &json).unwrap_err().to_string();
    assert!(err.contains(&format!("at most {MAX_NAME_BYTES} bytes")), "{}", err.chars().take(300).collect::<String>());
    assert!(err.len() < 4096, "the error does not echo the megabyte back");
    let json =
        format!(r#"{{"flags":{{"f":{{"state":"ENABLED","variants":{{"{name}":1}},"defaultVariant":"{name}"}}}}}}"#);
    assert!(FlagSet::from_str("long-variant.json", &json).is_err());
}

#[test]
fn more_flags_than_the_bound_are_refused() {
    let mut text = String::from("flags:\n");
    for i in 0..=MAX_FLAGS {
        text.push_str(&format!("  f{i}: {{ state: ENABLED, variants: {{ a: 1 }}, defaultVariant: a }}\n"));
    }
    let err = FlagSet::from_str("many.yaml", &text).unwrap_err();
    assert!(err.to_string().contains(&format!("at most {MAX_FLAGS}")), "{err}");
}

#[test]
fn seq_and_numbers_at_the_edges_load_or_fail_cleanly() {
    // u64::MAX and beyond as variant values, weights and ramp percents.
    let text = "flags:\n  f:\n    state: ENABLED\n    variants: { a: 18446744073709551615, b: 18446744073709551616 }\n    \
                defaultVariant: a\n    targeting: { fractional: [[a, 18446744073709551615], [b, 18446744073709551615]] }\n    \
                ramp: { treatment: b, percent: 1e400 }\n";
    let _ = FlagSet::from_str("edges.yaml", text);
}

fn refused(path: &Path) -> String {
    match read_file(path, MAX_FILE_BYTES) {
        Err(e) => e.to_string(),
        Ok(text) => panic!("{} was read ({} bytes)", path.display(), text.len()),
    }
}

#[test]
fn special_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert!(refused(&fifo).contains("not a regular file"));

    let zero = dir.path().join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    assert!(refused(&zero).contains("not a regular file"));
    assert!(refused(dir.path()).contains("not a regular file"), "a directory");

    let big = dir.path().join("big.yaml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    assert!(refused(&big).contains("at most"));

    // A file that grows after the size check: read up to the cap and one byte, then refused.
    let small = dir.path().join("small.yaml");
    std::fs::write(&small, "x".repeat(64)).unwrap();
    assert!(read_file(&small, 63).is_err());
    assert_eq!(read_file(&small, 64).unwrap().len(), 64);
}
