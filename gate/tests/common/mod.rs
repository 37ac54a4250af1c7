//! Shared fixtures for the gate's integration tests: the vectors in `testdata/gate/` (made by
//! `testdata/gate/make-vectors.sh` with real ssh-keygen) and a trivial in-memory nonce ledger.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use gate::{GateContext, NonceClaim, NonceLedger, NonceRefusal, Op, PlannedAction, TrustStore};

pub const DIG: &str = "6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c";
pub const DIG2: &str = "0d7a3e1f9b2c4d5e6f708192a3b4c5d6e7f80912";
pub const EPOCH: &str = "5b0c2f9e7d4a4c1e";
pub const DOMAIN: &str = "agent.example.invalid";
/// 2026-11-22T21:30:00Z, inside every vector's approval window.
pub const NOW: i64 = 1_795_383_000;
pub const NB: i64 = 1_795_381_200; // 21:00:00Z
pub const EXP: i64 = 1_795_384_800; // 22:00:00Z

pub fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/gate"))
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("reading vector {name}: {e}"))
}

pub fn text(name: &str) -> String {
    String::from_utf8(read(name)).unwrap()
}

pub fn v1_text() -> String {
    text("trust_v1.txt")
}

pub fn trust(doc: &str) -> TrustStore {
    TrustStore::parse(doc).unwrap_or_else(|e| panic!("{e}"))
}

pub fn v1() -> TrustStore {
    trust(&v1_text())
}

pub fn ctx() -> GateContext {
    GateContext {
        fleet: "test-fleet-1".into(),
        host: "pve-test-01".into(),
        domain: DOMAIN.into(),
        epoch: EPOCH.into(),
    }
}

pub fn destroy_params(force: &str) -> BTreeMap<String, String> {
    [
        ("destroy-unreferenced-disks", "1"),
        ("force", force),
        ("purge", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The agent's planned step that `approval.txt` approves.
pub fn action() -> PlannedAction {
    PlannedAction {
        op: Op::DestroyGuest,
        vmid: 9101,
        guest_config_sha1: Some(DIG.into()),
        params: destroy_params("1"),
        bind: Default::default(),
    }
}

/// A trivial in-memory nonce ledger (the real one lives in the journal).
pub struct MemLedger {
    pub epoch: String,
    pub high_water: Option<i64>,
    pub gc_horizon: i64,
    pub used: Mutex<HashSet<String>>,
}

impl MemLedger {
    pub fn new() -> Self {
        MemLedger {
            epoch: EPOCH.into(),
            high_water: None,
            gc_horizon: 0,
            used: Mutex::new(HashSet::new()),
        }
    }
    pub fn consumed(&self) -> usize {
        self.used.lock().unwrap().len()
    }
}

impl NonceLedger for MemLedger {
    fn state_epoch(&self) -> String {
        self.epoch.clone()
    }
    fn clock_high_water(&self) -> Option<i64> {
        self.high_water
    }
    fn consume(&self, claim: &NonceClaim) -> Result<(), NonceRefusal> {
        if claim.expires_at <= self.gc_horizon {
            return Err(NonceRefusal::ExpiredForever);
        }
        if self.used.lock().unwrap().insert(claim.nonce.clone()) {
            Ok(())
        } else {
            Err(NonceRefusal::Replayed)
        }
    }
}

/// A ledger persisted to a file (one nonce per line), to show replay protection survives a
/// restart of the verifier.
pub struct FileLedger(pub PathBuf);

impl NonceLedger for FileLedger {
    fn state_epoch(&self) -> String {
        EPOCH.into()
    }
    fn clock_high_water(&self) -> Option<i64> {
        None
    }
    fn consume(&self, claim: &NonceClaim) -> Result<(), NonceRefusal> {
        let have = std::fs::read_to_string(&self.0).unwrap_or_default();
        if have.lines().any(|l| l == claim.nonce) {
            return Err(NonceRefusal::Replayed);
        }
        std::fs::write(&self.0, format!("{have}{}\n", claim.nonce))
            .map_err(|e| NonceRefusal::Unavailable(e.to_string()))
    }
}
