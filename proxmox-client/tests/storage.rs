//! The storage, backup and restore endpoints against pve-sim over real, pinned TLS.
//! Expectations come from `shared/reference/safety-nets.md` §1 (cited per step), not from
//! the simulator's output.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proxmox_client::*;
use pve_sim::{RunningSim, SimConfig, SimStorage, StorageType};

const NODE: &str = "pve1";

fn fast() -> WaitOptions {
    WaitOptions::fast(Duration::from_millis(10), Duration::from_secs(5))
}

fn client(sim: &RunningSim) -> Client {
    let fp: Fingerprint = sim.fingerprint().parse().unwrap();
    let token = ApiToken::new(pve_sim::DEFAULT_TOKEN_ID, pve_sim::DEFAULT_TOKEN_SECRET).unwrap();
    let mut c = ClientConfig::new(sim.base_url(), token, TlsTrust::Fingerprint(fp));
    c.request_timeout = Duration::from_secs(5);
    Client::new(c).unwrap()
}

async fn sim() -> RunningSim {
    let mut storages = pve_sim::SimConfig::default().storages;
    storages.push(SimStorage::new("safety", StorageType::Dir, "backup", 50));
    storages.push(SimStorage::new("store", StorageType::Dir, "rootdir", 50));
    pve_sim::start(SimConfig {
        task_duration: Duration::from_millis(20),
        storages,
        guests: vec![pve_sim::SeedGuest {
            vmid: 301,
            node: Some("pve2".into()),
            ..Default::default()
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

async fn ok(c: &Client, upid: &Upid) {
    assert_eq!(
        c.wait_task(upid, &fast()).await.unwrap(),
        TaskOutcome::Ok,
        "{upid}"
    );
}

async fn log_of(c: &Client, upid: &Upid) -> Vec<TaskLogLine> {
    c.task_log(upid, 0, 1000).await.unwrap().lines
}

#[tokio::test]
async fn storages_backups_protection_and_restore_through_the_client() {
    let sim = sim().await;
    let c = client(&sim);
    // §1.7: storages and free space; `content` filter.
    let all = c.list_storages(NODE, None).await.unwrap();
    assert!(
        all.iter()
            .any(|s| s.storage.as_deref() == Some("local-lvm"))
    );
    let backup = c.list_storages(NODE, Some("backup")).await.unwrap();
    let ids: Vec<_> = backup.iter().filter_map(|s| s.storage.clone()).collect();
    assert_eq!(ids, ["local", "safety"]);
    let st = c.storage_status(NODE, "safety").await.unwrap();
    assert_eq!(st.storage_type, "dir");
    assert!(st.supports("backup"));
    assert_eq!(st.total, Some(50 * 1024 * 1024 * 1024));
    assert_eq!(st.avail, st.total);
    let err = c.storage_status(NODE, "nope").await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    // Templates for create (what Ansible checks).
    let tmpl = c
        .storage_content(
            NODE,
            "local",
            &ContentFilter {
                content: Some("vztmpl".into()),
                vmid: None,
            },
        )
        .await
        .unwrap();
    let template = tmpl[0].volid.clone();
    assert!(template.starts_with("local:vztmpl/"), "{template}");

    // A CT with a mount point outside the backup.
    let create = CreateLxc::new(101, &template)
        .param("hostname", "web1")
        .param("rootfs", "local-lvm:8")
        .param("mp0", "local-lvm:4,mp=/srv/cache");
    ok(&c, &c.create_lxc(NODE, &create).await.unwrap()).await;
    assert!(
        c.lxc_has_feature(NODE, 101, "snapshot", None)
            .await
            .unwrap()
    );

    // §1.1: the safety copy as `safety-nets.md` §6.1 takes it.
    let mut req = VzdumpRequest::new(101, "safety");
    req.mode = Some(BackupMode::Snapshot);
    req.compress = Some(BackupCompression::Zstd);
    req.protected = true;
    req.remove = Some(false);
    req.notes_template = Some("drover:pre-destroy:{{vmid}}".into());
    req.lockwait = Some(10);
    let VzdumpStarted::Task(upid) = c.vzdump(NODE, &req).await.unwrap() else {
        panic!("expected a task");
    };
    assert_eq!(upid.worker_type, "vzdump");
    assert_eq!(upid.vmid(), Some(101));
    ok(&c, &upid).await;
    let log = log_of(&c, &upid).await;
    let volid = backup_volid_from_log("safety", &log).unwrap();
    assert!(
        volid.starts_with("safety:backup/vzdump-lxc-101-"),
        "{volid}"
    );
    // §1.2: confirmed in the listing, with the marker and protection.
    let list = c
        .storage_content(NODE, "safety", &ContentFilter::backups_of(101))
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].volid, volid);
    assert!(list[0].is_protected());
    assert_eq!(list[0].notes.as_deref(), Some("drover:pre-destroy:101"));
    assert_eq!(list[0].subtype.as_deref(), Some("lxc"));
    let info = c.volume_info(NODE, "safety", &volid).await.unwrap();
    let bytes = std::fs::read(&info.path).unwrap();
    assert_eq!(Some(bytes.len() as u64), info.size);
    assert_eq!(info.protected, Some(true));
    // §1.4: the archived config.
    let conf = c.extract_config(NODE, &volid).await.unwrap();
    assert!(conf.contains("hostname: web1\n"), "{conf}");
    // The plain "OK" for a guest on another node.
    assert_eq!(
        c.vzdump(NODE, &VzdumpRequest::new(301, "safety"))
            .await
            .unwrap(),
        VzdumpStarted::NotOnNode
    );
    let d = c.vzdump_defaults(NODE, Some("safety")).await.unwrap();
    assert_eq!(d.prune_backups.as_deref(), Some("keep-all=1"));
    assert_eq!(d.remove, Some(true));
    assert_eq!(d.mode.as_deref(), Some("snapshot"));

    // §1.3: a protected backup cannot be deleted (inside the imgdel task).
    let del = c.delete_volume(NODE, "safety", &volid).await.unwrap();
    assert_eq!(del.worker_type, "imgdel");
    match c.wait_task(&del, &fast()).await.unwrap() {
        TaskOutcome::Failed { message, .. } => {
            assert!(
                message.starts_with("cannot remove protected archive"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let dry = c
        .prune_backups_dry_run(NODE, "safety", Some("keep-last=1"), Some(101))
        .await
        .unwrap();
    assert_eq!(dry[0].mark, "protected");

    // §1.5: restore over the CT; the mount point without backup=1 comes back empty.
    sim.set_volume_data("local-lvm:vm-101-disk-1", "cache");
    let restore = RestoreLxc {
        force: true,
        ..RestoreLxc::new(101, &volid, "local-lvm")
    };
    let r = c.restore_lxc(NODE, &restore).await.unwrap();
    assert_eq!(r.worker_type, "vzrestore");
    ok(&c, &r).await;
    let cfg = c.lxc_config(NODE, 101, false).await.unwrap();
    let mp0 = &cfg.mp[&0];
    assert_eq!(mp0.mp.as_deref(), Some("/srv/cache"));
    assert_ne!(mp0.volume, "local-lvm:vm-101-disk-1", "a new volume");
    assert_eq!(sim.volume_data(&mp0.volume), None, "{mp0:?}");
    // Refusal: a running CT is not overwritten (synchronous 500).
    ok(&c, &c.start_lxc(NODE, 101).await.unwrap()).await;
    let err = c.restore_lxc(NODE, &restore).await.unwrap_err();
    assert_eq!(err.message(), Some("can't overwrite running container"));

    // Unprotect and delete, by the client's typed calls.
    c.update_volume(
        NODE,
        "safety",
        &volid,
        &VolumeUpdate {
            protected: Some(false),
            notes: Some("kept for the audit".into()),
        },
    )
    .await
    .unwrap();
    let info = c.volume_info(NODE, "safety", &volid).await.unwrap();
    assert_eq!(info.notes.as_deref(), Some("kept for the audit"));
    ok(&c, &c.delete_volume(NODE, "safety", &volid).await.unwrap()).await;
    assert!(!std::path::Path::new(&info.path).exists());
    assert!(
        c.storage_content(NODE, "safety", &ContentFilter::backups_of(101))
            .await
            .unwrap()
            .is_empty()
    );
    // Bad input never leaves the client.
    let e = c
        .update_volume(NODE, "safety", &volid, &VolumeUpdate::default())
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Config { .. }), "{e}");
    let dir_ct = CreateLxc::new(102, &template).param("rootfs", "store:2");
    ok(&c, &c.create_lxc(NODE, &dir_ct).await.unwrap()).await;
    assert!(
        !c.lxc_has_feature(NODE, 102, "snapshot", None)
            .await
            .unwrap()
    );
}
