//! flagd-testbed's evaluator suite, read from the copy the `open-feature-flagd` crate ships: its
//! `testkit-flags.json` and a small reader for its Gherkin scenarios (outlines expanded, the
//! Background steps included), so the suite can be run against any Rampart surface.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{Map, Value, json};

/// The testbed's `evaluator/` directory inside the registry copy of `open-feature-flagd` 0.3.0.
pub(crate) fn evaluator_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = home.join("registry/src");
    for index in std::fs::read_dir(&registry).expect("the cargo registry") {
        let dir = index.unwrap().path().join("open-feature-flagd-0.3.0/flagd-testbed/evaluator");
        if dir.is_dir() {
            return dir;
        }
    }
    panic!("open-feature-flagd 0.3.0 is not in {} (cargo fetch)", registry.display());
}

/// One expanded scenario: what to evaluate and what flagd answers.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) name: String,
    /// `Boolean`, `String`, `Integer`, `Float` or `Object`.
    pub(crate) kind: String,
    pub(crate) key: String,
    pub(crate) fallback: Value,
    pub(crate) context: Map<String, Value>,
    pub(crate) value: Option<Value>,
    pub(crate) reason: Option<String>,
    pub(crate) error_code: Option<String>,
    /// `Some(empty)` for "the resolved metadata is empty".
    pub(crate) metadata: Option<Map<String, Value>>,
}

/// What an evaluation gave, as an OpenFeature client reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Details {
    pub(crate) value: Value,
    pub(crate) reason: Option<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) metadata: Map<String, Value>,
}

impl Case {
    /// The typed value of `text` for this case's flag type.
    fn typed(&self, text: &str) -> Value {
        typed(&self.kind, text)
    }

    /// Where `got` differs from what flagd answers, if anywhere.
    pub(crate) fn check(&self, got: &Details) -> Result<(), String> {
        let fail = |what: &str| Err(format!("{}: {what}: got {got:?}", self.name));
        if let Some(v) = &self.value
            && !same(v, &got.value)
        {
            return fail(&format!("value should be {v}"));
        }
        if let Some(r) = &self.reason
            && got.reason.as_ref() != Some(r)
        {
            return fail(&format!("reason should be {r}"));
        }
        if let Some(c) = &self.error_code
            && got.error_code.as_ref() != Some(c)
        {
            return fail(&format!("error code should be {c}"));
        }
        if let Some(m) = &self.metadata {
            if m.is_empty() && !got.metadata.is_empty() {
                return fail("metadata should be empty");
            }
            for (k, v) in m {
                if !got.metadata.get(k).is_some_and(|g| same(v, g)) {
                    return fail(&format!("metadata {k} should be {v}"));
                }
            }
        }
        Ok(())
    }

    /// Whether a JSON value is of this case's flag type (the client-side check OpenFeature
    /// providers make, e.g. over OFREP).
    pub(crate) fn type_matches(&self, v: &Value) -> bool {
        match self.kind.as_str() {
            "Boolean" => v.is_boolean(),
            "String" => v.is_string(),
            "Integer" => v.is_i64() || v.is_u64(),
            "Float" => v.is_number(),
            _ => v.is_object(),
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn typed(kind: &str, text: &str) -> Value {
    match kind {
        "Boolean" => json!(text == "true"),
        "Integer" => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| json!(text)),
        "Float" => text.parse::<f64>().map(Value::from).unwrap_or_else(|_| json!(text)),
        "Object" => serde_json::from_str(&text.replace("\\\"", "\"")).unwrap_or_else(|_| json!(text)),
        _ => json!(text),
    }
}

/// The quoted strings of a step, in order.
fn quoted(step: &str) -> Vec<String> {
    let (mut out, mut current, mut inside, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in step.chars() {
        match (inside, escaped, c) {
            (true, true, _) => {
                current.push(c);
                escaped = false;
            }
            (true, false, '\\') => {
                current.push(c);
                escaped = true;
            }
            (true, false, '"') => {
                out.push(std::mem::take(&mut current));
                inside = false;
            }
            (true, false, _) => current.push(c),
            (false, _, '"') => inside = true,
            (false, _, _) => {}
        }
    }
    out
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

/// Every case of every `*.feature` in `dir`, skipping examples and scenarios tagged with one of
/// `skip` (e.g. other `fractional` hash versions).
pub(crate) fn cases(dir: &std::path::Path, skip: &[&str]) -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "feature"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let feature = file.file_stem().unwrap().to_string_lossy().into_owned();
        out.extend(parse(&feature, &text, skip));
    }
    out
}

#[derive(Default)]
struct Scenario {
    name: String,
    skipped: bool,
    steps: Vec<String>,
    /// Tables of examples (header, rows), with whether each block is skipped.
    examples: Vec<(bool, Vec<Vec<String>>)>,
    /// A data table under the last step (metadata expectations).
    step_table: Vec<Vec<String>>,
}

fn parse(feature: &str, text: &str, skip: &[&str]) -> Vec<Case> {
    let mut background: Vec<String> = Vec::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    let (mut feature_skipped, mut scenario_skipped) = (false, false);
    let mut in_background = false;
    let mut in_examples = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            tags.extend(line.split_whitespace().map(str::to_owned));
            continue;
        }
        let tagged = tags.iter().any(|t| skip.contains(&t.as_str()));
        if line.starts_with("Feature:") {
            feature_skipped = tagged;
        } else if line.starts_with("Background:") {
            in_background = true;
        } else if line.starts_with("Scenario") {
            in_background = false;
            in_examples = false;
            scenario_skipped = feature_skipped || tagged;
            scenarios.push(Scenario {
                name: format!("{feature}: {line}"),
                skipped: scenario_skipped,
                ..Default::default()
            });
        } else if line.starts_with("Examples") {
            in_examples = true;
            if let Some(s) = scenarios.last_mut() {
                s.examples.push((scenario_skipped || tagged, Vec::new()));
            }
        } else if line.starts_with('|') {
            if let Some(s) = scenarios.last_mut() {
                if in_examples {
                    if let Some((_, rows)) = s.examples.last_mut() {
                        rows.push(cells(line));
                    }
                } else {
                    s.step_table.push(cells(line));
                }
            }
        } else if in_background {
            background.push(line.to_owned());
        } else if let Some(s) = scenarios.last_mut() {
            s.steps.push(line.to_owned());
        }
        tags.clear();
    }
    let mut out = Vec::new();
    for s in scenarios {
        if s.skipped {
            continue;
        }
        let steps: Vec<String> = background.iter().chain(&s.steps).cloned().collect();
        if s.examples.is_empty() {
            out.push(case(&s.name, &steps, &s.step_table));
            continue;
        }
        for (skipped, rows) in &s.examples {
            if *skipped || rows.is_empty() {
                continue;
            }
            let header = &rows[0];
            for row in &rows[1..] {
                let bound: Vec<String> = steps
                    .iter()
                    .map(|step| {
                        header.iter().zip(row).fold(step.clone(), |acc, (h, v)| acc.replace(&format!("<{h}>"), v))
                    })
                    .collect();
                out.push(case(&format!("{} {row:?}", s.name), &bound, &s.step_table));
            }
        }
    }
    out
}

fn case(name: &str, steps: &[String], table: &[Vec<String>]) -> Case {
    let mut c = Case {
        name: name.to_owned(),
        kind: String::new(),
        key: String::new(),
        fallback: Value::Null,
        context: Map::new(),
        value: None,
        reason: None,
        error_code: None,
        metadata: None,
    };
    for step in steps {
        let q = quoted(step);
        if step.contains("-flag with key") {
            let kind = step.split_whitespace().find(|w| w.ends_with("-flag")).unwrap().trim_end_matches("-flag");
            c.kind = kind.to_owned();
            c.key.clone_from(&q[0]);
            c.fallback = typed(kind, &q[1]);
        } else if step.contains("a context containing a targeting key") {
            c.context.insert("targetingKey".to_owned(), json!(q[0]));
        } else if step.contains("a context containing a nested property") {
            c.context.insert(q[0].clone(), json!({ q[1].clone(): q[2] }));
        } else if step.contains("a context containing a key") {
            c.context.insert(q[0].clone(), typed(&q[1], &q[2]));
        } else if step.contains("the resolved details value should be") {
            c.value = Some(c.typed(&q[0]));
        } else if step.contains("the reason should be") {
            c.reason = Some(q[0].clone());
        } else if step.contains("the error-code should be") {
            c.error_code = Some(q[0].clone());
        } else if step.contains("the resolved metadata is empty") {
            c.metadata = Some(Map::new());
        } else if step.contains("the resolved metadata should contain") {
            let rows = table.iter().skip(1);
            c.metadata = Some(rows.map(|r| (r[0].clone(), typed(&r[1], &r[2]))).collect());
        }
    }
    c
}
