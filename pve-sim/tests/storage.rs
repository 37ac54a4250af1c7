//! Storages, backups and restore over real HTTPS. Expectations come from
//! `shared/reference/safety-nets.md` (§ named per test) and `pve-backup-api-schema.json`,
//! not from the simulator's own output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pve_sim::{DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, SeedGuest, SimConfig};
use reqwest::Method;
use serde_json::Value;

const GIB: u64 = 1024 * 1024 * 1024;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

async fn call(base: &str, method: Method, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http()
        .request(method.clone(), format!("{base}/api2/json{path}"))
        .header(
            "Authorization",
            format!("PVEAPIToken={DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}"),
        );
    req = if method == Method::GET {
        req.query(form)
    } else {
        req.form(form)
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str, q: &[(&str, &str)]) -> Value {
    let (s, v) = call(base, Method::GET, path, q).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v["data"].clone()
}

async fn wait_task(base: &str, upid: &str) -> Value {
    for _ in 0..400 {
        let st = get(base, &format!("/nodes/pve1/tasks/{upid}/status"), &[]).await;
        if st["status"] == "stopped" {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("task {upid} did not finish");
}

async fn task_log(base: &str, upid: &str) -> Vec<String> {
    let log = get(
        base,
        &format!("/nodes/pve1/tasks/{upid}/log"),
        &[("limit", "500")],
    )
    .await;
    log.as_array()
        .unwrap()
        .iter()
        .map(|l| l["t"].as_str().unwrap().to_string())
        .collect()
}

fn guest(vmid: u32) -> SeedGuest {
    SeedGuest {
        vmid,
        hostname: format!("ct{vmid}"),
        ..SeedGuest::default()
    }
}

async fn sim() -> pve_sim::RunningSim {
    pve_sim::start(SimConfig {
        task_duration: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// §1.7: the storage list and status; §1.2: the content listing with templates.
#[tokio::test]
async fn the_default_layout_lists_storages_status_and_templates() {
    let sim = sim().await;
    let base = sim.base_url();
    let list = get(&base, "/nodes/pve1/storage", &[]).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["storage"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["local", "local-lvm"]);
    for s in list.as_array().unwrap() {
        for k in [
            "type",
            "content",
            "active",
            "enabled",
            "shared",
            "avail",
            "used",
            "total",
            "used_fraction",
        ] {
            assert!(s.get(k).is_some(), "{k} missing in {s}");
        }
        assert_eq!(
            s["avail"].as_u64().unwrap() + s["used"].as_u64().unwrap(),
            s["total"].as_u64().unwrap()
        );
    }
    assert_eq!(list[0]["type"], "dir");
    assert_eq!(list[1]["type"], "lvmthin");
    // `content` filter: only storages that hold CT directories.
    let rootdir = get(&base, "/nodes/pve1/storage", &[("content", "rootdir")]).await;
    assert_eq!(rootdir.as_array().unwrap().len(), 1);
    assert_eq!(rootdir[0]["storage"], "local-lvm");

    let st = get(&base, "/nodes/pve1/storage/local/status", &[]).await;
    assert_eq!(st["type"], "dir");
    assert!(st["avail"].as_u64().unwrap() > 0);
    assert!(
        st.get("storage").is_none(),
        "status has no storage key: {st}"
    );
    let (s, v) = call(&base, Method::GET, "/nodes/pve1/storage/nope/status", &[]).await;
    assert_eq!(s, 500);
    assert_eq!(v["message"], "storage 'nope' does not exist\n");

    // Ansible's create looks for its template's volid in the content list.
    let tmpl = get(
        &base,
        "/nodes/pve1/storage/local/content",
        &[("content", "vztmpl")],
    )
    .await;
    let t = tmpl
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["volid"] == "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
        .unwrap_or_else(|| panic!("{tmpl}"));
    assert_eq!(t["content"], "vztmpl");
    assert!(t["size"].as_u64().unwrap() > 0);
    // No backups yet.
    let b = get(
        &base,
        "/nodes/pve1/storage/local/content",
        &[("content", "backup")],
    )
    .await;
    assert_eq!(b, serde_json::json!([]));
    // The content type is checked against PVE's enumeration... of parameters: unknown key.
    let (s, v) = call(
        &base,
        Method::GET,
        "/nodes/pve1/storage/local/content",
        &[("bogus", "1")],
    )
    .await;
    assert_eq!(s, 400, "{v}");
}

/// Mount points get their own disk numbers; `unusedN` after detaching; CT disks in the
/// content listing (`safety-nets.md` §1.6, divergence row "create: rootfs + mp0").
#[tokio::test]
async fn mount_points_get_their_own_volumes_and_detaching_leaves_unused() {
    let sim = sim().await;
    let base = sim.base_url();
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc",
        &[
            ("vmid", "214"),
            (
                "ostemplate",
                "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
            ),
            ("rootfs", "local-lvm:8"),
            ("mp0", "local-lvm:16,mp=/srv/data"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_task(&base, v["data"].as_str().unwrap()).await;
    let conf = get(&base, "/nodes/pve1/lxc/214/config", &[]).await;
    assert_eq!(conf["rootfs"], "local-lvm:vm-214-disk-0,size=8G");
    assert_eq!(conf["mp0"], "local-lvm:vm-214-disk-1,mp=/srv/data,size=16G");

    let content = get(
        &base,
        "/nodes/pve1/storage/local-lvm/content",
        &[("vmid", "214")],
    )
    .await;
    let vols: Vec<(&str, u64)> = content
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["volid"].as_str().unwrap(), c["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        vols,
        [
            ("local-lvm:vm-214-disk-0", 8 * GIB),
            ("local-lvm:vm-214-disk-1", 16 * GIB)
        ]
    );
    assert_eq!(content[0]["content"], "rootdir");
    assert_eq!(content[0]["vmid"], 214);

    // A second mount point added later takes the next number.
    let (s, v) = call(
        &base,
        Method::PUT,
        "/nodes/pve1/lxc/214/config",
        &[("mp1", "local-lvm:2,mp=/srv/logs,backup=1")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let conf = get(&base, "/nodes/pve1/lxc/214/config", &[]).await;
    assert_eq!(
        conf["mp1"],
        "local-lvm:vm-214-disk-2,mp=/srv/logs,backup=1,size=2G"
    );
    // Detaching keeps the volume as unused0; it stays in the listing.
    let (s, v) = call(
        &base,
        Method::PUT,
        "/nodes/pve1/lxc/214/config",
        &[("delete", "mp0")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let conf = get(&base, "/nodes/pve1/lxc/214/config", &[]).await;
    assert!(conf.get("mp0").is_none());
    assert_eq!(conf["unused0"], "local-lvm:vm-214-disk-1");
    let content = get(
        &base,
        "/nodes/pve1/storage/local-lvm/content",
        &[("vmid", "214")],
    )
    .await;
    assert_eq!(content.as_array().unwrap().len(), 3, "{content}");
    // Deleting unused0 frees it.
    call(
        &base,
        Method::PUT,
        "/nodes/pve1/lxc/214/config",
        &[("delete", "unused0")],
    )
    .await;
    let content = get(
        &base,
        "/nodes/pve1/storage/local-lvm/content",
        &[("vmid", "214")],
    )
    .await;
    assert_eq!(content.as_array().unwrap().len(), 2, "{content}");

    // `local` (dir) cannot hold CT directories: PVE's parameter error.
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc",
        &[
            ("vmid", "215"),
            (
                "ostemplate",
                "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
            ),
            ("rootfs", "local:8"),
        ],
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["errors"]["storage"],
        "storage 'local' does not support container directories"
    );
    let _ = guest(1);
}
