//! The outcome of evaluating one flag: variant, value, reason and error code, named exactly as
//! flagd and OpenFeature name them.

use std::fmt;

use serde_json::Value;

use crate::flag::Variant;

/// Why a flag resolved as it did (flagd's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No targeting and no ramp: the default variant.
    Static,
    /// Targeting returned a variant.
    TargetingMatch,
    /// A ramp assigned the unit to treatment or control.
    Split,
    /// The flag is disabled.
    Disabled,
    /// Targeting (or the ramp) gave no variant; the default variant (or the caller's default).
    Default,
    /// Evaluation failed; see the [`ErrorCode`].
    Error,
}

impl Reason {
    pub const ALL: [Reason; 6] =
        [Reason::Static, Reason::TargetingMatch, Reason::Split, Reason::Disabled, Reason::Default, Reason::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Default => "DEFAULT",
            Reason::Error => "ERROR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OpenFeature error codes, as flagd reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    FlagNotFound,
    ParseError,
    TypeMismatch,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one evaluation. Borrows the compiled flag: building it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution<'s> {
    /// The chosen variant; `None` when flagd gives none (disabled, no default, error).
    pub variant: Option<&'s Variant>,
    pub reason: Reason,
    /// Set exactly when `reason` is [`Reason::Error`].
    pub error: Option<ErrorCode>,
    /// Set exactly when `reason` is [`Reason::Split`]: the unit's 64-bit hash under the flag's
    /// seed ([`Bucketer::unit_id`](crate::Bucketer::unit_id)). It identifies the unit within this
    /// flag, for distinct-unit counts; the bucket itself comes from flagd's `fractional` hash.
    pub unit: Option<u64>,
}

impl<'s> Resolution<'s> {
    pub(crate) fn of(variant: Option<&'s Variant>, reason: Reason) -> Self {
        Resolution { variant, reason, error: None, unit: None }
    }

    pub(crate) fn split(variant: Option<&'s Variant>, unit: u64) -> Self {
        Resolution { variant, reason: Reason::Split, error: None, unit: Some(unit) }
    }

    pub(crate) fn error(code: ErrorCode) -> Self {
        Resolution { variant: None, reason: Reason::Error, error: Some(code), unit: None }
    }

    pub fn variant_name(&self) -> Option<&'s str> {
        self.variant.map(|v| v.name())
    }

    pub fn value(&self) -> Option<&'s Value> {
        self.variant.map(|v| v.value())
    }
}
