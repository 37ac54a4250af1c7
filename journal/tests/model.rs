//! Property test: any sequence of journal operations, with reopens in between, leaves the store
//! equal to a simple in-memory model of in-flight steps, kept done records (after automatic
//! compaction), provenance and consumed nonces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use journal::{
    Journal, NewStep, NonceClaim, NonceError, Outcome, Phase, Retention, StepClass, StepId,
};
use proptest::prelude::*;

const RETENTION: Retention = Retention {
    per_guest: 2,
    total: 4,
    every: 3,
};

#[derive(Debug, Clone)]
enum Op {
    Intent { vmid: u32 },
    Submitted { pick: usize },
    Done { pick: usize, failed: bool },
    Created { vmid: u32 },
    OwnWrite { vmid: u32, digest: u8 },
    Finish { vmid: u32 },
    Scratch { vmid: u32 },
    Forget { vmid: u32 },
    Consume { nonce: u8, expires: i64 },
    Gc { now: i64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let vmid = 100u32..104;
    prop_oneof![
        4 => vmid.clone().prop_map(|vmid| Op::Intent { vmid }),
        2 => any::<usize>().prop_map(|pick| Op::Submitted { pick }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, failed)| Op::Done { pick, failed }),
        1 => vmid.clone().prop_map(|vmid| Op::Created { vmid }),
        1 => (vmid.clone(), any::<u8>()).prop_map(|(vmid, digest)| Op::OwnWrite { vmid, digest }),
        1 => vmid.clone().prop_map(|vmid| Op::Finish { vmid }),
        1 => vmid.clone().prop_map(|vmid| Op::Scratch { vmid }),
        1 => vmid.prop_map(|vmid| Op::Forget { vmid }),
        3 => (0u8..6, 0i64..20).prop_map(|(nonce, expires)| Op::Consume { nonce, expires }),
        1 => (0i64..20).prop_map(|now| Op::Gc { now }),
        1 => Just(Op::Reopen),
    ]
}

/// What the journal should hold.
#[derive(Default)]
struct Model {
    /// Not done: id → (vmid, upid once submitted).
    in_flight: BTreeMap<StepId, (u32, Option<String>)>,
    /// Done and not compacted away: id → vmid.
    done: BTreeMap<StepId, u32>,
    done_since_compact: u64,
    /// vmid → (scratch, op finished, digest).
    prov: BTreeMap<u32, (bool, bool, String)>,
    /// nonce → expires_at.
    nonces: BTreeMap<String, i64>,
    horizon: Option<i64>,
}

impl Model {
    fn compact(&mut self) {
        let mut per: BTreeMap<u32, usize> = BTreeMap::new();
        let mut kept = 0;
        let mut doomed = Vec::new();
        for (id, vmid) in self.done.iter().rev() {
            let n = per.entry(*vmid).or_default();
            *n += 1;
            if *n > RETENTION.per_guest || kept >= RETENTION.total {
                doomed.push(*id);
            } else {
                kept += 1;
            }
        }
        for id in doomed {
            self.done.remove(&id);
        }
    }
}

fn step(vmid: u32) -> NewStep {
    NewStep {
        vmid,
        kind: "start".into(),
        params: BTreeMap::new(),
        class: StepClass::Benign,
        approval_sha256: None,
        signers: vec![],
        operation: None,
        attempt: 1,
    }
}

fn open(dir: &std::path::Path) -> Journal {
    let j = Journal::open(dir).unwrap();
    j.set_retention(RETENTION);
    j
}

fn assert_matches(j: &Journal, m: &Model) {
    let in_flight: BTreeMap<StepId, (u32, Option<String>)> = j
        .in_flight()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, (r.step.vmid, r.upid().map(str::to_string))))
        .collect();
    assert_eq!(in_flight, m.in_flight, "in-flight steps");
    let done: BTreeMap<StepId, u32> = j
        .recent(usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.phase, Phase::Done { .. }))
        .map(|r| (r.id, r.step.vmid))
        .collect();
    assert_eq!(done, m.done, "kept done records");
    for vmid in 100..104 {
        let got = j.provenance(vmid).unwrap().map(|p| {
            (
                p.scratch,
                p.op_finished,
                p.config_digest.unwrap_or_default(),
            )
        });
        assert_eq!(got.as_ref(), m.prov.get(&vmid), "provenance of {vmid}");
    }
}

fn claim(nonce: &str, expires_at: i64) -> NonceClaim {
    NonceClaim {
        nonce: nonce.into(),
        payload_sha256: "00".repeat(32),
        signers: vec!["alice SHA256:x".into()],
        op: "destroy_guest".into(),
        vmid: 100,
        expires_at,
        now: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn journal_equals_the_model_across_reopens(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path());
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Intent { vmid } => {
                    let id = j.intent(step(vmid)).unwrap();
                    prop_assert!(!m.in_flight.contains_key(&id) && !m.done.contains_key(&id));
                    m.in_flight.insert(id, (vmid, None));
                }
                Op::Submitted { pick } => {
                    let ids: Vec<StepId> = m.in_flight.keys().copied().collect();
                    if ids.is_empty() { continue; }
                    let id = ids[pick % ids.len()];
                    let upid = format!("UPID:pve:{:08X}:", id.0);
                    j.submitted(id, &upid).unwrap();
                    if let Some(e) = m.in_flight.get_mut(&id) { e.1 = Some(upid); }
                }
                Op::Done { pick, failed } => {
                    let ids: Vec<StepId> = m.in_flight.keys().copied().collect();
                    if ids.is_empty() { continue; }
                    let id = ids[pick % ids.len()];
                    let outcome = if failed { Outcome::Failed("boom".into()) } else { Outcome::Ok };
                    j.done(id, outcome).unwrap();
                    if let Some((vmid, _)) = m.in_flight.remove(&id) { m.done.insert(id, vmid); }
                    m.done_since_compact += 1;
                    if m.done_since_compact >= RETENTION.every {
                        m.done_since_compact = 0;
                        m.compact();
                    }
                }
                Op::Created { vmid } => {
                    j.record_created(vmid, "op-1", "UPID:pve:create:", "d0").unwrap();
                    m.prov.insert(vmid, (false, false, "d0".into()));
                }
                Op::OwnWrite { vmid, digest } => {
                    let d = format!("d{digest}");
                    j.record_own_write(vmid, &d).unwrap();
                    if let Some(p) = m.prov.get_mut(&vmid) { p.2 = d; }
                }
                Op::Finish { vmid } => {
                    j.finish_operation(vmid).unwrap();
                    if let Some(p) = m.prov.get_mut(&vmid) { p.1 = true; }
                }
                Op::Scratch { vmid } => {
                    j.mark_scratch(vmid).unwrap();
                    if let Some(p) = m.prov.get_mut(&vmid) { p.0 = true; }
                }
                Op::Forget { vmid } => {
                    j.forget(vmid).unwrap();
                    m.prov.remove(&vmid);
                }
                Op::Consume { nonce, expires } => {
                    let n = format!("nonce-{nonce}");
                    let got = j.consume(&claim(&n, expires));
                    let want = if m.horizon.is_some_and(|h| expires <= h) {
                        Err(NonceError::ExpiredForever)
                    } else {
                        match m.nonces.entry(n.clone()) {
                            std::collections::btree_map::Entry::Occupied(_) => {
                                Err(NonceError::Replayed(n))
                            }
                            std::collections::btree_map::Entry::Vacant(v) => {
                                v.insert(expires);
                                Ok(())
                            }
                        }
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Gc { now } => {
                    let h = m.horizon.map_or(now, |h| h.max(now));
                    m.horizon = Some(h);
                    let before = m.nonces.len();
                    m.nonces.retain(|_, e| *e > h);
                    let removed = j.gc_nonces(now).unwrap();
                    prop_assert_eq!(removed, (before - m.nonces.len()) as u64);
                }
                Op::Reopen => {
                    drop(j);
                    j = open(dir.path());
                    // The compaction counter is kept in the journal: it goes on after a restart.
                    assert_matches(&j, &m);
                }
            }
        }
        drop(j);
        let j = open(dir.path());
        assert_matches(&j, &m);
        // Every consumed nonce is still consumed after the reopen; every other one is free.
        for nonce in 0..6u8 {
            let n = format!("nonce-{nonce}");
            let got = j.consume(&claim(&n, 1_000));
            if m.nonces.contains_key(&n) {
                prop_assert_eq!(got, Err(NonceError::Replayed(n)));
            } else {
                prop_assert_eq!(got, Ok(()));
            }
        }
    }
}
