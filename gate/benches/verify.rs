//! Gate throughput and refusal cost, on the committed real ssh-keygen vectors.
//!
//!   cargo bench -p gate --bench verify
//!
//! Prints medians over several rounds: ed25519 approvals fully verified per second on one core
//! (goal >= 5,000/s), the time to refuse an 11 MB signature (goal < 1 ms, and the process's peak
//! RSS must not grow by its size), and a few other per-call costs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use gate::{
    GateContext, NonceClaim, NonceLedger, NonceRefusal, Op, PlannedAction, RejectionCode,
    TrustStore, verify_approval,
};

const NOW: i64 = 1_795_383_000;

/// Accepts every nonce: isolates the gate's own cost (the journal's commit is measured there).
struct AcceptAll;
impl NonceLedger for AcceptAll {
    fn state_epoch(&self) -> String {
        "5b0c2f9e7d4a4c1e".into()
    }
    fn clock_high_water(&self) -> Option<i64> {
        None
    }
    fn consume(&self, _: &NonceClaim) -> Result<(), NonceRefusal> {
        Ok(())
    }
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../testdata/gate/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident set size (kB) so far, from /proc (Linux).
fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn per_call_us(rounds: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e6 / iters as f64
            })
            .collect(),
    )
}

fn main() {
    let ctx = GateContext {
        fleet: "test-fleet-1".into(),
        host: "pve-test-01".into(),
        domain: "agent.example.invalid".into(),
        epoch: "5b0c2f9e7d4a4c1e".into(),
    };
    let params: BTreeMap<String, String> = [
        ("destroy-unreferenced-disks", "1"),
        ("force", "1"),
        ("purge", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let action = PlannedAction {
        op: Op::DestroyGuest,
        vmid: 9101,
        guest_config_sha1: Some("6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c".into()),
        params,
        bind: Default::default(),
    };
    let trust = TrustStore::parse(std::str::from_utf8(&read("trust_v1.txt")).unwrap()).unwrap();
    let payload = read("approval.txt");
    let verify =
        |sig: &[u8]| verify_approval(&ctx, &trust, &action, &payload, &[sig], NOW, &AcceptAll);

    for (label, file, iters) in [
        ("ed25519", "approval.txt.operator1.sig", 2000),
        ("ecdsa-p256", "approval.txt.operator2.sig", 500),
        ("rsa-3072", "approval.txt.operator3.sig", 500),
    ] {
        let sig = read(file);
        assert!(verify(&sig).is_ok());
        let us = per_call_us(7, iters, || {
            black_box(verify(black_box(&sig))).ok();
        });
        println!(
            "verify approval ({label}, 1 signature): {us:.1} us/approval = {:.0} approvals/s",
            1e6 / us
        );
    }

    let stranger = read("approval.txt.rsa16384_unknown.sig");
    assert_eq!(
        verify(&stranger).unwrap_err().code,
        RejectionCode::UnknownSigner
    );
    let us = per_call_us(7, 2000, || {
        black_box(verify(black_box(&stranger))).ok();
    });
    println!("refuse unknown RSA-16384 signer: {us:.1} us");

    let mut huge = b"-----BEGIN SSH SIGNATURE-----\n".to_vec();
    huge.resize(11 * 1024 * 1024, b'A');
    let before = peak_rss_kb();
    assert_eq!(
        verify(&huge).unwrap_err().code,
        RejectionCode::SignatureTooLarge
    );
    let us = per_call_us(7, 10_000, || {
        black_box(verify(black_box(&huge))).ok();
    });
    let after = peak_rss_kb();
    println!(
        "refuse 11 MB signature: {:.3} us (peak RSS {} kB before, {} kB after 70,001 refusals)",
        us,
        before.map_or("?".into(), |v| v.to_string()),
        after.map_or("?".into(), |v| v.to_string())
    );

    let doc = read("trust_v1.txt");
    let doc = std::str::from_utf8(&doc).unwrap();
    let us = per_call_us(7, 500, || {
        black_box(TrustStore::parse(black_box(doc))).ok();
    });
    println!("parse trust document (8 signers): {us:.1} us");
}
