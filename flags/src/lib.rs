//! Rampart's flag engine: flagd-compatible flag definitions (JSON or YAML), validated once with
//! located errors, compiled into an evaluation plan, and evaluated per context without re-parsing.
//!
//! Pure: no I/O beyond reading a file on request, no async runtime.
//!
//! ```
//! use rampart_flags::{Bump, Context, FlagSet, Reason};
//!
//! let set = FlagSet::from_str("flags.yaml", r#"
//! flags:
//!   new-checkout:
//!     state: ENABLED
//!     variants: { "on": true, "off": false }
//!     defaultVariant: "off"
//!     ramp: { treatment: "on", percent: 100 }
//! "#).unwrap();
//! let arena = Bump::new();
//! let ctx = Context::builder(&arena).targeting_key("user-1").build();
//! let r = set.evaluate("new-checkout", &ctx, &arena);
//! assert_eq!(r.variant_name(), Some("on"));
//! assert_eq!(r.reason, Reason::Split);
//! assert!(r.unit.is_some(), "a split names the unit (its bucketing hash)");
//! ```

pub mod bounds;
mod bucket;
mod context;
mod error;
mod export;
mod flag;
mod flagset;
mod operators;
mod resolution;
mod source;
mod targeting;
mod validate;

pub use bucket::{BUCKETS, Bucketer, Hashing, bucket_of_murmur, percent_to_threshold};
pub use context::{
    Context, ContextBuilder, ContextError, MAX_CONTEXT_DEPTH, MAX_CONTEXT_KEYS, MAX_CONTEXT_VALUES, TARGETING_KEY,
};
pub use datalogic_rs::bumpalo::Bump;
pub use error::{LoadError, Problem};
pub use export::Selector;
pub use flag::{Flag, Ramp, ValueKind, Variant};
pub use flagset::FlagSet;
pub use resolution::{ErrorCode, Reason, Resolution};
pub use source::{Format, read_file};
pub use validate::MAX_NAME_BYTES;
