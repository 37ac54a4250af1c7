//! Crash loop: `drover run` is killed with SIGKILL at random moments and restarted, while the
//! desired document changes every round, so that kills land with steps in flight: every round
//! creates a new scratch guest, changes the memory and the power state of the base guests, and
//! asks to destroy the scratch guests of earlier rounds, whose destroy requests the operator
//! signs between rounds (real ssh-keygen). After each kill the journal is read to count the
//! kills that hit a step in flight (intent or submitted, not done); the test prints the count
//! and requires most kills to hit one.
//!
//! The simulator's mutation log must show no CT created twice, no destroy of a guest whose
//! destroy was never signed, and the host must converge in the end.
//!
//! Signed jobs are in the mix: every other round a snapshot job (a new name each time) is
//! rendered, signed and dropped into the inbox before the agent starts, so kills also land
//! while jobs run; no snapshot may be taken twice and every job ends (done or refused).
//!
//! `DROVER_CRASH_ROUNDS` sets the number of kills (default 30, as in CI); the script
//! `agent/tests/crash-loop.sh` runs thousands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::{DOMAIN, Host, code, sign_all};

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
const BASE: std::ops::Range<u32> = 900..906;
/// Guests created once and never changed: a destroy is three tasks (shutdown, the safety
/// vzdump, the destroy), so a few destroys may lag behind the one new absent guest per round;
/// these keep the lag below the mass-destroy fuse (more than half of the managed guests).
const STILL: std::ops::Range<u32> = 920..928;
/// A seeded guest the document marks absent: never adopted, so never destroyed.
const CANARY: u32 = 950;
/// Scratch guests: one new vmid per round, never reused.
const SCRATCH_FROM: u32 = 10_000;
/// How many rounds a scratch guest lives before the document asks to destroy it.
const SCRATCH_LIFE: u32 = 3;

fn memory(v: u32, round: u32) -> u32 {
    256 + ((v + round) % 4) * 128
}

fn running(v: u32, round: u32) -> bool {
    // Two of the base guests flip their power state every round.
    if v.is_multiple_of(3) {
        round.is_multiple_of(2)
    } else {
        true
    }
}

fn entry(v: u32, ensure: &str, memory: u32) -> String {
    format!(
        "[[guest]]\nvmid = {v}\nensure = \"{ensure}\"\nhostname = \"ct-{v}\"\ntemplate = \"{TEMPLATE}\"\nmemory = {memory}\nrootfs = \"local-lvm:4\"\nnet0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"\n"
    )
}

/// The document of `round`: base guests with this round's memory and power, the scratch
/// guests of the last rounds (the newest is new this round), every older scratch guest absent
/// (so a destroy that waits for its signature is still asked for in later rounds).
fn document(round: u32) -> String {
    let mut d = format!("revision = {}\n", round + 1);
    for v in BASE {
        let ensure = if running(v, round) {
            "running"
        } else {
            "stopped"
        };
        d.push_str(&entry(v, ensure, memory(v, round)));
    }
    for v in STILL {
        d.push_str(&entry(v, "running", 256));
    }
    for r in 0..=round {
        let v = SCRATCH_FROM + r;
        if r + SCRATCH_LIFE < round {
            d.push_str(&format!("[[guest]]\nvmid = {v}\nensure = \"absent\"\n"));
        } else {
            d.push_str(&entry(v, "running", 256));
        }
    }
    d.push_str(&format!(
        "[[guest]]\nvmid = {CANARY}\nensure = \"absent\"\n"
    ));
    d
}

/// Signs every pending destroy request (one ssh-keygen call) and hands each to the agent's
/// inbox with `drover approve`; returns the vmids signed.
async fn sign_pending_destroys(h: &Host, round: u32) -> Vec<u32> {
    let pending: Vec<(u32, PathBuf)> = h
        .pending_requests()
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let v = name.strip_suffix("-destroy_guest.txt")?.parse().ok()?;
            Some((v, p))
        })
        .collect();
    if pending.is_empty() {
        return Vec::new();
    }
    let files: Vec<PathBuf> = pending.iter().map(|(_, p)| p.clone()).collect();
    let signed = sign_all(
        "demo/TEST_demo_operator_ed25519",
        &format!("destructive-op-v1@{DOMAIN}"),
        &files,
        &h.root().join(format!("signing-{round}")),
    );
    for (copy, sig) in &signed {
        let out = h.submit("approve", copy, &[sig.as_path()]).await;
        assert_eq!(code(&out), 0);
    }
    pending.into_iter().map(|(v, _)| v).collect()
}

/// Steps the journal holds as not done: (intent only, submitted).
fn in_flight(h: &Host) -> (usize, usize) {
    let j = journal::Journal::open_read_only(&h.state()).expect("journal opens read-only");
    let recs = j.in_flight().expect("journal reads");
    let submitted = recs.iter().filter(|r| r.upid().is_some()).count();
    (recs.len() - submitted, submitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_never_runs_a_step_twice() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let rounds: u32 = std::env::var("DROVER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: Duration::from_millis(150),
        guests: vec![pve_sim::SeedGuest {
            vmid: CANARY,
            hostname: "customer".into(),
            running: true,
            cores: 1,
            memory: 128,
            rootfs_gib: 4,
            ..pve_sim::SeedGuest::default()
        }],
        ..pve_sim::SimConfig::default()
    })
    .await;

    let mut signed: BTreeMap<u32, usize> = BTreeMap::new();
    let mut jobs: Vec<(u32, String)> = Vec::new();
    let (mut hit, mut hit_submitted) = (0u32, 0u32);
    for round in 0..rounds {
        h.desired(&document(round));
        let signed_now = sign_pending_destroys(&h, round).await;
        for v in &signed_now {
            *signed.entry(*v).or_default() += 1;
        }
        if round >= 2 && round % 2 == 0 {
            let v = BASE.start + (round / 2) % (BASE.end - BASE.start);
            if let Some(name) = submit_snapshot_job(&h, v, round).await {
                jobs.push((v, name));
            }
        }
        let mut child = h.command(&["run"]).spawn().expect("drover starts");
        let wait_ms = 150 + (rand_u64(round) % 600);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        let _ = child.wait();
        let (intent, submitted) = in_flight(&h);
        if intent + submitted > 0 {
            hit += 1;
        }
        if submitted > 0 {
            hit_submitted += 1;
        }
    }
    println!(
        "crash loop: {rounds} SIGKILLs, {hit} with a step in flight ({hit_submitted} with a PVE task submitted); {} mutations, {} creates, {} destroys",
        h.sim.mutations().len(),
        h.sim
            .mutations()
            .iter()
            .filter(|m| m.kind == "create")
            .count(),
        h.sim
            .mutations()
            .iter()
            .filter(|m| m.kind == "destroy")
            .count(),
    );
    // The point of the loop: kills land while steps run, not on an idle agent.
    assert!(
        hit * 2 >= rounds,
        "only {hit} of {rounds} kills hit a step in flight"
    );

    // Let it finish on the last document: clean passes, signing what it asks for.
    let last = rounds.saturating_sub(1);
    let mut converged = false;
    for i in 0..15 {
        for v in sign_pending_destroys(&h, rounds + i).await {
            *signed.entry(v).or_default() += 1;
        }
        let out = h.drover_async(&["run", "--once"]).await;
        // 2: the canary's adoption stays pending, everything else converges.
        if code(&out) == 2 && all_converged(&h, last) {
            converged = true;
            break;
        }
    }
    // Jobs: each snapshot taken at most once, and none left running or queued.
    for (v, name) in &jobs {
        let n = h
            .sim
            .mutations()
            .iter()
            .filter(|m| {
                m.kind == "snapshot" && m.vmid == Some(*v) && m.params.get("snapname") == Some(name)
            })
            .count();
        assert!(n <= 1, "snapshot {name} of CT {v} taken {n} times");
    }
    let listed = h.drover_async(&["jobs", "--output", "json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let open: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["state"] == "running" || r["state"] == "queued")
        .collect();
    assert!(open.is_empty(), "jobs left open: {open:?}");
    let done = rows.iter().filter(|r| r["state"] == "done").count();
    println!(
        "crash loop: {} snapshot jobs submitted, {done} done, the rest refused (the guest changed or was busy)",
        jobs.len()
    );
    assert!(converged, "the host did not converge after {rounds} kills");

    let mut creates: BTreeMap<u32, usize> = BTreeMap::new();
    let mut destroys: BTreeMap<u32, usize> = BTreeMap::new();
    for m in h.sim.mutations() {
        let Some(v) = m.vmid else { continue };
        match m.kind.as_str() {
            "create" => *creates.entry(v).or_default() += 1,
            "destroy" => *destroys.entry(v).or_default() += 1,
            _ => {}
        }
    }
    for (v, n) in &creates {
        assert_eq!(*n, 1, "CT {v} created {n} times");
    }
    for v in BASE {
        assert_eq!(creates.get(&v), Some(&1), "CT {v} never created");
    }
    for (v, n) in &destroys {
        assert_eq!(*n, 1, "CT {v} destroyed {n} times");
        assert!(
            signed.contains_key(v),
            "CT {v} destroyed without a signed approval"
        );
    }
    assert_eq!(destroys.get(&CANARY), None, "the canary was destroyed");
    assert!(h.sim.guest(CANARY).is_some());
    let destroyed: BTreeSet<u32> = destroys.keys().copied().collect();
    println!(
        "crash loop: {} scratch guests destroyed with a signature, {} destroy approvals signed",
        destroyed.len(),
        signed.values().sum::<usize>()
    );
    let journal = h.drover_async(&["journal", "--in-flight"]).await;
    assert_eq!(code(&journal), 0);

    // Never a destroy without a verified copy, never an untracked copy: every destroy came
    // after a vzdump of that guest whose manifest is complete (or released later) with a
    // sha256, and every backup carrying Drover's marker is a manifest's volid.
    let copies = h.drover_async(&["copies", "--output", "json"]).await;
    assert_eq!(code(&copies), 0);
    let manifests: Vec<serde_json::Value> = serde_json::from_slice(&copies.stdout).unwrap();
    let muts = h.sim.mutations();
    for (i, m) in muts.iter().enumerate() {
        if m.kind != "destroy" {
            continue;
        }
        let v = m.vmid.unwrap();
        assert!(
            muts[..i]
                .iter()
                .any(|d| d.kind == "vzdump" && d.vmid == Some(v)),
            "CT {v} destroyed without a vzdump before it"
        );
        assert!(
            manifests.iter().any(|c| c["vmid"] == v
                && c["sha256"].is_string()
                && matches!(
                    c["state"].as_str(),
                    Some("complete" | "released" | "deleted")
                )),
            "CT {v} destroyed without a verified copy in the journal"
        );
    }
    for vol in h.sim.volumes() {
        if vol
            .notes
            .as_deref()
            .is_some_and(|n| n.starts_with("drover:"))
        {
            assert!(
                manifests
                    .iter()
                    .any(|c| c["volid"].as_str() == Some(vol.volid.as_str())
                        && c["state"] != "orphan"),
                "untracked copy {}",
                vol.volid
            );
        }
    }
    assert!(
        manifests.iter().all(|c| c["state"] != "creating"),
        "a copy left creating after convergence"
    );
    println!("crash loop: {} safety copies journaled", manifests.len());
}

/// Renders a snapshot job for `v` from the host's current state, signs it with the demo
/// operator's key and hands it to the agent's inbox; None when the job is refused at once
/// (the guest is locked or does not exist yet).
async fn submit_snapshot_job(h: &Host, v: u32, round: u32) -> Option<String> {
    let name = format!("crash-{round}");
    let out = h
        .drover_async(&[
            "job",
            "new",
            "snapshot",
            "--vmid",
            &v.to_string(),
            "--snapshot",
            &name,
            "--output",
            "json",
        ])
        .await;
    if code(&out) != 0 {
        return None;
    }
    let rendered: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let file = PathBuf::from(rendered["file"].as_str()?);
    let signed = sign_all(
        "demo/TEST_demo_operator_ed25519",
        &format!("destructive-op-v1@{DOMAIN}"),
        &[file],
        &h.root().join(format!("job-signing-{round}")),
    );
    let (copy, sig) = &signed[0];
    let out = h.submit("approve", copy, &[sig.as_path()]).await;
    assert_eq!(code(&out), 0);
    Some(name)
}

fn all_converged(h: &Host, round: u32) -> bool {
    let base = BASE.clone().all(|v| match h.sim.guest(v) {
        Some(g) => g.running == running(v, round) && g.memory == u64::from(memory(v, round)),
        None => false,
    });
    let still = STILL
        .clone()
        .all(|v| h.sim.guest(v).is_some_and(|g| g.running));
    let scratch = (0..=round).all(|r| {
        let v = SCRATCH_FROM + r;
        let exists = h.sim.guest(v).is_some_and(|g| g.running);
        if r + SCRATCH_LIFE < round {
            h.sim.guest(v).is_none()
        } else {
            exists
        }
    });
    let requests = h.pending_requests();
    let only_the_canary = requests.iter().all(|p| {
        p.to_string_lossy()
            .ends_with(&format!("{CANARY}-adopt.txt"))
    });
    if !(base && still && scratch && only_the_canary) {
        eprintln!(
            "not converged yet: base {base}, still {still}, scratch {scratch}, requests {requests:?}"
        );
    }
    base && still && scratch && only_the_canary
}

/// A small deterministic spread of kill moments without a dependency.
fn rand_u64(round: u32) -> u64 {
    let mut x = u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}
