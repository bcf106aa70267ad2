//! Ramps: the engine that advances, holds, pauses or rolls back each flag's treatment with
//! always-valid statistics on randomised units, one decision per second per ramp.

pub mod decide;
pub(crate) mod engine;
pub mod model;
pub mod plan;
pub mod sequential;
pub mod window;
