//! Validation of a parsed document against the flagd flag-definition rules plus Rampart's `ramp`
//! block, compiling each flag as it goes. Every problem is collected with its key path.

use serde_json::{Map, Value};

use crate::bucket::{Bucketer, Hashing, percent_to_threshold};
use crate::error::Problem;
use crate::flag::{Flag, Ramp, ValueKind, Variant};
use crate::targeting::{RuleError, Targeting, expand_refs, refs_in};

const TOP_LEVEL_KEYS: &[&str] = &["flags", "$evaluators", "metadata", "$schema"];
const FLAG_KEYS: &[&str] = &["state", "variants", "defaultVariant", "targeting", "metadata", "ramp"];
const RAMP_KEYS: &[&str] = &["treatment", "percent", "bucketBy", "slowUs"];

/// Longest flag key or variant name, in bytes: the same bound in the control plane's API, on the
/// stats stream and in the sidecars (they all validate with this crate).
pub const MAX_NAME_BYTES: usize = 256;

/// `name` for an error's key path: whole when short, else its first 40 characters and an ellipsis.
fn shown(name: &str) -> String {
    if name.len() <= 64 { name.to_owned() } else { format!("{}…", name.chars().take(40).collect::<String>()) }
}

/// The validated content of a document.
#[derive(Debug)]
pub(crate) struct Validated {
    pub(crate) flags: Vec<Flag>,
    pub(crate) metadata: Map<String, Value>,
    /// Problems of flags kept out of service (only when tolerant): their rules did not compile.
    pub(crate) quarantined: Vec<Problem>,
}

/// How a document's broken targeting rules are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Any problem refuses the document: where a person writes flags (`rampart check`, the API).
    Strict,
    /// As flagd loads a file: a flag whose targeting cannot compile (missing `$ref`, unknown
    /// operator) is kept, out of service, and evaluates to `PARSE_ERROR`; every other problem
    /// still refuses the document.
    Tolerant,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }
}

pub(crate) fn validate(doc: &Value, mode: Mode) -> Result<Validated, Vec<Problem>> {
    let mut p = Problems::default();
    let mut quarantined = Vec::new();
    let Some(root) = doc.as_object() else {
        p.add("$", "the document must be an object with a `flags` key");
        return Err(p.0);
    };
    for key in root.keys().filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
        p.add(key.as_str(), format!("unknown top-level key (expected one of: {})", TOP_LEVEL_KEYS.join(", ")));
    }
    let empty = Map::new();
    let evaluators = match root.get("$evaluators") {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => {
            p.add("$evaluators", "must be an object of named rules");
            &empty
        }
    };
    let metadata = metadata_of(root.get("metadata"), "metadata", &mut p);
    let hashing = Hashing::of_metadata(&metadata);
    let mut flags = Vec::new();
    match root.get("flags") {
        None => p.add("flags", "missing: the document must define `flags`"),
        Some(Value::Object(defs)) => {
            for (key, def) in defs {
                if let Some(flag) = flag(key, def, evaluators, mode, hashing, &mut p, &mut quarantined) {
                    flags.push(flag);
                }
            }
        }
        Some(_) => p.add("flags", "must be an object mapping flag keys to definitions"),
    }
    if p.0.is_empty() { Ok(Validated { flags, metadata, quarantined }) } else { Err(p.0) }
}

fn flag(
    key: &str,
    def: &Value,
    evaluators: &Map<String, Value>,
    mode: Mode,
    hashing: Hashing,
    p: &mut Problems,
    quarantined: &mut Vec<Problem>,
) -> Option<Flag> {
    if key.len() > MAX_NAME_BYTES {
        let message = format!("a flag key is at most {MAX_NAME_BYTES} bytes; this one has {}", key.len());
        p.add(format!("flags.{}", shown(key)), message);
        return None;
    }
    let path = format!("flags.{key}");
    let before = p.0.len();
    let Some(def) = def.as_object() else {
        p.add(path, "a flag must be an object");
        return None;
    };
    for k in def.keys().filter(|k| !FLAG_KEYS.contains(&k.as_str())) {
        p.add(format!("{path}.{k}"), format!("unknown key (expected one of: {})", FLAG_KEYS.join(", ")));
    }
    let enabled = match def.get("state") {
        Some(Value::String(s)) if s == "ENABLED" => true,
        Some(Value::String(s)) if s == "DISABLED" => false,
        Some(_) => {
            p.add(format!("{path}.state"), "must be \"ENABLED\" or \"DISABLED\"");
            false
        }
        None => {
            p.add(format!("{path}.state"), "missing: must be \"ENABLED\" or \"DISABLED\"");
            false
        }
    };
    let (variants, kind) = variants(&path, def.get("variants"), p);
    let default = match def.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => match variants.iter().position(|v| v.name == *name) {
            Some(i) => Some(i),
            None if variants.is_empty() => None,
            None => {
                p.add(
                    format!("{path}.defaultVariant"),
                    format!("\"{name}\" is not among the variants ({})", names(&variants)),
                );
                None
            }
        },
        Some(_) => {
            p.add(format!("{path}.defaultVariant"), "must be a variant name or null");
            None
        }
    };
    let mut rule_problems = Problems::default();
    let targeting = targeting(&path, def.get("targeting"), evaluators, hashing, &mut rule_problems);
    let broken = !rule_problems.0.is_empty();
    let ramp =
        def.get("ramp").and_then(|r| ramp((key, hashing), &path, r, &variants, def.get("defaultVariant"), default, p));
    let metadata = metadata_of(def.get("metadata"), &format!("{path}.metadata"), p);
    match mode {
        Mode::Tolerant if p.0.len() == before => quarantined.append(&mut rule_problems.0),
        _ => p.0.append(&mut rule_problems.0),
    }
    if p.0.len() > before {
        return None;
    }
    Some(Flag { key: key.to_owned(), enabled, broken, variants, default, targeting, ramp, metadata, kind: kind? })
}

fn variants(path: &str, value: Option<&Value>, p: &mut Problems) -> (Vec<Variant>, Option<ValueKind>) {
    let path = format!("{path}.variants");
    let map = match value {
        Some(Value::Object(m)) if !m.is_empty() => m,
        Some(Value::Object(_)) => {
            p.add(path, "must define at least one variant");
            return (Vec::new(), None);
        }
        Some(_) => {
            p.add(path, "must be an object mapping variant names to values");
            return (Vec::new(), None);
        }
        None => {
            p.add(path, "missing: a flag needs variants");
            return (Vec::new(), None);
        }
    };
    let mut kind: Option<(ValueKind, &str)> = None;
    let mut out = Vec::with_capacity(map.len());
    for (index, (name, value)) in map.iter().enumerate() {
        if name.len() > MAX_NAME_BYTES {
            let message = format!("a variant name is at most {MAX_NAME_BYTES} bytes; this one has {}", name.len());
            p.add(format!("{path}.{}", shown(name)), message);
            continue;
        }
        let Some(k) = ValueKind::of(value) else {
            p.add(format!("{path}.{name}"), "a variant value must be a boolean, string, number or object");
            continue;
        };
        match kind {
            None => kind = Some((k, name)),
            Some((first, first_name)) if first != k => p.add(
                format!("{path}.{name}"),
                format!(
                    "mixed value types: \"{name}\" is a {} but \"{first_name}\" is a {}",
                    k.as_str(),
                    first.as_str()
                ),
            ),
            Some(_) => {}
        }
        out.push(Variant { name: name.clone(), value: value.clone(), index });
    }
    (out, kind.map(|(k, _)| k))
}

fn targeting(
    path: &str,
    rule: Option<&Value>,
    evaluators: &Map<String, Value>,
    hashing: Hashing,
    p: &mut Problems,
) -> Option<Targeting> {
    let rule = match rule {
        None | Some(Value::Null) => return None,
        Some(Value::Object(m)) if m.is_empty() => return None,
        Some(r) => r,
    };
    let path = format!("{path}.targeting");
    let mut refs = Vec::new();
    refs_in(rule, &mut refs);
    let missing: Vec<&str> = refs.into_iter().filter(|name| !evaluators.contains_key(*name)).collect();
    if !missing.is_empty() {
        for name in missing {
            p.add(path.as_str(), format!("$ref to missing evaluator \"{name}\" (not in $evaluators)"));
        }
        return None;
    }
    let compiled = expand_refs(rule, evaluators).and_then(|r| Targeting::compile(&r, hashing));
    match compiled {
        Ok(t) => Some(t),
        Err(e) => {
            let message = match e {
                RuleError::MissingRef(name) => format!("$ref to missing evaluator \"{name}\" (not in $evaluators)"),
                RuleError::RefCycle => "$ref cycle: evaluators refer to each other without end".to_owned(),
                RuleError::BadRef => "$ref must name an evaluator (a string)".to_owned(),
                RuleError::TooLarge => "$refs expand to more than 100000 nodes".to_owned(),
                RuleError::Compile(msg) => format!("invalid JSONLogic rule: {msg}"),
            };
            p.add(path, message);
            None
        }
    }
}

/// The ramp of flag `key`, bucketed with `hashing`.
fn ramp(
    (key, hashing): (&str, Hashing),
    path: &str,
    value: &Value,
    variants: &[Variant],
    default_given: Option<&Value>,
    default: Option<usize>,
    p: &mut Problems,
) -> Option<Ramp> {
    let path = format!("{path}.ramp");
    let Some(map) = value.as_object() else {
        p.add(path, "must be an object {treatment, percent, bucketBy, slowUs}");
        return None;
    };
    for k in map.keys().filter(|k| !RAMP_KEYS.contains(&k.as_str())) {
        p.add(format!("{path}.{k}"), format!("unknown key (expected one of: {})", RAMP_KEYS.join(", ")));
    }
    let treatment = match map.get("treatment") {
        Some(Value::String(name)) => match variants.iter().position(|v| v.name == *name) {
            Some(i) if Some(i) == default => {
                p.add(format!("{path}.treatment"), "must differ from the defaultVariant (the control)");
                None
            }
            Some(i) => Some(i),
            None => {
                p.add(
                    format!("{path}.treatment"),
                    format!("\"{name}\" is not among the variants ({})", names(variants)),
                );
                None
            }
        },
        Some(_) => {
            p.add(format!("{path}.treatment"), "must be a variant name");
            None
        }
        None => {
            p.add(format!("{path}.treatment"), "missing: the variant being ramped");
            None
        }
    };
    let percent = match map.get("percent") {
        None => Some(0.0),
        Some(v) => match v.as_f64() {
            Some(x) if (0.0..=100.0).contains(&x) => Some(x),
            _ => {
                p.add(format!("{path}.percent"), format!("must be a number in 0..=100, got {v}"));
                None
            }
        },
    };
    let bucket_by = match map.get("bucketBy") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            p.add(format!("{path}.bucketBy"), "must be a non-empty context attribute name");
            None
        }
    };
    // Set by the control plane: the latency guardrail's threshold, in whole microseconds.
    let slow_us = match map.get("slowUs") {
        None => Some(None),
        Some(v) => match v.as_u64() {
            Some(us) => Some(Some(us)),
            None => {
                p.add(format!("{path}.slowUs"), format!("must be a non-negative integer (microseconds), got {v}"));
                None
            }
        },
    };
    if default.is_none() && matches!(default_given, None | Some(Value::Null)) {
        p.add(path.as_str(), "a ramp needs a defaultVariant: it is the control");
    }
    let (treatment, percent, slow_us) = (treatment?, percent?, slow_us?);
    Some(Ramp {
        treatment,
        percent,
        threshold: percent_to_threshold(percent),
        bucketer: Bucketer::new(key, hashing, bucket_by.is_none()),
        bucket_by,
        slow_us,
    })
}

fn metadata_of(value: Option<&Value>, path: &str, p: &mut Problems) -> Map<String, Value> {
    match value {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !matches!(v, Value::Bool(_) | Value::Number(_) | Value::String(_)) {
                    p.add(format!("{path}.{k}"), "metadata values must be booleans, numbers or strings");
                }
            }
            m.clone()
        }
        Some(_) => {
            p.add(path, "must be an object");
            Map::new()
        }
    }
}

fn names(variants: &[Variant]) -> String {
    variants.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
}
