//! The journal against real sled directories, including a child process killed with SIGKILL
//! right after each acknowledged durable call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use journal::{
    AuditEntry, Journal, JournalError, NewStep, NonceClaim, NonceError, Outcome, Phase, StepClass,
    Suspension,
};

fn step(vmid: u32, kind: &str) -> NewStep {
    NewStep {
        vmid,
        kind: kind.into(),
        params: BTreeMap::from([("memory".to_string(), "512".to_string())]),
        class: StepClass::Benign,
        approval_sha256: None,
        signers: vec![],
        operation: None,
        attempt: 1,
    }
}

fn claim(nonce: &str, expires_at: i64) -> NonceClaim {
    NonceClaim {
        nonce: nonce.into(),
        payload_sha256: "ab".repeat(32),
        signers: vec!["op SHA256:x".into()],
        op: "destroy_guest".into(),
        vmid: 101,
        expires_at,
        now: 1000,
    }
}

#[test]
fn records_move_through_their_phases_and_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (a, b, epoch) = {
        let j = Journal::open(d.path()).unwrap();
        let a = j.intent(step(101, "start")).unwrap();
        let b = j.intent(step(102, "create")).unwrap();
        j.submitted(
            a,
            "UPID:pve1:00000001:00000001:00000001:vzstart:101:drover@pve!agent:",
        )
        .unwrap();
        j.done(b, Outcome::Failed("boom".into())).unwrap();
        j.record_created(103, "7", "UPID:x", "d1").unwrap();
        j.accept_desired(4, b"revision = 4\n").unwrap();
        j.suspend(Suspension {
            vmid: Some(104),
            reason: "maintenance".into(),
            since_ms: 1,
        })
        .unwrap();
        j.audit(AuditEntry {
            time_ms: 1,
            allowed: false,
            code: "unknown_signer".into(),
            vmid: Some(101),
            step: Some("destroy_guest".into()),
            signers: vec![],
            authenticated: false,
            detail: "x".into(),
        })
        .unwrap();
        (a, b, j.state_epoch())
    };
    let j = Journal::open(d.path()).unwrap();
    assert_eq!(j.state_epoch(), epoch, "the epoch is kept");
    let inflight = j.in_flight().unwrap();
    assert_eq!(inflight.len(), 1);
    assert_eq!(inflight[0].id, a);
    assert!(matches!(inflight[0].phase, Phase::Submitted { .. }));
    assert!(j.get(b).unwrap().unwrap().is_done());
    assert_eq!(
        j.provenance(103).unwrap().unwrap().config_digest.as_deref(),
        Some("d1")
    );
    assert_eq!(j.last_known_good().unwrap().unwrap().0, 4);
    assert_eq!(j.suspensions().unwrap().len(), 1);
    assert!(j.resume(Some(104)).unwrap());
    assert_eq!(j.audit_tail(10).unwrap()[0].code, "unknown_signer");
}

#[test]
fn a_second_open_is_refused_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let _j = Journal::open(d.path()).unwrap();
    match Journal::open(d.path()) {
        Err(JournalError::Locked { holder, dir }) => {
            assert_eq!(holder, std::process::id().to_string());
            assert_eq!(dir, d.path());
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened twice"),
    }
    // Read-only access still works while the lock is held.
    assert!(Journal::open_read_only(d.path()).is_ok());
}

/// A child process this process spawns inherits the lock's open file for the moment between
/// its fork and its exec, and the lock goes with it. A reopen right after a drop in that moment
/// is not a second holder: it waits the child out instead of failing with `Locked`.
#[test]
fn a_reopen_is_not_refused_by_a_child_spawned_in_the_same_moment() {
    let d = tempfile::tempdir().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut spawned = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                Command::new("true").status().unwrap();
                spawned += 1;
            }
            spawned
        })
    };
    let mut j = Journal::open(d.path()).unwrap();
    for round in 0..300 {
        drop(j);
        j = match Journal::open(d.path()) {
            Ok(j) => j,
            Err(e) => {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                panic!("reopen {round} refused: {e}");
            }
        };
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        spawner.join().unwrap() > 0,
        "children ran during the reopens"
    );
    // A second holder in this process is still refused at once.
    match Journal::open(d.path()) {
        Err(JournalError::Locked { .. }) => {}
        other => panic!("a second open while held: {:?}", other.map(|_| ())),
    }
}

/// The same from another process's side: the file names a live process that no longer has the
/// lock file open, while the lock is still held (here by the test's own descriptor, standing in
/// for that process's child between fork and exec). The open waits for the release instead of
/// being refused for a holder that has let go.
#[test]
fn a_lock_whose_named_holder_has_let_go_is_waited_out() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    drop(Journal::open(d.path()).unwrap());
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    let mut inherited = std::fs::OpenOptions::new()
        .write(true)
        .open(d.path().join("drover.lock"))
        .unwrap();
    inherited.try_lock().unwrap();
    inherited.set_len(0).unwrap();
    write!(inherited, "{}", bystander.id()).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(inherited);
    });
    let opened = Journal::open(d.path());
    release.join().unwrap();
    bystander.kill().unwrap();
    let _ = bystander.wait();
    let j = opened.expect("the lock was released by a descriptor the named holder does not own");
    drop(j);
    // A holder that still has the file open is refused at once.
    let _held = Journal::open(d.path()).unwrap();
    let t = std::time::Instant::now();
    assert!(matches!(
        Journal::open(d.path()),
        Err(JournalError::Locked { .. })
    ));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "refused, not waited"
    );
}

#[test]
fn one_nonce_is_consumed_exactly_once_across_threads_and_restarts() {
    let d = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(d.path()).unwrap();
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|_| {
                    let j = j.clone();
                    s.spawn(move || j.consume(&claim("n1", 5000)).is_ok() as usize)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        assert_eq!(j.clock_high_water(), Some(1000));
    }
    let j = Journal::open(d.path()).unwrap();
    assert_eq!(
        j.consume(&claim("n1", 5000)),
        Err(NonceError::Replayed("n1".into()))
    );
    // GC forgets expired claims but never re-opens them.
    j.consume(&claim("n2", 2000)).unwrap();
    assert_eq!(j.gc_nonces(3000).unwrap(), 1);
    assert_eq!(
        j.consume(&claim("n2", 2000)),
        Err(NonceError::ExpiredForever)
    );
    assert!(j.consume(&claim("n3", 9000)).is_ok());
}

#[test]
fn compaction_keeps_in_flight_and_the_most_recent() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path()).unwrap();
    let keep = j.intent(step(1, "start")).unwrap();
    for _ in 0..20 {
        let id = j.intent(step(2, "start")).unwrap();
        j.done(id, Outcome::Ok).unwrap();
    }
    assert_eq!(j.compact(5, 100).unwrap(), 15);
    assert_eq!(j.recent_for_vmid(2, 100).unwrap().len(), 5);
    assert_eq!(j.in_flight().unwrap()[0].id, keep);
}

/// A lane turn asks for in-flight steps: after the first scan that costs only the records in
/// flight, however many done records are kept (it decoded all of them on every turn).
#[test]
fn in_flight_reads_only_records_in_flight_after_the_first_scan() {
    let d = tempfile::tempdir().unwrap();
    let open_one = {
        let j = Journal::open(d.path()).unwrap();
        j.set_retention(journal::Retention {
            per_guest: 10_000,
            total: 10_000,
            every: 0,
        });
        for i in 0..2_000 {
            let id = j.intent(step(i % 50, "start")).unwrap();
            j.done(id, Outcome::Ok).unwrap();
        }
        j.intent(step(7, "stop")).unwrap()
    };
    let j = Journal::open(d.path()).unwrap();
    let first = j.in_flight().unwrap();
    assert_eq!(
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![open_one]
    );
    let after_scan = j.records_decoded();
    assert!(
        after_scan >= 2_001,
        "the first call scans everything: {after_scan}"
    );
    let next = j.intent(step(8, "start")).unwrap();
    for _ in 0..10 {
        assert_eq!(j.in_flight().unwrap().len(), 2);
    }
    let per_call = (j.records_decoded() - after_scan) / 10;
    assert!(per_call <= 2, "{per_call} records decoded per call");
    j.done(next, Outcome::Ok).unwrap();
    j.done(open_one, Outcome::Ok).unwrap();
    assert!(
        j.in_flight().unwrap().is_empty(),
        "closed steps leave the index"
    );
}

/// Automatic compaction counts closes across restarts: `run --once` and restarted daemons
/// never reached the count within one process, so their journals grew without bound.
#[test]
fn automatic_compaction_counts_closes_across_reopen() {
    let d = tempfile::tempdir().unwrap();
    let retention = journal::Retention {
        per_guest: 2,
        total: 100,
        every: 10,
    };
    for _ in 0..3 {
        let j = Journal::open(d.path()).unwrap();
        j.set_retention(retention);
        for _ in 0..4 {
            let id = j.intent(step(3, "start")).unwrap();
            j.done(id, Outcome::Ok).unwrap();
        }
    }
    // 12 closes over three processes passed `every = 10` once: at most 2 + 2 records remain.
    let j = Journal::open(d.path()).unwrap();
    let kept = j.recent_for_vmid(3, 100).unwrap().len();
    assert!(kept <= 4, "{kept} records kept: the compaction never ran");
}

/// Operators read step ids in `drover journal`: they continue densely across restarts and are
/// never handed out twice, even when compaction removed the newest record.
#[test]
fn step_ids_stay_dense_across_reopen_and_are_never_reused() {
    let d = tempfile::tempdir().unwrap();
    let ids: Vec<u64> = {
        let j = Journal::open(d.path()).unwrap();
        (0..3)
            .map(|_| j.intent(step(7, "start")).unwrap().0)
            .collect()
    };
    assert_eq!(ids, vec![1, 2, 3]);
    let j = Journal::open(d.path()).unwrap();
    let id = j.intent(step(7, "start")).unwrap();
    assert_eq!(id.0, 4);
    for id in 1..=4 {
        j.done(journal::StepId(id), Outcome::Ok).unwrap();
    }
    assert_eq!(j.compact(0, 0).unwrap(), 4);
    drop(j);
    let j = Journal::open(d.path()).unwrap();
    assert_eq!(j.intent(step(7, "start")).unwrap().0, 5);
}

#[test]
fn damaged_files_give_a_clear_error_not_a_panic() {
    for damage in ["truncate", "garble"] {
        let d = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(d.path()).unwrap();
            for i in 0..50 {
                j.intent(step(i, "start")).unwrap();
            }
        }
        let db = d.path().join("db").join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        match damage {
            "truncate" => {
                let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
                f.set_len(len / 3).unwrap();
            }
            _ => {
                let mut bytes = std::fs::read(&db).unwrap();
                for b in bytes.iter_mut().skip(64).step_by(7) {
                    *b ^= 0x5a;
                }
                std::fs::write(&db, bytes).unwrap();
            }
        }
        // Either it opens and every record reads (sled recovered a prefix), or it says clearly
        // what is wrong. It never panics.
        match Journal::open(d.path()) {
            Ok(j) => {
                let _ = j.in_flight();
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(&d.path().display().to_string()), "{msg}");
            }
        }
        let report = journal::check(d.path());
        let _ = report.to_string();
    }
}

/// Opens the journal's database with sled itself, to write what the journal never would.
/// sled's own file lock can be held for a moment after the journal closes (its flusher
/// thread, or a child spawned by another test between fork and exec): waited out, as the
/// journal's open does.
fn open_sled_directly(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r.unwrap(),
        }
    }
}

#[test]
fn an_unknown_record_version_is_an_error_not_a_skip() {
    let d = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(d.path()).unwrap();
        j.intent(step(1, "start")).unwrap();
    }
    // Write a record of a future version with sled directly.
    {
        let db = open_sled_directly(&d.path().join("db"));
        let t = db.open_tree("steps").unwrap();
        t.insert(99u64.to_be_bytes(), br#"{"v":2,"r":{}}"#.to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let j = Journal::open(d.path()).unwrap();
    assert!(matches!(
        j.in_flight(),
        Err(JournalError::UnknownVersion { version: 2, .. })
    ));
    assert!(!journal::check(d.path()).is_healthy());
}

/// The child side of the crash test: performs every kind of durable write, printing an ack
/// after each returns.
#[test]
fn crash_writer() {
    let Ok(dir) = std::env::var("JOURNAL_CRASH_DIR") else {
        return;
    };
    let j = Journal::open(std::path::Path::new(&dir)).unwrap();
    let ack = |what: &str| println!("ACK {what}");
    for i in 0..1000u32 {
        let id = j.intent(step(i, "create")).unwrap();
        ack(&format!("intent {i} {}", id.0));
        j.submitted(id, &format!("UPID:{i}")).unwrap();
        ack(&format!("submitted {i} {}", id.0));
        j.record_created(i, "op", "UPID", "digest").unwrap();
        ack(&format!("prov {i}"));
        j.consume(&claim(&format!("nonce{i}"), 99_999)).unwrap();
        ack(&format!("nonce {i}"));
        j.done(id, Outcome::Ok).unwrap();
        ack(&format!("done {i} {}", id.0));
        j.audit(audit_entry(i)).unwrap();
        ack(&format!("audit {i}"));
        j.suspend(journal::Suspension {
            vmid: Some(i),
            reason: format!("r{i}"),
            since_ms: 0,
        })
        .unwrap();
        ack(&format!("suspend {i}"));
        j.accept_desired(u64::from(i) + 1, format!("doc {i}").as_bytes())
            .unwrap();
        ack(&format!("desired {i}"));
        j.set_trust(&journal::TrustRecord {
            version: u64::from(i) + 1,
            sha256: format!("h{i}"),
            document: format!("doc {i}"),
            file_sha256: format!("f{i}"),
            origin: "rotation".into(),
            applied_ms: 0,
        })
        .unwrap();
        ack(&format!("trust {i}"));
        j.mark_scratch(i).unwrap();
        ack(&format!("scratch {i}"));
        let s = j.intent_starting(step(i, "start")).unwrap();
        ack(&format!("starting {i} {}", s.0));
        let mut w = verify_window(i);
        j.put_verify(&mut w, journal::VerifyPhase::Settling, "pushed")
            .unwrap();
        ack(&format!("verify {i}"));
    }
}

fn verify_window(vmid: u32) -> journal::VerifyWindow {
    journal::VerifyWindow {
        vmid,
        step_id: Some(journal::StepId(u64::from(vmid))),
        phase: journal::VerifyPhase::Armed,
        keys: vec!["net0".into()],
        old: [(
            "net0".to_string(),
            Some("name=eth0,bridge=vmbr0".to_string()),
        )]
        .into(),
        new: [(
            "net0".to_string(),
            Some("name=eth0,bridge=vmbr1".to_string()),
        )]
        .into(),
        digest_before: "d1".into(),
        digest_after: None,
        needs_reboot: false,
        probes: vec!["status".into()],
        probe_timeout_ms: 1000,
        settle_ms: 1000,
        successes_needed: 1,
        successes: 0,
        baseline_ok: true,
        armed_at_ms: 1,
        settle_until_ms: 2,
        deadline_ms: 3,
        spec_fingerprint: "f".into(),
        code: None,
        reason: None,
        reapplied: 0,
        history: vec![],
    }
}

#[test]
fn verify_windows_keep_their_phases_and_the_window_they_replaced() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path()).unwrap();
    let mut w = verify_window(101);
    j.put_verify(&mut w, journal::VerifyPhase::Armed, "old values")
        .unwrap();
    j.put_verify(&mut w, journal::VerifyPhase::Settling, "pushed")
        .unwrap();
    j.put_verify(&mut w, journal::VerifyPhase::Probing, "")
        .unwrap();
    // A rewrite in the same phase without a detail (a probe count) adds no history entry.
    w.successes = 1;
    j.put_verify(&mut w, journal::VerifyPhase::Probing, "")
        .unwrap();
    j.put_verify(&mut w, journal::VerifyPhase::Reverted, "probe failed")
        .unwrap();
    drop(j);
    let j = Journal::open(d.path()).unwrap();
    let got = j.verify_window(101).unwrap().unwrap();
    let phases: Vec<&str> = got.history.iter().map(|t| t.phase.as_str()).collect();
    assert_eq!(phases, ["armed", "settling", "probing", "reverted"]);
    assert_eq!(got.successes, 1);
    assert!(got.is_parked());
    // A new window keeps the one it replaced.
    let mut next = verify_window(101);
    next.armed_at_ms = 10;
    j.put_verify(&mut next, journal::VerifyPhase::Armed, "again")
        .unwrap();
    assert_eq!(j.verify_window(101).unwrap().unwrap().armed_at_ms, 10);
    assert_eq!(
        j.previous_verify_window(101).unwrap().unwrap().phase,
        journal::VerifyPhase::Reverted
    );
    assert_eq!(
        j.verify_windows().unwrap().len(),
        1,
        "the previous one is not listed"
    );
    j.remove_verify(101).unwrap();
    assert!(j.verify_window(101).unwrap().is_none());
    assert!(j.previous_verify_window(101).unwrap().is_none());
}

fn audit_entry(i: u32) -> journal::AuditEntry {
    journal::AuditEntry {
        time_ms: 0,
        allowed: false,
        code: format!("code{i}"),
        vmid: Some(i),
        step: None,
        signers: vec![],
        authenticated: false,
        detail: String::new(),
    }
}

/// The child side of the lock test: holds the journal until it is killed.
#[test]
fn lock_holder() {
    let Ok(dir) = std::env::var("JOURNAL_HOLD_DIR") else {
        return;
    };
    let _j = Journal::open(std::path::Path::new(&dir)).unwrap();
    println!("HELD");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_second_process_is_refused_and_a_killed_holder_releases_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["lock_holder", "--exact", "--nocapture", "--test-threads=1"])
        .env("JOURNAL_HOLD_DIR", d.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("HELD")));
    let t = std::time::Instant::now();
    match Journal::open(d.path()) {
        Err(e @ JournalError::Locked { .. }) => {
            let JournalError::Locked { holder, dir } = &e else {
                unreachable!()
            };
            assert_eq!(holder, &child.id().to_string());
            assert_eq!(dir, d.path());
            let msg = e.to_string();
            assert!(msg.contains(&d.path().display().to_string()), "{msg}");
            assert!(msg.contains(&format!("pid {}", child.id())), "{msg}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened while another process holds it"),
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "no hang");
    child.kill().unwrap(); // SIGKILL: the kernel drops the lock with the process.
    let _ = child.wait();
    Journal::open(d.path()).expect("a dead holder's lock does not block");
}

#[test]
fn sigkill_after_any_acknowledged_write_loses_nothing() {
    // Twelve durable writes per round: kill after each of them once, then a few rounds in.
    for kill_after in (1usize..=12).chain([13, 27, 58]) {
        let d = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env("JOURNAL_CRASH_DIR", d.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut acks = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(a) = line.strip_prefix("ACK ") {
                acks.push(a.to_string());
                if acks.len() == kill_after {
                    child.kill().unwrap(); // SIGKILL
                    break;
                }
            }
        }
        let _ = child.wait();
        let j = Journal::open(d.path()).unwrap();
        for a in &acks {
            let p: Vec<&str> = a.split(' ').collect();
            let i: u32 = p[1].parse().unwrap();
            match p[0] {
                "intent" => {
                    assert!(
                        j.get(journal::StepId(p[2].parse().unwrap()))
                            .unwrap()
                            .is_some(),
                        "{a}"
                    )
                }
                "submitted" => {
                    let r = j
                        .get(journal::StepId(p[2].parse().unwrap()))
                        .unwrap()
                        .unwrap();
                    assert!(r.upid().is_some(), "{a}");
                }
                "prov" => assert!(j.provenance(i).unwrap().is_some(), "{a}"),
                "nonce" => assert_eq!(
                    j.consume(&claim(&format!("nonce{i}"), 99_999)),
                    Err(NonceError::Replayed(format!("nonce{i}"))),
                    "{a}"
                ),
                "done" => assert!(
                    j.get(journal::StepId(p[2].parse().unwrap()))
                        .unwrap()
                        .unwrap()
                        .is_done(),
                    "{a}"
                ),
                "audit" => assert!(
                    j.audit_tail(usize::MAX)
                        .unwrap()
                        .iter()
                        .any(|e| e.code == format!("code{i}")),
                    "{a}"
                ),
                "suspend" => assert!(
                    j.suspensions()
                        .unwrap()
                        .iter()
                        .any(|s| s.vmid == Some(i) && s.reason == format!("r{i}")),
                    "{a}"
                ),
                "desired" => {
                    let (rev, doc) = j.last_known_good().unwrap().unwrap();
                    assert!(rev > u64::from(i), "{a}");
                    assert_eq!(j.last_revision().unwrap(), Some(rev), "{a}");
                    assert_eq!(doc, format!("doc {}", rev - 1).into_bytes(), "{a}");
                }
                "trust" => {
                    let t = j.trust().unwrap().unwrap();
                    assert!(t.version > u64::from(i), "{a}");
                    assert_eq!(t.document, format!("doc {}", t.version - 1), "{a}");
                }
                "scratch" => assert!(j.provenance(i).unwrap().unwrap().scratch, "{a}"),
                "starting" => {
                    // The intent and the guest's `started` mark, from one sync.
                    assert!(j.provenance(i).unwrap().unwrap().started, "{a}");
                    let r = j.get(journal::StepId(p[2].parse().unwrap())).unwrap();
                    assert!(r.is_some_and(|r| r.step.kind == "start"), "{a}");
                }
                "verify" => assert_eq!(
                    j.verify_window(i).unwrap().map(|w| w.phase),
                    Some(journal::VerifyPhase::Settling),
                    "{a}"
                ),
                _ => unreachable!(),
            }
        }
    }
}

#[test]
fn move_aside_keeps_the_damaged_store_and_starts_a_new_epoch() {
    let d = tempfile::tempdir().unwrap();
    let epoch = {
        let j = Journal::open(d.path()).unwrap();
        j.intent(step(1, "start")).unwrap();
        // Refused while the store is held.
        assert!(matches!(
            journal::move_aside(d.path()),
            Err(JournalError::Locked { .. })
        ));
        j.state_epoch()
    };
    let moved = journal::move_aside(d.path()).unwrap();
    assert!(
        moved.starts_with(d.path()) && moved.join("db").exists(),
        "{moved:?}"
    );
    let j = Journal::open(d.path()).unwrap();
    assert_ne!(j.state_epoch(), epoch);
    assert!(j.in_flight().unwrap().is_empty());
    drop(j);
    // A second move keeps both broken copies.
    let again = journal::move_aside(d.path()).unwrap();
    assert_ne!(again, moved);
    assert!(moved.exists() && again.exists());
}

/// Volumes Drover detached survive a reopen, per guest, and are forgotten one by one.
#[test]
fn detached_volumes_survive_reopen_and_are_forgotten_one_by_one() {
    let d = tempfile::tempdir().unwrap();
    let rec = |vmid: u32, volume: &str, at: i64| journal::DetachRecord {
        vmid,
        key: "mp1".into(),
        volume: volume.into(),
        mount: format!("{volume},mp=/srv/b,size=3G"),
        at,
    };
    {
        let j = Journal::open(d.path()).unwrap();
        j.record_detached(&rec(101, "local-lvm:vm-101-disk-1", 10))
            .unwrap();
        j.record_detached(&rec(101, "local-lvm:vm-101-disk-2", 20))
            .unwrap();
        j.record_detached(&rec(1010, "local-lvm:vm-1010-disk-1", 30))
            .unwrap();
    }
    let j = Journal::open(d.path()).unwrap();
    let mine = j.detached(101).unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0], rec(101, "local-lvm:vm-101-disk-1", 10));
    assert_eq!(
        j.detached(1010).unwrap().len(),
        1,
        "vmid 101 is not a prefix of 1010"
    );
    j.forget_detached(101, "local-lvm:vm-101-disk-1").unwrap();
    assert_eq!(
        j.detached(101).unwrap(),
        vec![rec(101, "local-lvm:vm-101-disk-2", 20)]
    );
    assert!(j.detached(102).unwrap().is_empty());
}

/// Counts the journal's syncs (flush + fdatasync), each made slow enough that writers arriving
/// meanwhile have to queue.
fn counted_syncs(
    j: &Journal,
    slow: std::time::Duration,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    j.on_sync(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(slow);
    });
    n
}

#[test]
fn concurrent_writers_share_syncs_and_every_acknowledged_write_survives() {
    let d = tempfile::tempdir().unwrap();
    let (writes, syncs, ids) = {
        let j = Journal::open(d.path()).unwrap();
        let syncs = counted_syncs(&j, std::time::Duration::from_millis(5));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let (j, barrier) = (j.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..20u32)
                        .map(|i| j.intent(step(t * 100 + i, "start")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ids: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (
            ids.len(),
            syncs.load(std::sync::atomic::Ordering::SeqCst),
            ids,
        )
    };
    assert_eq!(writes, 160);
    // One sync per write without group commit; with it, the writers queued behind a slow
    // sync share the next one.
    assert!(syncs < writes / 2, "{syncs} syncs for {writes} writes");
    let j = Journal::open(d.path()).unwrap();
    for id in ids {
        assert!(j.get(id).unwrap().is_some(), "step {id:?} was acknowledged");
    }
}

#[test]
fn a_deferred_close_waits_for_a_sync_only_where_recovery_could_rebuild_it() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path()).unwrap();
    let syncs = counted_syncs(&j, std::time::Duration::ZERO);
    let count = || syncs.load(std::sync::atomic::Ordering::SeqCst);
    let with_task = j.intent(step(101, "start")).unwrap();
    j.submitted(
        with_task,
        "UPID:pve1:00000001:00000001:00000001:vzstart:101:drover@pve!agent:",
    )
    .unwrap();
    let synchronous = j.intent(step(102, "set_config")).unwrap();

    let before = count();
    assert!(
        j.done_deferred(with_task, Outcome::Ok).unwrap(),
        "a sync is owed"
    );
    assert_eq!(
        count(),
        before,
        "the close of a task returns before its sync"
    );
    assert!(j.get(with_task).unwrap().unwrap().is_done());
    assert!(j.in_flight().unwrap().iter().all(|r| r.id != with_task));
    j.sync().unwrap();
    assert_eq!(count(), before + 1);

    // A synchronous call has no UPID to rebuild its close from: synced before returning.
    assert!(!j.done_deferred(synchronous, Outcome::Ok).unwrap());
    assert_eq!(count(), before + 2);
    drop(j);
    let j = Journal::open(d.path()).unwrap();
    assert!(j.get(with_task).unwrap().unwrap().is_done());
    assert!(j.get(synchronous).unwrap().unwrap().is_done());
}

#[test]
fn a_start_intent_marks_the_guest_started_in_the_same_sync() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path()).unwrap();
    j.record_created(101, "op", "UPID:x", "d1").unwrap();
    let syncs = counted_syncs(&j, std::time::Duration::ZERO);
    let id = j.intent_starting(step(101, "start")).unwrap();
    assert_eq!(syncs.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(j);
    let j = Journal::open(d.path()).unwrap();
    assert!(j.provenance(101).unwrap().unwrap().started);
    assert_eq!(j.get(id).unwrap().unwrap().step.kind, "start");
    // A guest the journal does not know gets the intent alone.
    j.intent_starting(step(202, "start")).unwrap();
    assert!(j.provenance(202).unwrap().is_none());
}

#[test]
fn a_read_only_open_removes_snapshots_left_by_killed_processes() {
    let d = tempfile::tempdir().unwrap();
    drop(Journal::open(d.path()).unwrap());
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let tmp = std::env::temp_dir();
    let left = tmp.join(format!("drover-journal-ro-{dead}-7"));
    let alive = tmp.join(format!("drover-journal-ro-{}-999", std::process::id()));
    let unrelated = tmp.join(format!("drover-journal-ro-{dead}-notanumber"));
    let recent = tmp.join(format!("drover-journal-ro-{dead}-8"));
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for dir in [&left, &alive, &unrelated, &recent] {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("db/conf"), b"x").unwrap();
        if dir != &recent {
            std::fs::File::open(dir)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
    }
    let j = Journal::open_read_only(d.path()).unwrap();
    assert!(!left.exists(), "a dead process's snapshot is removed");
    assert!(
        recent.exists(),
        "a recent one is kept (its process may live in another pid namespace)"
    );
    assert!(alive.exists(), "a live process's snapshot is kept");
    assert!(
        unrelated.exists(),
        "only names the journal makes are touched"
    );
    drop(j);
    for dir in [&alive, &unrelated, &recent] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_sync_that_panics_does_not_leave_later_writers_waiting() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path()).unwrap();
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let once = first.clone();
    j.on_sync(move |_| {
        if once.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("the observer fails once");
        }
    });
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        j.intent(step(101, "start"))
    }));
    assert!(panicked.is_err());
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = j.clone();
    std::thread::spawn(move || {
        let _ = tx.send(writer.intent(step(102, "start")).is_ok());
    });
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(true),
        "the next write completes"
    );
}

/// Learned task durations survive a reopen without a sync of their own (they are advisory and
/// ride along with the next durable write), and one that does not decode is reported as its
/// error while the others are still returned.
#[test]
fn learned_task_durations_survive_reopen_without_a_sync_of_their_own() {
    let d = tempfile::tempdir().unwrap();
    let dur = |worker: &str, estimate_us: u64| journal::TaskDuration {
        worker_type: worker.into(),
        estimate_us,
        latest_us: estimate_us * 2,
    };
    {
        let j = Journal::open(d.path()).unwrap();
        let syncs = counted_syncs(&j, std::time::Duration::ZERO);
        j.remember_task_duration(&dur("vzstart", 1_010_000))
            .unwrap();
        j.remember_task_duration(&dur("vzcreate", 9_000_000))
            .unwrap();
        j.remember_task_duration(&dur("vzstart", 1_005_000))
            .unwrap();
        assert_eq!(syncs.load(std::sync::atomic::Ordering::SeqCst), 0);
        // The next durable write carries them.
        j.intent(step(1, "start")).unwrap();
        assert_eq!(syncs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
    {
        let j = Journal::open(d.path()).unwrap();
        let got: Vec<_> = j
            .task_durations()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            got,
            vec![dur("vzcreate", 9_000_000), dur("vzstart", 1_005_000)]
        );
    }
    // Junk under the prefix, written with sled directly.
    {
        let db = open_sled_directly(&d.path().join("db"));
        let t = db.open_tree("meta").unwrap();
        t.insert("task_duration/vzstop", b"\xff junk".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let j = Journal::open(d.path()).unwrap();
    let got = j.task_durations().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 2);
    let e = got.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(e.to_string().contains("task duration"), "{e}");
}

/// Every durable write waits for the disk inside the section the caller installed (the
/// agent's `block_in_place`), and a section that does not run the wait it is given still
/// gets the write made durable, never acknowledged without its sync.
#[test]
fn durable_writes_wait_for_the_disk_inside_the_installed_section() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let d = tempfile::tempdir().unwrap();
    let (id, skipped_id) = {
        let j = Journal::open(d.path()).unwrap();
        let syncs = counted_syncs(&j, std::time::Duration::ZERO);
        let entered = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = entered.clone();
        j.wait_for_disk_in(move |wait| {
            seen.fetch_add(1, SeqCst);
            wait()
        });
        let id = j.intent(step(1, "start")).unwrap();
        j.submitted(
            id,
            "UPID:pve1:0001:0002:00000003:vzstart:1:drover@pve!pve1:",
        )
        .unwrap();
        assert_eq!(entered.load(SeqCst), 2);
        assert_eq!(syncs.load(SeqCst), 2);

        j.wait_for_disk_in(|_wait| {});
        let skipped_id = j.intent(step(2, "start")).unwrap();
        assert_eq!(
            syncs.load(SeqCst),
            3,
            "synced although the section skipped the wait"
        );
        (id, skipped_id)
    };
    let j = Journal::open(d.path()).unwrap();
    assert!(j.get(id).unwrap().unwrap().upid().is_some());
    assert!(j.get(skipped_id).unwrap().is_some());
}
