//! Behaviours where pve-sim used to differ from PVE (`testdata/pve-sim-divergences.md`), each
//! checked over real HTTPS against what `proxmox-api.md` and the Proxmox source say. The
//! conformance run (`pve-sim/conformance`) checks the same with proxmoxer and Ansible.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pve_sim::{DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, Faults, SeedGuest, SimConfig};
use serde_json::Value;

struct Sim {
    sim: pve_sim::RunningSim,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    reason: String,
    connection: Option<String>,
    body: Value,
}

impl Sim {
    async fn start(guests: Vec<SeedGuest>, lock_wait: Duration) -> Sim {
        let sim = pve_sim::start(SimConfig {
            guests,
            lock_wait,
            task_duration: Duration::from_millis(100),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        Sim { sim, http }
    }

    async fn call(&self, method: &str, path: &str, form: &[(&str, &str)]) -> Answer {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}/api2/json{path}", self.sim.base_url());
        let req = self.http.request(m.clone(), url).header(
            "Authorization",
            format!("PVEAPIToken={DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}"),
        );
        let req = if m == reqwest::Method::GET {
            req.query(form)
        } else {
            req.form(form)
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let reason = r
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
            .unwrap_or_default();
        let connection = r
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string());
        let body = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        Answer {
            status,
            reason,
            connection,
            body,
        }
    }

    async fn upid(&self, method: &str, path: &str, form: &[(&str, &str)]) -> String {
        let a = self.call(method, path, form).await;
        assert_eq!(a.status, 200, "{method} {path}: {}", a.body);
        a.body["data"].as_str().unwrap().to_string()
    }

    async fn exit(&self, upid: &str) -> String {
        for _ in 0..300 {
            let a = self
                .call("GET", &format!("/nodes/pve1/tasks/{upid}/status"), &[])
                .await;
            if a.body["data"]["status"] == "stopped" {
                return a.body["data"]["exitstatus"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {upid} did not finish");
    }
}

fn running(vmid: u32) -> SeedGuest {
    SeedGuest {
        vmid,
        running: true,
        ..SeedGuest::default()
    }
}

const LOCK: &str = "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout";

#[tokio::test]
async fn put_config_waits_for_the_flock_and_workers_take_it_inside_their_task() {
    // A lock wait of 3 s: "at once" and "after the lock wait" stay seconds apart on a loaded
    // machine.
    let s = Sim::start(vec![running(101)], Duration::from_secs(3)).await;
    s.sim.set_faults(Faults {
        stuck_tasks: ["vzshutdown".to_string()].into_iter().collect(),
        ..Faults::default()
    });
    let first = s
        .upid("POST", "/nodes/pve1/lxc/101/status/shutdown", &[])
        .await;
    // A second shutdown: a UPID at once; its worker waits, then fails like PVE.
    let t = Instant::now();
    let second = s
        .upid("POST", "/nodes/pve1/lxc/101/status/shutdown", &[])
        .await;
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // PUT config waits the configured time for the flock, then got timeout.
    let t = Instant::now();
    let a = s
        .call("PUT", "/nodes/pve1/lxc/101/config", &[("cores", "2")])
        .await;
    assert!(
        t.elapsed() >= Duration::from_millis(2990),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((a.status, a.reason.as_str()), (500, LOCK));
    assert_eq!(s.exit(&second).await, LOCK);
    let log = s
        .call("GET", &format!("/nodes/pve1/tasks/{second}/log"), &[])
        .await;
    assert_eq!(log.body["data"][0]["t"], "trying to acquire lock...");
    // stop overrule-shutdown=1 aborts the running shutdown and gets the flock.
    s.sim.set_faults(Faults::default());
    let stop = s
        .upid(
            "POST",
            "/nodes/pve1/lxc/101/status/stop",
            &[("overrule-shutdown", "1")],
        )
        .await;
    assert_eq!(s.exit(&stop).await, "OK");
    assert_eq!(s.exit(&first).await, "interrupted by signal");
    assert!(!s.sim.guest(101).unwrap().running);
}

#[tokio::test]
async fn lock_and_snapshot_errors_arrive_inside_the_task() {
    let s = Sim::start(
        vec![SeedGuest {
            vmid: 101,
            lock: Some("backup".into()),
            ..SeedGuest::default()
        }],
        Duration::from_millis(400),
    )
    .await;
    let start = s
        .upid("POST", "/nodes/pve1/lxc/101/status/start", &[])
        .await;
    assert_eq!(s.exit(&start).await, "CT is locked (backup)");
    let snap = s
        .upid(
            "POST",
            "/nodes/pve1/lxc/101/snapshot",
            &[("snapname", "pre-upgrade")],
        )
        .await;
    assert_eq!(s.exit(&snap).await, "CT is locked (backup)");
    let rb = s
        .upid("POST", "/nodes/pve1/lxc/101/snapshot/nosuch/rollback", &[])
        .await;
    assert_eq!(s.exit(&rb).await, "snapshot 'nosuch' does not exist");
    // Synchronous calls refuse at once.
    let a = s
        .call("PUT", "/nodes/pve1/lxc/101/config", &[("cores", "2")])
        .await;
    assert_eq!(
        (a.status, a.reason.as_str()),
        (500, "CT is locked (backup)")
    );
}

#[tokio::test]
async fn parameters_are_checked_like_jsonschema_and_resthandler() {
    let s = Sim::start(vec![SeedGuest::default()], Duration::from_millis(400)).await;
    let put = |form: &'static [(&'static str, &'static str)]| {
        let s = &s;
        async move { s.call("PUT", "/nodes/pve1/lxc/100/config", form).await }
    };
    let a = put(&[("onboot", "true")]).await;
    assert_eq!(
        a.body["errors"]["onboot"],
        "type check ('boolean') failed - got 'true'"
    );
    assert_eq!(
        a.connection.as_deref(),
        Some("close"),
        "errors close the connection"
    );
    let a = put(&[("tags", "web"), ("tags", "prod")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(s.sim.guest(100).unwrap().tags.as_deref(), Some("prod;web"));
    assert_eq!(a.connection, None);
    let a = put(&[("hostname", "a1"), ("hostname", "b2")]).await;
    assert_eq!(
        a.body["errors"]["hostname"],
        "type check ('string') failed - got ARRAY"
    );
    let a = put(&[]).await;
    assert_eq!((a.status, a.reason.as_str()), (500, "no options specified"));
    let a = put(&[("unprivileged", "0")]).await;
    assert_eq!(
        a.reason,
        "unable to modify read-only option: 'unprivileged'"
    );
    let a = put(&[("delete", "memory")]).await;
    assert_eq!(a.reason, "unable to delete required option 'memory'");
    let a = put(&[("features", "keyctl=1,nesting=1")]).await;
    assert_eq!(
        (a.status, a.reason.as_str()),
        (
            403,
            "Permission check failed (changing feature flags (except nesting) is only allowed for root@pam)"
        )
    );
    assert_eq!(put(&[("features", "nesting=1")]).await.status, 200);
    let a = put(&[("net0", "name=eth0,bogus=1")]).await;
    assert_eq!(
        a.body["errors"]["net0"],
        "invalid format - invalid key in comma-separated list property: bogus\n"
    );
    let a = s
        .call(
            "POST",
            "/nodes/pve1/lxc/100/snapshot",
            &[("snapname", "current")],
        )
        .await;
    assert_eq!(
        a.reason,
        "unable to use snapshot name 'current' (reserved name)"
    );
}

#[tokio::test]
async fn shapes_follow_the_fixtures() {
    let s = Sim::start(vec![running(101)], Duration::from_millis(400)).await;
    // Snapshot: digest changes, parent appears, `current` carries digest and parent.
    let before =
        s.call("GET", "/nodes/pve1/lxc/101/config", &[]).await.body["data"]["digest"].clone();
    let snap = s
        .upid(
            "POST",
            "/nodes/pve1/lxc/101/snapshot",
            &[("snapname", "pre-upgrade")],
        )
        .await;
    assert_eq!(s.exit(&snap).await, "OK");
    let conf = s.call("GET", "/nodes/pve1/lxc/101/config", &[]).await.body["data"].clone();
    assert_ne!(conf["digest"], before);
    assert_eq!(conf["parent"], "pre-upgrade");
    let list = s
        .call("GET", "/nodes/pve1/lxc/101/snapshot", &[])
        .await
        .body["data"]
        .clone();
    let current = list.as_array().unwrap().last().unwrap().clone();
    assert_eq!(current["digest"], conf["digest"]);
    assert_eq!(current["parent"], "pre-upgrade");
    // Pending: typed values and the digest row.
    s.call(
        "PUT",
        "/nodes/pve1/lxc/101/config",
        &[("nameserver", "10.0.0.54")],
    )
    .await;
    let pending = s.call("GET", "/nodes/pve1/lxc/101/pending", &[]).await.body["data"].clone();
    let row = |k: &str| {
        pending
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == k)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("memory")["value"], 512);
    assert_eq!(row("nameserver")["pending"], "10.0.0.54");
    assert!(row("digest")["value"].is_string());
    // Running status: pid and pressure figures.
    let st = s
        .call("GET", "/nodes/pve1/lxc/101/status/current", &[])
        .await
        .body["data"]
        .clone();
    assert!(
        st["pid"].is_u64() && st["pressurememoryfull"].is_u64(),
        "{st}"
    );
    // Task list and log: total, filters and paging.
    let tasks = s
        .call(
            "GET",
            "/nodes/pve1/tasks",
            &[("vmid", "101"), ("limit", "0")],
        )
        .await
        .body;
    assert_eq!(tasks["total"], 1);
    assert_eq!(tasks["data"], serde_json::json!([]));
    let log = s
        .call(
            "GET",
            &format!("/nodes/pve1/tasks/{snap}/log"),
            &[("limit", "1")],
        )
        .await
        .body;
    assert!(log["total"].as_u64().unwrap() >= 1 && log["data"].as_array().unwrap().len() == 1);
    let a = s.call("GET", "/nodes/pve1/tasks/nope/status", &[]).await;
    assert_eq!(a.body["errors"]["upid"], "unable to parse worker upid");
    // nextid?vmid=, resources type filter, localhost, GET /nodes.
    let a = s.call("GET", "/cluster/nextid", &[("vmid", "101")]).await;
    assert_eq!(a.body["errors"]["vmid"], "VM 101 already exists");
    assert_eq!(
        s.call("GET", "/cluster/nextid", &[("vmid", "9999")])
            .await
            .body["data"],
        "9999"
    );
    let nodes = s
        .call("GET", "/cluster/resources", &[("type", "node")])
        .await
        .body["data"]
        .clone();
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["type"] == "node")
    );
    let vms = s
        .call("GET", "/cluster/resources", &[("type", "vm")])
        .await
        .body["data"]
        .clone();
    assert_eq!(vms[0]["template"], 0);
    assert!(vms[0].get("cpus").is_none() && vms[0].get("maxswap").is_none());
    assert_eq!(s.call("GET", "/nodes/localhost/lxc", &[]).await.status, 200);
    assert_eq!(
        s.call("GET", "/nodes", &[]).await.body["data"][0]["node"],
        "pve1"
    );
}

#[tokio::test]
async fn unauthorized_reason_phrases() {
    let s = Sim::start(vec![], Duration::from_millis(400)).await;
    let url = format!("{}/api2/json/version", s.sim.base_url());
    let phrase = |r: &reqwest::Response| {
        r.extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
    };
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), phrase(&r).as_deref()),
        (401, Some("No ticket"))
    );
    let r = s
        .http
        .get(&url)
        .header(
            "Authorization",
            format!("PVEAPIToken={DEFAULT_TOKEN_ID}=wrong"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), phrase(&r).as_deref()),
        (401, Some("Authentication failed!"))
    );
}

/// A running CT hot-plugs a *new* mount point, keeps a change to an existing one pending until
/// the reboot, and deletes a detached volume (`unusedN`) at once (`LXC/Config.pm
/// vmconfig_hotplug_pending`; `proxmox-api.md` "Hot-plug and pending changes").
#[tokio::test]
async fn running_cts_hot_plug_new_mount_points_and_delete_unused_volumes_at_once() {
    let s = Sim::start(
        vec![SeedGuest {
            running: true,
            ..SeedGuest::default()
        }],
        Duration::from_millis(400),
    )
    .await;
    let put = |form: &'static [(&'static str, &'static str)]| {
        let s = &s;
        async move { s.call("PUT", "/nodes/pve1/lxc/100/config", form).await }
    };
    let a = put(&[("mp0", "local-lvm:2,mp=/srv/data,backup=1")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let g = s.sim.guest(100).unwrap();
    let mp0 = g.config.get("mp0").cloned().unwrap_or_default();
    assert!(mp0.starts_with("local-lvm:vm-100-disk-"), "{g:?}");
    assert!(
        g.pending.is_empty(),
        "a new mount point is hot-plugged: {g:?}"
    );
    let changed = format!("{mp0},ro=1");
    let a = s
        .call(
            "PUT",
            "/nodes/pve1/lxc/100/config",
            &[("mp0", changed.as_str())],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let g = s.sim.guest(100).unwrap();
    assert!(g.pending.contains_key("mp0"), "an existing mp waits: {g:?}");
    s.sim
        .edit_config(100, "unused3", Some("local-lvm:vm-100-disk-9"));
    assert_eq!(put(&[("delete", "unused3")]).await.status, 200);
    let g = s.sim.guest(100).unwrap();
    assert!(!g.config.contains_key("unused3"), "{g:?}");
}

/// PVE's API creates a privileged container unless `unprivileged=1` is sent (the schema's
/// default is 0), and a privileged create needs `Sys.Modify` on `/` (API2/LXC.pm create_vm).
#[tokio::test]
async fn a_create_without_unprivileged_is_privileged_and_needs_sys_modify() {
    let s = Sim::start(vec![], Duration::from_millis(400)).await;
    let template = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
    let form = [
        ("vmid", "160"),
        ("ostemplate", template),
        ("rootfs", "local-lvm:4"),
    ];
    let a = s.call("POST", "/nodes/pve1/lxc", &form).await;
    assert_eq!(a.status, 200, "{}", a.body);
    for _ in 0..50 {
        if s.sim.guest(160).is_some_and(|g| g.lock.is_none()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let g = s.sim.guest(160).unwrap();
    assert_eq!(
        g.config.get("unprivileged").map(String::as_str),
        Some("0"),
        "{g:?}"
    );

    let limited = pve_sim::start(SimConfig {
        token_privileges: Some(vec!["VM.Allocate".into(), "Datastore.AllocateSpace".into()]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let post = |extra: Option<(&'static str, &'static str)>| {
        let mut f: Vec<(&str, &str)> = vec![
            ("vmid", "161"),
            ("ostemplate", template),
            ("rootfs", "local-lvm:4"),
        ];
        f.extend(extra);
        http.post(format!("{}/api2/json/nodes/pve1/lxc", limited.base_url()))
            .header(
                "Authorization",
                format!("PVEAPIToken={DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}"),
            )
            .form(&f)
            .send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = post(Some(("unprivileged", "1"))).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
