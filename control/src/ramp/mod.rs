//! Ramps: the engine that advances, holds or rolls back each flag's treatment with always-valid
//! statistics, one decision per second per ramp.

pub mod decide;
pub(crate) mod engine;
pub mod model;
pub mod sequential;
pub mod sim;
