//! Safety copies against pve-sim over real TLS, with a real sled journal: each op's copy and
//! each failure mode of `safety-nets.md` §3/§7 (no space, vzdump answering "OK", task
//! warnings, job errors, the global lock's timeout, uncovered volumes), retention that touches
//! only Drover's own copies, and the boot sweep. The library's API is driven directly, as the
//! engine and the signed-jobs engine call it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Host, seed};
use drover::safety::{CopyManifest, CopyOp, CopyState, SafetyCopies, SafetyPolicy};
use drover::service::config::Config;
use drover::store::Store;

struct Rig {
    h: Host,
    store: Store,
    client: proxmox_client::Client,
}

impl Rig {
    async fn new(guests: Vec<pve_sim::SeedGuest>) -> Rig {
        Rig::with(pve_sim::SimConfig {
            task_duration: Duration::from_millis(50),
            guests,
            ..pve_sim::SimConfig::default()
        })
        .await
    }

    async fn with(cfg: pve_sim::SimConfig) -> Rig {
        let h = Host::start_with(cfg).await;
        let config = Config::load(&h.config()).unwrap();
        let pve = drover::service::daemon::pve_from_config(
            &config,
            drover::reconcile::pve::WaitPolicy::production(),
        )
        .unwrap();
        let store = Store::open(&config.state_dir).unwrap();
        Rig {
            h,
            store,
            client: pve.client,
        }
    }

    fn safety(&self, policy: SafetyPolicy) -> SafetyCopies {
        SafetyCopies::new(
            self.client.clone(),
            "pve1",
            self.store.clone(),
            policy,
            Some(Duration::from_millis(20)),
        )
    }

    fn policy() -> SafetyPolicy {
        SafetyPolicy {
            storage: Some("local".into()),
            ..SafetyPolicy::default()
        }
    }

    /// Starts a vzdump outside any copy and waits for its end.
    async fn vzdump_to_its_end(&self, req: &proxmox_client::VzdumpRequest) -> proxmox_client::Upid {
        let proxmox_client::VzdumpStarted::Task(u) = self.client.vzdump("pve1", req).await.unwrap()
        else {
            panic!("a task")
        };
        self.client
            .wait_task(
                &u,
                &proxmox_client::WaitOptions::fast(
                    Duration::from_millis(20),
                    Duration::from_secs(10),
                ),
            )
            .await
            .unwrap();
        u
    }

    fn backups(&self, vmid: u32) -> Vec<pve_sim::Volume> {
        self.h
            .sim
            .volumes()
            .into_iter()
            .filter(|v| v.content == "backup" && v.vmid == Some(vmid))
            .collect()
    }
}

/// A copy of the same guest for step `step`, journaled `creating` just now as `take` does
/// before its call: nothing of its task or archive known yet.
fn begun_after(first: &CopyManifest, step: &str) -> CopyManifest {
    let ours = format!("-{}", first.step_id);
    let theirs = format!("-{step}");
    let mut m = first.clone();
    m.id = first.id.replace(&ours, &theirs);
    m.step_id = step.into();
    m.notes = first.notes.replace(&ours, &theirs);
    m.state = CopyState::Creating;
    m.created_at_ms = drover::clock::unix_now_ms();
    m.completed_at_ms = None;
    m.protect_until_ms = None;
    m.upid = None;
    m.volid = None;
    m.sha256 = None;
    m.hash_source = None;
    m.warnings.clear();
    m
}

fn sha256_of(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_copy_is_a_protected_verified_vzdump_taken_after_a_clean_shutdown() {
    let r = Rig::new(vec![seed(101, true, 256)]).await;
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    assert!(pre.running);
    assert_eq!(
        pre.binding(),
        BTreeMap::from([("safety".to_string(), "vzdump@local".to_string())])
    );
    assert!(
        r.h.sim.mutations().is_empty(),
        "the preflight changes nothing"
    );
    let m = s.take(&pre, "7", &pre.binding()).await.unwrap();
    assert_eq!(m.state, CopyState::Complete);
    assert!(m.was_running);
    assert_eq!(m.kind, "pre-destroy");
    assert_eq!(m.covered, ["rootfs"]);
    assert!(m.id.ends_with("-7"), "{}", m.id);
    // The guest was shut down cleanly before the backup, and every vzdump parameter was
    // explicit.
    let kinds: Vec<String> = r.h.sim.mutations().iter().map(|m| m.kind.clone()).collect();
    assert_eq!(kinds, ["shutdown", "vzdump"], "{kinds:?}");
    let dump =
        r.h.sim
            .mutations()
            .into_iter()
            .find(|m| m.kind == "vzdump")
            .unwrap();
    for (k, v) in [
        ("storage", "local"),
        ("mode", "stop"),
        ("compress", "zstd"),
        ("protected", "1"),
        ("remove", "0"),
        ("lockwait", "10"),
    ] {
        assert_eq!(dump.params.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(
        dump.params.get("notes-template"),
        Some(&format!("drover:pre-destroy:{}", m.id))
    );
    // The volid is PVE's, the archive is protected, its hash is the file's.
    let vols = r.backups(101);
    assert_eq!(vols.len(), 1);
    assert_eq!(Some(vols[0].volid.clone()), m.volid);
    assert!(vols[0].protected);
    assert_eq!(
        m.sha256.as_deref(),
        Some(sha256_of(vols[0].path.as_ref().unwrap()).as_str())
    );
    assert_eq!(m.hash_source.as_deref(), Some("agent"));
    assert_eq!(m.size, Some(vols[0].size));
    assert!(m.total_bytes_written.is_some());
    // Journaled, durably.
    assert_eq!(r.store.copy(&m.id).unwrap().unwrap(), m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_safety_storage_refuses_before_anything_happens() {
    let r = Rig::new(vec![seed(101, true, 256)]).await;
    let s = r.safety(SafetyPolicy::default());
    let e = s.preflight(101, CopyOp::Destroy).await.unwrap_err();
    assert_eq!(e.code, "safety_storage_unset");
    let s = r.safety(SafetyPolicy {
        storage: Some("nosuch".into()),
        ..SafetyPolicy::default()
    });
    assert_eq!(
        s.preflight(101, CopyOp::Destroy).await.unwrap_err().code,
        "safety_storage_unusable"
    );
    // `local-lvm` holds disks, not backups.
    let s = r.safety(SafetyPolicy {
        storage: Some("local-lvm".into()),
        ..SafetyPolicy::default()
    });
    assert_eq!(
        s.preflight(101, CopyOp::Destroy).await.unwrap_err().code,
        "safety_storage_unusable"
    );
    assert!(r.h.sim.mutations().is_empty());
    assert!(r.store.copies().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_free_space_is_refused_before_the_guest_is_stopped() {
    let mut cfg = pve_sim::SimConfig {
        task_duration: Duration::from_millis(50),
        guests: vec![seed(101, true, 256)],
        ..pve_sim::SimConfig::default()
    };
    cfg.storages = pve_sim::SimConfig::default().storages;
    for st in &mut cfg.storages {
        if st.id == "local" {
            // 4 GiB rootfs × 1.2 does not fit in 4 GiB.
            st.total_bytes = 4 * 1024 * 1024 * 1024;
        }
    }
    let r = Rig::with(cfg).await;
    let s = r.safety(Rig::policy());
    let e = s.preflight(101, CopyOp::Destroy).await.unwrap_err();
    assert_eq!(e.code, "safety_copy_no_space", "{e}");
    assert!(r.h.sim.mutations().is_empty());
    assert!(r.h.sim.guest(101).unwrap().running);
}

/// A copy that fails inside its task (ENOSPC while writing, `job errors`) is recorded
/// `failed`, and the guest the copy stopped runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_vzdump_restarts_the_guest_and_is_journaled_failed() {
    let r = Rig::new(vec![seed(101, true, 256), seed(102, true, 256)]).await;
    let mut faults = pve_sim::Faults::default();
    faults.storage.no_space.insert("local".into());
    faults
        .storage
        .vzdump_fail
        .insert(102, "command 'tar' failed: exit code 2".into());
    r.h.sim.set_faults(faults);
    let s = r.safety(Rig::policy());
    for vmid in [101, 102] {
        let pre = s.preflight(vmid, CopyOp::Destroy).await.unwrap();
        let e = s
            .take(&pre, &format!("{vmid}"), &pre.binding())
            .await
            .unwrap_err();
        assert_eq!(e.code, "safety_copy_failed", "{e}");
        assert_eq!(e.reason, Some("job_errors"), "{e}");
        let g = r.h.sim.guest(vmid).unwrap();
        assert!(g.running, "CT {vmid} was restarted");
        assert!(g.lock.is_none());
        let m = &r
            .store
            .copies()
            .unwrap()
            .into_iter()
            .find(|c| c.vmid == vmid)
            .unwrap();
        assert!(matches!(m.state, CopyState::Failed { .. }), "{m:?}");
        assert!(r.backups(vmid).is_empty());
    }
}

/// vzdump can answer "OK" having backed up nothing (the guest is not on this node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vzdump_answering_ok_without_a_task_is_no_copy() {
    let r = Rig::new(vec![seed(101, false, 256)]).await;
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    // The guest migrates away between the preflight and the copy.
    assert!(r.h.sim.alter(101, |ct| ct.node = "pve2".into()));
    let e = s.take(&pre, "1", &pre.binding()).await.unwrap_err();
    assert_eq!(e.reason, Some("not_on_node"), "{e}");
    let m = r.store.copies().unwrap().pop().unwrap();
    assert!(matches!(m.state, CopyState::Failed { .. }));
}

/// Notes that cannot be written are a warning in PVE (`WARNINGS: 1`): the copy still counts,
/// and the manifest says why its marker is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_warnings_are_kept_with_a_copy_that_still_verifies() {
    let r = Rig::new(vec![seed(101, false, 256)]).await;
    let mut faults = pve_sim::Faults::default();
    faults.storage.notes_fail.insert(101);
    r.h.sim.set_faults(faults);
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    let m = s.take(&pre, "1", &pre.binding()).await.unwrap();
    assert_eq!(m.state, CopyState::Complete);
    assert!(
        m.warnings.iter().any(|w| w.contains("warning")),
        "{:?}",
        m.warnings
    );
    assert!(
        m.warnings.iter().any(|w| w.starts_with("notes_missing")),
        "{:?}",
        m.warnings
    );
}

/// One vzdump per node: behind an operator's backup that does not finish, vzdump gives up
/// after `lockwait` and its task reads `unexpected status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_vzdump_lock_timing_out_is_no_copy() {
    let r = Rig::new(vec![seed(101, true, 256), seed(150, false, 256)]).await;
    let mut stuck = pve_sim::Faults::default();
    stuck.stuck_tasks.insert("vzdump".into());
    r.h.sim.set_faults(stuck);
    // The operator's nightly job (no Drover marker), hanging.
    let mut nightly = proxmox_client::VzdumpRequest::new(150, "local");
    nightly.remove = Some(false);
    r.client.vzdump("pve1", &nightly).await.unwrap();
    r.h.sim.set_faults(pve_sim::Faults::default());
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    let e = s.take(&pre, "1", &pre.binding()).await.unwrap_err();
    assert_eq!(e.reason, Some("lock_timeout"), "{e}");
    assert!(r.h.sim.guest(101).unwrap().running, "restarted");
}

/// Volumes the copy cannot hold are named in the binding; a signature that does not name
/// exactly them is refused before anything is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncovered_volumes_must_be_signed_for() {
    let r = Rig::new(vec![seed(101, true, 256)]).await;
    r.h.sim.edit_config(
        101,
        "mp0",
        Some("local-lvm:vm-101-disk-1,mp=/srv/data,backup=1,size=1G"),
    );
    r.h.sim.edit_config(
        101,
        "mp1",
        Some("local-lvm:vm-101-disk-2,mp=/srv/scratch,size=1G"),
    );
    r.h.sim
        .edit_config(101, "mp2", Some("/mnt/host/share,mp=/srv/share"));
    r.h.sim
        .edit_config(101, "unused0", Some("local-lvm:vm-101-disk-3"));
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    assert_eq!(pre.coverage.covered, ["rootfs", "mp0"]);
    assert_eq!(
        pre.binding().get("uncovered").map(String::as_str),
        Some("mp1,mp2,unused0")
    );
    let mut partial = pre.binding();
    partial.insert("uncovered".into(), "mp1".into());
    let e = s.take(&pre, "1", &partial).await.unwrap_err();
    assert_eq!(e.code, "safety_copy_incomplete");
    assert!(r.h.sim.mutations().iter().all(|m| m.kind != "shutdown"));
    let m = s.take(&pre, "2", &pre.binding()).await.unwrap();
    assert_eq!(m.uncovered, ["mp1", "mp2", "unused0"]);
    assert_eq!(m.covered, ["rootfs", "mp0"]);
}

/// A rollback's copy: on lvmthin a snapshot (it can roll back to any snapshot); on ZFS a
/// vzdump, because a newer snapshot would make the rollback itself fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_copy_is_a_snapshot_on_lvmthin_and_a_vzdump_elsewhere() {
    let r = Rig::new(vec![seed(101, false, 256)]).await;
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Rollback).await.unwrap();
    assert_eq!(
        pre.method.name(),
        "snapshot",
        "rootfs on local-lvm (lvmthin)"
    );
    assert_eq!(
        pre.binding(),
        BTreeMap::from([("safety".to_string(), "snapshot".to_string())])
    );
    let m = s.take(&pre, "3", &pre.binding()).await.unwrap();
    assert_eq!(m.state, CopyState::Complete);
    let name = m.snapname.clone().unwrap();
    assert!(name.starts_with("drover-prerb-3-"), "{name}");
    let snaps = r.client.list_snapshots("pve1", 101).await.unwrap();
    assert!(snaps.iter().any(|x| x.name == name));
    // Release deletes only that snapshot.
    s.release(&m.id).await.unwrap();
    let snaps = r.client.list_snapshots("pve1", 101).await.unwrap();
    assert!(snaps.iter().all(|x| x.name != name));
    assert!(matches!(
        r.store.copy(&m.id).unwrap().unwrap().state,
        CopyState::Deleted { .. }
    ));
    // A restore-over's copy is always a vzdump.
    let pre = s.preflight(101, CopyOp::Restore).await.unwrap();
    assert_eq!(pre.method.name(), "vzdump");
}

/// Retention: expired copies are released (unprotected, then deleted at once), at most
/// `keep_per_guest` are kept, and the operator's own backups are never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_releases_only_drovers_expired_copies_and_keeps_the_cap() {
    let r = Rig::new(vec![seed(101, false, 256)]).await;
    // The operator's backups of the same guest: one protected, one not.
    for protected in [true, false] {
        let mut b = proxmox_client::VzdumpRequest::new(101, "local");
        b.protected = protected;
        b.remove = Some(false);
        let proxmox_client::VzdumpStarted::Task(u) = r.client.vzdump("pve1", &b).await.unwrap()
        else {
            panic!("a task")
        };
        r.client
            .wait_task(
                &u,
                &proxmox_client::WaitOptions::fast(
                    Duration::from_millis(20),
                    Duration::from_secs(10),
                ),
            )
            .await
            .unwrap();
    }
    let operators: Vec<String> = r.backups(101).into_iter().map(|v| v.volid).collect();
    let s = r.safety(SafetyPolicy {
        keep_per_guest: 2,
        destroy_grace: Duration::from_secs(3600),
        ..Rig::policy()
    });
    let mut ids = Vec::new();
    for i in 0..2 {
        let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
        ids.push(
            s.take(&pre, &format!("{i}"), &pre.binding())
                .await
                .unwrap()
                .id,
        );
    }
    // Both protected for their grace period: a third is refused, nothing is released.
    s.step_done(&ids[0], drover::clock::unix_now_ms()).unwrap();
    let e = s.preflight(101, CopyOp::Destroy).await.unwrap_err();
    assert_eq!(e.code, "safety_copy_cap", "{e}");
    let report = s.retention().await;
    assert!(report.released.is_empty(), "{report:?}");
    // Once the first one's grace has passed, the next copy releases it first.
    let mut m = r.store.copy(&ids[0]).unwrap().unwrap();
    m.protect_until_ms = Some(drover::clock::unix_now_ms() - 1);
    r.store.put_copy(&m).unwrap();
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    assert_eq!(pre.release_first, [ids[0].clone()]);
    let third = s.take(&pre, "2", &pre.binding()).await.unwrap();
    let left: Vec<String> = r.backups(101).into_iter().map(|v| v.volid).collect();
    assert!(
        !left.contains(m.volid.as_ref().unwrap()),
        "the expired copy is gone"
    );
    for v in &operators {
        assert!(left.contains(v), "the operator's {v} is untouched");
    }
    assert!(left.contains(third.volid.as_ref().unwrap()));
    // Expiry alone releases too, and never an operator's backup.
    for id in [&ids[1], &third.id] {
        let mut m = r.store.copy(id).unwrap().unwrap();
        m.protect_until_ms = Some(0);
        r.store.put_copy(&m).unwrap();
    }
    let report = s.retention().await;
    assert_eq!(report.released.len(), 2, "{report:?}");
    let left: Vec<String> = r.backups(101).into_iter().map(|v| v.volid).collect();
    assert_eq!(left, operators);
    // A backup without a manifest is never released.
    let e = s.release("not-ours").await.unwrap_err();
    assert_eq!(e.code, "safety_copy_unknown");
}

/// The boot sweep: a vzdump whose task finished while the agent was down is adopted; one
/// that never started is failed; a marked backup no manifest knows is an orphan, reported
/// and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_adopts_finished_copies_and_reports_orphans() {
    let r = Rig::new(vec![seed(101, false, 256), seed(102, false, 256)]).await;
    let s = r.safety(Rig::policy());
    // A copy whose task ran to the end after "the agent died": manifest `creating` with
    // the UPID, nothing verified.
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    let done = s.take(&pre, "5", &pre.binding()).await.unwrap();
    let mut crashed = done.clone();
    crashed.state = CopyState::Creating;
    crashed.volid = None;
    crashed.sha256 = None;
    crashed.completed_at_ms = None;
    r.store.put_copy(&crashed).unwrap();
    // A manifest whose call never reached PVE.
    let mut never = crashed.clone();
    never.id = format!("{}-never", crashed.id);
    never.upid = None;
    // Its intent is later than every task there is: nothing to adopt.
    never.created_at_ms = drover::clock::unix_now_ms() + 60_000;
    never.notes = "drover:pre-destroy:never".into();
    r.store.put_copy(&never).unwrap();
    // A backup with Drover's marker from another journal.
    let mut foreign = proxmox_client::VzdumpRequest::new(102, "local");
    foreign.protected = true;
    foreign.remove = Some(false);
    foreign.notes_template = Some("drover:pre-destroy:0000000000000000-9".into());
    r.vzdump_to_its_end(&foreign).await;
    let report = s.sweep(true).await;
    assert!(report.errors.is_empty(), "{report:?}");
    let adopted = r.store.copy(&done.id).unwrap().unwrap();
    assert_eq!(adopted.state, CopyState::Complete);
    assert_eq!(adopted.volid, done.volid);
    assert_eq!(adopted.sha256, done.sha256);
    assert!(matches!(
        r.store.copy(&never.id).unwrap().unwrap().state,
        CopyState::Failed { .. }
    ));
    assert_eq!(report.orphans.len(), 1, "{report:?}");
    let orphan = r
        .store
        .copies()
        .unwrap()
        .into_iter()
        .find(|c| c.state == CopyState::Orphan)
        .unwrap();
    assert_eq!(orphan.vmid, 102);
    assert_eq!(
        s.release(&orphan.id).await.unwrap_err().code,
        "safety_copy_orphan"
    );
    assert_eq!(r.backups(102).len(), 1, "the orphan is kept");
    // Idempotent.
    let again = s.sweep(true).await;
    assert!(
        again.resolved.is_empty() && again.errors.is_empty(),
        "{again:?}"
    );
}

/// Two copies of one guest seconds apart, the agent killed between the second's vzdump call
/// and journaling its UPID: the sweep finds the second's own task, not the first's (which
/// started in the same few seconds and is already another manifest's), so the second's
/// archive is adopted into its manifest and nothing is left an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_adopts_a_lost_task_that_is_no_other_copys() {
    let r = Rig::new(vec![seed(101, false, 256)]).await;
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    let first = s.take(&pre, "5", &pre.binding()).await.unwrap();
    assert!(first.upid.is_some());
    // A later second: the tasks' start times differ, as they did when this was found.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The second copy's manifest, durable before its call; the call went out, its UPID never
    // reached the journal.
    let second = begun_after(&first, "6");
    r.store.put_copy(&second).unwrap();
    let mut req = proxmox_client::VzdumpRequest::new(101, "local");
    req.mode = Some(proxmox_client::BackupMode::Stop);
    req.protected = true;
    req.remove = Some(false);
    req.notes_template = Some(second.notes.clone());
    let u = r.vzdump_to_its_end(&req).await;
    let report = s.sweep(true).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.orphans.is_empty(), "{report:?}");
    let adopted = r.store.copy(&second.id).unwrap().unwrap();
    assert_eq!(adopted.state, CopyState::Complete, "{adopted:?}");
    assert_eq!(adopted.upid.as_deref(), Some(u.to_string().as_str()));
    assert_ne!(adopted.volid, first.volid, "the first copy's archive");
    let archive = r
        .backups(101)
        .into_iter()
        .find(|v| Some(&v.volid) == adopted.volid.as_ref())
        .unwrap();
    assert_eq!(archive.notes.as_deref(), Some(second.notes.as_str()));
    // The first copy is untouched.
    assert_eq!(r.store.copy(&first.id).unwrap().unwrap().volid, first.volid);
}

/// A manifest that names a task whose archive carries another copy's marker is not adopted:
/// that archive is the other copy's, and counting it twice would let a destroy run behind a
/// copy that is not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_another_copys_marker_is_not_adopted() {
    let r = Rig::new(vec![seed(101, false, 256)]).await;
    let s = r.safety(Rig::policy());
    let pre = s.preflight(101, CopyOp::Destroy).await.unwrap();
    let first = s.take(&pre, "5", &pre.binding()).await.unwrap();
    // Journaled with the first copy's task.
    let mut other = begun_after(&first, "7");
    other.upid = first.upid.clone();
    r.store.put_copy(&other).unwrap();
    let report = s.sweep(false).await;
    assert!(report.errors.is_empty(), "{report:?}");
    match r.store.copy(&other.id).unwrap().unwrap().state {
        CopyState::Failed { reason } => {
            assert!(reason.contains("archive_of_another_copy"), "{reason}")
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(
        r.store.copy(&first.id).unwrap().unwrap().state,
        CopyState::Complete
    );
}
