//! Validation: syntax errors located by file, line and column; semantic errors by file and key path;
//! every problem of a file reported, not only the first.

use rampart_flags::{FlagSet, LoadError};

fn problems(name: &str, text: &str) -> Vec<String> {
    match FlagSet::from_str(name, text) {
        Ok(_) => panic!("{name} should be rejected"),
        Err(e @ LoadError::Invalid { .. }) => e.to_string().lines().map(str::to_owned).collect(),
        Err(e) => panic!("expected semantic errors, got: {e}"),
    }
}

#[test]
fn json_syntax_error_names_file_line_and_column() {
    let err =
        FlagSet::from_str("flags.json", "{\n  \"flags\": {\n    \"a\": {\"state\": \"ENABLED\",}\n  }\n}").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("flags.json:3:30: syntax error:"), "{text}");
}

#[test]
fn yaml_syntax_error_names_file_line_and_column() {
    let err =
        FlagSet::from_str("flags.yaml", "flags:\n  a:\n    state: ENABLED\n   variants: {on: true\n").unwrap_err();
    let LoadError::Syntax { file, line, column, .. } = &err else { panic!("{err}") };
    assert_eq!(file, "flags.yaml");
    assert!(*line >= 4 && *column > 0, "{err}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_key_path() {
    let text = r#"
flags:
  new-checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    ramp: { treatment: "maybe", percent: 150 }
  mixed:
    state: ENABLED
    variants: { a: true, b: "yes" }
    defaultVariant: c
  refs:
    state: SOMETIMES
    variants: { a: 1 }
    defaultVariant: a
    targeting: { if: [{ $ref: nowhere }, a, null] }
  bad-rule:
    state: ENABLED
    variants: { a: 1 }
    defaultVariant: a
    targeting: { frobnicate: [1] }
    colour: red
flagz: {}
"#;
    let lines = problems("flags.yaml", text);
    let expect = [
        "flags.yaml: flagz: unknown top-level key",
        "flags.yaml: flags.new-checkout.ramp.treatment: \"maybe\" is not among the variants",
        "flags.yaml: flags.new-checkout.ramp.percent: must be a number in 0..=100, got 150",
        "flags.yaml: flags.mixed.variants.b: mixed value types",
        "flags.yaml: flags.mixed.defaultVariant: \"c\" is not among the variants",
        "flags.yaml: flags.refs.state: must be \"ENABLED\" or \"DISABLED\"",
        "flags.yaml: flags.refs.targeting: $ref to missing evaluator \"nowhere\"",
        "flags.yaml: flags.bad-rule.targeting: invalid JSONLogic rule: unknown operator \"frobnicate\"",
        "flags.yaml: flags.bad-rule.colour: unknown key",
    ];
    for want in expect {
        assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in:\n{}", lines.join("\n"));
    }
    assert_eq!(lines.len(), expect.len(), "{}", lines.join("\n"));
}

#[test]
fn structural_problems() {
    assert_eq!(problems("f.json", "[]"), ["f.json: $: the document must be an object with a `flags` key"]);
    assert_eq!(problems("f.json", "{}"), ["f.json: flags: missing: the document must define `flags`"]);
    let lines = problems(
        "f.json",
        r#"{"flags": {"a": 1, "b": {"state": "ENABLED", "variants": {}}, "c": {"state": "ENABLED", "variants": {"x": null, "y": [1]}},
           "d": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "ramp": {"treatment": "on"}},
           "e": {"state": "ENABLED", "variants": {"on": true, "off": false}, "ramp": {"treatment": "on", "bucketBy": 3}},
           "f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "metadata": {"owner": {"team": "x"}}},
           "g": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "ramp": {"treatment": "on", "slowUs": -5}},
           "h": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "ramp": {"treatment": "on", "slowUs": 2.5}}},
           "metadata": 7}"#,
    );
    let expect = [
        "f.json: metadata: must be an object",
        "f.json: flags.a: a flag must be an object",
        "f.json: flags.b.variants: must define at least one variant",
        "f.json: flags.c.variants.x: a variant value must be",
        "f.json: flags.c.variants.y: a variant value must be",
        "f.json: flags.d.ramp.treatment: must differ from the defaultVariant",
        "f.json: flags.e.ramp.bucketBy: must be a non-empty context attribute name",
        "f.json: flags.e.ramp: a ramp needs a defaultVariant",
        "f.json: flags.f.metadata.owner: metadata values must be",
        "f.json: flags.g.ramp.slowUs: must be a non-negative integer (microseconds), got -5",
        "f.json: flags.h.ramp.slowUs: must be a non-negative integer (microseconds), got 2.5",
    ];
    for want in expect {
        assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in:\n{}", lines.join("\n"));
    }
}

#[test]
fn valid_documents_load_in_both_formats() {
    let yaml = FlagSet::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/flags.yaml")).unwrap();
    let json = FlagSet::from_value("flags.json", yaml.definition().clone()).unwrap();
    let keys = |s: &FlagSet| s.flags().iter().map(|f| f.key().to_owned()).collect::<Vec<_>>();
    assert_eq!(keys(&yaml), keys(&json));
    assert_eq!(keys(&yaml)[0], "new-checkout", "definition order is kept");
    assert_eq!(yaml.get("new-checkout").and_then(|f| f.ramp()).map(|r| r.percent()), Some(5.0));
    let missing = FlagSet::from_file("/nonexistent/flags.yaml").unwrap_err();
    assert!(missing.to_string().starts_with("/nonexistent/flags.yaml: cannot read:"), "{missing}");
}

#[test]
fn ramp_slow_threshold_is_read_and_does_not_change_assignments() {
    let doc = |ramp: &str| {
        format!(
            r#"{{"flags": {{"f": {{"state": "ENABLED", "variants": {{"on": true, "off": false}}, "defaultVariant": "off", "ramp": {ramp}}}}}}}"#
        )
    };
    let with = FlagSet::from_str("f.json", &doc(r#"{"treatment": "on", "percent": 50, "slowUs": 250000}"#)).unwrap();
    let without = FlagSet::from_str("f.json", &doc(r#"{"treatment": "on", "percent": 50}"#)).unwrap();
    assert_eq!(with.get("f").and_then(|f| f.ramp()).and_then(|r| r.slow_us()), Some(250_000));
    assert_eq!(without.get("f").and_then(|f| f.ramp()).and_then(|r| r.slow_us()), None);
    let zero = FlagSet::from_str("f.json", &doc(r#"{"treatment": "on", "slowUs": 0}"#)).unwrap();
    assert_eq!(zero.get("f").and_then(|f| f.ramp()).and_then(|r| r.slow_us()), Some(0));

    let arena = rampart_flags::Bump::new();
    for i in 0..200 {
        let user = format!("user-{i}");
        let ctx = rampart_flags::Context::builder(&arena).targeting_key(&user).build();
        let (a, b) = (with.evaluate("f", &ctx, &arena), without.evaluate("f", &ctx, &arena));
        assert_eq!((a.variant_name(), a.reason, a.unit), (b.variant_name(), b.reason, b.unit));
    }
}

#[test]
fn names_are_bounded_and_the_error_does_not_repeat_them() {
    let key = "k".repeat(rampart_flags::MAX_NAME_BYTES + 1);
    let text =
        format!(r#"{{"flags": {{"{key}": {{"state": "ENABLED", "variants": {{"a": 1}}, "defaultVariant": "a"}}}}}}"#);
    let p = problems("flags.json", &text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("a flag key is at most 256 bytes; this one has 257"), "{p:?}");
    assert!(p[0].len() < 200, "the 257-byte key is not echoed whole: {}", p[0]);
    let name = "v".repeat(300);
    let text = format!(
        r#"{{"flags": {{"f": {{"state": "ENABLED", "variants": {{"{name}": 1, "a": 2}}, "defaultVariant": "a"}}}}}}"#
    );
    assert!(problems("flags.json", &text)[0].contains("a variant name is at most 256 bytes; this one has 300"));
    let fits = "k".repeat(rampart_flags::MAX_NAME_BYTES);
    let text =
        format!(r#"{{"flags": {{"{fits}": {{"state": "ENABLED", "variants": {{"a": 1}}, "defaultVariant": "a"}}}}}}"#);
    assert!(FlagSet::from_str("flags.json", &text).is_ok());
}
