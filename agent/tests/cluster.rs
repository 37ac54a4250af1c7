//! A node in a cluster: guests that migrate to another node (HA) and back, and `[proxmox]
//! pool` (pve-setup.sh --pool) putting the guests the agent creates into the pool its token
//! may use. The real `drover` binary against the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Host, code, guest, seed};

/// pve1 of a cluster with pve2, 50 ms tasks.
async fn two_node_host() -> Host {
    Host::start_with(pve_sim::SimConfig {
        other_nodes: vec!["pve2".into()],
        task_duration: std::time::Duration::from_millis(50),
        ..pve_sim::SimConfig::default()
    })
    .await
}

/// A guest the cluster moved to pve2 (HA failover, a manual migration) is never created again
/// on pve1 and never touched there, and after it comes back it is managed as before, without
/// a new create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_migrates_away_and_back_is_neither_recreated_nor_lost() {
    let h = two_node_host().await;
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

/// HA moves a guest away between the agent's CT list and its config read (PVE answers the
/// read "Configuration file ... does not exist"). The pass goes on: the other guest's step
/// runs, nothing is planned or sent for the moved one, its provenance is kept (back on pve1
/// it needs no adoption), and the next pass sees it on pve2. Before, the whole read failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_migrates_during_the_read_stops_nothing_and_is_not_recreated() {
    let h = two_node_host().await;
    h.desired(&format!(
        "revision = 1\n{}{}",
        guest(621, "running", 256),
        guest(622, "running", 256)
    ));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "created and converged on pve1");

    // 622 is stopped behind the agent's back (work for the pass); 621 moves during the read.
    assert!(h.sim.alter(622, |ct| ct.running = false));
    h.sim.set_faults(pve_sim::Faults {
        migrate_after_list: [(621, "pve2".to_string())].into(),
        ..pve_sim::Faults::default()
    });
    let before = h.sim.mutations().len();
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        text.contains("guest_vanished"),
        "the plan says what happened: {text}\n{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(
        text.contains("\"start\""),
        "622's start is still planned: {text}"
    );
    assert_eq!(h.sim.guest(621).unwrap().node, "pve2");

    // Again, under `run --once`: its final read finds 621 on pve2, so the host is not
    // converged from pve1 (exit 2), as for any guest that runs elsewhere.
    assert!(h.sim.alter(621, |ct| ct.node = "pve1".into()));
    h.sim.set_faults(pve_sim::Faults {
        migrate_after_list: [(621, "pve2".to_string())].into(),
        ..pve_sim::Faults::default()
    });
    let run = h.drover_async(&["run", "--once"]).await;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(code(&run), 2, "{stderr}");
    assert!(stderr.contains("exists_on_other_node"), "{stderr}");
    assert!(h.sim.guest(622).unwrap().running);
    let since: Vec<_> = h.sim.mutations()[before..].to_vec();
    assert!(
        since.iter().all(|m| m.vmid != Some(621)),
        "nothing sent for the moved guest: {since:?}"
    );
    assert_eq!(h.sim.count_mutations("create", 621), 1, "never re-created");
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    assert!(String::from_utf8_lossy(&plan.stdout).contains("exists_on_other_node"));

    // Back on pve1 it is still Drover's: no adoption is asked for.
    assert!(h.sim.alter(621, |ct| ct.node = "pve1".into()));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(!text.contains("adopt"), "{text}");
    assert_eq!(code(&plan), 0, "nothing to do: {text}");
}

/// The reverse race: the CT list is answered after HA moved the guest to pve2, the cluster
/// view (read at the same time) before, so it still places the guest on pve1. Neither view
/// may make the agent think the guest was destroyed: it plans nothing for it, sends nothing,
/// and keeps its provenance (back on pve1 no adoption is asked). Before, the agent forgot
/// the guest and planned its create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cluster_view_of_a_migrated_guest_does_not_lose_it() {
    let h = two_node_host().await;
    h.desired(&format!("revision = 1\n{}", guest(631, "running", 256)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);

    assert!(h.sim.alter(631, |ct| ct.node = "pve2".into()));
    h.sim.set_faults(pve_sim::Faults {
        stale_cluster_view: [(631, "pve1".to_string())].into(),
        ..pve_sim::Faults::default()
    });
    let before = h.sim.mutations().len();
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(text.contains("guest_vanished"), "{text}");
    assert!(!text.contains("\"create\""), "{text}");
    let run = h.drover_async(&["run", "--once"]).await;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(code(&run), 2, "not converged while unknown: {stderr}");
    assert!(stderr.contains("guest_vanished"), "{stderr}");
    assert_eq!(h.sim.mutations().len(), before, "nothing was sent");

    h.sim.set_faults(pve_sim::Faults::default());
    assert!(h.sim.alter(631, |ct| ct.node = "pve1".into()));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(!text.contains("adopt"), "still Drover's guest: {text}");
    assert_eq!(code(&plan), 0, "{text}");
}

/// HA moves a guest after the pass read it but before its lane turn: the turn finds it gone
/// from pve1 and plans no create (PVE would refuse the vmid that now lives on pve2, and the
/// failure would park the guest as terminally failed until its entry changed). The next
/// read sees it on pve2; back on pve1 it is managed as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_migrates_before_its_lane_turn_is_not_recreated_or_parked() {
    let h = two_node_host().await;
    h.desired(&format!("revision = 1\n{}", guest(641, "running", 256)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    // Stopped behind the agent's back: the pass plans a start; HA moves it right after the
    // pass's config read.
    assert!(h.sim.alter(641, |ct| ct.running = false));
    h.sim.set_faults(pve_sim::Faults {
        migrate_after_config_read: [(641, "pve2".to_string())].into(),
        ..pve_sim::Faults::default()
    });
    let before = h.sim.mutations().len();
    let run = h.drover_async(&["run", "--once"]).await;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(h.sim.guest(641).unwrap().node, "pve2", "the fault fired");
    assert_eq!(code(&run), 2, "{stderr}");
    assert!(stderr.contains("exists_on_other_node"), "{stderr}");
    assert!(
        !stderr.contains("already exists"),
        "a create was sent: {stderr}"
    );
    assert!(!stderr.contains("failed"), "{stderr}");
    assert_eq!(h.sim.mutations().len(), before, "nothing was sent");

    // Back on pve1 (still stopped): the next run starts it, no adoption, nothing parked.
    h.sim.set_faults(pve_sim::Faults::default());
    assert!(h.sim.alter(641, |ct| ct.node = "pve1".into()));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", String::from_utf8_lossy(&run.stderr));
    assert!(h.sim.guest(641).unwrap().running);
    assert_eq!(h.sim.count_mutations("create", 641), 1, "never re-created");
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
