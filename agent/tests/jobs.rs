//! Signed jobs end to end: `drover job new` renders a request from the simulator's current
//! state, the demo operator signs it with real `ssh-keygen -Y sign`, `drover approve` hands it
//! to a real `drover run` child, and the job runs once on the guest's lane in journaled
//! phases. pve-sim over real TLS throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DOMAIN, Daemon, Host, code, eventually, seed, sign, stdout};

const OPERATOR: &str = "demo/TEST_demo_operator_ed25519";

fn ns() -> String {
    format!("destructive-op-v1@{DOMAIN}")
}

/// `drover job new ARGS --output json`: the request file (panics unless rendered).
async fn job_new(h: &Host, args: &[&str]) -> PathBuf {
    let mut all = vec!["job", "new"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    let out = h.drover_async(&all).await;
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(v["file"].as_str().unwrap())
}

/// `drover job new` expected to refuse: its code.
async fn job_new_refused(h: &Host, args: &[&str]) -> String {
    let mut all = vec!["job", "new"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    let out = h.drover_async(&all).await;
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["code"].as_str().unwrap().to_string()
}

/// Signs `file` (a copy in `dir`) with the demo operator key: (copy, signature).
fn signed(h: &Host, file: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let dir = h.root().join(format!("signing-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sig = sign(OPERATOR, &ns(), file, &dir);
    (dir.join(file.file_name().unwrap()), sig)
}

async fn approve(h: &Host, copy: &Path, sig: &Path) -> std::process::Output {
    h.submit("approve", copy, &[sig]).await
}

fn jobs_json(h: &Host) -> Vec<serde_json::Value> {
    let out = h.command(&["jobs", "--output", "json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn job_state(h: &Host, id: &str) -> Option<serde_json::Value> {
    jobs_json(h).into_iter().find(|j| j["id"] == id)
}

fn nonce_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("nonce: "))
        .unwrap()
        .to_string()
}

/// Waits until job `id` has ended; returns its row.
async fn ended(h: &Host, d: &Daemon, id: &str) -> serde_json::Value {
    eventually(
        d,
        Duration::from_secs(30),
        &format!("job {id} to end"),
        || job_state(h, id).is_some_and(|j| j["state"] == "done" || j["state"] == "failed"),
    )
    .await;
    job_state(h, id).unwrap()
}

fn snapshots(h: &Host, vmid: u32) -> Vec<String> {
    let mut names = Vec::new();
    h.sim.alter(vmid, |ct| {
        names = ct.snapshots.keys().cloned().collect();
    });
    names
}

/// Signs and submits a rendered job, waits for it to end (run, or refused on the lane) and
/// returns its row.
async fn run_job(h: &Host, d: &Daemon, file: &Path, tag: &str) -> serde_json::Value {
    let id = nonce_of(file);
    let (copy, sig) = signed(h, file, tag);
    let out = approve(h, &copy, &sig).await;
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let refused = format!("refused-{}", refused_id(&copy));
    let done = |j: &serde_json::Value| j["state"] == "done" || j["state"] == "failed";
    eventually(
        d,
        Duration::from_secs(30),
        &format!("job {id} to end"),
        || {
            jobs_json(h)
                .iter()
                .any(|j| (j["id"] == id.as_str() || j["id"] == refused.as_str()) && done(j))
        },
    )
    .await;
    jobs_json(h)
        .into_iter()
        .find(|j| j["id"] == id.as_str() || j["id"] == refused.as_str())
        .unwrap()
}

fn host(guests: Vec<pve_sim::SeedGuest>, task_ms: u64) -> pve_sim::SimConfig {
    pve_sim::SimConfig {
        task_duration: Duration::from_millis(task_ms),
        guests,
        ..pve_sim::SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rollback_delete_backup_and_reboot_run_once_each() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, true, 512)], 100)).await;
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;

    // snapshot: named, with a description; the guest keeps running.
    let file = job_new(
        &h,
        &[
            "snapshot",
            "--vmid",
            "101",
            "--snapshot",
            "pre-upgrade",
            "--description",
            "before-the-upgrade",
        ],
    )
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    for line in [
        "drover-job v1\n",
        "job: snapshot\n",
        "guest: lxc/101\n",
        "param.snapname: pre-upgrade\n",
        "param.description: before-the-upgrade\n",
        "bind.hold: 0\n",
    ] {
        assert!(text.contains(line), "{line:?} missing in {text}");
    }
    let listed = stdout(&h.drover_async(&["jobs"]).await);
    assert!(listed.contains("pending_signature"), "{listed}");
    let row = run_job(&h, &d, &file, "snap").await;
    assert_eq!(row["state"], "done", "{row}");
    assert_eq!(snapshots(&h, 101), vec!["pre-upgrade".to_string()]);
    assert_eq!(h.sim.count_mutations("snapshot", 101), 1);
    assert!(h.sim.guest(101).unwrap().running);

    // rollback: binds the snapshot's time; the running guest is shut down, copied, rolled
    // back and started again, then held (the default for a rollback).
    let file = job_new(
        &h,
        &["rollback", "--vmid", "101", "--snapshot", "pre-upgrade"],
    )
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("bind.snaptime: "), "{text}");
    // On LVM-thin the safety copy is a snapshot (rolled back to in any order); the
    // safety-copy machinery decides and the job binds it.
    assert!(text.contains("bind.safety: snapshot\n"), "{text}");
    assert!(text.contains("bind.hold: 1\n"), "{text}");
    let row = run_job(&h, &d, &file, "rollback").await;
    assert_eq!(row["state"], "done", "{row}");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .contains("pre-job copy snapshot "),
        "{row}"
    );
    assert_eq!(h.sim.count_mutations("rollback", 101), 1);
    assert_eq!(h.sim.count_mutations("shutdown", 101), 1);
    assert!(
        h.sim.guest(101).unwrap().running,
        "started again: {:?}",
        h.sim
            .mutations()
            .iter()
            .map(|m| m.kind.clone())
            .collect::<Vec<_>>()
    );
    let status = h.status_json(Duration::from_secs(10)).await;
    assert!(status.to_string().contains("held after job"), "{status}");

    // delete the snapshot (destructive: the operational threshold, one here).
    let file = job_new(
        &h,
        &[
            "delete-snapshot",
            "--vmid",
            "101",
            "--snapshot",
            "pre-upgrade",
        ],
    )
    .await;
    let row = run_job(&h, &d, &file, "delsnap").await;
    assert_eq!(row["state"], "done", "{row}");
    assert!(!snapshots(&h, 101).contains(&"pre-upgrade".to_string()));

    // backup to a named storage, protected.
    let file = job_new(
        &h,
        &[
            "backup",
            "--vmid",
            "101",
            "--storage",
            "local",
            "--protected",
        ],
    )
    .await;
    let row = run_job(&h, &d, &file, "backup").await;
    assert_eq!(row["state"], "done", "{row}");
    let msg = row["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("backup local:backup/vzdump-lxc-101-"),
        "{row}"
    );
    assert_eq!(h.sim.count_mutations("vzdump", 101), 1);

    // reboot.
    let file = job_new(&h, &["reboot", "--vmid", "101"]).await;
    let row = run_job(&h, &d, &file, "reboot").await;
    assert_eq!(row["state"], "done", "{row}");
    assert_eq!(h.sim.count_mutations("reboot", 101), 1);

    // `drover jobs` lists them all as done, text and JSON; metrics count them.
    let all = jobs_json(&h);
    assert_eq!(
        all.iter().filter(|j| j["state"] == "done").count(),
        5,
        "{all:?}"
    );
    let text = stdout(&h.drover_async(&["jobs"]).await);
    for kind in [
        "snapshot",
        "rollback_snapshot",
        "delete_snapshot",
        "backup",
        "reboot",
    ] {
        assert!(text.contains(kind), "{kind} missing in {text}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_over_the_guest_and_onto_a_free_vmid() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, true, 512)], 100)).await;
    h.desired("revision = 1\n");
    h.sim
        .set_volume_data("local-lvm:vm-101-disk-0", "nightly data");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let row = run_job(&h, &d, &file, "backup").await;
    let volid = row["message"]
        .as_str()
        .unwrap()
        .strip_prefix("backup ")
        .unwrap()
        .to_string();

    // The guest changes after the backup: more memory, other data.
    h.sim.edit_config(101, "memory", Some("1024"));
    h.sim
        .set_volume_data("local-lvm:vm-101-disk-0", "newer data");

    let file = job_new(&h, &["restore", "--vmid", "101", "--backup", &volid]).await;
    let text = std::fs::read_to_string(&file).unwrap();
    for line in [
        "job: restore_backup\n",
        &format!("param.ostemplate: {volid}\n"),
        "param.force: 1\n",
        "param.restore: 1\n",
        "param.storage: local-lvm\n",
        "bind.archive-ctime: ",
        "bind.archive-size: ",
        "bind.archive-sha256: ",
        "bind.archive-vmid: 101\n",
        "bind.safety: vzdump@local\n",
        "bind.hold: 1\n",
    ] {
        assert!(text.contains(line), "{line:?} missing in {text}");
    }
    let row = run_job(&h, &d, &file, "restore").await;
    assert_eq!(row["state"], "done", "{row}");
    let g = h.sim.guest(101).unwrap();
    assert_eq!(g.memory, 512, "the backup's config is back");
    assert!(g.running, "started again");
    assert_eq!(h.sim.count_mutations("restore", 101), 1);
    assert_eq!(
        h.sim.count_mutations("vzdump", 101),
        2,
        "the backup and the pre-restore copy"
    );

    // Onto a free vmid: no force, new MACs, no copy (nothing is overwritten), not held.
    let file = job_new(
        &h,
        &["restore", "--vmid", "150", "--backup", &volid, "--no-hold"],
    )
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("guest-config-sha1: none\n"), "{text}");
    assert!(text.contains("param.unique: 1\n"), "{text}");
    assert!(!text.contains("param.force"), "{text}");
    assert!(!text.contains("bind.safety"), "{text}");
    let row = run_job(&h, &d, &file, "restore-new").await;
    assert_eq!(row["state"], "done", "{row}");
    assert_eq!(
        h.sim.guest(150).unwrap().hostname.as_deref(),
        Some("ct-101")
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_is_undone_from_the_pre_restore_copy() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, false, 512)], 100)).await;
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let row = run_job(&h, &d, &file, "backup").await;
    let volid = row["message"].as_str().unwrap()[7..].to_string();
    h.sim.edit_config(101, "memory", Some("768"));
    let file = job_new(&h, &["restore", "--vmid", "101", "--backup", &volid]).await;
    // The archive is corrupt: the extraction fails after PVE destroyed the old CT, so no CT
    // is left (restores from other archives, such as the pre-restore copy, still work).
    let mut faults = pve_sim::Faults::default();
    faults.storage.restore_fail_archives.insert(volid.clone());
    h.sim.set_faults(faults.clone());
    let row = run_job(&h, &d, &file, "restore").await;
    assert_eq!(row["state"], "failed", "{row}");
    assert_eq!(row["code"], "restore_undone", "{row}");
    let g = h.sim.guest(101).expect("the guest is back");
    assert_eq!(
        g.memory, 768,
        "from the pre-restore copy, not the old backup"
    );
    assert_eq!(
        h.sim.count_mutations("restore", 101),
        2,
        "the restore and its undo"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_jobs_are_refused_with_their_codes() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, true, 512), seed(102, false, 512)], 100)).await;
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;

    // Refused already when rendering: a guest that is not here, a snapshot that is not there,
    // a restore with no room, the backup of another guest over this one.
    assert_eq!(
        job_new_refused(&h, &["reboot", "--vmid", "999"]).await,
        "guest_missing"
    );
    assert_eq!(
        job_new_refused(&h, &["rollback", "--vmid", "101", "--snapshot", "nope"]).await,
        "snapshot_not_found"
    );
    let b102 = job_new(&h, &["backup", "--vmid", "102", "--storage", "local"]).await;
    let row = run_job(&h, &d, &b102, "b102").await;
    let volid102 = row["message"].as_str().unwrap()[7..].to_string();
    assert_eq!(
        job_new_refused(&h, &["restore", "--vmid", "101", "--backup", &volid102]).await,
        "backup_of_other_guest"
    );

    // A snapshot to roll back to, for the signed cases below.
    let s = job_new(&h, &["snapshot", "--vmid", "101", "--snapshot", "base"]).await;
    assert_eq!(run_job(&h, &d, &s, "base").await["state"], "done");

    // Stale config digest: the CT changes between rendering and signing.
    let f = job_new(&h, &["rollback", "--vmid", "101", "--snapshot", "base"]).await;
    h.sim.edit_config(101, "cores", Some("2"));
    let row = run_job(&h, &d, &f, "stale").await;
    assert_eq!(
        (row["state"].as_str(), row["code"].as_str()),
        (Some("failed"), Some("stale_state")),
        "{row}"
    );
    assert_eq!(h.sim.count_mutations("rollback", 101), 0);

    // An edited bind line (after signing): refused before any signature counts.
    let f = job_new(&h, &["rollback", "--vmid", "101", "--snapshot", "base"]).await;
    let (copy, sig) = signed(&h, &f, "edited");
    let text = std::fs::read_to_string(&copy).unwrap();
    let edited = text.replace("bind.hold: 1", "bind.hold: 0");
    std::fs::write(&copy, &edited).unwrap();
    let out = approve(&h, &copy, &sig).await;
    // The socket's offline check already sees the signature no longer matches.
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("bad_signature"), "{}", stdout(&out));

    // A job for another host (signed, so only the scope refuses it).
    let f = job_new(&h, &["reboot", "--vmid", "101"]).await;
    let other = h.root().join("other-host.txt");
    std::fs::write(
        &other,
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("host: pve1\n", "host: pve2\n"),
    )
    .unwrap();
    let (copy, sig) = signed(&h, &other, "otherhost");
    let id = nonce_of(&copy);
    assert_eq!(code(&approve(&h, &copy, &sig).await), 0);
    let row = ended(&h, &d, &format!("refused-{}", refused_id(&copy))).await;
    assert_eq!(row["code"], "wrong_host", "{row}");
    let _ = id;

    // A job for another guest: the text names CT 102, signed for it, but edited into 101's
    // job file name; the agent binds to what the text says and refuses the mismatch.
    let f = job_new(&h, &["reboot", "--vmid", "101"]).await;
    let other = h.root().join("other-guest.txt");
    std::fs::write(
        &other,
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("guest: lxc/101\n", "guest: lxc/102\n"),
    )
    .unwrap();
    let (copy, sig) = signed(&h, &other, "otherguest");
    assert_eq!(code(&approve(&h, &copy, &sig).await), 0);
    let row = ended(&h, &d, &format!("refused-{}", refused_id(&copy))).await;
    // CT 102 is stopped: its reboot is refused (and its digest differs from 101's anyway).
    assert!(
        matches!(
            row["code"].as_str(),
            Some("guest_not_running" | "stale_state")
        ),
        "{row}"
    );

    // A snapshot that no longer exists when the signed rollback arrives.
    let f = job_new(&h, &["rollback", "--vmid", "101", "--snapshot", "base"]).await;
    h.sim.alter(101, |ct| {
        ct.snapshots.remove("base");
    });
    let (copy, sig) = signed(&h, &f, "gone");
    assert_eq!(code(&approve(&h, &copy, &sig).await), 0);
    let row = ended(&h, &d, &format!("refused-{}", refused_id(&copy))).await;
    assert_eq!(row["code"], "snapshot_not_found", "{row}");

    // A replayed job: the reboot runs once; the same signed text again is refused.
    let f = job_new(&h, &["reboot", "--vmid", "101"]).await;
    let (copy, sig) = signed(&h, &f, "replay");
    assert_eq!(code(&approve(&h, &copy, &sig).await), 0);
    let id = nonce_of(&copy);
    assert_eq!(ended(&h, &d, &id).await["state"], "done");
    let again = approve(&h, &copy, &sig).await;
    assert_eq!(code(&again), 1, "{}", stdout(&again));
    assert!(stdout(&again).contains("replayed"), "{}", stdout(&again));
    // ... and dropped straight into the inbox, the lane refuses it too.
    let inbox = h.state().join("approvals/inbox");
    std::fs::copy(&copy, inbox.join("replay.txt")).unwrap();
    std::fs::copy(&sig, inbox.join("replay.txt.sig")).unwrap();
    h.drover_async(&["reconcile", "101"]).await;
    let row = ended(&h, &d, &format!("refused-{}", refused_id(&copy))).await;
    assert_eq!(row["code"], "replayed", "{row}");
    assert_eq!(h.sim.count_mutations("reboot", 101), 1, "ran once");
    d.stop().await;
}

fn refused_id(file: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(file).unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))[..32].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_with_no_room_is_refused() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    // The guests' storage holds the 4 GiB guest, but not a second copy of it: a forced
    // restore allocates the new volumes before it frees the old ones.
    let mut cfg = host(vec![seed(101, false, 512)], 100);
    cfg.storages = vec![
        pve_sim::SimStorage {
            templates: vec!["debian-12-standard_12.7-1_amd64.tar.zst".into()],
            ..pve_sim::SimStorage::new("local", pve_sim::StorageType::Dir, "backup,iso,vztmpl", 100)
        },
        pve_sim::SimStorage::new(
            "local-lvm",
            pve_sim::StorageType::Lvmthin,
            "images,rootdir",
            6,
        ),
    ];
    let h = Host::start_with(cfg).await;
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let row = run_job(&h, &d, &file, "backup").await;
    let volid = row["message"].as_str().unwrap()[7..].to_string();
    let code_ = job_new_refused(&h, &["restore", "--vmid", "101", "--backup", &volid]).await;
    assert_eq!(code_, "no_room");
    // A restore signed while there was room is refused on the lane once there is none.
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_job_for_a_guest_with_one_in_progress_is_refused() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    // Slow tasks: the first job is still running when the second arrives.
    let h = Host::start_with(host(vec![seed(101, true, 512)], 3000)).await;
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let first = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let second = job_new(&h, &["reboot", "--vmid", "101"]).await;
    let (c1, s1) = signed(&h, &first, "first");
    assert_eq!(code(&approve(&h, &c1, &s1).await), 0);
    let id = nonce_of(&c1);
    eventually(&d, Duration::from_secs(20), "the first job to run", || {
        job_state(&h, &id).is_some_and(|j| j["state"] == "running")
    })
    .await;
    let (c2, s2) = signed(&h, &second, "second");
    let out = approve(&h, &c2, &s2).await;
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("job_in_progress"), "{}", stdout(&out));
    assert_eq!(ended(&h, &d, &id).await["state"], "done");
    assert_eq!(h.sim.count_mutations("reboot", 101), 0);
    d.stop().await;
}

/// The phase a job's row shows and whether that phase's task is journaled (its UPID).
fn phase_of(h: &Host, id: &str) -> Option<(String, bool)> {
    let row = job_state(h, id)?;
    let hist = row["history"].as_array()?.clone();
    let last = hist.last()?;
    let phase = last[0].as_str()?.to_string();
    let upid = last[2].as_str().is_some_and(|d| d.starts_with("UPID:"));
    Some((phase, upid))
}

/// SIGKILL of a real `drover run` child in every task phase of a restore over a running
/// guest (the shutdown, the safety copy, the restore, the start again): each restart
/// re-attaches to the journaled task and the job ends once, every call sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_every_phase_of_a_restore_runs_each_call_once() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, true, 512)], 2500)).await;
    // Each phase is one task of 2.5 s: long enough to be seen between journal reads (each a
    // `drover jobs` child) on a loaded machine.
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let row = run_job(&h, &d, &file, "backup").await;
    let volid = row["message"].as_str().unwrap()[7..].to_string();
    h.sim.edit_config(101, "memory", Some("1024"));
    let file = job_new(&h, &["restore", "--vmid", "101", "--backup", &volid]).await;
    let id = nonce_of(&file);
    let (copy, sig) = signed(&h, &file, "restore");
    assert_eq!(code(&approve(&h, &copy, &sig).await), 0);
    let mut d = d;
    let mut killed = Vec::new();
    for phase in ["quiescing", "copying", "calling", "starting"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = phase_of(&h, &id);
            // Kill once the phase's task is journaled (the copying phase's task is in the
            // copy's manifest, so there the phase itself is enough).
            if now
                .as_ref()
                .is_some_and(|(p, upid)| p == phase && (*upid || phase == "copying"))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "phase {phase} never reached: {now:?}\n{}",
                d.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d.child.kill().unwrap();
        let _ = d.child.wait();
        killed.push(phase);
        d = h.spawn_daemon();
    }
    let row = ended(&h, &d, &id).await;
    assert_eq!(row["state"], "done", "{row}");
    assert_eq!(killed.len(), 4);
    assert_eq!(h.sim.count_mutations("shutdown", 101), 1, "one shutdown");
    assert_eq!(h.sim.count_mutations("restore", 101), 1, "one restore");
    assert_eq!(h.sim.count_mutations("start", 101), 1, "one start");
    assert_eq!(
        h.sim.count_mutations("vzdump", 101),
        2,
        "the backup and one safety copy (the interrupted copy was re-attached, not re-taken)"
    );
    let g = h.sim.guest(101).unwrap();
    assert_eq!(g.memory, 512);
    assert!(g.running);
    d.stop().await;
}

/// After a restore, what the desired state does: with `hold` (the default for a restore) the
/// guest keeps what the backup brought back until `drover resume`; with `--no-hold` benign
/// drift from the document is converged again right away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_hold_keeps_the_guest_and_no_hold_converges_it() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, false, 512)], 100)).await;
    h.desired(&format!(
        "revision = 1\n{}",
        common::guest(101, "stopped", 512)
    ));
    h.adopt_all().await;
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let row = run_job(&h, &d, &file, "backup").await;
    let volid = row["message"].as_str().unwrap()[7..].to_string();
    // The document now wants more memory; the agent converges it (benign).
    h.desired(&format!(
        "revision = 2\n{}",
        common::guest(101, "stopped", 1024)
    ));
    eventually(&d, Duration::from_secs(20), "memory 1024", || {
        h.sim.guest(101).is_some_and(|g| g.memory == 1024)
    })
    .await;

    // Restore with the default hold: the backup's 512 MiB stay.
    let file = job_new(&h, &["restore", "--vmid", "101", "--backup", &volid]).await;
    assert_eq!(run_job(&h, &d, &file, "held").await["state"], "done");
    assert_eq!(h.sim.guest(101).unwrap().memory, 512);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        h.sim.guest(101).unwrap().memory,
        512,
        "a held guest was corrected right after its restore"
    );
    let status = h.status_json(Duration::from_secs(10)).await;
    assert!(
        status["suspensions"].to_string().contains("held after job"),
        "{status}"
    );
    // The operator hands it back: the document applies again.
    let out = h.drover_async(&["resume", "101"]).await;
    assert_eq!(code(&out), 0);
    eventually(
        &d,
        Duration::from_secs(20),
        "memory 1024 after resume",
        || h.sim.guest(101).is_some_and(|g| g.memory == 1024),
    )
    .await;

    // Restore with --no-hold: converged again right after the job.
    let file = job_new(
        &h,
        &["restore", "--vmid", "101", "--backup", &volid, "--no-hold"],
    )
    .await;
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("bind.hold: 0\n")
    );
    assert_eq!(run_job(&h, &d, &file, "nohold").await["state"], "done");
    eventually(
        &d,
        Duration::from_secs(20),
        "memory 1024 after a no-hold restore",
        || h.sim.guest(101).is_some_and(|g| g.memory == 1024),
    )
    .await;
    d.stop().await;
}

/// The archive's sha256 is bound where the agent can read it: an archive rewritten after the
/// job was rendered (same name, same size) is refused on the lane, and nothing is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_changed_after_signing_is_refused() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, false, 512)], 100)).await;
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let row = run_job(&h, &d, &file, "backup").await;
    let volid = row["message"].as_str().unwrap()[7..].to_string();
    let file = job_new(&h, &["restore", "--vmid", "101", "--backup", &volid]).await;
    let archive = h
        .sim
        .storage_dir()
        .join("local/dump")
        .join(volid.rsplit('/').next().unwrap());
    let mut bytes = std::fs::read(&archive).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&archive, &bytes).unwrap();
    let row = run_job(&h, &d, &file, "changed").await;
    assert_eq!(row["state"], "failed", "{row}");
    assert_eq!(row["code"], "binding_mismatch", "{row}");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .contains("bind.archive-sha256"),
        "{row}"
    );
    assert_eq!(h.sim.count_mutations("restore", 101), 0);
    d.stop().await;
}

/// Recovery at boot from every phase without a task of its own: the journal holds a job at
/// `accepted`, `rechecked` and `verified`, and one at `calling` whose answer was lost (no
/// UPID, no task): the agent finishes the first two (each snapshot taken once), ends the
/// third without a call, and never sends the lost call again (`call_lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_continues_each_journaled_phase_and_never_resends_a_lost_call() {
    // One guest per job: at most one job of a guest is ever in progress.
    let h = Host::start_with(host((101..105).map(|v| seed(v, true, 512)).collect(), 100)).await;
    h.desired("revision = 1\n");
    // One run creates the journal (its exit code is about the empty document, not jobs).
    h.drover_async(&["run", "--once"]).await;
    assert!(h.state().join("db").exists());
    let mut ids = Vec::new();
    {
        let j = journal::Journal::open(&h.state()).unwrap();
        for (vmid, name, phase) in [
            (101u32, "at-accepted", "accepted"),
            (102, "at-rechecked", "rechecked"),
            (103, "at-verified", "verified"),
            (104, "at-calling", "calling"),
        ] {
            drop(j.clone());
            let text = {
                // Rendered by the agent, as a signed job would be (the journal holds only
                // texts the gate accepted; signatures are not kept).
                let out = h
                    .command(&[
                        "job",
                        "new",
                        "snapshot",
                        "--vmid",
                        &vmid.to_string(),
                        "--snapshot",
                        name,
                        "--output",
                        "json",
                    ])
                    .output()
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                v["text"].as_str().unwrap().to_string()
            };
            let nonce = text
                .lines()
                .find_map(|l| l.strip_prefix("nonce: "))
                .unwrap()
                .to_string();
            j.put_job(&journal::JobRecord {
                id: nonce.clone(),
                vmid,
                kind: "snapshot".into(),
                payload: text.clone(),
                payload_sha256: "00".repeat(32),
                signers: vec![],
                phase: phase.into(),
                upid: None,
                phase_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64,
                facts: [
                    ("was_running".to_string(), "1".to_string()),
                    ("existed".into(), "1".into()),
                ]
                .into_iter()
                .collect(),
                history: vec![(phase.into(), 0, String::new())],
                end: None,
                accepted_at_ms: 0,
            })
            .unwrap();
            ids.push((name, nonce));
        }
    }
    let d = h.spawn_daemon();
    for (name, id) in &ids {
        let row = ended(&h, &d, id).await;
        match *name {
            "at-calling" => {
                assert_eq!(row["code"], "call_lost", "{row}");
            }
            _ => assert_eq!(row["state"], "done", "{name}: {row}"),
        }
    }
    let taken = |name: &str| {
        h.sim
            .mutations()
            .iter()
            .filter(|m| {
                m.kind == "snapshot" && m.params.get("snapname").map(String::as_str) == Some(name)
            })
            .count()
    };
    assert_eq!(taken("at-accepted"), 1);
    assert_eq!(taken("at-rechecked"), 1);
    assert_eq!(taken("at-verified"), 0, "verified: the call is behind it");
    assert_eq!(taken("at-calling"), 0, "a lost call is never sent again");
    d.stop().await;
}

/// SIGKILL while a failed restore is being undone from the pre-restore copy: the restart
/// re-attaches to the undo's task (never a second undo), and the copy is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_failed_restore_is_undone() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, false, 512)], 1500)).await;
    h.desired("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let row = run_job(&h, &d, &file, "backup").await;
    let volid = row["message"].as_str().unwrap()[7..].to_string();
    h.sim.edit_config(101, "memory", Some("768"));
    let file = job_new(&h, &["restore", "--vmid", "101", "--backup", &volid]).await;
    let id = nonce_of(&file);
    let mut faults = pve_sim::Faults::default();
    faults.storage.restore_fail_archives.insert(volid.clone());
    h.sim.set_faults(faults);
    let (copy, sig) = signed(&h, &file, "restore");
    assert_eq!(code(&approve(&h, &copy, &sig).await), 0);
    let mut d = d;
    eventually(
        &d,
        Duration::from_secs(30),
        "the undo's task journaled",
        || phase_of(&h, &id).is_some_and(|(p, upid)| p == "undoing" && upid),
    )
    .await;
    d.child.kill().unwrap();
    let _ = d.child.wait();
    d = h.spawn_daemon();
    let row = ended(&h, &d, &id).await;
    assert_eq!(row["code"], "restore_undone", "{row}");
    assert_eq!(
        h.sim.count_mutations("restore", 101),
        2,
        "the restore and one undo"
    );
    assert_eq!(h.sim.guest(101).unwrap().memory, 768);
    let copies = h.drover_async(&["copies", "101", "--output", "json"]).await;
    assert!(
        stdout(&copies).contains("complete"),
        "the pre-restore copy is kept: {}",
        stdout(&copies)
    );
    d.stop().await;
}

/// SIGKILL while a backup job's vzdump runs: the restart re-attaches to the journaled task,
/// reads its archive from the task log and ends once (one vzdump). `verify-approval` checks
/// a signed job offline like an approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_backup_runs_ends_it_once() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start_with(host(vec![seed(101, true, 512)], 1500)).await;
    h.desired("revision = 1\n");
    let mut d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let file = job_new(&h, &["backup", "--vmid", "101", "--storage", "local"]).await;
    let id = nonce_of(&file);
    let (copy, sig) = signed(&h, &file, "backup");
    let offline = h.submit("verify-approval", &copy, &[&sig]).await;
    assert_eq!(code(&offline), 0, "{}", stdout(&offline));
    let out = approve(&h, &copy, &sig).await;
    assert!(stdout(&out).contains("job submitted"), "{}", stdout(&out));
    eventually(&d, Duration::from_secs(30), "the vzdump journaled", || {
        phase_of(&h, &id).is_some_and(|(p, upid)| p == "calling" && upid)
    })
    .await;
    d.child.kill().unwrap();
    let _ = d.child.wait();
    d = h.spawn_daemon();
    let row = ended(&h, &d, &id).await;
    assert_eq!(row["state"], "done", "{row}");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .starts_with("backup local:backup/vzdump-lxc-101-"),
        "{row}"
    );
    assert_eq!(h.sim.count_mutations("vzdump", 101), 1);
    d.stop().await;
}
