//! Job records: durable per phase across reopen, listed oldest first, ended ones bounded.
#![allow(clippy::unwrap_used)]

use journal::{JobEnd, JobRecord, Journal};

fn job(id: &str, vmid: u32, at: i64) -> JobRecord {
    JobRecord {
        id: id.into(),
        vmid,
        kind: "snapshot".into(),
        payload: "drover-job v1\n".into(),
        payload_sha256: "ab".repeat(32),
        signers: vec!["op SHA256:x".into()],
        phase: "accepted".into(),
        upid: None,
        phase_at: 0,
        facts: Default::default(),
        history: vec![("accepted".into(), at, String::new())],
        end: None,
        accepted_at_ms: at,
    }
}

#[test]
fn a_job_record_survives_a_reopen_at_its_phase() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path()).unwrap();
        let mut r = job("n1", 101, 10);
        j.put_job(&r).unwrap();
        r.phase = "calling".into();
        r.upid = Some("UPID:pve1:1:2:3:vzsnapshot:101:u:".into());
        j.put_job(&r).unwrap();
        j.put_job(&job("n0", 102, 5)).unwrap();
    }
    let j = Journal::open(dir.path()).unwrap();
    let all = j.jobs().unwrap();
    assert_eq!(
        all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["n0", "n1"]
    );
    let r = j.job("n1").unwrap().unwrap();
    assert_eq!(r.phase, "calling");
    assert!(r.upid.unwrap().contains("vzsnapshot"));
    assert!(journal::check(dir.path()).undecodable.is_empty());
}

#[test]
fn ended_jobs_are_bounded_running_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.put_job(&job("running", 1, 0)).unwrap();
    for i in 0..510 {
        let mut r = job(&format!("e{i:04}"), 2, i + 1);
        r.end = Some(JobEnd::Done {
            detail: "ok".into(),
        });
        j.put_job(&r).unwrap();
    }
    let all = j.jobs().unwrap();
    assert!(all.iter().any(|r| r.id == "running"));
    assert_eq!(all.iter().filter(|r| r.end.is_some()).count(), 500);
    assert!(
        all.iter().all(|r| r.id != "e0000"),
        "the oldest ended ones go first"
    );
}
