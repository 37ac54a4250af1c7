//! A node in a cluster: guests that migrate to another node (HA) and back, and `[proxmox]
//! pool` (pve-setup.sh --pool) putting the guests the agent creates into the pool its token
//! may use. The real `drover` binary against the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Host, code, guest, seed};

/// A guest the cluster moved to pve2 (HA failover, a manual migration) is never created again
/// on pve1 and never touched there, and after it comes back it is managed as before, without
/// a new create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_migrates_away_and_back_is_neither_recreated_nor_lost() {
    let h = Host::start_with(pve_sim::SimConfig {
        other_nodes: vec!["pve2".into()],
        task_duration: std::time::Duration::from_millis(50),
        ..pve_sim::SimConfig::default()
    })
    .await;
    h.desired(&format!("revision = 1\n{}", guest(601, "running", 256)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "created and converged on pve1");
    assert_eq!(h.sim.count_mutations("create", 601), 1);

    // HA moves it to pve2, and someone changes its memory there.
    let mut moved = seed(601, true, 512);
    moved.node = Some("pve2".into());
    h.sim.seed(moved);
    let before = h.sim.mutations().len();
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert!(
        v.to_string().contains("exists_on_other_node"),
        "the plan says where the guest is: {v}"
    );
    h.drover_async(&["run", "--once"]).await;
    assert_eq!(
        h.sim.mutations().len(),
        before,
        "pve1 changed nothing while the guest ran on pve2"
    );
    // The running agent shows it as `elsewhere`, not `converged`.
    let daemon = h.spawn_daemon();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = h.status_json(std::time::Duration::from_secs(20)).await;
        let state = v["guests"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["vmid"] == 601))
            .map(|g| g["state"].clone());
        if state == Some(serde_json::json!("elsewhere")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "state {state:?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    daemon.stop().await;
    assert_eq!(h.sim.mutations().len(), before);

    // Back on pve1: the drift made on pve2 is corrected with a config change, not a create.
    h.sim.seed(seed(601, true, 512));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert_eq!(h.sim.count_mutations("create", 601), 1, "never re-created");
    assert_eq!(h.sim.guest(601).unwrap().memory, 256);
}

/// With `[proxmox] pool`, every create names the pool (PVE lets a token whose rights are on
/// `/pool/<pool>` create a guest only into that pool); without it, no create does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_join_the_configured_pool() {
    let h = Host::start(vec![]).await;
    // `[proxmox]` is the second section: put the key there.
    let text = std::fs::read_to_string(h.config()).unwrap().replace(
        "max_parallel = 3\n",
        "max_parallel = 3\npool = \"drover-guests\"\n",
    );
    std::fs::write(h.config(), text).unwrap();
    h.desired(&format!("revision = 1\n{}", guest(611, "running", 256)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    let creates: Vec<_> = h
        .sim
        .mutations()
        .into_iter()
        .filter(|m| m.kind == "create")
        .collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(
        creates[0].params.get("pool").map(String::as_str),
        Some("drover-guests"),
        "{:?}",
        creates[0].params
    );

    let h = Host::start(vec![]).await;
    h.desired(&format!("revision = 1\n{}", guest(612, "running", 256)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    assert!(
        h.sim
            .mutations()
            .iter()
            .filter(|m| m.kind == "create")
            .all(|m| !m.params.contains_key("pool"))
    );
}

/// A pool name PVE would refuse is a config error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pool_name_is_a_config_error() {
    let h = Host::start(vec![]).await;
    let text = std::fs::read_to_string(h.config())
        .unwrap()
        .replace("max_parallel = 3\n", "max_parallel = 3\npool = \"a/b\"\n");
    std::fs::write(h.config(), text).unwrap();
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxmox.pool"), "{err}");
}
