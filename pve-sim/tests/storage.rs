//! Storages, backups and restore over real HTTPS. Expectations come from
//! `shared/reference/safety-nets.md` (§ named per test) and `pve-backup-api-schema.json`,
//! not from the simulator's own output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pve_sim::{
    DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, Faults, SeedGuest, SimConfig, SimStorage,
    StorageFaults, StorageType,
};
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
}

/// A layout with every storage type: `local` (dir, backups), `local-lvm` (lvmthin),
/// `store` (dir that also holds CTs), `local-zfs`, `ceph` (rbd), `tank` (btrfs), `pbs`.
fn full_layout() -> Vec<SimStorage> {
    let mut local = SimStorage::new("local", StorageType::Dir, "backup,iso,vztmpl", 100);
    local.templates = vec!["debian-12-standard_12.7-1_amd64.tar.zst".into()];
    vec![
        local,
        SimStorage::new("local-lvm", StorageType::Lvmthin, "images,rootdir", 400),
        SimStorage::new("store", StorageType::Dir, "rootdir,backup", 100),
        SimStorage::new("local-zfs", StorageType::Zfspool, "images,rootdir", 400),
        SimStorage::new("ceph", StorageType::Rbd, "images,rootdir", 400),
        SimStorage::new("tank", StorageType::Btrfs, "rootdir,backup", 100),
        SimStorage::new("pbs", StorageType::Pbs, "backup", 1000),
    ]
}

async fn sim_with(storages: Vec<SimStorage>, task_ms: u64) -> pve_sim::RunningSim {
    pve_sim::start(SimConfig {
        task_duration: Duration::from_millis(task_ms),
        storages,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// Creates a CT through the API (so its disks are allocated like PVE's) and waits.
async fn create_ct(base: &str, vmid: u32, extra: &[(&str, &str)]) {
    let id = vmid.to_string();
    let host = format!("ct{vmid}");
    let mut form = vec![
        ("vmid", id.as_str()),
        (
            "ostemplate",
            "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
        ),
        ("hostname", host.as_str()),
        ("net0", "name=eth0,bridge=vmbr0,ip=dhcp"),
    ];
    if !extra.iter().any(|(k, _)| *k == "rootfs") {
        form.push(("rootfs", "local-lvm:8"));
    }
    form.extend_from_slice(extra);
    let (s, v) = call(base, Method::POST, "/nodes/pve1/lxc", &form).await;
    assert_eq!(s, 200, "create {vmid}: {v}");
    let st = wait_task(base, v["data"].as_str().unwrap()).await;
    assert_eq!(st["exitstatus"], "OK", "{st}");
}

async fn start_ct(base: &str, vmid: u32) {
    let (s, v) = call(
        base,
        Method::POST,
        &format!("/nodes/pve1/lxc/{vmid}/status/start"),
        &[],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_task(base, v["data"].as_str().unwrap()).await;
}

/// Runs vzdump to its end: (UPID, exit status, log lines).
async fn vzdump(base: &str, form: &[(&str, &str)]) -> (String, String, Vec<String>) {
    let (s, v) = call(base, Method::POST, "/nodes/pve1/vzdump", form).await;
    assert_eq!(s, 200, "vzdump {form:?}: {v}");
    let upid = v["data"].as_str().unwrap().to_string();
    let st = wait_task(base, &upid).await;
    let log = task_log(base, &upid).await;
    (upid, st["exitstatus"].as_str().unwrap().to_string(), log)
}

/// The volid `safety-nets.md` §1.1 derives from the log: `<storage>:backup/<basename>` of
/// `creating vzdump archive '<path>'`, or PBS's `creating Proxmox Backup Server archive`.
fn volid_from_log(storage: &str, log: &[String]) -> String {
    for l in log {
        if let Some(rest) = l.strip_prefix("INFO: creating vzdump archive '") {
            let path = rest.trim_end_matches('\'');
            let base = path.rsplit('/').next().unwrap();
            return format!("{storage}:backup/{base}");
        }
        if let Some(rest) = l.strip_prefix("INFO: creating Proxmox Backup Server archive '") {
            return format!("{storage}:backup/{}", rest.trim_end_matches('\''));
        }
    }
    panic!("no archive line in {log:#?}");
}

async fn backups(base: &str, storage: &str, vmid: u32) -> Vec<Value> {
    get(
        base,
        &format!("/nodes/pve1/storage/{storage}/content"),
        &[("content", "backup"), ("vmid", &vmid.to_string())],
    )
    .await
    .as_array()
    .unwrap()
    .clone()
}

fn enc(volid: &str) -> String {
    volid.replace(':', "%3A").replace('/', "%2F")
}

/// §1.1 (log, lock, notes, protected, remove=0), §1.2 (volid, listing fields, path),
/// §1.4 (extractconfig): a safety copy as Drover will take it.
#[tokio::test]
async fn vzdump_is_a_task_that_locks_the_ct_and_writes_a_readable_archive() {
    let sim = sim_with(full_layout(), 300).await;
    let base = sim.base_url();
    create_ct(&base, 101, &[("description", "web one")]).await;
    start_ct(&base, 101).await;
    // A vzdump long enough that the three requests below land while it runs, on a loaded
    // machine too (each is a new connection).
    sim.set_task_duration(Duration::from_secs(3));
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[
            ("vmid", "101"),
            ("storage", "local"),
            ("mode", "snapshot"),
            ("compress", "zstd"),
            ("protected", "1"),
            ("remove", "0"),
            (
                "notes-template",
                "drover:pre-destroy:{{vmid}}:{{guestname}}",
            ),
            ("lockwait", "10"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert!(
        upid.starts_with("UPID:pve1:") && upid.ends_with(":vzdump:101:drover@pve!pve1:"),
        "{upid}"
    );
    // While it runs: `lock: backup`, the temporary `vzdump` snapshot (lvmthin can snapshot),
    // and other steps fail at once with `CT is locked (backup)`.
    let conf = get(&base, "/nodes/pve1/lxc/101/config", &[]).await;
    assert_eq!(conf["lock"], "backup");
    let snaps = get(&base, "/nodes/pve1/lxc/101/snapshot", &[]).await;
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "vzdump"),
        "{snaps}"
    );
    let t0 = std::time::Instant::now();
    let (s, v) = call(
        &base,
        Method::PUT,
        "/nodes/pve1/lxc/101/config",
        &[("memory", "1024")],
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(v["message"], "CT is locked (backup)\n");
    // Waiting for the flock would take until the vzdump ends, seconds later.
    assert!(t0.elapsed() < Duration::from_millis(1500), "no flock wait");

    let st = wait_task(&base, &upid).await;
    assert_eq!(st["exitstatus"], "OK", "{st}");
    assert_eq!(st["type"], "vzdump");
    assert_eq!(st["id"], "101");
    let log = task_log(&base, &upid).await;
    assert!(
        log[0].starts_with("INFO: starting new backup job: vzdump 101"),
        "{log:#?}"
    );
    for line in [
        "INFO: Starting Backup of VM 101 (lxc)",
        "INFO: status = running",
        "INFO: CT Name: ct101",
        "INFO: including mount point rootfs ('/') in backup",
        "INFO: backup mode: snapshot",
        "INFO: create storage snapshot 'vzdump'",
        "INFO: cleanup temporary 'vzdump' snapshot",
        "INFO: adding notes to backup",
        "INFO: marking backup as protected",
        "INFO: Backup job finished successfully",
        "TASK OK",
    ] {
        assert!(log.iter().any(|l| l == line), "{line} missing: {log:#?}");
    }
    assert_eq!(log.last().unwrap(), "TASK OK");
    // The lock and the snapshot are gone.
    let conf = get(&base, "/nodes/pve1/lxc/101/config", &[]).await;
    assert!(conf.get("lock").is_none(), "{conf}");
    let snaps = get(&base, "/nodes/pve1/lxc/101/snapshot", &[]).await;
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");

    let volid = volid_from_log("local", &log);
    let re_ok = volid.starts_with("local:backup/vzdump-lxc-101-") && volid.ends_with(".tar.zst");
    assert!(re_ok, "{volid}");
    let stamp = &volid["local:backup/vzdump-lxc-101-".len()..volid.len() - ".tar.zst".len()];
    assert_eq!(stamp.len(), "2026_01_02-03_04_05".len(), "{stamp}");
    // The listing confirms it with the marker and protection.
    let list = backups(&base, "local", 101).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let b = &list[0];
    assert_eq!(b["volid"], volid);
    assert_eq!(b["content"], "backup");
    assert_eq!(b["format"], "tar.zst");
    assert_eq!(b["subtype"], "lxc");
    assert_eq!(b["vmid"], 101);
    assert_eq!(b["protected"], 1);
    assert_eq!(b["notes"], "drover:pre-destroy:101:ct101");
    assert!(b["ctime"].as_u64().unwrap() > 1_700_000_000);
    // The file is real: its path from the volume info, its size as listed, a zstd frame
    // holding a tar that starts with ./etc/vzdump/pct.conf.
    let info = get(
        &base,
        &format!("/nodes/pve1/storage/local/content/{}", enc(&volid)),
        &[],
    )
    .await;
    let path = info["path"].as_str().unwrap().to_string();
    assert!(path.ends_with(volid.rsplit('/').next().unwrap()), "{path}");
    assert!(path.starts_with(sim.storage_dir().to_str().unwrap()));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, b["size"].as_u64().unwrap());
    assert_eq!(&bytes[..4], &[0x28, 0xB5, 0x2F, 0xFD], "zstd magic");
    assert_eq!(info["protected"], 1);
    assert!(std::path::Path::new(&format!("{path}.protected")).exists());
    // Real tools read it (required in CI: DROVER_REQUIRE_TOOLS=1).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{path}' | tar tf -"))
        .output()
        .unwrap();
    if out.status.success() {
        let names = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            names.lines().next(),
            Some("./etc/vzdump/pct.conf"),
            "{names}"
        );
    } else {
        assert_ne!(
            std::env::var("DROVER_REQUIRE_TOOLS").as_deref(),
            Ok("1"),
            "zstd | tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cfg = get(
        &base,
        "/nodes/pve1/vzdump/extractconfig",
        &[("volume", &volid)],
    )
    .await;
    let cfg = cfg.as_str().unwrap();
    assert!(cfg.starts_with("#web one\n"), "{cfg}");
    assert!(cfg.contains("hostname: ct101\n"), "{cfg}");
    assert!(
        cfg.contains("rootfs: local-lvm:vm-101-disk-0,size=8G\n"),
        "{cfg}"
    );
    assert!(!cfg.contains("lock:"), "{cfg}");
    // Mutation log.
    assert_eq!(sim.count_mutations("vzdump", 101), 1);
}

/// §1.1: a stopped CT is backed up in stop mode; snapshot mode on storage that cannot
/// snapshot falls back to suspend (§3 item 7); the `"OK"` answer for a vmid on another
/// node; PBS volids (§1.2); a vmid list gets an empty UPID id.
#[tokio::test]
async fn vzdump_modes_fallback_pbs_volids_and_the_plain_ok_answer() {
    let sim = sim_with(full_layout(), 20).await;
    let base = sim.base_url();
    create_ct(&base, 110, &[("rootfs", "store:4")]).await;
    create_ct(&base, 111, &[]).await;
    sim.seed(SeedGuest {
        vmid: 301,
        node: Some("pve2".into()),
        ..SeedGuest::default()
    });
    // Stopped: stop mode whatever was asked.
    let (_, exit, log) = vzdump(&base, &[("vmid", "110"), ("storage", "local")]).await;
    assert_eq!(exit, "OK", "{log:#?}");
    assert!(log.contains(&"INFO: status = stopped".to_string()));
    assert!(
        log.contains(&"INFO: backup mode: stop".to_string()),
        "{log:#?}"
    );
    // The default compression is none: a plain .tar.
    assert!(volid_from_log("local", &log).ends_with(".tar"), "{log:#?}");

    start_ct(&base, 110).await;
    let (_, exit, log) = vzdump(
        &base,
        &[("vmid", "110"), ("storage", "local"), ("mode", "snapshot")],
    )
    .await;
    assert_eq!(exit, "OK");
    let i = log
        .iter()
        .position(|l| l == "INFO: mode failure - some volumes do not support snapshots")
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(log[i + 1], "INFO: trying 'suspend' mode instead");
    assert!(log.contains(&"INFO: backup mode: suspend".to_string()));

    // Not on this node: the string "OK" instead of a UPID, and no task.
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[("vmid", "301")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"], "OK");

    // PBS: `pbs:backup/ct/111/<UTC>`, format pbs-ct, a pbs:// path.
    let (_, exit, log) = vzdump(&base, &[("vmid", "111"), ("storage", "pbs")]).await;
    assert_eq!(exit, "OK", "{log:#?}");
    let volid = volid_from_log("pbs", &log);
    let t = volid.strip_prefix("pbs:backup/ct/111/").unwrap();
    assert!(
        t.len() == 20 && t.ends_with('Z') && &t[10..11] == "T",
        "{volid}"
    );
    let list = backups(&base, "pbs", 111).await;
    assert_eq!(list[0]["volid"], volid);
    assert_eq!(list[0]["format"], "pbs-ct");
    let info = get(
        &base,
        &format!("/nodes/pve1/storage/pbs/content/{}", enc(&volid)),
        &[],
    )
    .await;
    assert!(
        info["path"].as_str().unwrap().starts_with("pbs://"),
        "{info}"
    );
    let cfg = get(
        &base,
        "/nodes/pve1/vzdump/extractconfig",
        &[("volume", &volid)],
    )
    .await;
    assert!(cfg.as_str().unwrap().contains("hostname: ct111"));

    // Several guests: one task, empty id.
    let (upid, exit, _) = vzdump(&base, &[("vmid", "110,111"), ("storage", "tank")]).await;
    assert_eq!(exit, "OK");
    assert!(upid.ends_with(":vzdump::drover@pve!pve1:"), "{upid}");
    // A vmid of no guest stays and fails visibly: job errors.
    let (_, exit, log) = vzdump(&base, &[("vmid", "999"), ("storage", "local")]).await;
    assert_eq!(exit, "job errors");
    assert!(
        log.iter()
            .any(|l| l.starts_with("ERROR: Backup of VM 999 failed - ")),
        "{log:#?}"
    );
    assert_eq!(log.last().unwrap(), "TASK ERROR: job errors");
}

/// Parameter rules of the schema and `API2/Backup.pm` (§1.1, §2).
#[tokio::test]
async fn vzdump_parameters_are_checked_like_pve() {
    let sim = sim().await;
    let base = sim.base_url();
    sim.seed(guest(101));
    // `protected` and `notes-template` require `storage`.
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[("vmid", "101"), ("protected", "1")],
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"]["storage"]
            .as_str()
            .unwrap()
            .contains("'protected' requires this property"),
        "{v}"
    );
    // Overriding retention needs Datastore.Allocate; unknown modes are refused.
    let (s, _) = call(
        &base,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[
            ("vmid", "101"),
            ("storage", "local"),
            ("prune-backups", "keep-last=1"),
        ],
    )
    .await;
    assert_eq!(s, 403);
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[("vmid", "101"), ("mode", "fast")],
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["errors"]["mode"].is_string());
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[("vmid", "101"), ("storage", "nope")],
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(v["message"], "storage 'nope' does not exist\n");
    // A storage without `backup` content fails inside the task.
    let (_, exit, _) = vzdump(&base, &[("vmid", "101"), ("storage", "local-lvm")]).await;
    assert_eq!(exit, "storage 'local-lvm' does not support backups");

    // vzdump/defaults: schema defaults, the storage and its prune-backups.
    let d = get(
        &base,
        "/nodes/pve1/vzdump/defaults",
        &[("storage", "local")],
    )
    .await;
    assert_eq!(d["storage"], "local");
    assert_eq!(d["mode"], "snapshot");
    assert_eq!(d["remove"], 1);
    assert_eq!(d["lockwait"], 180);
    assert_eq!(d["prune-backups"], "keep-all=1");
}

/// §1.3: protection and notes by PUT, the protected cap per guest (default 5 without
/// Datastore.Allocate), deletion as an `imgdel` task refused inside the task while
/// protected, companions removed.
#[tokio::test]
async fn protection_notes_cap_and_deletion_of_backups() {
    let sim = sim_with(full_layout(), 10).await;
    let base = sim.base_url();
    create_ct(&base, 120, &[]).await;
    let mut volids = Vec::new();
    for _ in 0..5 {
        let (_, exit, log) = vzdump(
            &base,
            &[
                ("vmid", "120"),
                ("storage", "local"),
                ("protected", "1"),
                ("remove", "0"),
            ],
        )
        .await;
        assert_eq!(exit, "OK", "{log:#?}");
        volids.push(volid_from_log("local", &log));
    }
    // The sixth protected copy is refused inside the task (job errors).
    let (_, exit, log) = vzdump(
        &base,
        &[
            ("vmid", "120"),
            ("storage", "local"),
            ("protected", "1"),
            ("remove", "0"),
        ],
    )
    .await;
    assert_eq!(exit, "job errors");
    assert!(
        log.contains(
            &"ERROR: Backup of VM 120 failed - The number of protected backups per guest is limited to 5 on storage 'local'"
                .to_string()
        ),
        "{log:#?}"
    );
    // An unprotected one works; protecting it by PUT hits the cap too.
    let (_, exit, log) = vzdump(
        &base,
        &[("vmid", "120"), ("storage", "local"), ("remove", "0")],
    )
    .await;
    assert_eq!(exit, "OK");
    let plain = volid_from_log("local", &log);
    let path = format!("/nodes/pve1/storage/local/content/{}", enc(&plain));
    let (s, v) = call(&base, Method::PUT, &path, &[("protected", "1")]).await;
    assert_eq!(s, 500);
    assert_eq!(
        v["message"],
        "The number of protected backups per guest is limited to 5 on storage 'local'\n"
    );
    // Notes: the listing shows the first line, the volume info all of it.
    let (s, v) = call(
        &base,
        Method::PUT,
        &path,
        &[("notes", "line one\nline two")],
    )
    .await;
    assert_eq!((s, &v["data"]), (200, &Value::Null), "{v}");
    let list = backups(&base, "local", 120).await;
    let row = list.iter().find(|r| r["volid"] == plain).unwrap();
    assert_eq!(row["notes"], "line one");
    assert!(
        row.get("protected").is_none(),
        "only present when set: {row}"
    );
    let info = get(&base, &path, &[]).await;
    assert_eq!(info["notes"], "line one\nline two");

    // Deleting a protected backup: a UPID, then the task fails.
    let prot = &volids[0];
    let ppath = format!("/nodes/pve1/storage/local/content/{}", enc(prot));
    let (s, v) = call(&base, Method::DELETE, &ppath, &[]).await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert!(upid.contains(":imgdel:120@local:"), "{upid}");
    let st = wait_task(&base, &upid).await;
    let file = get(&base, &ppath, &[]).await["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        st["exitstatus"],
        format!("cannot remove protected archive '{file}'")
    );
    assert!(std::path::Path::new(&file).exists());
    // Unprotect, delete (with `delay`: null when it ended OK); the file and sentinel go.
    let (s, _) = call(&base, Method::PUT, &ppath, &[("protected", "0")]).await;
    assert_eq!(s, 200);
    assert!(!std::path::Path::new(&format!("{file}.protected")).exists());
    let (s, v) = call(&base, Method::DELETE, &ppath, &[("delay", "5")]).await;
    assert_eq!((s, &v["data"]), (200, &Value::Null), "{v}");
    assert!(!std::path::Path::new(&file).exists());
    assert_eq!(backups(&base, "local", 120).await.len(), 5);
    // A template is not a backup: deleting it needs Datastore.Allocate.
    let (s, v) = call(
        &base,
        Method::DELETE,
        &format!(
            "/nodes/pve1/storage/local/content/{}",
            enc("local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
        ),
        &[],
    )
    .await;
    assert_eq!(s, 403, "{v}");
}

/// §1.3 and §3 item 6: `remove` defaults to pruning by the storage's `prune-backups`;
/// protected backups never count; `remove=0` on a full bounded group fails; the
/// prunebackups dry run and task.
#[tokio::test]
async fn vzdump_prunes_by_default_and_prunebackups_marks_like_pve() {
    let mut layout = full_layout();
    layout[0].prune_backups = Some("keep-last=2".into());
    let sim = sim_with(layout, 10).await;
    let base = sim.base_url();
    create_ct(&base, 130, &[]).await;
    let (_, _, log) = vzdump(
        &base,
        &[("vmid", "130"), ("storage", "local"), ("protected", "1")],
    )
    .await;
    let protected = volid_from_log("local", &log);
    let mut plain = Vec::new();
    for _ in 0..3 {
        let (_, exit, log) = vzdump(&base, &[("vmid", "130"), ("storage", "local")]).await;
        assert_eq!(exit, "OK", "{log:#?}");
        plain.push(volid_from_log("local", &log));
    }
    let (_, _, log) = vzdump(&base, &[("vmid", "130"), ("storage", "local")]).await;
    plain.push(volid_from_log("local", &log));
    assert!(
        log.contains(&"INFO: prune older backups with retention: keep-last=2".to_string()),
        "{log:#?}"
    );
    assert!(
        log.contains(&format!("INFO: removing backup '{}'", plain[1])),
        "{log:#?}"
    );
    let mut left: Vec<String> = backups(&base, "local", 130)
        .await
        .iter()
        .map(|b| b["volid"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    let mut want = vec![protected.clone(), plain[2].clone(), plain[3].clone()];
    want.sort();
    assert_eq!(left, want, "keep-last=2 plus the protected one");

    // remove=0 with a full group: PVE's max backup limit error.
    let (_, exit, log) = vzdump(
        &base,
        &[("vmid", "130"), ("storage", "local"), ("remove", "0")],
    )
    .await;
    assert_eq!(exit, "job errors");
    assert!(
        log.iter().any(|l| l.ends_with(
            "There is a max backup limit of 2 enforced by the target storage or the vzdump parameters. Either increase the limit or delete old backups."
        )),
        "{log:#?}"
    );
    // Dry run with another policy.
    let marks = get(
        &base,
        "/nodes/pve1/storage/local/prunebackups",
        &[
            ("prune-backups", "keep-last=1"),
            ("vmid", "130"),
            ("type", "lxc"),
        ],
    )
    .await;
    let mark = |v: &str| {
        marks
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["volid"] == v)
            .unwrap()["mark"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(mark(&protected), "protected");
    assert_eq!(mark(&plain[3]), "keep");
    assert_eq!(mark(&plain[2]), "remove");
    let (s, v) = call(
        &base,
        Method::GET,
        "/nodes/pve1/storage/local/prunebackups",
        &[("prune-backups", "keep-all=1,keep-last=1")],
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // Execute: a `prunebackups` task with id `<vmid>@<storage>`.
    let (s, v) = call(
        &base,
        Method::DELETE,
        "/nodes/pve1/storage/local/prunebackups",
        &[("prune-backups", "keep-last=1"), ("vmid", "130")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap();
    assert!(upid.contains(":prunebackups:130@local:"), "{upid}");
    assert_eq!(wait_task(&base, upid).await["exitstatus"], "OK");
    assert_eq!(backups(&base, "local", 130).await.len(), 2);
}

async fn restore(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let mut f = vec![("restore", "1")];
    f.extend_from_slice(form);
    call(base, Method::POST, "/nodes/pve1/lxc", &f).await
}

async fn config(base: &str, vmid: u32) -> (u16, Value) {
    call(
        base,
        Method::GET,
        &format!("/nodes/pve1/lxc/{vmid}/config"),
        &[],
    )
    .await
}

/// §1.5 and §3 items 1 and 3: a forced restore is destroy-then-extract; it is refused
/// while the CT runs or is protected; `lock: create` while it runs; mount points without
/// `backup=1` come back empty; snapshots are gone; `unique` makes new MACs.
#[tokio::test]
async fn a_forced_restore_replaces_the_ct_and_empties_mount_points_outside_the_backup() {
    let sim = sim_with(full_layout(), 150).await;
    let base = sim.base_url();
    create_ct(
        &base,
        140,
        &[
            ("memory", "512"),
            ("mp0", "local-lvm:4,mp=/srv/cache"),
            ("mp1", "local-lvm:2,mp=/srv/data,backup=1"),
        ],
    )
    .await;
    let (_, c) = config(&base, 140).await;
    let c = c["data"].clone();
    let (root0, mp0, mp1) = (
        c["rootfs"]
            .as_str()
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string(),
        c["mp0"]
            .as_str()
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string(),
        c["mp1"]
            .as_str()
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string(),
    );
    let mac0 = c["net0"].as_str().unwrap().to_string();
    sim.set_volume_data(&root0, "root v1");
    sim.set_volume_data(&mp0, "cache v1");
    sim.set_volume_data(&mp1, "data v1");
    let (_, exit, log) = vzdump(&base, &[("vmid", "140"), ("storage", "local")]).await;
    assert_eq!(exit, "OK", "{log:#?}");
    assert!(
        log.contains(
            &"INFO: excluding volume mount point mp0 ('/srv/cache') from backup (disabled)"
                .to_string()
        ),
        "{log:#?}"
    );
    assert!(
        log.contains(&"INFO: including mount point mp1 ('/srv/data') in backup".to_string()),
        "{log:#?}"
    );
    let volid = volid_from_log("local", &log);
    // Life goes on after the copy.
    sim.set_volume_data(&root0, "root v2");
    sim.set_volume_data(&mp0, "cache v2");
    sim.set_volume_data(&mp1, "data v2");
    let (s, _) = call(
        &base,
        Method::PUT,
        "/nodes/pve1/lxc/140/config",
        &[("memory", "2048")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc/140/snapshot",
        &[("snapname", "before")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_task(&base, v["data"].as_str().unwrap()).await;

    // Refusals before anything happens.
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "140"),
            ("ostemplate", &volid),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(v["message"], "CT 140 already exists on node 'pve1'\n");
    start_ct(&base, 140).await;
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "140"),
            ("ostemplate", &volid),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(v["message"], "can't overwrite running container\n");
    let (s, v) = call(&base, Method::POST, "/nodes/pve1/lxc/140/status/stop", &[]).await;
    assert_eq!(s, 200);
    wait_task(&base, v["data"].as_str().unwrap()).await;
    call(
        &base,
        Method::PUT,
        "/nodes/pve1/lxc/140/config",
        &[("protection", "1")],
    )
    .await;
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "140"),
            ("ostemplate", &volid),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(
        v["message"],
        "unable to restore CT 140 - protection mode enabled\n"
    );
    call(
        &base,
        Method::PUT,
        "/nodes/pve1/lxc/140/config",
        &[("protection", "0")],
    )
    .await;
    // `storage` defaults to `local`, which holds no CT directories.
    let (s, v) = restore(
        &base,
        &[("vmid", "140"), ("ostemplate", &volid), ("force", "1")],
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["errors"]["storage"],
        "storage 'local' does not support container directories"
    );

    // The restore: vzrestore, lock: create while it runs (long enough for the next request
    // to see it on a loaded machine).
    sim.set_task_duration(Duration::from_secs(2));
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "140"),
            ("ostemplate", &volid),
            ("force", "1"),
            ("storage", "local-lvm"),
            ("unique", "1"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert!(upid.ends_with(":vzrestore:140:drover@pve!pve1:"), "{upid}");
    let (_, c) = config(&base, 140).await;
    assert_eq!(c["data"]["lock"], "create");
    let st = wait_task(&base, &upid).await;
    assert_eq!(st["exitstatus"], "OK", "{st}");
    sim.set_task_duration(Duration::from_millis(150));
    let log = task_log(&base, &upid).await;
    assert_eq!(
        log[0],
        format!("recovering backed-up configuration from '{volid}'")
    );
    assert!(
        log.contains(&format!("restoring '{volid}' now..")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("extracting archive '") && l.ends_with(".tar'")),
        "{log:#?}"
    );
    assert!(log.contains(&"merging backed-up and given configuration..".to_string()));
    let (_, c) = config(&base, 140).await;
    let c = c["data"].clone();
    assert_eq!(c["memory"], 512, "the archived config: {c}");
    assert!(c.get("lock").is_none());
    assert_ne!(
        c["net0"].as_str().unwrap(),
        mac0,
        "unique=1 makes a new MAC"
    );
    let snaps = get(&base, "/nodes/pve1/lxc/140/snapshot", &[]).await;
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "snapshots die with the volumes: {snaps}"
    );
    // New volumes, allocated while the old ones still existed.
    let vol = |k: &str| {
        c[k].as_str()
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(vol("rootfs"), "local-lvm:vm-140-disk-3");
    assert_eq!(c["mp0"], "local-lvm:vm-140-disk-4,mp=/srv/cache,size=4G");
    assert_eq!(
        c["mp1"],
        "local-lvm:vm-140-disk-5,mp=/srv/data,backup=1,size=2G"
    );
    // The backed-up volumes come back as they were at the copy; mp0 comes back empty.
    assert_eq!(sim.volume_data(&vol("rootfs")).as_deref(), Some("root v1"));
    assert_eq!(sim.volume_data(&vol("mp1")).as_deref(), Some("data v1"));
    assert_eq!(sim.volume_data(&vol("mp0")), None);
    // The old volumes are gone.
    assert_eq!(sim.volume_data(&mp0), None);
    let disks = get(
        &base,
        "/nodes/pve1/storage/local-lvm/content",
        &[("vmid", "140")],
    )
    .await;
    assert_eq!(disks.as_array().unwrap().len(), 3, "{disks}");

    // A restore onto a free vmid from 140's archive.
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "141"),
            ("ostemplate", &volid),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    let (_, c) = config(&base, 141).await;
    assert_eq!(c["data"]["hostname"], "ct140");
    assert_eq!(c["data"]["rootfs"], "local-lvm:vm-141-disk-0,size=8G");

    // Advanced mode (`rootfs` given): only the given volumes, at the given size; and a token's
    // restore drops raw `lxc.*` keys with a warning (§3 item 4).
    sim.edit_config(141, "lxc.apparmor.profile", Some("unconfined"));
    let (_, exit, log) = vzdump(&base, &[("vmid", "141"), ("storage", "local")]).await;
    assert_eq!(exit, "OK");
    let v141 = volid_from_log("local", &log);
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "142"),
            ("ostemplate", &v141),
            ("storage", "local-lvm"),
            ("rootfs", "local-lvm:16"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert_eq!(wait_task(&base, &upid).await["exitstatus"], "WARNINGS: 1");
    let log = task_log(&base, &upid).await;
    assert!(
        log.iter()
            .any(|l| l.contains("skipping custom lxc options, restore manually as root:")),
        "{log:#?}"
    );
    assert_eq!(log.last().unwrap(), "TASK WARNINGS: 1");
    let (_, c) = config(&base, 142).await;
    assert_eq!(c["data"]["rootfs"], "local-lvm:vm-142-disk-0,size=16G");
    assert!(c["data"].get("mp0").is_none(), "{c}");
    assert!(c["data"].get("lxc.apparmor.profile").is_none(), "{c}");
    assert_eq!(
        sim.volume_data("local-lvm:vm-142-disk-0").as_deref(),
        Some("root v1")
    );
}

/// §3 item 1 / §7 pitfall 1: a forced restore that fails in extraction leaves no CT; one
/// that fails reading the archive's config leaves the old CT untouched (only unlocked).
#[tokio::test]
async fn a_failed_forced_restore_leaves_no_ct_but_an_unreadable_archive_leaves_it_alone() {
    let sim = sim_with(full_layout(), 10).await;
    let base = sim.base_url();
    create_ct(&base, 150, &[]).await;
    create_ct(&base, 151, &[]).await;
    let (_, _, log) = vzdump(
        &base,
        &[("vmid", "150"), ("storage", "local"), ("compress", "zstd")],
    )
    .await;
    let v150 = volid_from_log("local", &log);
    let (_, _, log) = vzdump(
        &base,
        &[("vmid", "151"), ("storage", "local"), ("compress", "gzip")],
    )
    .await;
    let v151 = volid_from_log("local", &log);
    let path_of = |volid: String| {
        let base = base.clone();
        async move {
            get(
                &base,
                &format!("/nodes/pve1/storage/local/content/{}", enc(&volid)),
                &[],
            )
            .await["path"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    // 150: the head (pct.conf) is intact, the rest is cut off.
    let p150 = path_of(v150.clone()).await;
    let bytes = std::fs::read(&p150).unwrap();
    std::fs::write(&p150, &bytes[..1200]).unwrap();
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "150"),
            ("ostemplate", &v150),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let st = wait_task(&base, v["data"].as_str().unwrap()).await;
    let exit = st["exitstatus"].as_str().unwrap();
    assert!(exit.starts_with("unable to restore CT 150 - "), "{exit}");
    let (s, v) = config(&base, 150).await;
    assert_eq!(s, 500);
    assert_eq!(
        v["message"],
        "Configuration file 'nodes/pve1/lxc/150.conf' does not exist\n"
    );
    let disks = get(
        &base,
        "/nodes/pve1/storage/local-lvm/content",
        &[("vmid", "150")],
    )
    .await;
    assert_eq!(disks, serde_json::json!([]));

    // 151: garbage from the first byte: the config cannot be read, the CT stays.
    let p151 = path_of(v151.clone()).await;
    std::fs::write(&p151, b"not an archive at all").unwrap();
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "151"),
            ("ostemplate", &v151),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let st = wait_task(&base, v["data"].as_str().unwrap()).await;
    assert!(
        st["exitstatus"]
            .as_str()
            .unwrap()
            .starts_with("unable to restore CT 151 - ")
    );
    let (s, c) = config(&base, 151).await;
    assert_eq!(s, 200);
    assert!(c["data"].get("lock").is_none(), "{c}");
    assert_eq!(c["data"]["hostname"], "ct151");
    let (s, v) = call(
        &base,
        Method::GET,
        "/nodes/pve1/vzdump/extractconfig",
        &[("volume", &v151)],
    )
    .await;
    assert_eq!(s, 500, "{v}");

    // The injected extraction failure does the same as a corrupt archive.
    let (_, _, log) = vzdump(&base, &[("vmid", "151"), ("storage", "local")]).await;
    let fresh = volid_from_log("local", &log);
    sim.set_faults(Faults {
        storage: StorageFaults {
            restore_fail: [151].into(),
            ..StorageFaults::default()
        },
        ..Faults::default()
    });
    let (_, v) = restore(
        &base,
        &[
            ("vmid", "151"),
            ("ostemplate", &fresh),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    let st = wait_task(&base, v["data"].as_str().unwrap()).await;
    assert!(
        st["exitstatus"]
            .as_str()
            .unwrap()
            .starts_with("unable to restore CT 151 - command 'lxc-usernsexec"),
        "{st}"
    );
    assert_eq!(config(&base, 151).await.0, 500);
}

/// §1.6, §3 items 11-12: snapshot support by storage, bind mounts, ZFS newest-only rollback.
#[tokio::test]
async fn snapshot_support_follows_the_storage_and_zfs_rolls_back_only_to_the_newest() {
    let sim = sim_with(full_layout(), 10).await;
    let base = sim.base_url();
    let feature = |vmid: u32| {
        let base = base.clone();
        async move {
            get(
                &base,
                &format!("/nodes/pve1/lxc/{vmid}/feature"),
                &[("feature", "snapshot")],
            )
            .await["hasFeature"]
                .clone()
        }
    };
    for (vmid, rootfs, can) in [
        (160, "local-lvm:4", 1),
        (161, "store:4", 0),
        (162, "local-zfs:4", 1),
        (163, "ceph:4", 1),
        (164, "tank:4", 1),
    ] {
        create_ct(&base, vmid, &[("rootfs", rootfs)]).await;
        assert_eq!(feature(vmid).await, can, "{rootfs}");
    }
    let (_, c) = config(&base, 162).await;
    assert_eq!(c["data"]["rootfs"], "local-zfs:subvol-162-disk-0,size=4G");
    let (_, c) = config(&base, 161).await;
    assert_eq!(c["data"]["rootfs"], "store:161/vm-161-disk-0.raw,size=4G");
    // On dir storage the snapshot task fails.
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc/161/snapshot",
        &[("snapname", "s1")],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let st = wait_task(&base, v["data"].as_str().unwrap()).await;
    assert_eq!(st["exitstatus"], "snapshot feature is not available");
    // A bind mount makes the feature false, but vzdump's snapshot mode still works.
    sim.edit_config(160, "mp0", Some("/mnt/host,mp=/mnt/x"));
    assert_eq!(feature(160).await, 0);
    start_ct(&base, 160).await;
    let (_, exit, log) = vzdump(&base, &[("vmid", "160"), ("storage", "local")]).await;
    assert_eq!(exit, "OK");
    assert!(
        log.contains(&"INFO: backup mode: snapshot".to_string()),
        "{log:#?}"
    );
    assert!(
        log.contains(
            &"INFO: excluding bind mount point mp0 ('/mnt/x') from backup (not a volume)"
                .to_string()
        ),
        "{log:#?}"
    );
    // Restoring that archive through a token stops early: the old CT is untouched.
    let v160 = volid_from_log("local", &log);
    let (_, v) = call(&base, Method::POST, "/nodes/pve1/lxc/160/status/stop", &[]).await;
    wait_task(&base, v["data"].as_str().unwrap()).await;
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "160"),
            ("ostemplate", &v160),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let st = wait_task(&base, v["data"].as_str().unwrap()).await;
    assert_eq!(
        st["exitstatus"],
        "unable to restore CT 160 - restoring 'mp0' to bind mount is only possible for root"
    );
    let (_, c) = config(&base, 160).await;
    assert_eq!(c["data"]["mp0"], "/mnt/host,mp=/mnt/x");
    assert!(c["data"].get("lock").is_none(), "{c}");

    // ZFS: rollback to an older snapshot fails inside the task; to the newest it works.
    for name in ["snap_a", "snap_b"] {
        let (s, v) = call(
            &base,
            Method::POST,
            "/nodes/pve1/lxc/162/snapshot",
            &[("snapname", name)],
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
            "OK"
        );
    }
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc/162/snapshot/snap_a/rollback",
        &[],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let st = wait_task(&base, v["data"].as_str().unwrap()).await;
    assert_eq!(
        st["exitstatus"],
        "can't rollback, 'snap_a' is not most recent snapshot on 'local-zfs:subvol-162-disk-0'"
    );
    let (_, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc/162/snapshot/snap_b/rollback",
        &[],
    )
    .await;
    assert_eq!(
        wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    // lvmthin rolls back to any snapshot.
    for name in ["snap_a", "snap_b"] {
        let (_, v) = call(
            &base,
            Method::POST,
            "/nodes/pve1/lxc/163/snapshot",
            &[("snapname", name)],
        )
        .await;
        wait_task(&base, v["data"].as_str().unwrap()).await;
    }
    let (_, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc/163/snapshot/snap_a/rollback",
        &[],
    )
    .await;
    assert_eq!(
        wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
        "OK"
    );
}

/// Faults through the `/_sim/faults` admin endpoint: a failing vzdump, no space, a stuck
/// backup (lock stays, the next vzdump times out on the global lock: `unexpected status`),
/// a crashed vzdump (lock and `.dat` left).
#[tokio::test]
async fn vzdump_faults_fail_fill_the_disk_stick_and_crash() {
    let sim = sim_with(full_layout(), 10).await;
    let base = sim.base_url();
    create_ct(&base, 170, &[]).await;
    create_ct(&base, 171, &[]).await;
    let put_faults = |f: Value| {
        let base = base.clone();
        async move {
            let r = http()
                .put(format!("{base}/_sim/faults"))
                .header(
                    "Authorization",
                    format!("PVEAPIToken={DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}"),
                )
                .body(f.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    put_faults(serde_json::json!({"storage": {"vzdump_fail": {"170": "command 'tar' failed: exit code 2"}}})).await;
    let (_, exit, log) = vzdump(&base, &[("vmid", "170"), ("storage", "local")]).await;
    assert_eq!(exit, "job errors");
    assert!(
        log.contains(
            &"ERROR: Backup of VM 170 failed - command 'tar' failed: exit code 2".to_string()
        ),
        "{log:#?}"
    );
    assert!(
        get(&base, "/nodes/pve1/lxc/170/config", &[])
            .await
            .get("lock")
            .is_none()
    );

    put_faults(serde_json::json!({"storage": {"no_space": ["local"]}})).await;
    let (_, exit, log) = vzdump(&base, &[("vmid", "170"), ("storage", "local")]).await;
    assert_eq!(exit, "job errors");
    assert!(
        log.iter().any(|l| l.contains("No space left on device")),
        "{log:#?}"
    );
    assert_eq!(backups(&base, "local", 170).await.len(), 0);

    put_faults(serde_json::json!({"stuck_tasks": ["vzdump"]})).await;
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[("vmid", "170"), ("storage", "local")],
    )
    .await;
    assert_eq!(s, 200);
    let stuck = v["data"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(&base, "/nodes/pve1/lxc/170/config", &[]).await["lock"],
        "backup"
    );
    let (s, v) = call(
        &base,
        Method::POST,
        "/nodes/pve1/lxc/170/snapshot",
        &[("snapname", "snapx")],
    )
    .await;
    assert!(s == 500 || s == 200, "{v}");
    put_faults(serde_json::json!({})).await;
    let (_, exit, log) = vzdump(&base, &[("vmid", "171"), ("storage", "local")]).await;
    assert_eq!(exit, "unexpected status");
    assert!(
        log.contains(&"INFO: trying to get global lock - waiting...".to_string()),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("can't acquire lock '/var/run/vzdump.lock' - got timeout")),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.starts_with("TASK ")),
        "no final line: {log:#?}"
    );
    let st = get(&base, &format!("/nodes/pve1/tasks/{stuck}/status"), &[]).await;
    assert_eq!(st["status"], "running");

    // Behind a vzdump that does end, the next one waits its turn; with lockwait=0 it cannot.
    let sim3 = sim_with(full_layout(), 150).await;
    let base3 = sim3.base_url();
    create_ct(&base3, 173, &[]).await;
    create_ct(&base3, 174, &[]).await;
    // The first vzdump runs long enough that the impatient one arrives while it holds the lock.
    sim3.set_task_duration(Duration::from_secs(2));
    let (_, v) = call(
        &base3,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[("vmid", "173"), ("storage", "local")],
    )
    .await;
    let first = v["data"].as_str().unwrap().to_string();
    let (_, v) = call(
        &base3,
        Method::POST,
        "/nodes/pve1/vzdump",
        &[("vmid", "174"), ("storage", "local"), ("lockwait", "0")],
    )
    .await;
    let impatient = v["data"].as_str().unwrap().to_string();
    let (_, exit, log) = vzdump(&base3, &[("vmid", "174"), ("storage", "local")]).await;
    assert_eq!(exit, "OK", "{log:#?}");
    assert!(log.contains(&"INFO: trying to get global lock - waiting...".to_string()));
    assert_eq!(wait_task(&base3, &first).await["exitstatus"], "OK");
    assert_eq!(
        wait_task(&base3, &impatient).await["exitstatus"],
        "unexpected status"
    );

    // A crash, on a simulator of its own (the stuck vzdump above holds the global lock).
    let sim2 = sim_with(full_layout(), 10).await;
    let base2 = sim2.base_url();
    create_ct(&base2, 172, &[]).await;
    sim2.set_faults(Faults {
        storage: StorageFaults {
            vzdump_crash: [172].into(),
            ..StorageFaults::default()
        },
        ..Faults::default()
    });
    let (_, exit, log) = vzdump(&base2, &[("vmid", "172"), ("storage", "local")]).await;
    assert_eq!(exit, "unexpected status");
    assert!(!log.iter().any(|l| l.starts_with("TASK ")), "{log:#?}");
    assert_eq!(
        get(&base2, "/nodes/pve1/lxc/172/config", &[]).await["lock"],
        "backup"
    );
    let dump = sim2.storage_dir().join("local/dump");
    let names: Vec<String> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() == 1 && names[0].ends_with(".tar.dat"),
        "{names:?}"
    );
    assert_eq!(backups(&base2, "local", 172).await.len(), 0);
    // Notes that cannot be written are only a warning: the archive exists, without notes.
    sim2.set_faults(Faults {
        storage: StorageFaults {
            notes_fail: [173].into(),
            ..StorageFaults::default()
        },
        ..Faults::default()
    });
    create_ct(&base2, 173, &[]).await;
    let (_, exit, log) = vzdump(
        &base2,
        &[
            ("vmid", "173"),
            ("storage", "local"),
            ("notes-template", "drover:{{vmid}}"),
        ],
    )
    .await;
    assert_eq!(exit, "WARNINGS: 1", "{log:#?}");
    assert_eq!(log.last().unwrap(), "TASK WARNINGS: 1");
    assert!(
        log.iter()
            .any(|l| l.starts_with("WARN: unable to add notes")),
        "{log:#?}"
    );
    let list = backups(&base2, "local", 173).await;
    assert_eq!(list.len(), 1);
    assert!(list[0].get("notes").is_none(), "{list:?}");
}

/// The command line takes a storage layout and a storage directory.
#[test]
fn the_binary_takes_a_storage_layout_and_directory() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("storages.json");
    std::fs::write(
        &layout,
        r#"[{"id":"local","type":"dir","content":["backup","vztmpl"],"total_bytes":1073741824,
            "templates":["alpine-3.20-default_20240908_amd64.tar.xz"]},
           {"id":"local-zfs","type":"zfspool","content":["rootdir","images"],"total_bytes":1073741824}]"#,
    )
    .unwrap();
    let store = dir.path().join("store");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pve-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--auth-delay-ms",
            "0",
            "--storages",
        ])
        .arg(&layout)
        .arg("--storage-dir")
        .arg(&store)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap();
    let url = url.strip_prefix("listening ").unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let list = rt.block_on(get(&url, "/nodes/pve1/storage", &[]));
    let types: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["dir", "zfspool"]);
    let tmpl = rt.block_on(get(&url, "/nodes/pve1/storage/local/content", &[]));
    assert_eq!(
        tmpl[0]["volid"],
        "local:vztmpl/alpine-3.20-default_20240908_amd64.tar.xz"
    );
    assert!(store.join("local/dump").is_dir());
    child.kill().unwrap();
    let _ = child.wait();
    // A broken layout is a clear error, not a panic.
    std::fs::write(&layout, r#"[{"id":"x","type":"nfs"}]"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pve-sim"))
        .args(["--listen", "127.0.0.1:0", "--storages"])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storages file") && err.contains("unknown variant"),
        "{err}"
    );
}

/// A separately running simulator keeps its backups across a restart (state file beside the
/// storage directory), and the admin endpoint sets volume data for such a process.
#[tokio::test]
async fn backups_survive_a_restart_and_volume_data_is_set_through_the_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || SimConfig {
        task_duration: Duration::from_millis(10),
        state_file: Some(dir.path().join("state.json")),
        ..SimConfig::default()
    };
    let sim = pve_sim::start(cfg()).await.unwrap();
    let base = sim.base_url();
    create_ct(&base, 180, &[]).await;
    let r = http()
        .put(format!("{base}/_sim/volume-data"))
        .header(
            "Authorization",
            format!("PVEAPIToken={DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}"),
        )
        .body(r#"{"volid":"local-lvm:vm-180-disk-0","data":"etc and home"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, exit, log) = vzdump(&base, &[("vmid", "180"), ("storage", "local")]).await;
    assert_eq!(exit, "OK");
    let volid = volid_from_log("local", &log);
    assert!(sim.storage_dir().starts_with(dir.path()));
    sim.shutdown().await;

    let sim = pve_sim::start(cfg()).await.unwrap();
    let base = sim.base_url();
    let list = backups(&base, "local", 180).await;
    assert_eq!(list[0]["volid"], volid);
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "180"),
            ("ostemplate", &volid),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        wait_task(&base, v["data"].as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    assert_eq!(
        sim.volume_data("local-lvm:vm-180-disk-1").as_deref(),
        Some("etc and home")
    );
}

/// §2 and §3 item 14: without `VM.Backup` the backup list is silently empty, vzdump fails
/// inside its task and archives cannot be read; §1.5/§3 item 18: a node that dies
/// mid-restore leaves only `lock: create`, which blocks every retry; ENOSPC while allocating
/// the new volumes loses the CT.
#[tokio::test]
async fn privileges_a_crash_mid_restore_and_no_space_for_the_new_volumes() {
    let mut cfg = SimConfig {
        task_duration: Duration::from_millis(10),
        storages: full_layout(),
        ..SimConfig::default()
    };
    cfg.tokens.push(pve_sim::SimToken {
        id: "audit@pve!ro".into(),
        secret: "ro-secret".into(),
        vm_backup: false,
    });
    let sim = pve_sim::start(cfg).await.unwrap();
    let base = sim.base_url();
    create_ct(&base, 190, &[]).await;
    let (_, _, log) = vzdump(&base, &[("vmid", "190"), ("storage", "local")]).await;
    let volid = volid_from_log("local", &log);

    let ro = |method: Method, path: String, form: Vec<(&'static str, String)>| {
        let base = base.clone();
        async move {
            let mut req = http()
                .request(method.clone(), format!("{base}/api2/json{path}"))
                .header("Authorization", "PVEAPIToken=audit@pve!ro=ro-secret");
            req = if method == Method::GET || method == Method::DELETE {
                req.query(&form)
            } else {
                req.form(&form)
            };
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = ro(
        Method::GET,
        "/nodes/pve1/storage/local/content".into(),
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let vols: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["volid"].as_str().unwrap())
        .collect();
    assert!(!vols.contains(&volid.as_str()), "{vols:?}");
    assert!(vols.iter().any(|x| x.starts_with("local:vztmpl/")));
    let (s, v) = ro(
        Method::GET,
        "/nodes/pve1/vzdump/extractconfig".into(),
        vec![("volume", volid.clone())],
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(
        v["message"],
        "Permission check failed (/vms/190, VM.Backup)\n"
    );
    let (s, _) = ro(
        Method::DELETE,
        format!("/nodes/pve1/storage/local/content/{}", enc(&volid)),
        vec![],
    )
    .await;
    assert_eq!(s, 403);
    let (s, v) = ro(
        Method::POST,
        "/nodes/pve1/lxc".into(),
        vec![
            ("vmid", "191".into()),
            ("restore", "1".into()),
            ("ostemplate", volid.clone()),
            ("storage", "local-lvm".into()),
        ],
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = ro(
        Method::POST,
        "/nodes/pve1/vzdump".into(),
        vec![("vmid", "190".into()), ("storage", "local".into())],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert_eq!(wait_task(&base, &upid).await["exitstatus"], "job errors");
    assert!(
        task_log(&base, &upid).await.contains(
            &"ERROR: Backup of VM 190 failed - Permission check failed (/vms/190, VM.Backup)"
                .to_string()
        )
    );

    // The node dies mid-restore.
    sim.set_faults(Faults {
        storage: StorageFaults {
            restore_crash: [190].into(),
            ..StorageFaults::default()
        },
        ..Faults::default()
    });
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "190"),
            ("ostemplate", &volid),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].as_str().unwrap().to_string();
    assert_eq!(
        wait_task(&base, &upid).await["exitstatus"],
        "unexpected status"
    );
    assert!(
        !task_log(&base, &upid)
            .await
            .iter()
            .any(|l| l.starts_with("TASK "))
    );
    let (_, c) = config(&base, 190).await;
    let keys: Vec<&String> = c["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["digest", "lock"], "{c}");
    assert_eq!(c["data"]["lock"], "create");
    sim.set_faults(Faults::default());
    let (s, v) = restore(
        &base,
        &[
            ("vmid", "190"),
            ("ostemplate", &volid),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(v["message"], "CT is locked (create)\n");

    // No space for the new volumes: the CT is gone.
    create_ct(&base, 192, &[]).await;
    let (_, _, log) = vzdump(&base, &[("vmid", "192"), ("storage", "local")]).await;
    let v192 = volid_from_log("local", &log);
    sim.set_faults(Faults {
        storage: StorageFaults {
            no_space: ["local-lvm".to_string()].into(),
            ..StorageFaults::default()
        },
        ..Faults::default()
    });
    let (_, v) = restore(
        &base,
        &[
            ("vmid", "192"),
            ("ostemplate", &v192),
            ("force", "1"),
            ("storage", "local-lvm"),
        ],
    )
    .await;
    let st = wait_task(&base, v["data"].as_str().unwrap()).await;
    assert!(
        st["exitstatus"]
            .as_str()
            .unwrap()
            .contains("Insufficient free space"),
        "{st}"
    );
    assert_eq!(config(&base, 192).await.0, 500);
}
