//! Subcommand implementations of the `rampart` binary.

pub(crate) mod flags;
