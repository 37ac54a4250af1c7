//! Refusals never vanish, answers never mislead (issue 13 point 5): an edited approval is
//! refused with the code the gate's order gives, wherever it arrives; `verify-approval` says
//! whether the agent would accept it now; `approve` prints its code once; printing verbs
//! survive a closed pipe; text from the hub or an operator is shown with control characters
//! escaped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{DOMAIN, Host, code, eventually, guest, seed, sign, stdout};

fn ns() -> String {
    format!("destructive-op-v1@{DOMAIN}")
}

/// The host with CT 801 to destroy (a pending request) and CT 802 kept.
async fn host_with_request() -> (Host, PathBuf) {
    let h = Host::start(vec![seed(801, true, 256), seed(802, true, 256)]).await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 801\nensure = \"absent\"\n{}",
        guest(802, "running", 256)
    ));
    // Drover did not create them: adopted first (callers need ssh-keygen anyway).
    h.adopt_all().await;
    let first = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&first), 2);
    let request = h.pending_requests()[0].clone();
    (h, request)
}

/// The signed request with its `guest:` line edited to another guest after signing.
fn edited(h: &Host, request: &std::path::Path) -> (PathBuf, PathBuf) {
    let work = h.root().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    let sig = sign("demo/TEST_demo_operator_ed25519", &ns(), request, &work);
    let copy = work.join(request.file_name().unwrap());
    let text = std::fs::read_to_string(&copy)
        .unwrap()
        .replace("guest: lxc/801", "guest: lxc/802");
    std::fs::write(&copy, text).unwrap();
    (copy, sig)
}

fn audit(h: &Host) -> Vec<journal::AuditEntry> {
    journal::Journal::open_read_only(&h.state())
        .unwrap()
        .audit_tail(1000)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_approval_in_the_inbox_is_refused_and_audited() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let (h, request) = host_with_request().await;
    let (copy, sig) = edited(&h, &request);
    let inbox = h.state().join("approvals/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(&sig, inbox.join("801-destroy_guest.txt.sig")).unwrap();
    std::fs::copy(&copy, inbox.join("801-destroy_guest.txt")).unwrap();
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    let log = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(log.contains("binding_mismatch"), "logged: {log}");
    let refused: Vec<_> = audit(&h)
        .into_iter()
        .filter(|e| !e.allowed && e.code == "binding_mismatch")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(h.sim.guest(801).is_some() && h.sim.guest(802).is_some());

    // The same edit dropped in under another name (no request is named like it).
    std::fs::remove_file(inbox.join("801-destroy_guest.txt")).unwrap();
    std::fs::remove_file(inbox.join("801-destroy_guest.txt.sig")).unwrap();
    std::fs::copy(&sig, inbox.join("other.txt.sig")).unwrap();
    std::fs::copy(&copy, inbox.join("other.txt")).unwrap();
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    let other: Vec<_> = audit(&h)
        .into_iter()
        .filter(|e| !e.allowed && e.detail.contains("other.txt"))
        .collect();
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0].code, "binding_mismatch");
    assert_eq!(
        other[0].vmid, None,
        "an unverified claim files under no guest"
    );
    assert!(other[0].detail.contains("unverified"), "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_gives_the_gates_order_and_records_a_claim() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let (h, request) = host_with_request().await;
    let (copy, sig) = edited(&h, &request);
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let r = h.submit("approve", &copy, &[&sig]).await;
    assert_eq!(code(&r), 1);
    let out = stdout(&r);
    assert!(out.starts_with("binding_mismatch: "), "{out}");
    assert_eq!(
        out.matches("binding_mismatch").count(),
        1,
        "the code once: {out}"
    );
    d.stop().await;
    let refused: Vec<_> = audit(&h)
        .into_iter()
        .filter(|e| !e.allowed && e.code == "binding_mismatch")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].vmid, None, "{refused:?}");
    assert!(refused[0].detail.contains("CT 802"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_approval_says_whether_the_agent_would_accept_it_now() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let (h, request) = host_with_request().await;
    let work = h.root().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    let sig = sign("demo/TEST_demo_operator_ed25519", &ns(), &request, &work);
    let copy = work.join(request.file_name().unwrap());
    let ok = h.submit("verify-approval", &copy, &[&sig]).await;
    assert_eq!(code(&ok), 0);
    assert!(stdout(&ok).contains("pending request"), "{}", stdout(&ok));

    let (bad, bad_sig) = {
        let text = std::fs::read_to_string(&copy)
            .unwrap()
            .replace("guest: lxc/801", "guest: lxc/802");
        let dir = h.root().join("edited");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("801-destroy_guest.txt");
        std::fs::write(&p, text).unwrap();
        let s = sign("demo/TEST_demo_operator_ed25519", &ns(), &p, &dir);
        (p, s)
    };
    let r = h.submit("verify-approval", &bad, &[&bad_sig]).await;
    assert_eq!(code(&r), 1);
    assert!(stdout(&r).starts_with("binding_mismatch"), "{}", stdout(&r));

    // Used: the agent destroys CT 801 with it; verifying again says replayed.
    let r = h.submit("approve", &copy, &[&sig]).await;
    assert_eq!(code(&r), 0);
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert!(h.sim.guest(801).is_none());
    let r = h.submit("verify-approval", &copy, &[&sig]).await;
    assert_eq!(code(&r), 1);
    assert!(stdout(&r).starts_with("replayed"), "{}", stdout(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_verbs_survive_a_closed_pipe() {
    // Created by Drover (a seeded guest would wait for adoption).
    let h = Host::start(vec![]).await;
    h.desired(&format!("revision = 1\n{}", guest(801, "running", 512)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    for args in [
        &["journal", "--audit"][..],
        &["journal"],
        &["plan"],
        &["approvals"],
        &["trust"],
        &["--help"],
    ] {
        let mut cmd = h.command(args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        // The reader goes away before anything is written, as `| head -0` would.
        drop(child.stdout.take());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(code(&out), 101, "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_operator_text_is_shown_escaped() {
    // Created by Drover (a seeded guest would wait for adoption).
    let h = Host::start(vec![]).await;
    let evil = "ok\\u001b[2J\\u001b[1;1Hall clear\\u0007";
    h.desired(&format!(
        "revision = 1\n{}",
        guest(801, "running", 256).replace(
            "description = \"managed by drover\"",
            &format!("description = \"{evil}\"")
        )
    ));
    let plan = h.drover_async(&["plan"]).await;
    let text = stdout(&plan);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}[2J"), "{text}");

    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let s = h
        .drover_async(&["suspend", "801", "--reason", "maint\u{1b}]0;pwned\u{7}"])
        .await;
    assert_eq!(code(&s), 0);
    assert!(!stdout(&s).contains('\u{1b}'), "{:?}", stdout(&s));
    eventually(&d, Duration::from_secs(10), "the suspension", || true).await;
    let st = h.drover_async(&["status"]).await;
    let text = stdout(&st);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}]0;pwned"), "{text}");
    d.stop().await;
}
