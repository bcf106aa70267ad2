//! Shared fixtures for the benches: flag sets of a given size and shape.
