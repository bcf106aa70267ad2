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

/// Stores `definition` as the next version and pushes it to every connected sidecar.
pub(crate) fn publish(shared: &Shared, set: &FlagSet, json: String, source: &str) -> Result<u64, PublishError> {
    // One writer at a time: the version number must not be handed out twice.
    let store = lock(&shared.store);
    let version = shared.flags.borrow().version + 1;
    store.insert_flags(version, &json, source, now_ms())?;
    let flags = Flags { version, text: json, definition: set.definition().clone() };
    shared.flags.send_replace(Arc::new(flags));
    drop(store);
    shared.metrics.flags_version.set(version as f64);
    tracing::info!(version, source, "flags published");
    Ok(version)
}
