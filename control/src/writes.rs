//! The API's writes — flags replaced, created or archived, ramps started, paused, resumed or
//! aborted — as values, so
//! that wherever one arrives it is carried out in one place: here on one control plane or on the
//! leading replica, else queued in the store for the leader (`replicas.rs`). Each answers an HTTP
//! status and a JSON body.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::flags;
use crate::ramp::engine::{self, RampError, StartRequest};
use crate::state::{Shared, lock};

/// One write, with who asked for it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Write {
    /// Replace the flag definitions (already parsed and validated).
    PutFlags {
        definition: Value,
        actor: String,
    },
    StartRamp {
        request: StartRequest,
    },
    /// `op`: pause, resume or abort.
    OperateRamp {
        flag: String,
        op: String,
        actor: String,
    },
    /// Add one flag (`rampart flag create`).
    CreateFlag {
        key: String,
        spec: NewFlag,
        actor: String,
    },
    /// Mark a flag archived: served as its default until removed.
    ArchiveFlag {
        key: String,
        actor: String,
    },
}

/// A flag to create: owner and description go to its metadata with its creation time and
/// expected lifetime.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewFlag {
    pub(crate) owner: String,
    pub(crate) description: Option<String>,
    /// Variant name → value (default `{"on": true, "off": false}`).
    pub(crate) variants: Option<serde_json::Map<String, Value>>,
    /// The default variant (default `off`).
    pub(crate) default: Option<String>,
    /// Expected lifetime, e.g. `90d`.
    pub(crate) expires: Option<String>,
}

/// Carries `write` out here, now (blocking).
pub(crate) fn execute(shared: &Shared, write: Write) -> (u16, Value) {
    match write {
        Write::PutFlags { definition, actor } => put_flags(shared, definition, &actor),
        Write::StartRamp { request } => {
            let started = engine::start(shared, request).and_then(|ramp| Ok(engine::status(shared, &ramp, 20)?));
            match started {
                Ok(status) => (201, status),
                Err(e) => ramp_error(&e),
            }
        }
        Write::CreateFlag { key, spec, actor } => create_flag(shared, &key, spec, &actor),
        Write::ArchiveFlag { key, actor } => archive_flag(shared, &key, &actor),
        Write::OperateRamp { flag, op, actor } => {
            let done =
                engine::operate(shared, &flag, &op, &actor).and_then(|ramp| Ok(engine::status(shared, &ramp, 20)?));
            match done {
                Ok(status) => (200, status),
                Err(e) => ramp_error(&e),
            }
        }
    }
}

/// Carries `write` out where it must be: here when this control plane decides, else at the
/// leading replica.
pub(crate) async fn submit(shared: &Arc<Shared>, write: Write) -> (u16, Value) {
    if shared.replicas.as_ref().is_some_and(|r| !r.leads()) {
        return crate::replicas::forward(shared, &write).await;
    }
    let shared2 = shared.clone();
    match tokio::task::spawn_blocking(move || execute(&shared2, write)).await {
        Ok(answer) => answer,
        Err(e) => (500, json!({"error": e.to_string()})),
    }
}

fn ramp_error(e: &RampError) -> (u16, Value) {
    let status = match e {
        RampError::BadRequest(_) => 400,
        RampError::NotFound(_) => 404,
        RampError::Conflict(_) => 409,
        RampError::Publish(flags::PublishError::Store(crate::store::StoreError::NotLeader)) => 503,
        RampError::Publish(_) | RampError::Store(_) => 500,
    };
    (status, json!({"error": e.to_string()}))
}

/// Replaces the definitions. The engine owns a running ramp's percent and keeps a rolled-back
/// treatment at 0%, whatever the new definitions say: the ramps stay locked until the new version
/// is published, so a rollback decided meanwhile is published after it, never undone by it.
fn put_flags(shared: &Shared, definition: Value, actor: &str) -> (u16, Value) {
    let mut ramps = lock(&shared.ramps);
    answer_publish(replace(shared, &mut ramps, definition, actor, "flags_put", "a flags PUT"))
}

/// Publishes `doc` (ramps imposed) and records each flag it changed for `actor`; its version.
fn replace(
    shared: &Shared,
    ramps: &mut std::collections::BTreeMap<i64, crate::ramp::model::Ramp>,
    mut doc: Value,
    actor: &str,
    action: &str,
    by: &str,
) -> Result<u64, flags::PublishError> {
    engine::impose_ramps(ramps, &mut doc);
    let set = rampart_flags::FlagSet::from_value("request body", doc).map_err(flags::PublishError::from)?;
    let json_text = set.definition().to_string();
    let before = shared.flags.borrow().definition.clone();
    let version = flags::publish(shared, &set, json_text, "api")?;
    let changed = crate::audit::changed_flags(&before, set.definition());
    let edited: Vec<String> = changed.iter().map(|(flag, _)| flag.clone()).collect();
    engine::note_flag_edits(shared, ramps, &edited)?;
    if changed.is_empty() {
        crate::audit::record(shared, actor, action, None, Some(version), "no flag changed".to_owned())?;
    }
    for (flag, how) in changed {
        let detail = format!("{how} by {by} (version {version})");
        crate::audit::record(shared, actor, action, Some(&flag), Some(version), detail)?;
    }
    Ok(version)
}

fn answer_publish(published: Result<u64, flags::PublishError>) -> (u16, Value) {
    match published {
        Ok(version) => (200, json!({ "version": version })),
        Err(flags::PublishError::Invalid(e)) => {
            let problems: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
            (400, json!({"error": "invalid flag definitions", "problems": problems}))
        }
        Err(flags::PublishError::Store(crate::store::StoreError::Conflict(_))) => {
            (409, json!({"error": "the flags changed meanwhile; retry"}))
        }
        Err(flags::PublishError::Store(crate::store::StoreError::NotLeader)) => {
            (503, json!({"error": "this replica lost the lead meanwhile; retry"}))
        }
        Err(e) => (500, json!({"error": e.to_string()})),
    }
}

fn bad(message: &str) -> (u16, Value) {
    (400, json!({"error": message}))
}

/// `rampart flag create`: validated like any definition, versioned and pushed; 409 when the key
/// exists.
fn create_flag(shared: &Shared, key: &str, spec: NewFlag, actor: &str) -> (u16, Value) {
    if spec.owner.trim().is_empty() || spec.owner.len() > rampart_flags::MAX_NAME_BYTES {
        return bad(&format!("owner must be 1 to {} bytes", rampart_flags::MAX_NAME_BYTES));
    }
    let variants = spec.variants.unwrap_or_else(|| {
        serde_json::Map::from_iter([("on".to_owned(), Value::Bool(true)), ("off".to_owned(), Value::Bool(false))])
    });
    let default = spec.default.unwrap_or_else(|| "off".to_owned());
    if !variants.contains_key(&default) {
        return bad(&format!("the default \"{default}\" is not one of the variants"));
    }
    let now = crate::state::now_ms();
    let mut metadata =
        json!({"owner": spec.owner, "createdAt": crate::lifecycle::format_time(now), "createdBy": actor});
    if let Some(d) = spec.description.filter(|d| !d.is_empty()) {
        metadata["description"] = Value::String(d);
    }
    if let Some(e) = spec.expires {
        if humantime::parse_duration(&e).is_err() {
            return bad(&format!("expires \"{e}\" is not a duration like 90d"));
        }
        metadata["expectedLifetime"] = Value::String(e);
    }
    let mut ramps = lock(&shared.ramps);
    let mut doc = shared.flags.borrow().definition.clone();
    let Some(flags) = doc.get_mut("flags").and_then(Value::as_object_mut) else {
        return (500, json!({"error": "the current definitions have no flags object"}));
    };
    if flags.contains_key(key) {
        return (409, json!({"error": format!("flag \"{key}\" exists already")}));
    }
    let flag = json!({"state": "ENABLED", "variants": variants, "defaultVariant": default, "metadata": metadata});
    flags.insert(key.to_owned(), flag.clone());
    match replace(shared, &mut ramps, doc, actor, "flag_create", "flag create") {
        Ok(version) => (201, json!({"version": version, "flag": key, "definition": flag})),
        Err(e) => answer_publish(Err(e)),
    }
}

/// `rampart flag archive`: the flag stays defined (sidecars and SDKs keep getting its default)
/// and is listed as removable; its targeting goes. Not while a ramp of it runs.
fn archive_flag(shared: &Shared, key: &str, actor: &str) -> (u16, Value) {
    let mut ramps = lock(&shared.ramps);
    if let Some(r) = ramps.values().find(|r| r.flag == key && r.state.active()) {
        return (409, json!({"error": format!("flag \"{key}\" has a {} ramp: abort it first", r.state.as_str())}));
    }
    let mut doc = shared.flags.borrow().definition.clone();
    let Some(flag) = doc.get_mut("flags").and_then(|f| f.get_mut(key)).and_then(Value::as_object_mut) else {
        return (404, json!({"error": format!("no flag \"{key}\"")}));
    };
    flag.remove("targeting");
    flag.remove("ramp");
    let metadata = flag.entry("metadata").or_insert_with(|| json!({}));
    if let Some(m) = metadata.as_object_mut() {
        m.insert("archived".to_owned(), Value::Bool(true));
        m.insert("archivedAt".to_owned(), Value::String(crate::lifecycle::format_time(crate::state::now_ms())));
    }
    answer_publish(replace(shared, &mut ramps, doc, actor, "flag_archive", "flag archive"))
}
