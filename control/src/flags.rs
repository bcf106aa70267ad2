//! The flag definitions the control plane distributes: validated with the flag engine, stored as
//! a new version, then published to every stream at once.

use std::sync::Arc;

use rampart_flags::{FlagSet, Format, LoadError};

use crate::state::{Flags, Shared, lock, now_ms};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates `text` (JSON or YAML) and returns the flags as distributed.
pub(crate) fn parse(name: &str, text: &str, format: Format) -> Result<(FlagSet, String), LoadError> {
    let set = FlagSet::from_text(name, text, format)?;
    let json = set.definition().to_string();
    Ok((set, json))
}

/// Stores `definition` as the next version and pushes it to every connected sidecar. With
/// replicas only the leader publishes (fenced by its lease in the store); a version taken meanwhile
/// ([`StoreError::Conflict`]) makes this replica reload the newest flags, and the caller retries.
pub(crate) fn publish(shared: &Shared, set: &FlagSet, json: String, source: &str) -> Result<u64, PublishError> {
    // One writer at a time here: the version number must not be handed out twice.
    let writing = lock(&shared.publishing);
    let version = shared.flags.borrow().version + 1;
    if let Err(e) = shared.store.insert_flags(version, &json, source, now_ms()) {
        if matches!(e, StoreError::Conflict(_)) {
            reload(shared);
        }
        return Err(e.into());
    }
    let flags = Flags { version, text: json, definition: set.definition().clone() };
    shared.flags.send_replace(Arc::new(flags));
    drop(writing);
    shared.metrics.flags_version.set(version as f64);
    tracing::info!(version, source, "flags published");
    Ok(version)
}

/// Takes the newest flags version from the store when it is newer than the one distributed
/// (another replica published it); returns whether it changed anything.
pub(crate) fn reload(shared: &Shared) -> bool {
    let latest = match shared.store.latest_flags() {
        Ok(Some(latest)) => latest,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the newest flags from the store");
            return false;
        }
    };
    let (version, text) = latest;
    if version <= shared.flags.borrow().version {
        return false;
    }
    match parse("store", &text, Format::Json) {
        Ok((set, json)) => {
            let flags = Flags { version, text: json, definition: set.definition().clone() };
            shared.flags.send_replace(Arc::new(flags));
            shared.metrics.flags_version.set(version as f64);
            tracing::info!(version, "flags version from another replica");
            true
        }
        Err(e) => {
            tracing::error!(version, error = %e, "the store holds flags that do not validate; keeping the current ones");
            false
        }
    }
}
