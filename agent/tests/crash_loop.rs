//! Crash loop: `drover run` is killed with SIGKILL at random moments and restarted; the
//! simulator's mutation log must show no CT created twice and no destroy without an approval,
//! and the host must converge in the end.
//!
//! `DROVER_CRASH_ROUNDS` sets the number of kills (default 30, as in CI); the script
//! `agent/tests/crash-loop.sh` runs thousands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Host, code};

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_never_runs_a_step_twice() {
    let rounds: u32 = std::env::var("DROVER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut seeds = Vec::new();
    for v in [950u32, 951, 952] {
        seeds.push(pve_sim::SeedGuest {
            vmid: v,
            hostname: format!("old-{v}"),
            running: true,
            cores: 1,
            memory: 128,
            rootfs_gib: 4,
            ..pve_sim::SeedGuest::default()
        });
    }
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: Duration::from_millis(250),
        guests: seeds,
        ..pve_sim::SimConfig::default()
    })
    .await;
    let mut doc = String::from("revision = 1\n");
    for v in 900..912u32 {
        doc.push_str(&format!(
            "[[guest]]\nvmid = {v}\nensure = \"{}\"\nhostname = \"ct-{v}\"\ntemplate = \"{TEMPLATE}\"\nmemory = {}\nrootfs = \"local-lvm:4\"\nnet0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"\n",
            if v % 3 == 0 { "stopped" } else { "running" },
            256 + (v % 4) * 128
        ));
    }
    // Destroying 950 needs an approval that never comes; 951 and 952 stay.
    doc.push_str("[[guest]]\nvmid = 950\nensure = \"absent\"\n[[guest]]\nvmid = 951\n[[guest]]\nvmid = 952\n");
    h.desired(&doc);

    for round in 0..rounds {
        let mut child = h.command(&["run"]).spawn().expect("drover starts");
        let wait_ms = 30 + (rand_u64(round) % 700);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        let _ = child.wait();
    }
    // Let it finish: a few clean passes.
    let mut converged = false;
    for _ in 0..10 {
        let out = h.drover_async(&["run", "--once"]).await;
        // 2: the unapproved destroy stays pending, everything else converges.
        if code(&out) == 2 && all_converged(&h) {
            converged = true;
            break;
        }
    }
    assert!(converged, "the host did not converge after {rounds} kills");
    for v in 900..912u32 {
        assert_eq!(
            h.sim.count_mutations("create", v),
            1,
            "CT {v} created more than once"
        );
    }
    assert_eq!(
        h.sim.count_mutations("destroy", 950),
        0,
        "destroy without approval"
    );
    assert!(h.sim.guest(950).is_some());
    let journal = h.drover_async(&["journal", "--in-flight"]).await;
    assert_eq!(code(&journal), 0);
}

fn all_converged(h: &Host) -> bool {
    (900..912u32).all(|v| match h.sim.guest(v) {
        Some(g) => g.running == (v % 3 != 0) && g.memory == u64::from(256 + (v % 4) * 128),
        None => false,
    })
}

/// A small deterministic spread of kill moments without a dependency.
fn rand_u64(round: u32) -> u64 {
    let mut x = u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}
