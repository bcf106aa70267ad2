//! The audit trail: who changed what — flags replaced through the API, ramps started, paused,
//! resumed or aborted by an operator, percents changed by the engine's own decisions — with the
//! flags version each change produced, kept in the store.

use serde_json::Value;

use crate::state::{Shared, now_ms};
use crate::store::{AuditRow, StoreError};

/// The actor of the ramp engine's own decisions.
pub(crate) const ENGINE: &str = "engine";
/// The actor on an API without operators (no `api_tokens_file`).
pub(crate) const ANONYMOUS: &str = "anonymous";

/// Records one change.
pub(crate) fn record(
    shared: &Shared,
    actor: &str,
    action: &str,
    flag: Option<&str>,
    version: Option<u64>,
    detail: String,
) -> Result<(), StoreError> {
    let row = AuditRow {
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        flag: flag.map(str::to_owned),
        version,
        detail,
    };
    shared.store.add_audit(&row)
}

/// The flags a replacement changes, as `(key, "added" | "removed" | "changed")`, sorted by key.
pub(crate) fn changed_flags(before: &Value, after: &Value) -> Vec<(String, &'static str)> {
    let empty = serde_json::Map::new();
    let flags = |doc: &Value| doc.get("flags").and_then(Value::as_object).cloned().unwrap_or_else(|| empty.clone());
    let (old, new) = (flags(before), flags(after));
    let mut out: Vec<(String, &'static str)> = Vec::new();
    for (key, def) in &new {
        match old.get(key) {
            None => out.push((key.clone(), "added")),
            Some(was) if was != def => out.push((key.clone(), "changed")),
            Some(_) => {}
        }
    }
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).map(|k| (k.clone(), "removed")));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_replacement_names_the_flags_it_changes() {
        let before = json!({"flags": {"a": {"state": "ENABLED"}, "b": {"state": "ENABLED"}, "c": {}}});
        let after = json!({"flags": {"a": {"state": "DISABLED"}, "c": {}, "d": {}}});
        let changed = changed_flags(&before, &after);
        assert_eq!(changed, [("a".to_owned(), "changed"), ("b".to_owned(), "removed"), ("d".to_owned(), "added")]);
    }
}
