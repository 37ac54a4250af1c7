//! The simulator's own behaviour over real HTTPS. These tests check the simulator, not TLS
//! trust (the client's tests pin the simulator's certificate), so they accept its self-signed
//! certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::time::Duration;

use pve_sim::{DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, SeedGuest, SimConfig};
use serde_json::Value;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

fn auth() -> String {
    format!("PVEAPIToken={DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}")
}

async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let r = http()
        .request(method, format!("{base}/api2/json{path}"))
        .header("Authorization", auth())
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn wait_task(base: &str, upid: &str) -> Value {
    for _ in 0..200 {
        let (_, v) = call(
            base,
            reqwest::Method::GET,
            &format!("/nodes/pve1/tasks/{upid}/status"),
            &[],
        )
        .await;
        if v["data"]["status"] == "stopped" {
            return v["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("task {upid} did not finish");
}

#[tokio::test]
async fn auth_schema_lifecycle_idempotency_and_the_mutation_log() {
    // Tasks of 1 s: the create's lock is asserted by the next request, which must land while
    // the task runs even on a loaded machine (a new connection per call).
    let sim = pve_sim::start(SimConfig {
        task_duration: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let base = sim.base_url();
    // Wrong token: 401 without a body.
    let r = http()
        .get(format!("{base}/api2/json/version"))
        .header("Authorization", "PVEAPIToken=drover@pve!pve1=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Unknown parameter: PVE's 400 with an errors map.
    let (s, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc",
        &[
            ("vmid", "105"),
            ("ostemplate", "local:vztmpl/x.tar.zst"),
            ("bogus", "1"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["errors"]["bogus"]
            .as_str()
            .unwrap()
            .contains("not defined in schema")
    );

    // Create (locked while the task runs), then "already exists".
    let (s, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc",
        &[
            ("vmid", "105"),
            ("ostemplate", "local:vztmpl/x.tar.zst"),
            ("rootfs", "local-lvm:8"),
            ("net0", "name=eth0,bridge=vmbr0,ip=dhcp"),
            ("tags", "Web;db;web"),
            ("start", "0"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert!(
        upid.starts_with("UPID:pve1:") && upid.ends_with(":vzcreate:105:drover@pve!pve1:"),
        "{upid}"
    );
    let (_, list) = call(&base, reqwest::Method::GET, "/nodes/pve1/lxc", &[]).await;
    assert_eq!(list["data"][0]["lock"], "create");
    let (s, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc",
        &[("vmid", "105"), ("ostemplate", "local:vztmpl/x.tar.zst")],
    )
    .await;
    assert_eq!(s, 500);
    assert!(v["message"].as_str().unwrap().contains("already exists"));
    assert_eq!(wait_task(&base, &upid).await["exitstatus"], "OK");

    // PVE's normalizations and the digest.
    let (_, cfg) = call(
        &base,
        reqwest::Method::GET,
        "/nodes/pve1/lxc/105/config",
        &[],
    )
    .await;
    let c = &cfg["data"];
    assert_eq!(c["rootfs"], "local-lvm:vm-105-disk-0,size=8G");
    assert!(c["net0"].as_str().unwrap().contains("hwaddr=BC:24:11:"));
    assert!(c["net0"].as_str().unwrap().contains("type=veth"));
    assert_eq!(c["tags"], "db;web");
    let digest = c["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 40);
    // A stale digest is refused.
    let (s, v) = call(
        &base,
        reqwest::Method::PUT,
        "/nodes/pve1/lxc/105/config",
        &[("memory", "1024"), ("digest", &"0".repeat(40))],
    )
    .await;
    assert_eq!(s, 500);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("detected modified configuration")
    );
    let (s, _) = call(
        &base,
        reqwest::Method::PUT,
        "/nodes/pve1/lxc/105/config",
        &[("memory", "1024"), ("digest", &digest)],
    )
    .await;
    assert_eq!(s, 200);

    // Start; a second mutation while the task holds the flock times out like PVE.
    let (_, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc/105/status/start",
        &[],
    )
    .await;
    let start = v["data"].as_str().unwrap().to_string();
    let (s, v) = call(
        &base,
        reqwest::Method::PUT,
        "/nodes/pve1/lxc/105/config",
        &[("cores", "2")],
    )
    .await;
    // 1 s task vs 300 ms lock wait: usually a timeout; either answer is PVE's.
    assert!(
        s == 200 || v["message"].as_str().unwrap().contains("got timeout"),
        "{v}"
    );
    wait_task(&base, &start).await;
    let (s, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc/105/status/start",
        &[],
    )
    .await;
    assert_eq!(s, 500);
    assert!(v["message"].as_str().unwrap().contains("already running"));

    // A non-hot-pluggable key on a running CT goes to pending.
    let (s, _) = call(
        &base,
        reqwest::Method::PUT,
        "/nodes/pve1/lxc/105/config",
        &[("nameserver", "1.1.1.1")],
    )
    .await;
    assert_eq!(s, 200);
    let (_, p) = call(
        &base,
        reqwest::Method::GET,
        "/nodes/pve1/lxc/105/pending",
        &[],
    )
    .await;
    assert!(
        p["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "nameserver" && e["pending"] == "1.1.1.1")
    );
    let (_, cur) = call(
        &base,
        reqwest::Method::GET,
        "/nodes/pve1/lxc/105/config?current=1",
        &[],
    )
    .await;
    assert!(cur["data"]["nameserver"].is_null());

    // Protection and running refuse destroy; forced destroy works; then "does not exist".
    let (s, v) = call(&base, reqwest::Method::DELETE, "/nodes/pve1/lxc/105", &[]).await;
    assert_eq!(s, 500);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("container is running"),
        "{v}"
    );
    let (_, v) = call(
        &base,
        reqwest::Method::DELETE,
        "/nodes/pve1/lxc/105?force=1&purge=1",
        &[],
    )
    .await;
    wait_task(&base, v["data"].as_str().unwrap()).await;
    let (s, v) = call(
        &base,
        reqwest::Method::GET,
        "/nodes/pve1/lxc/105/config",
        &[],
    )
    .await;
    assert_eq!(s, 500);
    assert!(v["message"].as_str().unwrap().contains("does not exist"));

    assert_eq!(sim.count_mutations("create", 105), 1);
    assert_eq!(sim.count_mutations("destroy", 105), 1);
    sim.seed(SeedGuest {
        vmid: 106,
        protection: true,
        ..SeedGuest::default()
    });
    let (s, v) = call(&base, reqwest::Method::DELETE, "/nodes/pve1/lxc/106", &[]).await;
    assert_eq!(s, 500);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("protection mode enabled")
    );
}

#[tokio::test]
async fn state_persists_across_a_restart_and_tasks_can_be_stuck_or_fail() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sim.json");
    let sim = pve_sim::start(SimConfig {
        state_file: Some(state.clone()),
        guests: vec![SeedGuest {
            vmid: 200,
            ..SeedGuest::default()
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let base = sim.base_url();
    let (_, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc/200/status/start",
        &[],
    )
    .await;
    wait_task(&base, v["data"].as_str().unwrap()).await;
    sim.set_faults(pve_sim::Faults {
        stuck_tasks: ["vzstop".to_string()].into(),
        ..Default::default()
    });
    let (_, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc/200/status/stop",
        &[],
    )
    .await;
    let stuck = v["data"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, t) = call(
        &base,
        reqwest::Method::GET,
        &format!("/nodes/pve1/tasks/{stuck}/status"),
        &[],
    )
    .await;
    assert_eq!(t["data"]["status"], "running");
    let (_, active) = call(
        &base,
        reqwest::Method::GET,
        "/nodes/pve1/tasks?source=active&vmid=200",
        &[],
    )
    .await;
    assert_eq!(active["data"][0]["upid"], stuck.as_str());
    sim.shutdown().await;

    // A new simulator on the same state file: guests, tasks and the mutation log survive.
    let sim = pve_sim::start(SimConfig {
        state_file: Some(state),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(sim.count_mutations("start", 200), 1);
    assert_eq!(sim.count_mutations("stop", 200), 1);
    let base = sim.base_url();
    let t = wait_task(&base, &stuck).await;
    assert_eq!(t["exitstatus"], "OK");
    assert!(!sim.guest(200).unwrap().running);

    sim.set_faults(pve_sim::Faults {
        task_failure_rate: 1.0,
        seed: Some(1),
        ..Default::default()
    });
    let (_, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc/200/status/start",
        &[],
    )
    .await;
    let t = wait_task(&base, v["data"].as_str().unwrap()).await;
    assert_ne!(t["exitstatus"], "OK");
    let (_, log) = call(
        &base,
        reqwest::Method::GET,
        &format!("/nodes/pve1/tasks/{}/log", v["data"].as_str().unwrap()),
        &[],
    )
    .await;
    assert!(
        log["data"].as_array().unwrap().last().unwrap()["t"]
            .as_str()
            .unwrap()
            .starts_with("TASK ERROR:")
    );
}

#[test]
fn the_binary_prints_its_address_and_fingerprint_and_serves() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pve-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--auth-delay-ms",
            "0",
            "--seed-demo",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap();
    let fp = lines.next().unwrap().unwrap();
    let url = url.strip_prefix("listening ").unwrap().to_string();
    assert!(
        fp.starts_with("fingerprint ") && fp.len() == "fingerprint ".len() + 95,
        "{fp}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, v) = rt.block_on(call(&url, reqwest::Method::GET, "/nodes/pve1/lxc", &[]));
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn snapshots_are_created_listed_rolled_back_and_deleted_as_tasks() {
    let sim = pve_sim::start(SimConfig {
        guests: vec![SeedGuest {
            vmid: 101,
            cores: 2,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let base = sim.base_url();
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let (s, v) = call(
        &base,
        post.clone(),
        "/nodes/pve1/lxc/101/snapshot",
        &[("snapname", "before"), ("description", "pre-change")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert!(upid.contains(":vzsnapshot:101:drover@pve!pve1:"), "{upid}");
    assert_eq!(wait_task(&base, &upid).await["exitstatus"], "OK");
    // The same name again: a UPID, and the task fails with PVE's error (Snapshot.pm forks
    // before loading the config).
    let (s, v) = call(
        &base,
        post.clone(),
        "/nodes/pve1/lxc/101/snapshot",
        &[("snapname", "before")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
        "snapshot name 'before' already used"
    );
    // The reserved name is refused before forking.
    let (s, v) = call(
        &base,
        post.clone(),
        "/nodes/pve1/lxc/101/snapshot",
        &[("snapname", "current")],
    )
    .await;
    assert_eq!(s, 500, "{v}");
    assert_eq!(
        v["message"],
        "unable to use snapshot name 'current' (reserved name)\n"
    );
    // Bad snapshot name: schema error.
    let (s, _) = call(
        &base,
        post.clone(),
        "/nodes/pve1/lxc/101/snapshot",
        &[("snapname", "no spaces")],
    )
    .await;
    assert_eq!(s, 400);
    let (_, v) = call(&base, get.clone(), "/nodes/pve1/lxc/101/snapshot", &[]).await;
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before", "current"]);

    // Change the config, then roll back to the snapshot.
    let (s, v) = call(
        &base,
        reqwest::Method::PUT,
        "/nodes/pve1/lxc/101/config",
        &[("cores", "4")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sim.guest(101).unwrap().cores, 4);
    let (s, v) = call(
        &base,
        post.clone(),
        "/nodes/pve1/lxc/101/snapshot/before/rollback",
        &[],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    assert_eq!(sim.guest(101).unwrap().cores, 2);

    let del = reqwest::Method::DELETE;
    let (s, v) = call(
        &base,
        del.clone(),
        "/nodes/pve1/lxc/101/snapshot/before",
        &[],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_task(&base, v["data"].as_str().unwrap()).await;
    let (s, v) = call(&base, del, "/nodes/pve1/lxc/101/snapshot/before", &[]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
        "snapshot 'before' does not exist"
    );
    assert_eq!(sim.count_mutations("snapshot", 101), 2);
    assert_eq!(sim.count_mutations("rollback", 101), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_reset_fault_drops_the_connection_without_effect() {
    let sim = pve_sim::start(SimConfig {
        guests: vec![SeedGuest {
            vmid: 101,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let base = sim.base_url();
    sim.set_faults(pve_sim::Faults {
        reset_rate: 1.0,
        ..pve_sim::Faults::default()
    });
    let r = http()
        .post(format!("{base}/api2/json/nodes/pve1/lxc/101/status/start"))
        .header("Authorization", auth())
        .send()
        .await;
    assert!(r.is_err(), "expected a dropped connection, got {r:?}");
    assert!(sim.mutations().is_empty());
    assert!(!sim.guest(101).unwrap().running);
    sim.set_faults(pve_sim::Faults::default());
    let (s, v) = call(
        &base,
        reqwest::Method::POST,
        "/nodes/pve1/lxc/101/status/start",
        &[],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sim.count_mutations("start", 101), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pveproxy_model_serves_at_most_its_workers_at_once() {
    let sim = pve_sim::start(SimConfig {
        pveproxy: Some(pve_sim::PveProxyModel {
            workers: 3,
            service_time: Duration::from_millis(150),
        }),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let base = sim.base_url();
    // 7 requests at once on 7 connections: 3 workers serve them in three rounds (3 + 3 + 1),
    // so the last answer cannot come before 3 service times.
    let t = std::time::Instant::now();
    let calls: Vec<_> = (0..7)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let (s, _) = call(&base, reqwest::Method::GET, "/version", &[]).await;
                (s, t.elapsed())
            })
        })
        .collect();
    let mut done = Vec::new();
    for c in calls {
        let (s, at) = c.await.unwrap();
        assert_eq!(s, 200);
        done.push(at);
    }
    done.sort();
    assert!(done[6] >= Duration::from_millis(450), "{done:?}");
    assert!(
        done[3] >= Duration::from_millis(300),
        "the 4th answer waits for a second round: {done:?}"
    );
    assert_eq!(
        pve_sim::PveProxyModel::pveproxy().ideal(1002),
        Duration::from_millis(3340)
    );
}
