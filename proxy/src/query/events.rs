//! Snapshot change notifications: every new snapshot is diffed against the one it replaced once,
//! and the changed flag keys are broadcast to the `EventStream`s as flagd's `configuration_change`.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::snapshot::Snapshot;

/// Changes kept for a slow `EventStream`; one that falls further behind is told "everything
/// changed" rather than being waited for.
const BACKLOG: usize = 64;

/// How a flag changed, named as flagd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Write,
    Update,
    Delete,
}

impl ChangeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Write => "write",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One new snapshot: its version and the flags that differ from the previous one.
#[derive(Debug, PartialEq)]
pub(crate) struct Change {
    pub(crate) version: u64,
    pub(crate) flags: Vec<(String, ChangeKind)>,
}

/// The sending side, held by whoever stores snapshots; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    tx: broadcast::Sender<Arc<Change>>,
}

impl Default for Events {
    fn default() -> Self {
        Events { tx: broadcast::channel(BACKLOG).0 }
    }
}

impl Events {
    /// Announces that `new` replaced `old` (nothing is sent when no flag changed).
    pub(crate) fn publish(&self, old: &Snapshot, new: &Snapshot) {
        let flags = diff(old, new);
        if flags.is_empty() {
            return;
        }
        // No subscriber is not an error: nobody is listening yet.
        let _ = self.tx.send(Arc::new(Change { version: new.version, flags }));
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

/// Whether two definitions mean the same: numbers compare by value (`0.0` is `0`), objects
/// regardless of key order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn same_opt(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The flags whose definition differs in value between `old` and `new` (rewriting `0.0` as `0`
/// changes nothing). A change to the shared `$evaluators` or the set's `metadata` may change any
/// flag, so it reports every flag.
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<(String, ChangeKind)> {
    let (a, b) = (old.flags.definition(), new.flags.definition());
    let shared_changed =
        !same_opt(a.get("$evaluators"), b.get("$evaluators")) || !same_opt(a.get("metadata"), b.get("metadata"));
    let flags_of = |doc: &Value| doc.get("flags").and_then(Value::as_object).cloned().unwrap_or_default();
    let (before, after) = (flags_of(a), flags_of(b));
    let mut out = Vec::new();
    for (key, def) in &after {
        match before.get(key) {
            None => out.push((key.clone(), ChangeKind::Write)),
            Some(old) if shared_changed || !same(old, def) => out.push((key.clone(), ChangeKind::Update)),
            Some(_) => {}
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        out.push((key.clone(), ChangeKind::Delete));
    }
    out
}

#[cfg(test)]
mod tests {
    use rampart_flags::FlagSet;
    use rampart_stats::Registry;

    use super::*;
    use crate::metrics::Metrics;
    use crate::snapshot::Outputs;

    fn snapshot(version: u64, yaml: &str) -> Snapshot {
        let (metrics, stats) = (Metrics::new(), Registry::new(10));
        let out = Outputs { prefix: "x-flag-", inject: None, metrics: &metrics, stats: &stats };
        Snapshot::build(version, FlagSet::from_str("f.yaml", yaml).unwrap(), out).unwrap()
    }

    #[test]
    fn reports_written_updated_and_deleted_flags() {
        let flag = |d: &str| format!("    state: ENABLED\n    variants: {{ a: 1, b: 2 }}\n    defaultVariant: {d}\n");
        let old =
            snapshot(1, &format!("flags:\n  same:\n{}  changed:\n{}  gone:\n{}", flag("a"), flag("a"), flag("a")));
        let new =
            snapshot(2, &format!("flags:\n  same:\n{}  changed:\n{}  added:\n{}", flag("a"), flag("b"), flag("a")));
        let events = Events::default();
        let mut rx = events.subscribe();
        events.publish(&old, &new);
        let change = rx.try_recv().unwrap();
        assert_eq!(change.version, 2);
        let mut got = change.flags.clone();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            got,
            [
                ("added".to_owned(), ChangeKind::Write),
                ("changed".to_owned(), ChangeKind::Update),
                ("gone".to_owned(), ChangeKind::Delete)
            ]
        );
        events.publish(
            &new,
            &snapshot(3, &format!("flags:\n  same:\n{}  changed:\n{}  added:\n{}", flag("a"), flag("b"), flag("a"))),
        );
        assert!(rx.try_recv().is_err(), "an identical snapshot announces nothing");
        let rewritten = |n: &str| {
            format!("flags:\n  same:\n    state: ENABLED\n    variants: {{ a: {n}, b: 2 }}\n    defaultVariant: a\n")
        };
        events.publish(&snapshot(4, &rewritten("0")), &snapshot(5, &rewritten("0.0")));
        assert!(rx.try_recv().is_err(), "0.0 for 0 changes no value");
    }
}
