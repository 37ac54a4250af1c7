//! The client against pve-sim over real TLS on loopback: every endpoint, every error class
//! (with the sim's fault injection), the three TLS modes including certificate rotation, and a
//! 401 that is not retried. The sim does not use this crate, so each checks the other.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proxmox_client::*;
use pve_sim::{Faults, RunningSim, SeedGuest, SimConfig};

const NODE: &str = "pve1";

fn fast() -> WaitOptions {
    WaitOptions::fast(Duration::from_millis(10), Duration::from_secs(5))
}

fn token() -> ApiToken {
    ApiToken::new(pve_sim::DEFAULT_TOKEN_ID, pve_sim::DEFAULT_TOKEN_SECRET).unwrap()
}

fn config_for(sim: &RunningSim, tls: TlsTrust) -> ClientConfig {
    let mut c = ClientConfig::new(sim.base_url(), token(), tls);
    c.request_timeout = Duration::from_secs(5);
    c
}

fn client(sim: &RunningSim) -> Client {
    let fp: Fingerprint = sim.fingerprint().parse().unwrap();
    Client::new(config_for(sim, TlsTrust::Fingerprint(fp))).unwrap()
}

async fn sim_with(guests: Vec<SeedGuest>) -> RunningSim {
    pve_sim::start(SimConfig {
        guests,
        // PVE waits 10 s for the config flock; these tests' 5 s request timeout would expire
        // first, so they shorten the wait.
        lock_wait: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

async fn ok(c: &Client, upid: Upid) {
    assert_eq!(
        c.wait_task(&upid, &fast()).await.unwrap(),
        TaskOutcome::Ok,
        "{upid}"
    );
}

#[tokio::test]
async fn every_endpoint_against_the_sim() {
    let sim = sim_with(Vec::new()).await;
    let c = client(&sim);

    assert!(!c.version().await.unwrap().version.is_empty());
    assert_eq!(c.next_free_vmid().await.unwrap(), 100);

    // create (start=0), normalizations
    let desired_net: NetConfig = "name=eth0,bridge=vmbr0,ip=dhcp".parse().unwrap();
    let create = CreateLxc::new(120, "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst")
        .param("hostname", "web-120")
        .param("memory", 1024)
        .param("net0", &desired_net)
        .param("rootfs", "local-lvm:8")
        .param("tags", "web;prod");
    let upid = c.create_lxc(NODE, &create).await.unwrap();
    assert_eq!(
        (upid.worker_type.as_str(), upid.vmid()),
        ("vzcreate", Some(120))
    );
    assert_eq!(upid.user, pve_sim::DEFAULT_TOKEN_ID);
    ok(&c, upid).await;
    assert_eq!(sim.count_mutations("create", 120), 1);
    let e = c.create_lxc(NODE, &create).await.unwrap_err();
    assert_eq!(e.already_in_state(), Some(AlreadyInState::Exists), "{e}");

    let list = c.list_lxc(NODE).await.unwrap();
    let ct = list.iter().find(|e| e.vmid == 120).unwrap();
    assert_eq!(ct.status, GuestStatus::Stopped);
    assert_eq!(ct.lock, None);

    let cfg = c.lxc_config(NODE, 120, false).await.unwrap();
    assert_eq!(cfg.hostname.as_deref(), Some("web-120"));
    assert_eq!(cfg.memory, Some(1024));
    let net0 = &cfg.net[&0];
    assert!(net0.same_as_desired(&desired_net), "{net0}");
    assert!(net0.hwaddr.is_some(), "the sim adds hwaddr like PVE");
    let rootfs = cfg.rootfs.clone().unwrap();
    assert_eq!(rootfs.size, Some(DiskSize::from_gib(8)));
    assert_eq!(rootfs.storage(), Some("local-lvm"));
    assert_eq!(
        parse_tags(cfg.tags.as_deref().unwrap()),
        vec!["prod", "web"]
    );
    let digest = cfg.digest.clone().unwrap();
    assert_eq!(digest.len(), 40);
    let current = c.lxc_config(NODE, 120, true).await.unwrap();
    assert_eq!(current.digest.as_deref(), Some(digest.as_str()));

    // PUT config with digest; a stale digest is a mismatch
    c.update_lxc_config(
        NODE,
        120,
        &ConfigUpdate::new()
            .set("cores", 2)
            .set_bool("onboot", true)
            .with_digest(&digest),
    )
    .await
    .unwrap();
    let cfg2 = c.lxc_config(NODE, 120, false).await.unwrap();
    assert_eq!((cfg2.cores, cfg2.onboot), (Some(2), Some(true)));
    assert_ne!(cfg2.digest.as_deref(), Some(digest.as_str()));
    let e = c
        .update_lxc_config(
            NODE,
            120,
            &ConfigUpdate::new().set("cores", 3).with_digest(&digest),
        )
        .await
        .unwrap_err();
    assert!(e.is_digest_mismatch(), "{e}");
    assert_eq!(e.code(), "pve_digest_mismatch");
    c.update_lxc_config(NODE, 120, &ConfigUpdate::new().delete("onboot"))
        .await
        .unwrap();
    assert_eq!(c.lxc_config(NODE, 120, false).await.unwrap().onboot, None);
    assert!(!c.lxc_pending(NODE, 120).await.unwrap().is_empty());

    // parameter errors carry PVE's errors map
    let e = c
        .update_lxc_config(
            NODE,
            120,
            &ConfigUpdate::new().set("memory", 1).set("foo", 1),
        )
        .await
        .unwrap_err();
    let errs = e.param_errors().unwrap_or_else(|| panic!("{e}"));
    assert!(
        errs.contains_key("foo") && errs.contains_key("memory"),
        "{errs:?}"
    );
    assert!(!e.is_transient() && !e.may_have_been_processed());

    // power
    assert!(!c.lxc_status(NODE, 120).await.unwrap().entry.is_running());
    ok(&c, c.start_lxc(NODE, 120).await.unwrap()).await;
    let st = c.lxc_status(NODE, 120).await.unwrap();
    assert!(st.entry.is_running() && !st.ha.is_managed());
    let e = c.start_lxc(NODE, 120).await.unwrap_err();
    assert_eq!(e.already_in_state(), Some(AlreadyInState::Running), "{e}");
    ok(&c, c.reboot_lxc(NODE, 120, Some(30)).await.unwrap()).await;
    let opts = ShutdownOptions {
        timeout: Some(30),
        force_stop: true,
    };
    ok(&c, c.shutdown_lxc(NODE, 120, &opts).await.unwrap()).await;
    let e = c.stop_lxc(NODE, 120).await.unwrap_err();
    assert_eq!(
        e.already_in_state(),
        Some(AlreadyInState::NotRunning),
        "{e}"
    );
    ok(&c, c.start_lxc(NODE, 120).await.unwrap()).await;
    ok(&c, c.stop_lxc(NODE, 120).await.unwrap()).await;

    // resize
    let upid = c
        .resize_lxc(
            NODE,
            120,
            "rootfs",
            ResizeSize::Grow(DiskSize::from_gib(2)),
            None,
        )
        .await
        .unwrap();
    ok(&c, upid.clone()).await;
    let cfg3 = c.lxc_config(NODE, 120, false).await.unwrap();
    assert_eq!(cfg3.rootfs.unwrap().size, Some(DiskSize::from_gib(10)));
    let e = c
        .resize_lxc(
            NODE,
            120,
            "rootfs",
            ResizeSize::Absolute(DiskSize::from_gib(10)),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        e.message().unwrap().contains("already at specified size"),
        "{e}"
    );

    // tasks
    let st = c.task_status(&upid).await.unwrap();
    assert_eq!(st.exit(), Some(TaskExit::Ok));
    assert_eq!(st.upid, upid);
    let log = c.task_log(&upid, 0, 50).await.unwrap();
    assert_eq!(log.lines.last().unwrap().t, "TASK OK");
    let archive = c
        .list_tasks(
            NODE,
            &TaskListFilter {
                vmid: Some(120),
                typefilter: Some("vzstart".into()),
                since: Some(0),
                ..TaskListFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(archive.len(), 2);
    assert!(
        archive
            .iter()
            .all(|t| !t.is_running() && t.status.as_deref() == Some("OK"))
    );
    assert!(
        c.list_tasks(NODE, &TaskListFilter::active_for(120))
            .await
            .unwrap()
            .is_empty()
    );

    // cluster view
    let res = c.cluster_vm_resources().await.unwrap();
    let r = res.iter().find(|r| r.id == "lxc/120").unwrap();
    assert_eq!((r.vmid, r.node.as_deref()), (Some(120), Some(NODE)));

    // snapshots: the list works; create/delete/rollback are typed either way
    let snaps = c.list_snapshots(NODE, 120).await.unwrap();
    assert!(snaps.iter().any(|s| s.name == "current"));
    for res in [
        c.create_snapshot(NODE, 120, "before", Some("test")).await,
        c.rollback_snapshot(NODE, 120, "before", false).await,
        c.delete_snapshot(NODE, 120, "before", false).await,
    ] {
        match res {
            Ok(upid) => {
                c.wait_task(&upid, &fast()).await.unwrap();
            }
            // pve-sim does not implement these yet (501); the client still returns a typed error.
            Err(e) => assert_eq!(e.status(), Some(501), "{e}"),
        }
    }

    // destroy; the CT is gone and says so the PVE way
    ok(
        &c,
        c.destroy_lxc(NODE, 120, &DestroyOptions::default())
            .await
            .unwrap(),
    )
    .await;
    let e = c.lxc_config(NODE, 120, false).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.already_in_state(), Some(AlreadyInState::DoesNotExist));
    assert_eq!(sim.count_mutations("destroy", 120), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn error_classes_from_sim_faults() {
    let sim = sim_with(vec![
        SeedGuest {
            vmid: 130,
            lock: Some("backup".into()),
            ..SeedGuest::default()
        },
        SeedGuest {
            vmid: 131,
            running: true,
            ..SeedGuest::default()
        },
        SeedGuest {
            vmid: 132,
            protection: true,
            ..SeedGuest::default()
        },
        SeedGuest {
            vmid: 133,
            ..SeedGuest::default()
        },
    ])
    .await;
    let c = client(&sim);

    // CT locked by a pretend backup: PVE checks the lock inside the vzstart worker, so the
    // call gets a UPID and the task fails with the lock message (Status.pm).
    let upid = c.start_lxc(NODE, 130).await.unwrap();
    match c.wait_task(&upid, &fast()).await.unwrap() {
        proxmox_client::TaskOutcome::Failed { message, log_tail } => {
            assert_eq!(message, "CT is locked (backup)");
            assert_eq!(
                log_tail.last().unwrap(),
                "TASK ERROR: CT is locked (backup)"
            );
        }
        other => panic!("expected a failed task, got {other:?}"),
    }
    // Synchronous calls still refuse at once: destroy and PUT config check the lock before
    // answering.
    let e = c
        .destroy_lxc(NODE, 130, &Default::default())
        .await
        .unwrap_err();
    assert!(e.is_lock() && !e.is_transient(), "{e}");
    assert_eq!(e.code(), "pve_locked");
    let list = c.list_lxc(NODE).await.unwrap();
    assert_eq!(
        list.iter().find(|e| e.vmid == 130).unwrap().lock.as_deref(),
        Some("backup")
    );

    // protection
    let e = c
        .destroy_lxc(NODE, 132, &DestroyOptions::default())
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("protection"), "{e}");
    assert!(!e.is_transient());

    // a stuck task: the wait deadline is its own error and the task stays active; meanwhile a
    // second mutation waits for the config flock and fails like PVE after the timeout
    sim.set_faults(Faults {
        stuck_tasks: ["vzstop".to_owned()].into_iter().collect(),
        ..Faults::default()
    });
    let stop = c.stop_lxc(NODE, 131).await.unwrap();
    let e = c
        .wait_task(
            &stop,
            &WaitOptions::fast(Duration::from_millis(20), Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(e.is_wait_deadline(), "{e}");
    let active = c
        .list_tasks(NODE, &TaskListFilter::active_for(131))
        .await
        .unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].upid, stop);
    assert!(active[0].is_running());
    assert_eq!(
        c.task_status(&stop).await.unwrap().status,
        TaskState::Running
    );
    let e = c
        .update_lxc_config(NODE, 131, &ConfigUpdate::new().set("cores", 2))
        .await
        .unwrap_err();
    assert!(e.is_lock() && e.is_transient(), "{e}");
    assert!(e.message().unwrap().contains("got timeout"), "{e}");

    // failing tasks: outcome Failed with the log's last lines
    sim.set_faults(Faults {
        task_failure_rate: 1.0,
        ..Faults::default()
    });
    let upid = c.start_lxc(NODE, 133).await.unwrap();
    match c.wait_task(&upid, &fast()).await.unwrap() {
        TaskOutcome::Failed { message, log_tail } => {
            assert!(!message.is_empty());
            assert!(!log_tail.is_empty());
            assert!(
                log_tail.last().unwrap().starts_with("TASK ERROR"),
                "{log_tail:?}"
            );
        }
        other => panic!("{other:?}"),
    }

    // injected 500 "got timeout" / 596: transient; only the 596 may have been processed
    sim.set_faults(Faults {
        seed: Some(7),
        error_rates: [("vzstart".to_owned(), 1.0)].into_iter().collect(),
        ..Faults::default()
    });
    let (mut lock, mut proxy) = (0, 0);
    for _ in 0..12 {
        let e = c.start_lxc(NODE, 133).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        if e.status() == Some(596) {
            assert!(e.may_have_been_processed());
            proxy += 1;
        } else {
            assert!(e.is_lock() && !e.may_have_been_processed(), "{e}");
            lock += 1;
        }
    }
    assert!(lock > 0 && proxy > 0, "lock={lock} proxy={proxy}");
    assert_eq!(
        sim.count_mutations("start", 133),
        1,
        "faults hit before any effect"
    );

    // unknown task
    let ghost: Upid = "UPID:pve1:00000001:00000001:00000001:vzstart:133:drover@pve!agent:"
        .parse()
        .unwrap();
    let e = c.task_status(&ghost).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    sim.shutdown().await;
}

#[tokio::test]
async fn unauthorized_is_its_own_kind_and_sent_once() {
    let sim = pve_sim::start(SimConfig {
        auth_fail_delay: Duration::from_secs(2),
        guests: vec![SeedGuest {
            vmid: 140,
            ..SeedGuest::default()
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let fp: Fingerprint = sim.fingerprint().parse().unwrap();
    let wrong = ApiToken::new(
        pve_sim::DEFAULT_TOKEN_ID,
        "00000000-0000-0000-0000-000000000000",
    )
    .unwrap();
    let mut cfg = ClientConfig::new(sim.base_url(), wrong, TlsTrust::Fingerprint(fp));
    cfg.request_timeout = Duration::from_secs(10);
    let c = Client::new(cfg).unwrap();
    let t = Instant::now();
    let e = c.start_lxc(NODE, 140).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        e.is_unauthorized() && !e.is_transient() && !e.may_have_been_processed(),
        "{e}"
    );
    assert_eq!(e.code(), "pve_unauthorized");
    // One delayed 401, not several: the sim delays each by 2 s (a second one would take 4 s).
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3900),
        "{took:?}"
    );
    assert_eq!(sim.count_mutations("start", 140), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn tls_pins_against_the_sim() {
    let sim = sim_with(Vec::new()).await;
    // wrong pin: refused before any request reaches the API
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let before = sim.request_count();
    let c = Client::new(config_for(
        &sim,
        TlsTrust::Fingerprint(Fingerprint::of_der(other.cert.der())),
    ))
    .unwrap();
    let e = c.version().await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tls { .. }), "{e}");
    assert_eq!(sim.request_count(), before);

    // node certificate file, rotated and re-read
    let dir = tempfile::tempdir().unwrap();
    let proxy_pem = dir.path().join("pveproxy-ssl.pem");
    let pve_pem = dir.path().join("pve-ssl.pem");
    std::fs::write(&pve_pem, sim.cert_pem()).unwrap();
    let mut cfg = config_for(
        &sim,
        TlsTrust::NodeCertificate {
            paths: vec![proxy_pem, pve_pem.clone()],
            reload_interval: Duration::from_millis(300),
        },
    );
    // no pooled connection survives between steps, so each call handshakes again
    cfg.pool_idle_timeout = Duration::from_millis(1);
    let c = Client::new(cfg).unwrap();
    c.version().await.unwrap();
    let new_pem = sim.rotate_certificate().unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    // the file still holds the old certificate: refused (and the file was just re-read)
    let e = c.version().await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tls { .. }), "{e}");
    // renewal writes the new certificate; after the re-read interval the client recovers
    std::fs::write(&pve_pem, &new_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    c.version().await.unwrap();
    // and the fingerprint the sim now prints is the pin the file gives
    let fp: Fingerprint = sim.fingerprint().parse().unwrap();
    assert_eq!(Fingerprint::of_pem_file(&pve_pem).unwrap(), fp);
    sim.shutdown().await;
}

#[tokio::test]
async fn ca_file_mode_against_the_sim() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "PVE Cluster Manager CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, ca_pem) = (
        dir.path().join("pve-ssl.pem"),
        dir.path().join("pve-ssl.key"),
        dir.path().join("pve-root-ca.pem"),
    );
    std::fs::write(&cert_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let sim = pve_sim::start(SimConfig {
        tls: pve_sim::SimTls::Files {
            cert_pem: cert_pem.clone(),
            key_pem,
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new(config_for(&sim, TlsTrust::CaFile(ca_pem))).unwrap();
    c.version().await.unwrap();
    // the sim's own self-signed leaf is not a CA for this one
    let c = Client::new(config_for(
        &sim,
        TlsTrust::CaFile(dir.path().join("nope.pem")),
    ));
    assert!(c.is_err());
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let e = Client::new(config_for(&sim, TlsTrust::CaFile(other_pem)))
        .unwrap()
        .version()
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tls { .. }), "{e}");
    sim.shutdown().await;
}
