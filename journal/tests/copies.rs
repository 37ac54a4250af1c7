//! Safety-copy manifests against real sled directories: durable across reopen, decoded by
//! `check`, pruned only where nothing is left on PVE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use journal::{CopyState, Journal, MANIFEST_VERSION, SafetyCopy};

fn manifest(id: &str, vmid: u32, at: i64) -> SafetyCopy {
    SafetyCopy {
        id: id.into(),
        manifest_version: MANIFEST_VERSION,
        kind: "pre-destroy".into(),
        op: "destroy_guest".into(),
        method: "vzdump".into(),
        host: "pve1".into(),
        vmid,
        hostname: Some(format!("ct-{vmid}")),
        step_id: id.into(),
        storage: "safety".into(),
        notes: format!("drover:pre-destroy:{id}"),
        state: CopyState::Creating,
        created_at_ms: at,
        completed_at_ms: None,
        protect_until_ms: None,
        config_digest: Some("a".repeat(40)),
        covered: vec!["rootfs".into()],
        uncovered: vec![],
        was_running: true,
        upid: None,
        volid: None,
        format: None,
        size: None,
        ctime: None,
        total_bytes_written: None,
        sha256: None,
        hash_source: None,
        snapname: None,
        warnings: vec![],
    }
}

#[test]
fn manifests_move_through_their_states_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path()).unwrap();
        let mut m = manifest("e-1", 101, 10);
        j.put_copy(&m).unwrap();
        m.state = CopyState::Complete;
        m.volid = Some("safety:backup/vzdump-lxc-101-2026_01_02-03_04_05.tar.zst".into());
        j.put_copy(&m).unwrap();
        j.put_copy(&manifest("e-2", 102, 5)).unwrap();
    }
    let j = Journal::open(dir.path()).unwrap();
    let all = j.copy_records().unwrap();
    assert_eq!(
        all.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["e-2", "e-1"],
        "oldest first"
    );
    let one = j.copy_record("e-1").unwrap().unwrap();
    assert_eq!(one.state, CopyState::Complete);
    assert!(one.is_live());
    drop(j);
    let report = journal::check(dir.path());
    assert!(report.is_healthy(), "{report}");
    assert_eq!(report.copies, 2);
}

#[test]
fn pruning_keeps_every_live_copy_and_the_newest_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    for i in 0..6 {
        let mut m = manifest(&format!("e-{i}"), 101, i);
        m.state = if i % 2 == 0 {
            CopyState::Deleted { delete_upid: None }
        } else {
            CopyState::Complete
        };
        j.put_copy(&m).unwrap();
    }
    assert_eq!(j.prune_copy_records(1).unwrap(), 2);
    let left: Vec<String> = j
        .copy_records()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["e-1", "e-3", "e-4", "e-5"]);
}
