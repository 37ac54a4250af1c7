//! The adversarial matrix of signing-gate.md §6, one named test per applicable row, run against
//! vectors made with real ssh-keygen (`testdata/gate/make-vectors.sh`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use gate::{
    Approved, Classification, CreateOutcome, DenyList, GuestProvenance, Incarnation, Op, Origin,
    PlannedAction, Rejection, RejectionCode as C, Role, TrustStore, classify, render_request,
    select_planned, verify_approval, verify_rotation, verify_signature,
};

fn run_with(
    trust: &TrustStore,
    action: &PlannedAction,
    payload: &[u8],
    sigs: &[Vec<u8>],
    now: i64,
    ledger: &MemLedger,
) -> Result<Approved, Rejection> {
    let refs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
    verify_approval(&ctx(), trust, action, payload, &refs, now, ledger)
}

fn sigs(names: &[&str]) -> Vec<Vec<u8>> {
    names
        .iter()
        .map(|n| read(&format!("approval.txt.{n}.sig")))
        .collect()
}

/// approval.txt with the given signatures, the default action, v1 trust, NOW, a fresh ledger.
fn verify(names: &[&str]) -> Result<Approved, Rejection> {
    run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(names),
        NOW,
        &MemLedger::new(),
    )
}

fn code(r: Result<Approved, Rejection>) -> C {
    match r {
        Ok(_) => panic!("expected a rejection, got an approval"),
        Err(e) => e.code,
    }
}

fn accepted(r: Result<Approved, Rejection>) -> Approved {
    r.unwrap_or_else(|e| panic!("expected accept, got {e} ({:?})", e.per_signature))
}

#[test]
fn vectors_match_the_renderer() {
    let rendered = render_request(
        &ctx(),
        &action(),
        "7f3c9a1e5b2d4f6081a2c3d4e5f60718",
        NB,
        EXP,
        Role::Operational,
        Some("CHG-4711"),
    )
    .unwrap();
    assert_eq!(rendered.as_bytes(), read("approval.txt").as_slice());
}

#[test]
fn m01_ed25519_accept() {
    let ledger = MemLedger::new();
    let a = accepted(run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &ledger,
    ));
    assert_eq!(a.signers.len(), 1);
    assert_eq!(a.signers[0].principal, "operator1@example.invalid");
    assert!(a.signers[0].fingerprint.starts_with("SHA256:"));
    assert_eq!(a.nonce, "7f3c9a1e5b2d4f6081a2c3d4e5f60718");
    assert_eq!(a.payload_sha256.len(), 64);
    assert_eq!(ledger.consumed(), 1);
}

#[test]
fn m02_ecdsa_p256_and_rsa3072_accept() {
    assert_eq!(
        accepted(verify(&["operator2"])).signers[0].principal,
        "operator2@example.invalid"
    );
    assert_eq!(
        accepted(verify(&["operator3"])).signers[0].principal,
        "operator3@example.invalid"
    );
}

#[test]
fn m03_hashalg_sha256_accept() {
    accepted(verify(&["operator1.sha256"]));
}

#[test]
fn m04_sk_ed25519_with_user_presence_accept() {
    assert_eq!(
        accepted(verify(&["sk_up"])).signers[0].principal,
        "operator4@example.invalid"
    );
    accepted(verify(&["sk_up_uv"]));
}

#[test]
fn m05_sk_without_user_presence() {
    let e = verify(&["sk_no_up"]).unwrap_err();
    assert_eq!(e.code, C::UserPresenceMissing);
}

#[test]
fn m06_signature_over_different_bytes() {
    // Binding passes (the agent plans force=0), the signature is over force=1: bad_signature.
    let mut a = action();
    a.params = destroy_params("0");
    let r = run_with(
        &v1(),
        &a,
        &read("approval_force0.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::BadSignature);
    // The payload was changed but the agent still plans force=1: binding_mismatch first.
    let e = run_with(
        &v1(),
        &action(),
        &read("approval_force0.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    )
    .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (C::BindingMismatch, Some("param.force"))
    );
    assert!(!e.authenticated);
}

#[test]
fn m07_signed_with_namespace_file() {
    assert_eq!(code(verify(&["operator1.filens"])), C::WrongNamespace);
}

#[test]
fn m08_namespace_field_rewritten() {
    assert_eq!(code(verify(&["ns_swapped"])), C::WrongNamespace);
}

#[test]
fn m09_truncated_armor() {
    assert_eq!(code(verify(&["truncated"])), C::MalformedSignature);
}

#[test]
fn m10_one_base64_character_changed() {
    assert_eq!(code(verify(&["garbled"])), C::MalformedSignature);
}

#[test]
fn m11_text_before_header() {
    assert_eq!(code(verify(&["leading_text"])), C::MalformedSignature);
}

#[test]
fn m12_crlf_armor_accept() {
    accepted(verify(&["crlf"]));
}

#[test]
fn m13_trailing_version2_bad_magic_empty_namespace_sha1() {
    for v in [
        "trailing",
        "version2",
        "bad_magic",
        "empty_namespace",
        "hash_sha1",
    ] {
        assert_eq!(code(verify(&[v])), C::MalformedSignature, "{v}");
    }
}

#[test]
fn m14_legacy_ssh_rsa_sha1() {
    assert_eq!(code(verify(&["rsa_sha1"])), C::UnsupportedAlgorithm);
    // The same construction with rsa-sha2-256 verifies: only the SHA-1 algorithm is refused.
    accepted(verify(&["rsa_sha256_control"]));
}

#[test]
fn m15_reserved_edited_after_signing() {
    assert_eq!(code(verify(&["reserved_edited"])), C::MalformedSignature);
}

#[test]
fn m16_reserved_covered_by_signature() {
    assert_eq!(code(verify(&["reserved_signed"])), C::MalformedSignature);
}

#[test]
fn m17_key_signature_type_confusion() {
    assert_eq!(code(verify(&["type_confusion"])), C::UnsupportedAlgorithm);
}

#[test]
fn m18_11mb_signature() {
    let mut huge = b"-----BEGIN SSH SIGNATURE-----\n".to_vec();
    huge.resize(11 * 1024 * 1024, b'A');
    let r = run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &[huge],
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::SignatureTooLarge);
}

#[test]
fn m19_too_many_signatures_and_payload_too_large() {
    let nine: Vec<Vec<u8>> = (0..9).map(|_| read("approval.txt.operator1.sig")).collect();
    let r = run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &nine,
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::TooManySignatures);
    let mut big = read("approval.txt");
    big.resize(4097, b'x');
    let r = run_with(
        &v1(),
        &action(),
        &big,
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::PayloadTooLarge);
}

#[test]
fn m20_certificate_signed() {
    assert_eq!(code(verify(&["cert"])), C::UnsupportedAlgorithm);
}

#[test]
fn m21_dsa_signature() {
    assert_eq!(code(verify(&["dsa"])), C::UnsupportedAlgorithm);
}

#[test]
fn m22_unknown_signer() {
    let e = verify(&["stranger"]).unwrap_err();
    assert_eq!(e.code, C::UnknownSigner);
    assert!(!e.authenticated);
    assert_eq!(e.per_signature.len(), 1);
}

#[test]
fn m23_recovery_key_signs_a_destroy() {
    assert_eq!(code(verify(&["recovery1"])), C::RoleDenied);
    assert_eq!(code(verify(&["hub"])), C::RoleDenied);
}

#[test]
fn m24_operational_key_signs_a_rotation() {
    let e = verify_rotation(
        &v1(),
        &read("trust_v2.txt"),
        &[&read("trust_v2.txt.operator1.rotns.sig")],
        NOW,
        None,
    )
    .unwrap_err();
    assert_eq!(e.code, C::RoleDenied);
}

#[test]
fn m25_role_claim_recovery_signed_by_operational_key() {
    let payload = read("approval_role_recovery.txt");
    let s = vec![read("approval_role_recovery.txt.operator1.sig")];
    let e = run_with(&v1(), &action(), &payload, &s, NOW, &MemLedger::new()).unwrap_err();
    assert_eq!(e.code, C::RoleMismatch);
    assert!(e.authenticated);
}

#[test]
fn m26_key_valid_before_in_the_past() {
    let t = trust(&v1_text().replace("20271231235959Z", "20261122000000Z"));
    let r = run_with(
        &t,
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::KeyExpired);
}

#[test]
fn m27_key_valid_after_in_the_future() {
    let t = trust(&v1_text().replace(
        "valid-before=\"20271231235959Z\"",
        "valid-after=\"20270101Z\",valid-before=\"20271231235959Z\"",
    ));
    let r = run_with(
        &t,
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::KeyNotYetValid);
}

#[test]
fn m28_trust_document_breaking_a_rule_is_invalid() {
    let v1 = v1_text();
    let op1 = v1
        .lines()
        .find(|l| l.starts_with("operator1@"))
        .unwrap()
        .to_string();
    let key_of = |f: &str| text(f).split(' ').take(2).collect::<Vec<_>>().join(" ");
    let rsa1024 = format!(
        "operator9@example.invalid namespaces=\"destructive-op-v1@{DOMAIN}\",valid-before=\"20271231235959Z\" {}",
        key_of("TEST_rsa1024_weak.pub")
    );
    let dsa = rsa1024.replace(&key_of("TEST_rsa1024_weak.pub"), &key_of("TEST_dsa.pub"));
    let cases = [
        (
            "timestamp without Z",
            v1.replace("20271231235959Z", "20271231235959"),
        ),
        (
            "no namespaces=",
            v1.replace(
                &op1,
                &op1.replace(
                    "namespaces=\"destructive-op-v1@agent.example.invalid\",",
                    "",
                ),
            ),
        ),
        (
            "wildcard principal",
            v1.replace("operator2@example.invalid", "*@example.invalid"),
        ),
        (
            "key in two roles",
            format!(
                "{v1}{}\n",
                op1.replace("operator1@", "recovery9@")
                    .replace("destructive-op-v1", "trust-rotation-v1")
            ),
        ),
        (
            "principal in two roles",
            format!(
                "{v1}{}\n",
                op1.replace("destructive-op-v1", "trust-rotation-v1")
                    .replace(
                        &key_of("TEST_operator1_ed25519.pub"),
                        &key_of("TEST_stranger_ed25519.pub")
                    )
            ),
        ),
        ("rsa-1024", format!("{v1}{rsa1024}\n")),
        ("dsa", format!("{v1}{dsa}\n")),
        (
            "cert-authority",
            v1.replace(
                &op1,
                &op1.replace("namespaces=", "cert-authority,namespaces="),
            ),
        ),
        ("comment", v1.replace(&op1, &format!("{op1} laptop"))),
        (
            "two namespaces",
            v1.replace(
                "\"destructive-op-v1@agent.example.invalid\"",
                "\"destructive-op-v1@agent.example.invalid,file\"",
            ),
        ),
        (
            "no valid-before",
            v1.replace(",valid-before=\"20271231235959Z\"", ""),
        ),
        ("blank line", v1.replace("signers:\n", "signers:\n\n")),
        (
            "old magic",
            v1.replace("drover-trust v1", "pve-agent-trust v1"),
        ),
        ("CRLF", v1.replace('\n', "\r\n")),
        (
            "uppercase option",
            v1.replace("valid-before=", "VALID-BEFORE="),
        ),
        (
            "unknown header",
            v1.replace("signers:\n", "colour: red\nsigners:\n"),
        ),
    ];
    for (what, doc) in cases {
        let err = TrustStore::parse(&doc)
            .err()
            .unwrap_or_else(|| panic!("{what} was accepted"));
        assert_eq!(err.to_rejection().code, C::TrustStoreInvalid, "{what}");
    }
    // Benign steps do not depend on the trust store at all.
    let start = PlannedAction {
        op: Op::Start,
        ..action()
    };
    assert_eq!(classify(&start, None), Classification::Benign);
}

#[test]
fn m29_key_on_the_local_deny_list() {
    let deny = DenyList::parse(&text("revoked_keys")).unwrap();
    let t = v1().with_deny_list(&deny);
    let r = run_with(
        &t,
        &action(),
        &read("approval.txt"),
        &sigs(&["operator3"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::RevokedKey);
    let r = run_with(
        &t,
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    accepted(r);
}

fn edited(from: &str, to: &str) -> Vec<u8> {
    text("approval.txt").replace(from, to).into_bytes()
}

#[test]
fn m30_approval_for_another_host() {
    let r = run_with(
        &v1(),
        &action(),
        &edited("host: pve-test-01", "host: pve-test-02"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::WrongHost);
}

#[test]
fn m31_approval_for_another_fleet() {
    let r = run_with(
        &v1(),
        &action(),
        &edited("fleet: test-fleet-1", "fleet: other-fleet"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::WrongFleet);
}

#[test]
fn m32_vmid_differs() {
    let e = run_with(
        &v1(),
        &action(),
        &read("approval_vmid9102.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    )
    .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (C::BindingMismatch, Some("guest"))
    );
}

#[test]
fn m33_op_differs() {
    let e = run_with(
        &v1(),
        &action(),
        &edited("op: destroy_guest", "op: delete_snapshot"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    )
    .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (C::BindingMismatch, Some("op"))
    );
}

#[test]
fn m34_params_differ_extra_or_missing() {
    let payload = read("approval.txt");
    let s = sigs(&["operator1"]);
    let field = |a: PlannedAction| {
        let e = run_with(&v1(), &a, &payload, &s, NOW, &MemLedger::new()).unwrap_err();
        assert_eq!(e.code, C::BindingMismatch);
        e.field.unwrap()
    };
    let mut a = action();
    a.params.insert("force".into(), "0".into());
    assert_eq!(field(a), "param.force");
    let mut a = action();
    a.params.insert("skiplock".into(), "1".into());
    assert_eq!(field(a), "param.skiplock");
    let mut a = action();
    a.params.remove("purge");
    assert_eq!(field(a), "param.purge");
}

#[test]
fn m35_guest_config_changed_since_approval() {
    let mut a = action();
    a.guest_config_sha1 = Some(DIG2.into());
    let r = run_with(
        &v1(),
        &a,
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::StaleState);
}

#[test]
fn m36_vmid_reused_after_destroy_and_recreate() {
    // 9101 destroyed and re-created: same vmid, same params, a new config digest.
    let mut a = action();
    a.guest_config_sha1 = Some("1111111111111111111111111111111111111111".into());
    let r = run_with(
        &v1(),
        &a,
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::StaleState);
}

#[test]
fn m37_state_reset_epoch_mismatch() {
    let mut ledger = MemLedger::new();
    ledger.epoch = "00000000deadbeef".into();
    let r = run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &ledger,
    );
    assert_eq!(code(r), C::EpochMismatch);
}

#[test]
fn m38_non_canonical_payload() {
    for (from, to) in [
        (
            "param.force: 1\nparam.purge: 1\n",
            "param.purge: 1\nparam.force: 1\n",
        ),
        ("param.force: 1\n", "param.force: 1\nparam.force: 1\n"),
        ("role: ", "colour: red\nrole: "),
        ("host: pve-test-01\n", "host: pve-test-01 \n"),
        ("\n", "\r\n"),
        ("host: ", "host:\t"),
        ("pve-test-01", "pve-t\u{0430}st-01"),
    ] {
        let r = run_with(
            &v1(),
            &action(),
            &edited(from, to),
            &sigs(&["operator1"]),
            NOW,
            &MemLedger::new(),
        );
        assert_eq!(code(r), C::MalformedPayload, "{from:?} -> {to:?}");
    }
}

#[test]
fn m39_desired_state_no_longer_asks_for_the_destroy() {
    let payload = read("approval.txt");
    let e = select_planned(&payload, &[]).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (C::BindingMismatch, Some("no_planned_action"))
    );
    let other = PlannedAction {
        vmid: 9200,
        ..action()
    };
    assert_eq!(
        select_planned(&payload, &[other])
            .unwrap_err()
            .field
            .as_deref(),
        Some("no_planned_action")
    );
    let plan = [action()];
    assert_eq!(select_planned(&payload, &plan).unwrap(), &plan[0]);
}

fn at(now: i64) -> Result<Approved, Rejection> {
    run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        now,
        &MemLedger::new(),
    )
}

#[test]
fn m40_expired_beyond_leeway() {
    assert_eq!(code(at(EXP + 120)), C::Expired);
    accepted(at(EXP + 119));
}

#[test]
fn m41_not_before_ten_minutes_ahead() {
    let e = at(NB - 600).unwrap_err();
    assert_eq!(e.code, C::NotYetValid);
    assert!(e.authenticated);
}

#[test]
fn m42_not_before_within_leeway() {
    accepted(at(NB - 60));
}

#[test]
fn m43_window_of_25_hours() {
    let r = run_with(
        &v1(),
        &action(),
        &read("approval_25h.txt"),
        &[read("approval_25h.txt.operator1.sig")],
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::ValidityTooLong);
}

#[test]
fn m44_clock_behind_high_water_mark() {
    let mut ledger = MemLedger::new();
    ledger.high_water = Some(NOW + 3600);
    let r = run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &ledger,
    );
    assert_eq!(code(r), C::ClockUntrusted);
    assert_eq!(ledger.consumed(), 0);
}

#[test]
fn m45_replay_after_gc_and_clock_set_back() {
    let mut ledger = MemLedger::new();
    ledger.gc_horizon = EXP;
    let r = run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &ledger,
    );
    assert_eq!(code(r), C::Expired);
}

#[test]
fn m46_same_approval_twice() {
    let ledger = MemLedger::new();
    let go = || {
        run_with(
            &v1(),
            &action(),
            &read("approval.txt"),
            &sigs(&["operator1"]),
            NOW,
            &ledger,
        )
    };
    accepted(go());
    let e = go().unwrap_err();
    assert_eq!(e.code, C::Replayed);
    assert!(e.authenticated);
}

fn file_verify(path: &std::path::Path) -> Result<Approved, Rejection> {
    let s = sigs(&["operator1"]);
    let refs: Vec<&[u8]> = s.iter().map(Vec::as_slice).collect();
    verify_approval(
        &ctx(),
        &v1(),
        &action(),
        &read("approval.txt"),
        &refs,
        NOW,
        &FileLedger(path.to_path_buf()),
    )
}

#[test]
fn m47_same_approval_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nonces");
    accepted(file_verify(&path));
    // A new verifier (new ledger value, new trust store) over the same persisted state.
    assert_eq!(code(file_verify(&path)), C::Replayed);
}

#[test]
fn m48_consumed_nonce_reused_for_another_action() {
    let ledger = MemLedger::new();
    accepted(run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &ledger,
    ));
    let other = PlannedAction {
        vmid: 9102,
        guest_config_sha1: Some(DIG2.into()),
        ..action()
    };
    let payload = read("approval_other_action.txt");
    let s = vec![read("approval_other_action.txt.operator1.sig")];
    // On its own it is a valid approval ...
    accepted(run_with(
        &v1(),
        &other,
        &payload,
        &s,
        NOW,
        &MemLedger::new(),
    ));
    // ... but its nonce was consumed.
    assert_eq!(
        code(run_with(&v1(), &other, &payload, &s, NOW, &ledger)),
        C::Replayed
    );
}

#[test]
fn m49_ecdsa_malleated_copy_is_replayed() {
    accepted(verify(&["ecdsa_orig"]));
    accepted(verify(&["ecdsa_malleated"]));
    let ledger = MemLedger::new();
    let go = |n: &str| {
        run_with(
            &v1(),
            &action(),
            &read("approval.txt"),
            &sigs(&[n]),
            NOW,
            &ledger,
        )
    };
    accepted(go("ecdsa_orig"));
    assert_eq!(code(go("ecdsa_malleated")), C::Replayed);
}

#[test]
fn m50_two_identical_approvals_concurrently() {
    let ledger = MemLedger::new();
    let trust = v1();
    let payload = read("approval.txt");
    let s = sigs(&["operator1"]);
    let results: Vec<bool> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| run_with(&trust, &action(), &payload, &s, NOW, &ledger).is_ok()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1);
}

#[test]
fn m51_bad_signature_does_not_burn_the_nonce() {
    let ledger = MemLedger::new();
    let payload = read("approval.txt");
    let bad = vec![read("approval_other_action.txt.operator1.sig")];
    assert_eq!(
        code(run_with(&v1(), &action(), &payload, &bad, NOW, &ledger)),
        C::BadSignature
    );
    assert_eq!(ledger.consumed(), 0);
    accepted(run_with(
        &v1(),
        &action(),
        &payload,
        &sigs(&["operator1"]),
        NOW,
        &ledger,
    ));
}

#[test]
fn m52_crash_after_consume_before_execute() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nonces");
    let approved = accepted(file_verify(&path));
    drop(approved); // the agent dies here, before executing
    assert_eq!(code(file_verify(&path)), C::Replayed);
}

fn prov(outcome: CreateOutcome, started: bool, digest: &str) -> GuestProvenance {
    GuestProvenance {
        origin: Origin::Created(outcome),
        ever_started: started,
        incarnation: Some(Incarnation {
            create_upid: Some("UPID:pve-test-01:0001:0002:0003:vzcreate:9101:root@pam:".into()),
            config_digest: digest.into(),
        }),
    }
}

#[test]
fn m53_hub_tags_a_customer_guest_scratch() {
    let mut a = action();
    a.params
        .insert("tags".into(), "scratch;agent-created=true".into());
    a.params.insert("description".into(), "scratch".into());
    assert!(classify(&a, None).is_destructive());
    let adopted = GuestProvenance {
        origin: Origin::Adopted,
        ever_started: false,
        incarnation: None,
    };
    assert!(classify(&a, Some(&adopted)).is_destructive());
}

/// Row 54: a guest whose create task ended OK (in an earlier transaction, or just now) may hold
/// data; destroying it needs a signature whatever happened since.
#[test]
fn m54_guest_created_in_an_earlier_operation() {
    let ok = prov(CreateOutcome::Succeeded, false, DIG);
    assert!(classify(&action(), Some(&ok)).is_destructive());
    let started = prov(CreateOutcome::Succeeded, true, DIG);
    assert!(classify(&action(), Some(&started)).is_destructive());
}

/// Row 55: cleanup of the agent's own create that did not succeed, never started, with the
/// digest that create left.
#[test]
fn m55_cleanup_of_own_failed_create_in_the_same_operation() {
    for outcome in [CreateOutcome::Failed, CreateOutcome::Abandoned] {
        assert_eq!(
            classify(&action(), Some(&prov(outcome, false, DIG))),
            Classification::Benign
        );
        // Started once (by the agent or anyone it saw): it may hold data.
        assert!(classify(&action(), Some(&prov(outcome, true, DIG))).is_destructive());
    }
}

#[test]
fn m56_journal_names_another_incarnation() {
    assert!(classify(&action(), Some(&prov(CreateOutcome::Failed, false, DIG2))).is_destructive());
    assert!(
        classify(
            &action(),
            Some(&prov(CreateOutcome::Abandoned, false, DIG2))
        )
        .is_destructive()
    );
}

/// `adopt` (taking over a guest with no provenance) always needs a signature and is bound
/// like any approval: host, guest, config digest, nonce.
#[test]
fn m70_adopt_needs_a_signature_bound_to_the_guest() {
    let adopt = PlannedAction {
        op: Op::Adopt,
        vmid: 9101,
        guest_config_sha1: Some(DIG.into()),
        params: BTreeMap::new(),
        bind: BTreeMap::new(),
    };
    assert!(classify(&adopt, None).is_destructive());
    assert!(classify(&adopt, Some(&prov(CreateOutcome::Failed, false, DIG))).is_destructive());
    let text = render_request(
        &ctx(),
        &adopt,
        "7f3c9a1e5b2d4f6081a2c3d4e5f60718",
        NB,
        EXP,
        Role::Operational,
        None,
    )
    .unwrap();
    assert!(text.contains("op: adopt\nguest: lxc/9101\n"), "{text}");
    assert!(
        text.contains(&format!("guest-config-sha1: {DIG}\n")),
        "{text}"
    );
    let parsed = gate::ApprovalPayload::parse(text.as_bytes()).unwrap();
    assert_eq!(parsed.op, Op::Adopt);
    // An adopt approval is bound to its guest's digest: a changed guest is stale.
    let ledger = MemLedger::new();
    let changed = PlannedAction {
        guest_config_sha1: Some(DIG2.into()),
        ..adopt.clone()
    };
    let e =
        verify_approval(&ctx(), &v1(), &changed, text.as_bytes(), &[], NOW, &ledger).unwrap_err();
    assert_eq!(e.code, C::StaleState);
    // And to its op: an adopt approval never approves a destroy.
    let destroy = PlannedAction {
        op: Op::DestroyGuest,
        params: destroy_params("1"),
        ..adopt
    };
    let e =
        verify_approval(&ctx(), &v1(), &destroy, text.as_bytes(), &[], NOW, &ledger).unwrap_err();
    assert_eq!(e.code, C::BindingMismatch);
}

#[test]
fn m57_unknown_op_is_destructive_and_unapprovable() {
    let a = PlannedAction {
        op: Op::Unknown("migrate_storage".into()),
        ..action()
    };
    assert!(classify(&a, Some(&prov(CreateOutcome::Failed, false, DIG))).is_destructive());
    let e = render_request(
        &ctx(),
        &a,
        "7f3c9a1e5b2d4f6081a2c3d4e5f60718",
        NB,
        EXP,
        Role::Operational,
        None,
    )
    .unwrap_err();
    assert_eq!(e.code, C::UnknownOp);
}

fn t2() -> TrustStore {
    trust(&v1_text().replace("threshold.destructive-op: 1", "threshold.destructive-op: 2"))
}

#[test]
fn m58_threshold_two_distinct_operators() {
    let r = run_with(
        &t2(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1", "operator2"]),
        NOW,
        &MemLedger::new(),
    );
    let a = accepted(r);
    assert_eq!(a.signers.len(), 2);
}

#[test]
fn m59_threshold_two_same_signature_twice() {
    let r = run_with(
        &t2(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1", "operator1"]),
        NOW,
        &MemLedger::new(),
    );
    let e = r.unwrap_err();
    assert_eq!(e.code, C::ThresholdNotMet);
    assert!(e.authenticated);
}

#[test]
fn m60_threshold_two_keys_of_one_principal() {
    let r = run_with(
        &t2(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1", "operator1b"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::ThresholdNotMet);
}

#[test]
fn m61_threshold_one_valid_one_bad() {
    let mut s = sigs(&["operator2"]);
    s.push(read("approval_force0.txt.operator1.sig"));
    let e = run_with(
        &t2(),
        &action(),
        &read("approval.txt"),
        &s,
        NOW,
        &MemLedger::new(),
    )
    .unwrap_err();
    assert_eq!(e.code, C::ThresholdNotMet);
    assert_eq!(e.per_signature.len(), 1);
    assert_eq!(
        (e.per_signature[0].index, e.per_signature[0].code),
        (1, C::BadSignature)
    );
    // With threshold 1 the bad extra signature is reported but does not fail the envelope.
    accepted(run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &s,
        NOW,
        &MemLedger::new(),
    ));
}

fn rotate(cur: &TrustStore, doc: &str, signers: &[&str]) -> Result<TrustStore, Rejection> {
    let s: Vec<Vec<u8>> = signers
        .iter()
        .map(|n| read(&format!("{doc}.{n}.sig")))
        .collect();
    let refs: Vec<&[u8]> = s.iter().map(Vec::as_slice).collect();
    verify_rotation(cur, &read(doc), &refs, NOW, None)
}

#[test]
fn m62_rotation_signed_by_two_recovery_keys() {
    let v2 = rotate(&v1(), "trust_v2.txt", &["recovery1", "recovery2"]).unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.previous_sha256, v1().sha256());
    let v3 = rotate(&v2, "trust_v3.txt", &["recovery1", "recovery2"]).unwrap();
    assert_eq!(v3.version, 3);
    // One recovery signature is not enough.
    assert_eq!(
        rotate(&v1(), "trust_v2.txt", &["recovery1"])
            .unwrap_err()
            .code,
        C::ThresholdNotMet
    );
}

#[test]
fn m63_rotation_skipping_or_repeating_a_version() {
    assert_eq!(
        rotate(&v1(), "trust_v3.txt", &["recovery1", "recovery2"])
            .unwrap_err()
            .code,
        C::RotationVersionInvalid
    );
    let v2 = rotate(&v1(), "trust_v2.txt", &["recovery1", "recovery2"]).unwrap();
    let v3 = rotate(&v2, "trust_v3.txt", &["recovery1", "recovery2"]).unwrap();
    assert_eq!(
        rotate(&v3, "trust_v2.txt", &["recovery1", "recovery2"])
            .unwrap_err()
            .code,
        C::RotationVersionInvalid
    );
}

#[test]
fn m64_rotation_chain_mismatch() {
    let doc = text("trust_v2.txt").replace(v1().sha256(), &"a".repeat(64));
    let e = verify_rotation(&v1(), doc.as_bytes(), &[], NOW, None).unwrap_err();
    assert_eq!(e.code, C::RotationChainMismatch);
}

#[test]
fn m65_recovery_keys_replaced_signed_only_by_old_keys() {
    let e = rotate(
        &v1(),
        "trust_v2_recovery_swap.txt",
        &["recovery1", "recovery2"],
    )
    .unwrap_err();
    assert_eq!(e.code, C::ThresholdNotMet);
    // Operational keys cannot sign any rotation.
    assert_eq!(
        rotate(&v1(), "trust_v2_recovery_swap.txt", &["operator1"])
            .unwrap_err()
            .code,
        C::RoleDenied
    );
    let v2 = rotate(
        &v1(),
        "trust_v2_recovery_swap.txt",
        &["recovery1", "recovery2", "recovery3"],
    )
    .unwrap();
    assert!(
        v2.principals(Role::Recovery)
            .contains("recovery3@example.invalid")
    );
}

#[test]
fn m66_rotation_that_would_lock_out() {
    let e = rotate(&v1(), "trust_v2_lockout.txt", &["recovery1", "recovery2"]).unwrap_err();
    assert_eq!(e.code, C::RotationWouldLockOut);
}

#[test]
fn m67_unsigned_document_pushed_by_the_hub() {
    let cur = v1();
    assert_eq!(
        verify_rotation(&cur, &read("trust_v2.txt"), &[], NOW, None)
            .unwrap_err()
            .code,
        C::ThresholdNotMet
    );
    let raw = read("allowed_signers_v1");
    assert_eq!(
        verify_rotation(&cur, &raw, &[], NOW, None)
            .unwrap_err()
            .code,
        C::TrustStoreInvalid
    );
    assert_eq!(cur, v1());
}

#[test]
fn m68_approval_signed_by_a_key_removed_in_the_latest_rotation() {
    let v2 = rotate(&v1(), "trust_v2.txt", &["recovery1", "recovery2"]).unwrap();
    accepted(run_with(
        &v1(),
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1b"]),
        NOW,
        &MemLedger::new(),
    ));
    let r = run_with(
        &v2,
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1b"]),
        NOW,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::UnknownSigner);
    accepted(run_with(
        &v2,
        &action(),
        &read("approval.txt"),
        &sigs(&["operator5"]),
        NOW,
        &MemLedger::new(),
    ));
}

#[test]
fn m69_rsa_16384_key_not_in_the_trust_store() {
    let e = verify(&["rsa16384_unknown"]).unwrap_err();
    assert_eq!(e.code, C::UnknownSigner);
}

// Beyond the matrix: behaviour the issue asks for.

#[test]
fn operational_keys_never_rotate_trust_even_when_recovery_stays_alone() {
    // Signed in the destructive-op namespace (an operator's everyday namespace): a rotation may
    // add operator keys, so one stolen operator key must not be able to mint more.
    let e = rotate(&v1(), "trust_v2.txt", &["operator1"]).unwrap_err();
    assert_eq!(e.code, C::RoleDenied);
    assert!(
        e.message.contains("only recovery principals"),
        "{}",
        e.message
    );
    // One recovery signature plus an operator's is still one short of threshold 2.
    let e = rotate(&v1(), "trust_v2.txt", &["recovery1", "operator1"]).unwrap_err();
    assert_eq!(e.code, C::ThresholdNotMet);
    assert_eq!(e.per_signature.len(), 1);
    assert_eq!(e.per_signature[0].code, C::RoleDenied);
}

#[test]
fn rotation_withheld_past_its_expiry_is_refused() {
    let late = 1_795_996_800; // 2026-11-30T00:00:00Z, after trust_v2's expires-at
    let s = [
        read("trust_v2.txt.recovery1.sig"),
        read("trust_v2.txt.recovery2.sig"),
    ];
    let refs: Vec<&[u8]> = s.iter().map(Vec::as_slice).collect();
    assert_eq!(
        verify_rotation(&v1(), &read("trust_v2.txt"), &refs, late, None)
            .unwrap_err()
            .code,
        C::Expired
    );
}

#[test]
fn rotation_with_the_clock_set_back_behind_the_high_water_mark_is_refused() {
    let s = [
        read("trust_v2.txt.recovery1.sig"),
        read("trust_v2.txt.recovery2.sig"),
    ];
    let refs: Vec<&[u8]> = s.iter().map(Vec::as_slice).collect();
    let v2 = read("trust_v2.txt");
    // The agent has seen a time after trust_v2's expiry; the clock now claims an earlier one.
    let seen = 1_795_996_800;
    assert_eq!(
        verify_rotation(&v1(), &v2, &refs, NOW, Some(seen))
            .unwrap_err()
            .code,
        C::ClockUntrusted
    );
    // Within the leeway it is fine.
    assert!(verify_rotation(&v1(), &v2, &refs, NOW, Some(NOW + 60)).is_ok());
}

#[test]
fn expired_trust_document_blocks_approvals() {
    let v2 = rotate(&v1(), "trust_v2.txt", &["recovery1", "recovery2"]).unwrap();
    let late = 1_795_996_800;
    let r = run_with(
        &v2,
        &action(),
        &read("approval.txt"),
        &sigs(&["operator1"]),
        late,
        &MemLedger::new(),
    );
    assert_eq!(code(r), C::TrustStoreInvalid);
}

#[test]
fn hub_signs_desired_state_only() {
    let t = v1();
    let doc = read("desired.txt");
    let s = verify_signature(&t, Role::Hub, &doc, &read("desired.txt.hub.sig"), NOW).unwrap();
    assert_eq!(s.principal, "hub@example.invalid");
    let e =
        verify_signature(&t, Role::Hub, &doc, &read("desired.txt.operator1.sig"), NOW).unwrap_err();
    assert_eq!(e.code, C::RoleDenied);
}

#[test]
fn trust_allowed_signers_section_round_trips() {
    assert_eq!(v1().allowed_signers(), text("allowed_signers_v1"));
}

#[test]
fn offline_check_reports_signers_without_consuming_or_binding() {
    let payload = read("approval.txt");
    let s = sigs(&["operator1", "operator2"]);
    let refs: Vec<&[u8]> = s.iter().map(Vec::as_slice).collect();
    let signers = gate::verify_offline(&v1(), &payload, &refs, NOW).unwrap();
    let names: Vec<&str> = signers.iter().map(|s| s.principal.as_str()).collect();
    assert_eq!(
        names,
        ["operator1@example.invalid", "operator2@example.invalid"]
    );
    // Not bound to any step: the vmid-9102 variant is only checked for its signature.
    let other = read("approval_vmid9102.txt");
    let e = gate::verify_offline(&v1(), &other, &refs[..1], NOW).unwrap_err();
    assert_eq!(e.code, C::BadSignature);
    let e = gate::verify_offline(&v1(), &payload, &refs[..1], EXP + 3600).unwrap_err();
    assert_eq!((e.code, e.authenticated), (C::Expired, true));
    let e = gate::verify_offline(&v1(), &payload, &[], NOW).unwrap_err();
    assert_eq!(e.code, C::ThresholdNotMet);
}

// ---------------------------------------------------------------- signed jobs (`drover-job v1`)
//
// The same envelope and order as approvals; the job vectors are signed by
// `testdata/gate/make-job-vectors.sh` with real ssh-keygen.

mod jobs {
    use super::*;
    use gate::{ApprovedJob, JobKind, PlannedJob, Policy, render_job_request, verify_job};

    fn m(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The restore the agent would run now for `job_restore.txt` (its own reads).
    fn restore() -> PlannedJob {
        PlannedJob {
            kind: JobKind::RestoreBackup,
            vmid: 101,
            guest_config_sha1: Some(DIG.into()),
            params: m(&[
                ("force", "1"),
                (
                    "ostemplate",
                    "local:backup/vzdump-lxc-101-2026_11_22-21_00_01.tar.zst",
                ),
                ("restore", "1"),
                ("storage", "local-lvm"),
            ]),
            binds: m(&[
                ("archive-ctime", "1795381201"),
                ("archive-size", "432013312"),
                ("archive-vmid", "101"),
                ("hold", "0"),
            ]),
        }
    }

    fn snapshot() -> PlannedJob {
        PlannedJob {
            kind: JobKind::Snapshot,
            vmid: 101,
            guest_config_sha1: Some(DIG.into()),
            params: m(&[
                ("description", "before-upgrade"),
                ("snapname", "pre-upgrade"),
            ]),
            binds: m(&[("hold", "0")]),
        }
    }

    fn run(
        trust: &TrustStore,
        planned: &PlannedJob,
        file: &str,
        signers: &[&str],
        now: i64,
        ledger: &MemLedger,
    ) -> Result<ApprovedJob, Rejection> {
        let sigs: Vec<Vec<u8>> = signers
            .iter()
            .map(|n| read(&format!("{}.{n}.sig", file.replace("_edited", ""))))
            .collect();
        let refs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
        verify_job(
            &Policy::default(),
            &ctx(),
            trust,
            planned,
            &read(file),
            &refs,
            now,
            ledger,
        )
    }

    fn code_of(r: Result<ApprovedJob, Rejection>) -> Rejection {
        match r {
            Ok(_) => panic!("expected a rejection, got a verified job"),
            Err(e) => e,
        }
    }

    #[test]
    fn job_vectors_match_the_renderer() {
        let r = render_job_request(
            &ctx(),
            &restore(),
            "2a6e0c1f9b8d4e3a7c5b1d0e9f8a7b6c",
            NB,
            EXP,
            Some("CHG-4711"),
        )
        .unwrap();
        assert_eq!(r.as_bytes(), read("job_restore.txt").as_slice());
        let s = render_job_request(
            &ctx(),
            &snapshot(),
            "3b7f1d2a0c9e5f4b8d6c2e1f0a9b8c7d",
            NB,
            EXP,
            None,
        )
        .unwrap();
        assert_eq!(s.as_bytes(), read("job_snapshot.txt").as_slice());
    }

    #[test]
    fn j01_signed_job_accepted_once_then_replayed() {
        let ledger = MemLedger::new();
        let ok = run(
            &v1(),
            &restore(),
            "job_restore.txt",
            &["operator1"],
            NOW,
            &ledger,
        )
        .unwrap();
        assert_eq!(ok.job.kind, JobKind::RestoreBackup);
        assert_eq!(ok.signers[0].principal, "operator1@example.invalid");
        assert_eq!(ledger.consumed(), 1);
        let e = code_of(run(
            &v1(),
            &restore(),
            "job_restore.txt",
            &["operator1"],
            NOW,
            &ledger,
        ));
        assert_eq!((e.code, e.authenticated), (C::Replayed, true));
    }

    #[test]
    fn j02_job_for_another_host_or_guest() {
        let ledger = MemLedger::new();
        let mut other = ctx();
        other.host = "pve-test-02".into();
        let sigs = [read("job_restore.txt.operator1.sig")];
        let refs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
        let e = verify_job(
            &Policy::default(),
            &other,
            &v1(),
            &restore(),
            &read("job_restore.txt"),
            &refs,
            NOW,
            &ledger,
        )
        .unwrap_err();
        assert_eq!(e.code, C::WrongHost);
        let mut p = restore();
        p.vmid = 102;
        let e = code_of(run(
            &v1(),
            &p,
            "job_restore.txt",
            &["operator1"],
            NOW,
            &ledger,
        ));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (C::BindingMismatch, Some("guest"))
        );
        assert_eq!(ledger.consumed(), 0, "no refusal burns the nonce");
    }

    #[test]
    fn j03_stale_config_digest() {
        let mut p = restore();
        p.guest_config_sha1 = Some(DIG2.into());
        let ledger = MemLedger::new();
        let e = code_of(run(
            &v1(),
            &p,
            "job_restore.txt",
            &["operator1"],
            NOW,
            &ledger,
        ));
        assert_eq!((e.code, e.authenticated), (C::StaleState, false));
        assert_eq!(ledger.consumed(), 0);
    }

    #[test]
    fn j04_changed_archive_facts_are_a_bind_mismatch() {
        // The backup was replaced under the same volid: its ctime differs from the signed one.
        let mut p = restore();
        p.binds.insert("archive-ctime".into(), "1795381999".into());
        let e = code_of(run(
            &v1(),
            &p,
            "job_restore.txt",
            &["operator1"],
            NOW,
            &MemLedger::new(),
        ));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (C::BindingMismatch, Some("bind.archive-ctime"))
        );
    }

    #[test]
    fn j05_an_edited_bind_line() {
        // The text was edited after signing: the agent's own facts no longer match it, so it
        // is refused before any signature is looked at.
        let e = code_of(run(
            &v1(),
            &restore(),
            "job_restore_edited.txt",
            &["operator1"],
            NOW,
            &MemLedger::new(),
        ));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (C::BindingMismatch, Some("bind.archive-size"))
        );
        // And if the host's facts happened to match the edit, the signature does not.
        let mut p = restore();
        p.binds.insert("archive-size".into(), "432013313".into());
        let e = code_of(run(
            &v1(),
            &p,
            "job_restore_edited.txt",
            &["operator1"],
            NOW,
            &MemLedger::new(),
        ));
        assert_eq!(e.code, C::BadSignature);
    }

    #[test]
    fn j06_a_different_backup_or_kind() {
        let mut p = restore();
        p.params.insert(
            "ostemplate".into(),
            "local:backup/vzdump-lxc-102-2026_11_22-21_00_01.tar.zst".into(),
        );
        let e = code_of(run(
            &v1(),
            &p,
            "job_restore.txt",
            &["operator1"],
            NOW,
            &MemLedger::new(),
        ));
        assert_eq!(e.field.as_deref(), Some("param.ostemplate"));
        let mut p = restore();
        p.kind = JobKind::RollbackSnapshot;
        let e = code_of(run(
            &v1(),
            &p,
            "job_restore.txt",
            &["operator1"],
            NOW,
            &MemLedger::new(),
        ));
        assert_eq!(e.field.as_deref(), Some("job"));
    }

    #[test]
    fn j07_unknown_signer_and_wrong_role() {
        let e = code_of(run(
            &v1(),
            &restore(),
            "job_restore.txt",
            &["stranger"],
            NOW,
            &MemLedger::new(),
        ));
        assert_eq!(e.code, C::UnknownSigner);
        let e = code_of(run(
            &v1(),
            &restore(),
            "job_restore.txt",
            &["recovery1"],
            NOW,
            &MemLedger::new(),
        ));
        assert!(matches!(e.code, C::WrongNamespace | C::RoleDenied), "{e}");
    }

    #[test]
    fn j08_destructive_jobs_need_the_operational_threshold_others_one() {
        let two =
            trust(&v1_text().replace("threshold.destructive-op: 1", "threshold.destructive-op: 2"));
        let e = code_of(run(
            &two,
            &restore(),
            "job_restore.txt",
            &["operator1"],
            NOW,
            &MemLedger::new(),
        ));
        assert_eq!(e.code, C::ThresholdNotMet);
        run(
            &two,
            &restore(),
            "job_restore.txt",
            &["operator1", "operator2"],
            NOW,
            &MemLedger::new(),
        )
        .unwrap();
        // A snapshot destroys nothing: one operator suffices even at threshold 2.
        run(
            &two,
            &snapshot(),
            "job_snapshot.txt",
            &["operator1"],
            NOW,
            &MemLedger::new(),
        )
        .unwrap();
    }

    #[test]
    fn j09_time_window_and_epoch() {
        let e = code_of(run(
            &v1(),
            &restore(),
            "job_restore.txt",
            &["operator1"],
            EXP + 600,
            &MemLedger::new(),
        ));
        assert_eq!((e.code, e.authenticated), (C::Expired, true));
        let mut l = MemLedger::new();
        l.epoch = "0000000000000000".into();
        let e = code_of(run(
            &v1(),
            &restore(),
            "job_restore.txt",
            &["operator1"],
            NOW,
            &l,
        ));
        assert_eq!(e.code, C::EpochMismatch);
    }

    #[test]
    fn j10_an_approval_is_not_a_job_and_a_job_is_not_an_approval() {
        // approval.txt signed by operator1 presented as a job.
        let sigs = [read("approval.txt.operator1.sig")];
        let refs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
        let e = verify_job(
            &Policy::default(),
            &ctx(),
            &v1(),
            &restore(),
            &read("approval.txt"),
            &refs,
            NOW,
            &MemLedger::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, C::MalformedPayload);
        // The job's signature over an approval's planned step.
        let sigs = [read("job_restore.txt.operator1.sig")];
        let refs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
        let e = verify_approval(
            &ctx(),
            &v1(),
            &action(),
            &read("job_restore.txt"),
            &refs,
            NOW,
            &MemLedger::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, C::MalformedPayload);
    }

    #[test]
    fn j11_offline_check() {
        let sigs = [read("job_restore.txt.operator1.sig")];
        let refs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
        let s = gate::verify_job_offline(&v1(), &read("job_restore.txt"), &refs, NOW).unwrap();
        assert_eq!(s[0].principal, "operator1@example.invalid");
        let e = gate::verify_job_offline(&v1(), &read("job_restore_edited.txt"), &refs, NOW)
            .unwrap_err();
        assert_eq!(e.code, C::BadSignature);
    }
}

/// safety-nets.md §6.1: volumes the safety copy cannot cover are bound as `bind.uncovered`.
/// A validly signed approval that does not name them does not approve the step.
#[test]
fn m70_uncovered_volumes_not_acknowledged() {
    let mut planned = action();
    planned
        .bind
        .insert("uncovered".into(), "mp1,unused0".into());
    let e = run_with(
        &v1(),
        &planned,
        &read("approval.txt"),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    )
    .unwrap_err();
    assert_eq!(e.code, C::BindingMismatch);
    assert_eq!(e.field.as_deref(), Some("bind.uncovered"));
}

/// An approval that acknowledges a different set of uncovered volumes (one was added since it
/// was signed) is a binding mismatch, checked before any signature and without spending the
/// nonce.
#[test]
fn m71_uncovered_volumes_changed_since_signing() {
    let mut signed_for = action();
    signed_for.bind.insert("uncovered".into(), "mp1".into());
    let text = render_request(
        &ctx(),
        &signed_for,
        "7f3c9a1e5b2d4f6081a2c3d4e5f60718",
        NB,
        EXP,
        Role::Operational,
        None,
    )
    .unwrap();
    assert!(
        text.contains("\nbind.uncovered: mp1\nrole: operational\n"),
        "{text}"
    );
    let mut planned = action();
    planned
        .bind
        .insert("uncovered".into(), "mp1,unused0".into());
    let ledger = MemLedger::new();
    let e =
        verify_approval(&ctx(), &v1(), &planned, text.as_bytes(), &[], NOW, &ledger).unwrap_err();
    assert_eq!(e.code, C::BindingMismatch);
    assert_eq!(e.field.as_deref(), Some("bind.uncovered"));
    // The reverse: an acknowledgement for volumes that are no longer there is no approval
    // either (the operator signed a different state).
    let e =
        verify_approval(&ctx(), &v1(), &action(), text.as_bytes(), &[], NOW, &ledger).unwrap_err();
    assert_eq!(e.code, C::BindingMismatch);
    assert_eq!(e.field.as_deref(), Some("bind.uncovered"));
}

/// `bind.*` lines are part of the canonical form: an extra one inserted into a signed payload
/// makes it a different payload (the signature no longer matches), and a misspelled or
/// misplaced one is malformed before any signature work.
#[test]
fn m72_bind_lines_are_canonical() {
    let text = String::from_utf8(read("approval.txt")).unwrap();
    let injected = text.replace("role: ", "bind.uncovered: mp1\nrole: ");
    let e = run_with(
        &v1(),
        &action(),
        injected.as_bytes(),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    )
    .unwrap_err();
    assert_eq!(e.code, C::BindingMismatch, "{e}");
    let misplaced = text.replace(
        "guest-config-sha1: ",
        "bind.uncovered: mp1\nguest-config-sha1: ",
    );
    let e = run_with(
        &v1(),
        &action(),
        misplaced.as_bytes(),
        &sigs(&["operator1"]),
        NOW,
        &MemLedger::new(),
    )
    .unwrap_err();
    assert_eq!(e.code, C::MalformedPayload, "{e}");
}
