//! The agent against PVE's lock model (`proxmox-api.md` §5): `PUT config` waits for the CT's
//! config flock and fails with "got timeout"; power actions get a UPID at once and their task
//! fails with that message when another worker holds the flock. Both are retried, never
//! terminal, and the guest converges once the other operation is done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Host, code, guest, seed};
use proxmox_client::{Client, ClientConfig, Fingerprint, TaskListFilter, TlsTrust};

/// Someone else's client (an operator at the GUI), not the agent's.
fn operator(h: &Host) -> Client {
    let fp: Fingerprint = h.sim.fingerprint().parse().unwrap();
    let token =
        proxmox_client::ApiToken::new(pve_sim::DEFAULT_TOKEN_ID, pve_sim::DEFAULT_TOKEN_SECRET)
            .unwrap();
    Client::new(ClientConfig::new(
        h.sim.base_url(),
        token,
        TlsTrust::Fingerprint(fp),
    ))
    .unwrap()
}

async fn converge(h: &Host) -> bool {
    for _ in 0..20 {
        if code(&h.drover_async(&["run", "--once"]).await) == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_blocked_by_another_workers_flock_are_retried_until_they_converge() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(pve_sim::SimConfig {
        // Tasks hold the flock for 5 s (the first `run --once` meets them even on a loaded
        // machine); waiters give up after 200 ms (PVE: 10 s).
        task_duration: Duration::from_secs(5),
        lock_wait: Duration::from_millis(200),
        guests: vec![seed(701, true, 512), seed(702, true, 512)],
        ..pve_sim::SimConfig::default()
    })
    .await;
    // 701: a config change (synchronous PUT, waits for the flock); 702: a stop (its worker
    // waits for the flock inside the task).
    h.desired(&format!(
        "revision = 1\n{}{}",
        guest(701, "running", 1024),
        guest(702, "stopped", 512)
    ));
    // The seeded CTs are adopted first (signed requests in the inbox; no PVE call).
    h.adopt_all().await;
    // The operator reboots both CTs; their vzreboot workers hold the flocks meanwhile.
    let op = operator(&h);
    op.reboot_lxc("pve1", 701, None).await.unwrap();
    op.reboot_lxc("pve1", 702, None).await.unwrap();
    assert!(
        converge(&h).await,
        "did not converge once the reboots ended"
    );
    assert_eq!(h.sim.guest(701).unwrap().memory, 1024);
    assert!(!h.sim.guest(702).unwrap().running);
    // The stop really met the lock inside its task: the failure arrived as a task error.
    let tasks = op
        .list_tasks(
            "pve1",
            &TaskListFilter {
                vmid: Some(702),
                limit: Some(100),
                ..TaskListFilter::default()
            },
        )
        .await
        .unwrap();
    let summary: Vec<(String, String)> = tasks
        .iter()
        .map(|t| {
            (
                t.worker_type.clone().unwrap_or_default(),
                t.status.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        summary
            .iter()
            .any(|(ty, st)| matches!(ty.as_str(), "vzshutdown" | "vzstop")
                && st == "can't lock file '/run/lock/lxc/pve-config-702.lock' - got timeout"),
        "{summary:?}"
    );
    assert!(
        summary
            .iter()
            .any(|(ty, st)| matches!(ty.as_str(), "vzshutdown" | "vzstop") && st == "OK"),
        "{summary:?}"
    );
}
