//! The API's writes — flags replaced, ramps started, paused, resumed or aborted — as values, so
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
    let published = (|| {
        let ramps = lock(&shared.ramps);
        let mut doc = definition;
        engine::impose_ramps(&ramps, &mut doc);
        let set = rampart_flags::FlagSet::from_value("request body", doc).map_err(flags::PublishError::from)?;
        let json_text = set.definition().to_string();
        let before = shared.flags.borrow().definition.clone();
        let version = flags::publish(shared, &set, json_text, "api")?;
        let changed = crate::audit::changed_flags(&before, set.definition());
        if changed.is_empty() {
            crate::audit::record(shared, actor, "flags_put", None, Some(version), "no flag changed".to_owned())?;
        }
        for (flag, how) in changed {
            let detail = format!("{how} by a flags PUT (version {version})");
            crate::audit::record(shared, actor, "flags_put", Some(&flag), Some(version), detail)?;
        }
        Ok::<u64, flags::PublishError>(version)
    })();
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
