//! Subcommand implementations of the `rampart` binary.

pub(crate) mod control;
pub(crate) mod demo;
pub(crate) mod flags;
pub(crate) mod http;
pub(crate) mod platform;
pub(crate) mod proxy;
pub(crate) mod ramp;
pub(crate) mod shutdown;
pub(crate) mod sign;
