//! Every body fixture in testdata/pve-fixtures decodes with the client's types; UPID test
//! vectors from pve-common parse and re-encode exactly; a property test round-trips UPIDs.
//! (The http-*.json exchanges are served over TLS in `hostile.rs` and classified there.)
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use proptest::prelude::*;
use proxmox_client::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/pve-fixtures")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn data<T: DeserializeOwned>(name: &str) -> T {
    let v = load(name);
    serde_json::from_value(v["data"].clone()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Files that are not API bodies of an endpoint this client calls.
const NOT_BODIES: &[&str] = &[
    "_index.json",
    "upid-test-vectors-pve-common.json",
    // ticket login is deliberately unsupported: the agent authenticates with an API token only.
    "access-ticket.json",
];

#[test]
fn every_fixture_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 38, "fixtures missing: {names:?}");
    for name in names {
        if NOT_BODIES.contains(&name.as_str())
            || name.starts_with("http-")
            || name.starts_with("real-http-")
        {
            continue;
        }
        decode_body(&name);
    }
}

/// Decodes one body fixture with the type of its endpoint.
fn decode_body(name: &str) {
    match name {
        "cluster-nextid.json" => {
            // nextid comes quoted; `Client::next_free_vmid` decodes this very file over TLS in
            // hostile.rs (`fixture_bodies_over_tls`).
            let v = load(name);
            assert_eq!(v["data"].as_str().unwrap().parse::<u32>().unwrap(), 105);
        }
        "cluster-resources-vm.json" | "real-cluster-resources-vm-partial-cv4pve32.json" => {
            let r: Vec<ClusterResource> = data(name);
            assert!(r.len() >= 2);
        }
        "lxc-config.json" | "real-lxc-config-telmate711.json" => {
            let _: LxcConfig = data(name);
        }
        "lxc-interfaces.json" => {
            let i: Vec<InterfaceInfo> = data(name);
            assert_eq!(i[1].ip_addresses[0].prefix, Some(24));
        }
        "lxc-list.json" => {
            let l: Vec<LxcListEntry> = data(name);
            assert_eq!(l.len(), 3);
        }
        "lxc-pending.json" => {
            let _: Vec<PendingEntry> = data(name);
        }
        "lxc-snapshot-list.json" => {
            let _: Vec<SnapshotEntry> = data(name);
        }
        "lxc-status-current-running.json" | "lxc-status-current-stopped-ha.json" => {
            let _: LxcStatus = data(name);
        }
        "node-tasks-active.json" | "node-tasks-archive.json" => {
            let _: Vec<TaskListEntry> = data(name);
        }
        "null-response-put-config.json" => {
            let v: Option<Value> = data(name);
            assert!(v.is_none());
        }
        "task-log-vzcreate.json" => {
            let l: Vec<TaskLogLine> = data(name);
            assert_eq!(l.last().unwrap().t, "TASK OK");
        }
        n if n.starts_with("task-status-") || n.starts_with("real-task-status-") => {
            let _: TaskStatus = data(name);
        }
        "upid-response-vzcreate.json" | "upid-response-vzstart.json" => {
            let _: Upid = data(name);
        }
        other => panic!("fixture {other} has no decoder: add one"),
    }
}

#[test]
fn config_fixture_meaning() {
    let c: LxcConfig = data("lxc-config.json");
    assert_eq!(c.cpulimit, Some(1.5));
    assert_eq!(c.memory, Some(2048));
    assert_eq!(c.onboot, Some(true));
    assert_eq!(
        c.digest.as_deref(),
        Some("5f6b1d9e2c7a4b3f8e0d1c2b3a49586776a5b4c3")
    );
    let net0 = &c.net[&0];
    assert_eq!(net0.bridge.as_deref(), Some("vmbr0"));
    assert_eq!(net0.ip.as_deref(), Some("10.0.20.41/24"));
    assert_eq!(net0.hwaddr.as_deref(), Some("BC:24:11:5A:3E:01"));
    assert_eq!(c.rootfs.as_ref().unwrap().size, Some(DiskSize::from_gib(8)));
    let mp0 = &c.mp[&0];
    assert_eq!(mp0.mp.as_deref(), Some("/srv/data"));
    assert_eq!(mp0.backup, Some(true));
    assert_eq!(mp0.size.unwrap().mib(), 32 * 1024);
    assert!(c.features.as_ref().unwrap().nesting());
    assert_eq!(
        c.lxc,
        vec![(
            "lxc.cgroup2.devices.allow".to_owned(),
            "c 10:200 rwm".to_owned()
        )]
    );
    assert_eq!(
        c.extra.get("startup").map(String::as_str),
        Some("order=2,up=30")
    );
    assert_eq!(parse_tags(c.tags.as_deref().unwrap()), vec!["prod", "web"]);

    let real: LxcConfig = data("real-lxc-config-telmate711.json");
    assert_eq!(real.cpulimit, Some(0.0));
    assert_eq!(real.net[&0].ip.as_deref(), Some("dhcp"));
    assert_eq!(real.rootfs.as_ref().unwrap().storage(), Some("containers"));
    assert_eq!(real.extra.get("tty").map(String::as_str), Some("2"));
}

#[test]
fn status_and_task_fixture_meaning() {
    let s: LxcStatus = data("lxc-status-current-stopped-ha.json");
    assert_eq!(s.entry.status, GuestStatus::Stopped);
    assert!(s.ha.is_managed());
    let r: LxcStatus = data("lxc-status-current-running.json");
    assert!(r.entry.is_running() && !r.ha.is_managed());

    let l: Vec<LxcListEntry> = data("lxc-list.json");
    assert_eq!(l[1].lock.as_deref(), Some("backup"));
    assert!(l[2].is_template());

    let p: Vec<PendingEntry> = data("lxc-pending.json");
    assert_eq!(p[1].value.as_deref(), Some("2"));
    assert!(
        p.iter()
            .any(|e| e.key == "nameserver" && e.pending.as_deref() == Some("10.0.0.54"))
    );
    assert!(
        p.iter()
            .any(|e| e.key == "searchdomain" && e.has_pending_change())
    );
    // The config a lane turn reads through `pending` alone: pending values merged in, a key
    // pending deletion left out, the digest kept (what `GET .../config` returns by default).
    let merged = proxmox_client::LxcConfig::from_pending(&p).unwrap();
    assert_eq!(merged.nameserver.as_deref(), Some("10.0.0.54"));
    assert_eq!(merged.searchdomain, None);
    assert_eq!((merged.cores, merged.memory), (Some(2), Some(2048)));
    assert_eq!(
        merged.digest.as_deref(),
        Some("5f6b1d9e2c7a4b3f8e0d1c2b3a49586776a5b4c3")
    );

    let snaps: Vec<SnapshotEntry> = data("lxc-snapshot-list.json");
    assert_eq!(snaps[1].snapstate.as_deref(), Some("prepare"));
    assert_eq!(snaps[2].running, Some(true));

    for (f, exit) in [
        ("task-status-running.json", None),
        ("task-status-stopped-ok.json", Some(TaskExit::Ok)),
        (
            "task-status-stopped-warnings.json",
            Some(TaskExit::Warnings(1)),
        ),
        (
            "task-status-stopped-error.json",
            Some(TaskExit::Error("startup for container '101' failed".into())),
        ),
    ] {
        let t: TaskStatus = data(f);
        assert_eq!(t.exit(), exit, "{f}");
        assert_eq!(t.upid.user, "reconcile@pve!agent");
        assert_eq!(t.tokenid.as_deref(), Some("agent"));
    }
    let real: TaskStatus = data("real-task-status-stopped-error-token-bpg1255.json");
    assert!(matches!(real.exit(), Some(TaskExit::Error(m)) if m.contains("got timeout")));

    let active: Vec<TaskListEntry> = data("node-tasks-active.json");
    assert!(active[0].is_running());
    let archive: Vec<TaskListEntry> = data("node-tasks-archive.json");
    assert!(!archive[1].is_running());
    assert_eq!(archive[1].status.as_deref(), Some("container did not stop"));

    let res: Vec<ClusterResource> = data("cluster-resources-vm.json");
    assert_eq!(res[3].status, Some(GuestStatus::Other("unknown".into())));
    assert_eq!(res[1].lock.as_deref(), Some("backup"));
}

#[test]
fn wrong_types_are_errors_not_panics() {
    for bad in [
        r#"{"vmid":"abc","status":"running"}"#,
        r#"{"vmid":101}"#,
        r#"{"vmid":101,"status":7}"#,
        r#"{"vmid":-1,"status":"running"}"#,
    ] {
        assert!(serde_json::from_str::<LxcListEntry>(bad).is_err(), "{bad}");
    }
    for bad in [
        r#"{"net0":"bridge=vmbr0"}"#,
        r#"{"memory":"lots"}"#,
        r#"{"onboot":"maybe"}"#,
        r#"{"rootfs":"local:1,size=huge"}"#,
        r#"{"lxc":"x"}"#,
        r#"[]"#,
    ] {
        let e = serde_json::from_str::<LxcConfig>(bad).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    assert!(serde_json::from_str::<TaskStatus>(r#"{"upid":"UPID:x","status":"stopped"}"#).is_err());
}

#[test]
fn upid_vectors_from_pve_common() {
    let v = load("upid-test-vectors-pve-common.json");
    let vectors = v["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 6);
    for vec in vectors {
        let input = vec["in"].as_str().unwrap();
        if vec["must_fail"].as_bool() == Some(true) {
            assert!(input.parse::<Upid>().is_err(), "{input} must fail");
            continue;
        }
        let u: Upid = input.parse().unwrap();
        let out = &vec["out"];
        assert_eq!(u.node, out["node"].as_str().unwrap());
        assert_eq!(u64::from(u.pid), out["pid"].as_u64().unwrap());
        assert_eq!(u.pstart, out["pstart"].as_u64().unwrap());
        assert_eq!(u64::from(u.starttime), out["starttime"].as_u64().unwrap());
        assert_eq!(u.worker_type, out["type"].as_str().unwrap());
        assert_eq!(u.id, out["id"].as_str().unwrap());
        assert_eq!(u.user, out["user"].as_str().unwrap());
        assert_eq!(u.to_string(), input, "re-encodes exactly");
    }
    // The task-log last line to exitstatus table, through TaskExit.
    for row in v["task_log_last_line_to_exitstatus"].as_array().unwrap() {
        let exit = TaskExit::from_exitstatus(row["exitstatus"].as_str().unwrap());
        let log = row["log"].as_str().unwrap();
        match exit {
            TaskExit::Ok => assert!(log.contains("TASK OK")),
            TaskExit::Warnings(n) => assert!(log.contains(&format!("TASK WARNINGS: {n}"))),
            TaskExit::Error(_) => assert!(!log.contains("TASK OK")),
        }
    }
}

fn field() -> impl Strategy<Value = String> {
    // [^:\s/]+ : printable ascii without ':' '/' and space, plus some non-ascii
    "[!-.0-9;-~é]{1,12}"
}

prop_compose! {
    fn arb_upid()(
        node in "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?",
        pid in any::<u32>(),
        pstart in 0u64..=0xF_FFFF_FFFF,
        starttime in any::<u32>(),
        worker_type in field(),
        id in prop_oneof![Just(String::new()), field()],
        user in "[a-z0-9-]{1,8}@[a-z]{1,5}(![a-z0-9_-]{1,8})?",
    ) -> Upid {
        Upid { node, pid, pstart, starttime, worker_type, id, user }
    }
}

proptest! {
    #[test]
    fn upid_round_trip(u in arb_upid()) {
        let text = u.to_string();
        let back: Upid = text.parse().unwrap();
        prop_assert_eq!(&back, &u);
        prop_assert_eq!(back.to_string(), text);
        // serde goes through the same text
        let json = serde_json::to_string(&u).unwrap();
        prop_assert_eq!(serde_json::from_str::<Upid>(&json).unwrap(), u);
    }

    #[test]
    fn upid_parse_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<Upid>();
    }

    #[test]
    fn net_round_trip(
        name in "eth[0-9]", bridge in proptest::option::of("vmbr[0-9]{1,2}"),
        firewall in proptest::option::of(any::<bool>()), tag in proptest::option::of(1u32..4095),
        mtu in proptest::option::of(64u32..9000), ip in proptest::option::of(prop_oneof![Just("dhcp".to_owned()), "10\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}"]),
    ) {
        let n = NetConfig { name, bridge, firewall, tag, mtu, ip, type_: Some("veth".into()), ..Default::default() };
        let back: NetConfig = n.to_string().parse().unwrap();
        prop_assert_eq!(back, n);
    }

    #[test]
    fn mount_round_trip(
        vol in "[a-z-]{1,8}:(vm-1[0-9]{2}-disk-[0-9]|[1-9][0-9]?)", mp in proptest::option::of("/[a-z]{1,8}"),
        gib in proptest::option::of(1u64..2048), ro in proptest::option::of(any::<bool>()),
        backup in proptest::option::of(any::<bool>()),
    ) {
        let m = MountConfig { volume: vol, mp, size: gib.map(DiskSize::from_gib), ro, backup, ..Default::default() };
        let back: MountConfig = m.to_string().parse().unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn property_parsers_never_panic(s in "\\PC{0,60}") {
        let _ = s.parse::<NetConfig>();
        let _ = s.parse::<MountConfig>();
        let _ = s.parse::<Features>();
        let _ = s.parse::<DiskSize>();
    }
}
