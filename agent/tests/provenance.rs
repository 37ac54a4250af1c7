//! The create-cleanup rule end to end (signing-gate.md §6 rows 54-56): destroying a guest is
//! benign only to clean up the agent's own create that did NOT succeed (its create step ended
//! failed or abandoned, the guest was never started, its digest is the one that create left).
//! From the moment a create task ends OK, destroying the guest needs a signature.
//!
//! The real `drover` binary against pve-sim over real TLS, a real journal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Host, code, eventually, guest, stdout};

/// Revision `rev` with CT 201..=203 running and CT 204 as `ensure204` (`running`, `stopped`
/// or `absent`) with `memory`/`rootfs` of 204 as given.
fn doc(rev: u32, ensure204: &str, rootfs204: u32) -> String {
    let mut d = format!(
        "revision = {rev}\n{}{}{}",
        guest(201, "running", 256),
        guest(202, "running", 256),
        guest(203, "running", 256)
    );
    if ensure204 == "absent" {
        d.push_str("[[guest]]\nvmid = 204\nensure = \"absent\"\n");
    } else {
        d.push_str(
            &guest(204, ensure204, 256).replace("local-lvm:4", &format!("local-lvm:{rootfs204}")),
        );
    }
    d
}

fn deletes_of(h: &Host, vmid: u32) -> usize {
    h.sim
        .mutations()
        .iter()
        .filter(|m| m.method == "DELETE" && m.vmid == Some(vmid))
        .count()
}

fn plan_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("plan --output json")
}

/// The class `drover plan --output json` gives the first step of `vmid`.
fn first_class(plan: &serde_json::Value, vmid: u32) -> (String, String) {
    let g = plan["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == vmid)
        .unwrap_or_else(|| panic!("no plan for CT {vmid}: {plan}"));
    (
        g["steps"][0]["kind"].as_str().unwrap_or("").to_string(),
        g["steps"][0]["class"].as_str().unwrap_or("").to_string(),
    )
}

/// The reproduction: revision 1 creates and starts CT 204 (`run --once` converges),
/// revision 2 marks it absent. The destroy is destructive, `run --once` exits 2 with a pending
/// request, and no DELETE reaches PVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_never_destroys_a_guest_it_created_without_a_signature() {
    let h = Host::start(vec![]).await;
    h.desired(&doc(1, "running", 4));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "revision 1 converges");
    assert!(stdout(&run).contains("4 converged"), "{}", stdout(&run));
    assert!(h.sim.guest(204).unwrap().running);

    h.desired(&doc(2, "absent", 4));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let (kind, class) = first_class(&plan_json(&plan), 204);
    assert_eq!(
        (kind.as_str(), class.as_str()),
        ("destroy_guest", "destructive")
    );
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2, "the destroy waits for a signature");
    let pending = h.pending_requests();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let text = std::fs::read_to_string(&pending[0]).unwrap();
    assert!(
        text.contains("op: destroy_guest\nguest: lxc/204\n"),
        "{text}"
    );
    assert_eq!(deletes_of(&h, 204), 0, "a DELETE reached PVE unsigned");
    assert!(h.sim.guest(204).is_some());
}

/// The same in the daemon: between a convergence and the next pass the created guest is no
/// longer "its own failed create".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_never_destroys_a_guest_it_created_without_a_signature() {
    let h = Host::start(vec![]).await;
    h.desired(&doc(1, "running", 4));
    let d = h.spawn_daemon();
    eventually(&d, Duration::from_secs(30), "revision 1 converged", || {
        h.sim.guest(204).is_some_and(|g| g.running)
            && (201..=203).all(|v| h.sim.guest(v).is_some_and(|g| g.running))
    })
    .await;
    // At once, with no quiet pass in between.
    h.desired(&doc(2, "absent", 4));
    eventually(
        &d,
        Duration::from_secs(30),
        "a pending destroy request",
        || !h.pending_requests().is_empty(),
    )
    .await;
    let status = h.status_json(Duration::from_secs(10)).await;
    let g204 = status["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 204)
        .cloned()
        .unwrap_or_default();
    assert!(g204.to_string().contains("destroy_guest"), "{status}");
    // Several more passes (interval 1 s): still nothing destroyed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        deletes_of(&h, 204),
        0,
        "the daemon destroyed CT 204 unsigned"
    );
    assert!(h.sim.guest(204).is_some());
    assert!(d.stop().await.success());
}

/// A created guest whose later step fails terminally (the old rule kept its create "unfinished"
/// forever): never started, digest as the create left it, and still its destroy needs a
/// signature, because its create task ended OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_guest_whose_later_step_fails_terminally_still_needs_a_signature() {
    let h = Host::start(vec![]).await;
    h.desired(&doc(1, "stopped", 4));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    assert!(!h.sim.guest(204).unwrap().running);

    // Growing its rootfs fails in PVE, terminally.
    h.sim.set_faults(pve_sim::Faults {
        failing_tasks: ["resize".to_string()].into(),
        ..pve_sim::Faults::default()
    });
    h.desired(&doc(2, "stopped", 8));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_ne!(code(&run), 0, "the resize failed");
    assert_eq!(h.sim.count_mutations("resize", 204), 1);
    h.sim.set_faults(pve_sim::Faults::default());

    h.desired(&doc(3, "absent", 4));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    assert_eq!(
        first_class(&plan_json(&plan), 204),
        ("destroy_guest".into(), "destructive".into())
    );
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert_eq!(h.pending_requests().len(), 1);
    assert_eq!(deletes_of(&h, 204), 0, "a DELETE reached PVE unsigned");
}

/// Revision 1 converges 201..203; revision 2 adds CT 204, whose create task fails but leaves
/// the guest behind (stopped, unlocked).
async fn host_with_a_failed_create() -> Host {
    let h = Host::start(vec![]).await;
    let three = |rev: u32| {
        format!(
            "revision = {rev}\n{}{}{}",
            guest(201, "running", 256),
            guest(202, "running", 256),
            guest(203, "running", 256)
        )
    };
    h.desired(&three(1));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    h.sim.set_faults(pve_sim::Faults {
        failing_tasks: ["vzcreate".to_string()].into(),
        failed_create_keeps_guest: true,
        ..pve_sim::Faults::default()
    });
    h.desired(&format!("{}{}", three(2), guest(204, "stopped", 256)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_ne!(code(&run), 0, "the create failed");
    assert_eq!(h.sim.count_mutations("create", 204), 1);
    let g = h.sim.guest(204).expect("the failed create left the guest");
    assert!(!g.running && g.lock.is_none());
    h.sim.set_faults(pve_sim::Faults::default());
    h.desired(&format!(
        "{}[[guest]]\nvmid = 204\nensure = \"absent\"\n",
        three(3)
    ));
    h
}

/// Cleaning up the agent's own create whose task failed stays benign: no request, one DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_of_a_create_whose_task_failed_stays_benign() {
    let h = host_with_a_failed_create().await;
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    assert_eq!(
        first_class(&plan_json(&plan), 204),
        ("destroy_guest".into(), "benign".into())
    );
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "converged without a signature");
    assert!(h.pending_requests().is_empty());
    assert_eq!(deletes_of(&h, 204), 1);
    assert!(h.sim.guest(204).is_none());
}

/// The same failed create, once started by someone (it may hold data now), needs a signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_that_was_started_needs_a_signature() {
    let h = host_with_a_failed_create().await;
    assert!(h.sim.alter(204, |ct| ct.running = true));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert_eq!(h.pending_requests().len(), 1);
    // Stopped again: the journal remembers it ran.
    assert!(h.sim.alter(204, |ct| ct.running = false));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    assert_eq!(
        first_class(&plan_json(&plan), 204).1,
        "destructive",
        "started once is started"
    );
    assert_eq!(deletes_of(&h, 204), 0);
}

/// The same failed create whose config changed since (not the digest the create left) needs a
/// signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_whose_config_changed_needs_a_signature() {
    let h = host_with_a_failed_create().await;
    assert!(h.sim.alter(204, |ct| {
        ct.conf.insert("memory".into(), "4096".into());
    }));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert_eq!(h.pending_requests().len(), 1);
    assert_eq!(deletes_of(&h, 204), 0);
}

/// The agent's own start of a failed create counts too: the journal records it before the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_the_agent_started_needs_a_signature() {
    let h = host_with_a_failed_create().await;
    // The document wants it running after all: the agent starts it, then stops it.
    let text = std::fs::read_to_string(h.source().join("desired.toml")).unwrap();
    let running = text.replace(
        "[[guest]]\nvmid = 204\nensure = \"absent\"\n",
        &guest(204, "running", 256),
    );
    h.desired(&running.replace("revision = 3", "revision = 4"));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    assert!(h.sim.guest(204).unwrap().running);
    h.desired(&text.replace("revision = 3", "revision = 5"));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert_eq!(deletes_of(&h, 204), 0);
}
