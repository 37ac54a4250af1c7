//! Helpers for the hub tests and the hub benchmark: certificates made with the `openssl` CLI,
//! a real nginx serving a directory over TLS on loopback, and a small rustls test server for
//! hostile answers.
#![allow(dead_code, clippy::unwrap_used)]

pub mod certs;
pub mod hub_dir;
pub mod nginx;
pub mod rawtls;
