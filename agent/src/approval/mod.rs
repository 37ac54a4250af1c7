//! Operator signatures: the pending requests an operator signs, the signed files the agent
//! picks up (inbox, `drover approve`, the hub), and the trust document that says whose
//! signatures count.
//!
//! The gate crate decides whether a signature is valid; this folder owns the files on disk and
//! which trust document is in force.

pub mod files;
pub mod requests;
pub mod standing;
pub mod trust;
