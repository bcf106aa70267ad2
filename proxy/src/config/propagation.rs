//! `[propagation]`: the shared key and the settings of signed assignments across hops (see
//! `crate::propagate`), validated at load like the rest of the configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::ConfigError;
use crate::propagate::Key;

/// `[propagation]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPropagation {
    key: Option<String>,
    key_file: Option<PathBuf>,
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_override_header")]
    override_header: String,
    #[serde(default = "default_ttl", with = "humantime_serde")]
    ttl: Duration,
    #[serde(default = "yes")]
    trust: bool,
    #[serde(default = "yes")]
    emit: bool,
    #[serde(default = "yes")]
    overrides: bool,
}

fn default_header() -> String {
    crate::propagate::ASSIGNMENTS_HEADER.to_owned()
}
fn default_override_header() -> String {
    crate::propagate::OVERRIDE_HEADER.to_owned()
}
fn default_ttl() -> Duration {
    Duration::from_secs(60)
}
fn yes() -> bool {
    true
}

/// Signed assignments across hops: one header carries a hop's variants to the next sidecar, which
/// reuses them; a signed override token forces variants.
#[derive(Debug, Clone)]
pub struct Propagation {
    /// The shared secret, its HMAC state prepared once.
    pub key: Key,
    /// Carries the assignments between hops (default `x-rampart-assignments`).
    pub header: HeaderName,
    /// Carries a QA override token (default `x-rampart-override`).
    pub override_header: HeaderName,
    /// How long an emitted assignments header stays valid.
    pub ttl: Duration,
    /// Accept (verify and reuse) an incoming assignments header.
    pub trust: bool,
    /// Add the signed assignments header to the upstream request.
    pub emit: bool,
    /// Accept override tokens.
    pub overrides: bool,
}

impl RawPropagation {
    /// Validates `[propagation]`; relative `key_file` paths resolve against `base`, and neither
    /// header may fall under the flag-header `prefix` (those are stripped before anything else).
    pub(super) fn validate(
        self,
        base: &Path,
        prefix: &str,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<Propagation, ConfigError> {
        let (field, key) = match (self.key, self.key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("propagation", "set key or key_file, not both".to_owned()));
            }
            (None, None) => return Err(invalid("propagation", "needs key or key_file".to_owned())),
            (Some(text), None) => ("propagation.key", Key::new(text.as_bytes())),
            (None, Some(file)) => ("propagation.key_file", Key::from_file(&base.join(file))),
        };
        let key = key.map_err(|e| invalid(field, e.to_string()))?;
        let header_name = |field: &str, text: &str| -> Result<HeaderName, ConfigError> {
            let name = HeaderName::try_from(text)
                .map_err(|_| invalid(field, format!("\"{text}\" is not a valid header name")))?;
            if name.as_str().starts_with(prefix) {
                return Err(invalid(field, format!("\"{name}\" is under the flag-header prefix \"{prefix}\"")));
            }
            Ok(name)
        };
        let header = header_name("propagation.header", &self.header)?;
        let override_header = header_name("propagation.override_header", &self.override_header)?;
        if header == override_header {
            return Err(invalid("propagation.override_header", "must differ from propagation.header".to_owned()));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(invalid("propagation.ttl", "must be at least 1s".to_owned()));
        }
        Ok(Propagation {
            key,
            header,
            override_header,
            ttl: self.ttl,
            trust: self.trust,
            emit: self.emit,
            overrides: self.overrides,
        })
    }
}
