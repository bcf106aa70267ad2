//! The on-disk copy of the last flags the control plane pushed, so a sidecar that starts while the
//! control plane is unreachable serves its last flags. Written atomically (temp file + rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Cached {
    pub(crate) version: u64,
    /// The flag definitions, JSON text as pushed.
    pub(crate) definition: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a flags cache: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The cached flags; `Ok(None)` when there is no cache yet.
pub(crate) fn read(path: &Path) -> Result<Option<Cached>, CacheError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CacheError::Format { path: path.to_owned(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Io { path: path.to_owned(), source }),
    }
}

/// Replaces the cache with `cached`, atomically.
pub(crate) fn write(path: &Path, cached: &Cached) -> Result<(), CacheError> {
    let io = |source| CacheError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(cached).map_err(|source| CacheError::Format { path: path.to_owned(), source })?;
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        assert!(read(&path).unwrap().is_none());
        let c = Cached { version: 7, definition: "{\"flags\":{}}".to_owned() };
        write(&path, &c).unwrap();
        assert_eq!(read(&path).unwrap(), Some(c));
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(read(&path), Err(CacheError::Format { .. })));
    }
}
