//! Safety copies through the real `drover` binary against pve-sim: the approved destroy takes
//! its copy first; a copy that fails leaves the guest running and the approval unspent; no
//! `[safety] storage` refuses; and a SIGKILL in every phase (quiescing, vzdump running, the
//! destroy submitted) ends, after restarts, in exactly one destroy with a verified copy and no
//! copy the journal does not track.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{DOMAIN, Host, code, guest, seed, sign, stdout};

fn copies_json(h: &Host) -> Vec<serde_json::Value> {
    let out = h.drover(&["copies", "--output", "json"]);
    assert_eq!(code(&out), 0);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

async fn host_with_destroy(task_ms: u64) -> Host {
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: Duration::from_millis(task_ms),
        guests: vec![
            seed(701, true, 256),
            seed(702, true, 256),
            seed(703, true, 256),
        ],
        ..pve_sim::SimConfig::default()
    })
    .await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 701\nensure = \"absent\"\n{}{}",
        guest(702, "running", 256),
        guest(703, "running", 256)
    ));
    h
}

/// Signs the pending destroy request of 701 and hands it to the agent's inbox.
async fn approve_destroy(h: &Host, label: &str) -> PathBuf {
    let request = h
        .pending_requests()
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("701-destroy_guest.txt"))
        .expect("a destroy request");
    let work = h.root().join(label);
    std::fs::create_dir_all(&work).unwrap();
    let sig = sign(
        "demo/TEST_demo_operator_ed25519",
        &format!("destructive-op-v1@{DOMAIN}"),
        &request,
        &work,
    );
    let copy = work.join(request.file_name().unwrap());
    let out = h.submit("approve", &copy, &[&sig]).await;
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    copy
}

/// Every backup carrying Drover's marker is a manifest's volid; every destroy of 701 came
/// after a complete, verified copy of it.
fn assert_copies_tracked_and_destroy_guarded(h: &Host) {
    let manifests = copies_json(h);
    for v in h.sim.volumes() {
        if v.content == "backup" && v.notes.as_deref().is_some_and(|n| n.starts_with("drover:")) {
            assert!(
                manifests.iter().any(
                    |m| m["volid"].as_str() == Some(v.volid.as_str()) && m["state"] != "orphan"
                ),
                "untracked copy {} ({:?})\n{manifests:#?}",
                v.volid,
                v.notes
            );
        }
    }
    assert!(
        manifests.iter().all(|m| m["state"] != "creating"),
        "a copy left creating: {manifests:#?}"
    );
    let muts = h.sim.mutations();
    let destroy_at = muts
        .iter()
        .position(|m| m.kind == "destroy" && m.vmid == Some(701))
        .expect("701 destroyed");
    assert_eq!(h.sim.count_mutations("destroy", 701), 1, "destroyed once");
    let verified: Vec<&serde_json::Value> = manifests
        .iter()
        .filter(|m| m["vmid"] == 701 && m["state"] == "complete" && m["sha256"].is_string())
        .collect();
    assert!(
        !verified.is_empty(),
        "no verified copy of 701: {manifests:#?}"
    );
    let volids: Vec<&str> = verified
        .iter()
        .filter_map(|m| m["volid"].as_str())
        .collect();
    let backed_up_before = muts[..destroy_at]
        .iter()
        .any(|m| m.kind == "vzdump" && m.vmid == Some(701));
    assert!(backed_up_before, "the destroy ran before any vzdump of 701");
    for v in volids {
        let vol = h
            .sim
            .volumes()
            .into_iter()
            .find(|x| x.volid == v)
            .expect("copy kept");
        assert!(vol.protected, "{v} is protected through its grace period");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approved_destroy_takes_its_copy_first_then_drover_copies_shows_it() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = host_with_destroy(100).await;
    h.adopt_all().await;
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 2);
    let request = h.pending_requests()[0].clone();
    let text = std::fs::read_to_string(&request).unwrap();
    assert!(text.contains("\nbind.safety: vzdump@local\n"), "{text}");
    assert!(!text.contains("bind.uncovered"), "{text}");
    approve_destroy(&h, "op").await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    assert!(h.sim.guest(701).is_none());
    let kinds: Vec<String> = h
        .sim
        .mutations()
        .into_iter()
        .filter(|m| m.vmid == Some(701))
        .map(|m| m.kind)
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("destroy"));
    let n = kinds.len();
    assert_eq!(
        &kinds[n - 3..],
        ["shutdown", "vzdump", "destroy"],
        "{kinds:?}"
    );
    assert_copies_tracked_and_destroy_guarded(&h);
    let text = h.drover(&["copies", "701"]);
    let shown = stdout(&text);
    assert!(shown.contains("pre-destroy vzdump complete"), "{shown}");
    assert!(
        shown.contains("volid:      local:backup/vzdump-lxc-701-"),
        "{shown}"
    );
    assert!(shown.contains("protected:  until "), "{shown}");
    // The copy's protection runs from the destroy's end plus the 14-day default.
    let m = &copies_json(&h)[0];
    let until = m["protect_until_ms"].as_i64().unwrap();
    let now = drover::clock::unix_now_ms();
    assert!(
        until > now + 13 * 86_400_000 && until <= now + 14 * 86_400_000,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_keeps_the_guest_running_and_the_approval_unspent() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = host_with_destroy(100).await;
    h.adopt_all().await;
    h.drover_async(&["run", "--once"]).await;
    approve_destroy(&h, "op").await;
    let mut faults = pve_sim::Faults::default();
    faults
        .storage
        .vzdump_fail
        .insert(701, "command 'tar' failed: exit code 2".into());
    h.sim.set_faults(faults);
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(err.contains("safety_copy_failed(job_errors)"), "{err}");
    let g = h.sim.guest(701).expect("not destroyed");
    assert!(g.running, "the guest the copy stopped runs again");
    assert_eq!(h.sim.count_mutations("destroy", 701), 0);
    let status = h.drover(&["copies", "--output", "json"]);
    assert!(
        stdout(&status).contains("\"state\": \"failed\""),
        "{}",
        stdout(&status)
    );
    // The same approval works once the cause is gone: it was never spent.
    h.sim.set_faults(pve_sim::Faults::default());
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    assert!(h.sim.guest(701).is_none());
    assert_copies_tracked_and_destroy_guarded(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_safety_storage_a_destroy_is_refused_with_a_code() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = host_with_destroy(100).await;
    h.write_config("\n[safety]\nkeep_per_guest = 2\n");
    h.adopt_all().await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(err.contains("[safety_storage_unset]"), "{err}");
    assert!(
        h.pending_requests()
            .iter()
            .all(|p| !p.to_string_lossy().ends_with("destroy_guest.txt")),
        "nothing to sign while the step is refused"
    );
    assert!(h.sim.guest(701).unwrap().running);
    assert_eq!(h.sim.count_mutations("shutdown", 701), 0);
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The manifest is `creating` and the guest is being shut down.
    Quiescing,
    /// The vzdump task runs (its UPID is journaled).
    Copying,
    /// The destroy is submitted.
    Destroying,
}

fn reached(h: &Host, phase: Phase) -> bool {
    let Ok(j) = journal::Journal::open_read_only(&h.state()) else {
        return false;
    };
    let copies = j.copy_records().unwrap_or_default();
    match phase {
        Phase::Quiescing => copies
            .iter()
            .any(|c| c.state == journal::CopyState::Creating && c.upid.is_none()),
        Phase::Copying => copies
            .iter()
            .any(|c| c.state == journal::CopyState::Creating && c.upid.is_some()),
        Phase::Destroying => j
            .in_flight()
            .unwrap_or_default()
            .iter()
            .any(|r| r.step.kind == "destroy_guest" && r.upid().is_some()),
    }
}

async fn sigkill_in(phase: Phase) {
    // Each phase is one simulated task long; the shutdown's is the first and shortest to
    // catch (the daemon's first pass, the preflight and the manifest come before it), so it
    // gets a longer task on a loaded machine.
    let task_ms = match phase {
        Phase::Quiescing => 3000,
        Phase::Copying | Phase::Destroying => 2000,
    };
    let h = host_with_destroy(task_ms).await;
    h.adopt_all().await;
    h.drover_async(&["run", "--once"]).await;
    approve_destroy(&h, "op").await;
    let mut child = h.command(&["run"]).spawn().expect("drover starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !reached(&h, phase) {
        assert!(
            std::time::Instant::now() < deadline,
            "{phase:?} never reached"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // Restarts until the host converges (the copy's lock and tasks must end first).
    let mut done = false;
    for _ in 0..12 {
        let run = h.drover_async(&["run", "--once"]).await;
        if code(&run) == 0 && h.sim.guest(701).is_none() {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(done, "no convergence after the kill in {phase:?}");
    assert_copies_tracked_and_destroy_guarded(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_quiescing_then_restart() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    sigkill_in(Phase::Quiescing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_vzdump_runs_then_restart() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    sigkill_in(Phase::Copying).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_destroy_runs_then_restart() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    sigkill_in(Phase::Destroying).await;
}
