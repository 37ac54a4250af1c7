//! The vocabulary every room shares: what a guest is (desired or actual, normalized so the two
//! compare by meaning) and what a step is.
//!
//! It exists so that the document, the journal adapter and the planner can talk about guests
//! and steps without depending on each other. It imports nothing else from the crate.

pub mod guest;
pub mod step;
pub mod vocabulary;

pub use guest::*;
pub use vocabulary::{DevSpec, MountSource, MountSpec, Startup};
