//! Trust rotation end to end: a running `drover` daemon against the simulator, documents and
//! signatures made with real `ssh-keygen`. A signed rotation is applied at once, survives a
//! restart although the file still holds the old version, lets the new key approve a destroy;
//! bad rotations are refused with the gate's code and change nothing; root replacing the file
//! is accepted but audited as `trust_store_replaced_locally`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const V1: &str = include_str!("../../testdata/demo/trust");

/// The operator1 TEST key as a signer line of the demo fleet.
fn operator1_line() -> String {
    let pubkey = include_str!("../../testdata/gate/TEST_operator1_ed25519.pub");
    let key: Vec<&str> = pubkey.split_whitespace().take(2).collect();
    format!(
        "operator1@demo.invalid namespaces=\"destructive-op-v1@{DOMAIN}\",valid-before=\"20991231235959Z\" {}\n",
        key.join(" ")
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn trust_of(h: &Host) -> serde_json::Value {
    h.status_json(Duration::from_secs(10)).await["trust"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_rotation_is_applied_kept_and_a_local_replacement_is_audited() {
    if skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(801, true, 256), seed(802, true, 256)]).await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 801\nensure = \"absent\"\n{}",
        guest(802, "running", 256)
    ));
    // The seeded guests are adopted first (signed requests in the inbox).
    h.adopt_all().await;
    let d = h.spawn_daemon();
    eventually(
        &d,
        Duration::from_secs(20),
        "a destroy approval request",
        || {
            let p = h.pending_requests();
            p.len() == 1 && p[0].to_string_lossy().ends_with("801-destroy_guest.txt")
        },
    )
    .await;
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(1), Some("file")),
        "{t}"
    );

    let rot_ns = format!("trust-rotation-v1@{DOMAIN}");
    let op_ns = format!("destructive-op-v1@{DOMAIN}");
    let v2 = successor(V1, 2, &operator1_line());
    let v2_path = write(&h.root().join("docs"), "trust-v2.txt", &v2);

    // Signed by a key v1 does not list: refused at once with the gate's code.
    std::fs::create_dir_all(h.root().join("stranger")).unwrap();
    let stranger = sign(
        "gate/TEST_operator1_ed25519",
        &rot_ns,
        &v2_path,
        &h.root().join("stranger"),
    );
    let r = h.submit("approve", &v2_path, &[&stranger]).await;
    assert_eq!(code(&r), 1, "{}", stdout(&r));
    assert!(stdout(&r).starts_with("unknown_signer: "), "{}", stdout(&r));

    // Skipping a version, even with the right signature: refused.
    std::fs::create_dir_all(h.root().join("skip")).unwrap();
    std::fs::create_dir_all(h.root().join("grab")).unwrap();
    let v3 = successor(&v2, 3, "");
    let v3_path = write(&h.root().join("docs"), "trust-v3.txt", &v3);
    let sig3 = sign(
        "demo/TEST_demo_recovery_ed25519",
        &rot_ns,
        &v3_path,
        &h.root().join("skip"),
    );
    let r = h.submit("approve", &v3_path, &[&sig3]).await;
    assert_eq!(code(&r), 1, "{}", stdout(&r));
    assert!(
        stdout(&r).starts_with("rotation_version_invalid: "),
        "{}",
        stdout(&r)
    );
    // Operators never rotate trust, not even to add one more operator: only recovery keys do.
    let v2_bad = successor(V1, 2, &operator1_line());
    let bad_path = write(&h.root().join("docs-bad"), "trust-v2.txt", &v2_bad);
    let sig_op = sign(
        "demo/TEST_demo_operator_ed25519",
        &op_ns,
        &bad_path,
        &h.root().join("grab"),
    );
    let r = h.submit("approve", &bad_path, &[&sig_op]).await;
    assert_eq!(code(&r), 1, "{}", stdout(&r));
    assert!(stdout(&r).starts_with("role_denied: "), "{}", stdout(&r));
    let t = trust_of(&h).await;
    assert_eq!(
        t["version"].as_u64(),
        Some(1),
        "a refused rotation changed the trust: {t}"
    );

    // The recovery key's signature: checked offline, then applied by the running agent.
    let officer = h.root().join("officer");
    std::fs::create_dir_all(&officer).unwrap();
    let sig2 = sign(
        "demo/TEST_demo_recovery_ed25519",
        &rot_ns,
        &v2_path,
        &officer,
    );
    let v = h.submit("verify-approval", &v2_path, &[&sig2]).await;
    assert_eq!(code(&v), 0, "{}", stdout(&v));
    assert!(
        stdout(&v).contains("valid rotation of trust document v1 to v2"),
        "{}",
        stdout(&v)
    );
    let r = h.submit("approve", &v2_path, &[&sig2]).await;
    assert_eq!(code(&r), 0, "{}", stdout(&r));
    assert!(
        stdout(&r).contains("now uses trust document v2"),
        "{}",
        stdout(&r)
    );
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(2), Some("rotation")),
        "{t}"
    );
    let text = stdout(&h.drover_async(&["status"]).await);
    assert!(
        text.contains("trust document v2 (signed rotation)"),
        "{text}"
    );

    // The key v2 added approves the destroy.
    let request = h.pending_requests()[0].clone();
    let ops = h.root().join("operator1");
    std::fs::create_dir_all(&ops).unwrap();
    let sig = sign("gate/TEST_operator1_ed25519", &op_ns, &request, &ops);
    let copy = ops.join(request.file_name().unwrap());
    let r = h.submit("approve", &copy, &[&sig]).await;
    assert_eq!(code(&r), 0, "{}", stdout(&r));
    eventually(
        &d,
        Duration::from_secs(20),
        "the destroy approved by the new key",
        || h.sim.guest(801).is_none(),
    )
    .await;
    d.stop().await;

    // A restart keeps v2 (from the journal) although the file still holds v1; verify-approval
    // offline judges against v2 too.
    let d = h.spawn_daemon();
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(2), Some("rotation")),
        "{t}"
    );
    d.stop().await;
    let v = h.submit("verify-approval", &v3_path, &[&sig3]).await;
    assert_eq!(code(&v), 0, "v3 follows v2 now: {}", stdout(&v));

    // Break glass: root installs another document. Accepted, but never silently.
    let edited = successor(V1, 7, &operator1_line());
    std::fs::write(h.root().join("trust"), &edited).unwrap();
    let d = h.spawn_daemon();
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(7), Some("local_replacement")),
        "{t}"
    );
    let log = d.log_text();
    assert!(
        log.contains("trust_store_replaced_locally") && log.contains("v2"),
        "{log}"
    );
    d.stop().await;

    // With the agent stopped, `drover approve` leaves the rotation in the inbox; the next
    // start applies it (chained to the locally installed v7).
    let v8 = successor(&edited, 8, "");
    let v8_path = write(&h.root().join("docs"), "trust-v8.txt", &v8);
    let sig8 = sign(
        "demo/TEST_demo_recovery_ed25519",
        &rot_ns,
        &v8_path,
        &officer,
    );
    let r = h.submit("approve", &v8_path, &[&sig8]).await;
    assert_eq!(code(&r), 0, "{}", stdout(&r));
    assert!(stdout(&r).contains("not running"), "{}", stdout(&r));
    let d = h.spawn_daemon();
    eventually(&d, Duration::from_secs(20), "v8 from the inbox", || {
        std::fs::read_dir(h.state().join("approvals/used"))
            .map(|r| r.flatten().any(|e| e.file_name() == "trust-v8.txt"))
            .unwrap_or(false)
    })
    .await;
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(8), Some("rotation")),
        "{t}"
    );
    assert!(d.log_text().contains("trust_rotated"), "{}", d.log_text());
    d.stop().await;

    // The audit log tells the whole story, oldest first.
    let a = h.drover_async(&["journal", "--audit"]).await;
    assert_eq!(code(&a), 0);
    let text = stdout(&a);
    let lines: Vec<&str> = text.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in the audit log:\n{text}"))
    };
    assert!(
        pos("refused unknown_signer") < pos("allowed trust_rotated"),
        "{text}"
    );
    // (The adoptions of 801 and 802 are approved before anything else; the destroy's
    // approval is the one that follows the rotation.)
    let destroy_approved = "allowed approved                       CT 801 destroy_guest";
    assert!(pos("v1 -> v2") < pos(destroy_approved), "{text}");
    assert!(
        pos(destroy_approved) < pos("trust_store_replaced_locally"),
        "{text}"
    );
    assert!(
        pos("trust_store_replaced_locally") < pos("v7 -> v8"),
        "{text}"
    );
    assert!(
        text.contains("CT 801 destroy_guest [operator1@demo.invalid"),
        "{text}"
    );
    let j = h
        .drover_async(&["journal", "--audit", "--output", "json"])
        .await;
    let rows: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["code"] == "trust_rotated" && r["vmid"].is_null()),
        "{rows}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Signs `doc` with the demo recovery key and submits it to the running daemon.
async fn rotate(h: &Host, doc: &str, name: &str) {
    let path = write(&h.root().join("docs"), name, doc);
    let dir = h.root().join(format!("sig-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ns = format!("trust-rotation-v1@{DOMAIN}");
    let sig = sign("demo/TEST_demo_recovery_ed25519", &ns, &path, &dir);
    let r = h.submit("approve", &path, &[&sig]).await;
    assert_eq!(code(&r), 0, "{}", stdout(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_file_not_newer_than_the_document_in_force_never_rolls_back_a_rotation() {
    if skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(811, true, 256)]).await;
    h.desired(&format!("revision = 1\n{}", guest(811, "running", 256)));
    let d = h.spawn_daemon();
    assert_eq!(trust_of(&h).await["version"].as_u64(), Some(1));

    // v2 adds operator1; root installs v2 as the file while the agent runs (no restart);
    // then v3 drops operator1 again (a revocation).
    let v2 = successor(V1, 2, &operator1_line());
    rotate(&h, &v2, "trust-v2.txt").await;
    std::fs::write(h.root().join("trust"), &v2).unwrap();
    let v3 = successor(&v2, 3, "").replace(&operator1_line(), "");
    assert!(!v3.contains("operator1@"), "{v3}");
    rotate(&h, &v3, "trust-v3.txt").await;
    assert_eq!(trust_of(&h).await["version"].as_u64(), Some(3));
    d.stop().await;

    // The restart finds v2 in the file: older than v3, so v3 (without operator1) stays.
    let d = h.spawn_daemon();
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(3), Some("rotation")),
        "the revocation in v3 was rolled back: {t}"
    );
    assert!(
        d.log_text().contains("trust_file_superseded"),
        "{}",
        d.log_text()
    );
    assert!(!d.log_text().contains("trust_store_replaced_locally"));
    d.stop().await;

    // Root installs v3 itself as the file (recognised as the one in force), later restores
    // the original v1 from a backup: older, ignored.
    std::fs::write(h.root().join("trust"), &v3).unwrap();
    let d = h.spawn_daemon();
    assert_eq!(trust_of(&h).await["version"].as_u64(), Some(3));
    d.stop().await;
    std::fs::write(h.root().join("trust"), V1).unwrap();
    let d = h.spawn_daemon();
    assert_eq!(trust_of(&h).await["version"].as_u64(), Some(3));
    d.stop().await;

    // An edited v3 that keeps its version (operator1 back in): not newer, ignored, and the
    // log says which version break glass needs.
    let edited_v3 = format!("{v3}{}", operator1_line());
    std::fs::write(h.root().join("trust"), &edited_v3).unwrap();
    let d = h.spawn_daemon();
    assert_eq!(trust_of(&h).await["version"].as_u64(), Some(3));
    assert!(
        d.log_text().contains("version 4 or higher"),
        "{}",
        d.log_text()
    );
    d.stop().await;

    // `drover trust` prints the document in force byte for byte, for the next rotation.
    let r = h.drover_async(&["trust"]).await;
    assert_eq!(code(&r), 0, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(stdout(&r), v3);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        stderr.contains("v3 (rotation)") && stderr.contains(&sha256_hex(v3.as_bytes())),
        "{stderr}"
    );
    let j = h.drover_async(&["trust", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["sha256"], sha256_hex(v3.as_bytes()));
    assert_eq!(v["document"], v3.as_str());

    // Break glass: a newer version root installs is taken, audited.
    let v9 = successor(V1, 9, "");
    std::fs::write(h.root().join("trust"), &v9).unwrap();
    let r = h.drover_async(&["trust", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["origin"].as_str()),
        (Some(9), Some("local_replacement_pending")),
        "{v}"
    );
    let d = h.spawn_daemon();
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(9), Some("local_replacement")),
        "{t}"
    );
    d.stop().await;

    // A damaged journal moved aside (a new state epoch) keeps the trust in force: v1 in the
    // file does not come back.
    std::fs::write(h.root().join("trust"), V1).unwrap();
    let m = h.drover_async(&["journal", "move-aside"]).await;
    assert_eq!(code(&m), 0, "{}", String::from_utf8_lossy(&m.stderr));
    let d = h.spawn_daemon();
    let t = trust_of(&h).await;
    assert_eq!(
        (t["version"].as_u64(), t["origin"].as_str()),
        (Some(9), Some("local_replacement")),
        "moving the journal aside rolled the trust back: {t}"
    );
    d.stop().await;

    // Every ignored file is on record.
    let audit = stdout(&h.drover_async(&["journal", "--audit"]).await);
    assert!(audit.contains("refused trust_file_superseded"), "{audit}");
}
