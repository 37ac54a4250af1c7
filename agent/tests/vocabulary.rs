//! The desired-state vocabulary against the simulator over real TLS, through the real `drover`
//! binary: every field is created, changed and converged, and the next pass makes no mutation
//! at all (no perpetual drift). Then one hub document per risk class and what happens to it:
//! a step, a signature, or a refusal with its code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DOMAIN, Host, TEMPLATE, code, seed, sign, stdout};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJlc3Qta2V5LWV2ZXItZm9yLXRlc3Rz ops@example";

/// A guest using every field; `v` selects the first (1) or the changed (2) values.
fn full_guest(vmid: u32, v: u32) -> String {
    let (ns, sd, tz, order, cpulimit, cpuunits, console, tty, cmode, nesting, ro, size, extra) =
        if v == 1 {
            (
                "[\"10.0.0.53\", \"10.0.0.54\"]",
                "[\"lan.example\"]",
                "Europe/Berlin",
                "{ order = 2, up = 30 }",
                "1.5",
                "200",
                "true",
                "2",
                "tty",
                "true",
                "false",
                2,
                "",
            )
        } else {
            (
                "[\"fd00::53\"]",
                "[\"lan.example\", \"corp.example\"]",
                "UTC",
                "{ order = 3, up = 10, down = 60 }",
                "2",
                "300",
                "false",
                "4",
                "shell",
                "false",
                "true",
                3,
                "mp2 = { storage = \"local-lvm\", size = 1, path = \"/var/cache/app\" }\n",
            )
        };
    // Create-only keys change too: they are never compared with an existing guest.
    let ostype = if v == 1 { "debian" } else { "ubuntu" };
    format!(
        r#"[[guest]]
vmid = {vmid}
ensure = "running"
hostname = "full-{vmid}"
template = "{TEMPLATE}"
cores = 1
memory = 512
swap = 0
rootfs = "local-lvm:4"
net0 = "name=eth0,bridge=vmbr0,ip=dhcp"
unprivileged = true
ssh-public-keys = "{KEY}"
ostype = "{ostype}"
arch = "amd64"
features = {{ nesting = {nesting} }}
nameserver = {ns}
searchdomain = {sd}
timezone = "{tz}"
startup = {order}
cpulimit = {cpulimit}
cpuunits = {cpuunits}
console = {console}
tty = {tty}
cmode = "{cmode}"
protection = false
mp0 = {{ storage = "local-lvm", size = {size}, path = "/srv/data", backup = true, ro = {ro}, acl = true, quota = false, replicate = false, shared = false, mountoptions = ["noatime", "nodev"] }}
mp1 = {{ storage = "local-lvm", size = 1, path = "/srv/logs" }}
{extra}"#
    )
}

fn conf(h: &Host, vmid: u32, key: &str) -> Option<String> {
    h.sim.guest(vmid).unwrap().config.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_is_created_changed_and_never_drifts() {
    let h = Host::start(vec![]).await;
    h.desired(&format!("revision = 1\n{}", full_guest(301, 1)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "created and converged: {}", stdout(&run));
    assert_eq!(h.sim.count_mutations("create", 301), 1);
    let g = h.sim.guest(301).unwrap();
    assert!(g.running);
    for (k, want) in [
        ("unprivileged", "1"),
        ("ostype", "debian"),
        ("features", "nesting=1"),
        ("nameserver", "10.0.0.53 10.0.0.54"),
        ("searchdomain", "lan.example"),
        ("timezone", "Europe/Berlin"),
        ("startup", "order=2,up=30"),
        ("cpulimit", "1.5"),
        ("cpuunits", "200"),
        ("console", "1"),
        ("tty", "2"),
        ("cmode", "tty"),
        ("protection", "0"),
    ] {
        assert_eq!(conf(&h, 301, k).as_deref(), Some(want), "{k}: {g:?}");
    }
    let mp0 = conf(&h, 301, "mp0").unwrap();
    assert!(
        mp0.starts_with("local-lvm:vm-301-disk-") && mp0.contains("mp=/srv/data"),
        "{mp0}"
    );
    for part in [
        "backup=1",
        "ro=0",
        "acl=1",
        "size=2G",
        "mountoptions=noatime;nodev",
    ] {
        assert!(mp0.split(',').any(|p| p == part), "{part} in {mp0}");
    }
    assert!(!g.config.contains_key("password"));

    // Converged: a plan says nothing, a pass makes no mutation (no perpetual drift).
    let before = h.sim.mutations().len();
    let plan = h.drover_async(&["plan"]).await;
    assert_eq!(code(&plan), 0, "{}", stdout(&plan));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert_eq!(h.sim.mutations().len(), before, "a converged pass mutated");

    // Every field changes: the plan shows each old → new value, a pass converges (pending
    // keys by a reboot, mp0 grows by a resize, mp2 is added), and the next pass is silent.
    h.desired(&format!("revision = 2\n{}", full_guest(301, 2)));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    assert_eq!(code(&plan), 2);
    let json: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let text = json.to_string();
    for key in [
        "nameserver",
        "searchdomain",
        "timezone",
        "startup",
        "cpulimit",
        "cpuunits",
        "console",
        "tty",
        "cmode",
        "features",
        "mp0",
        "mp0.size",
        "mp2",
    ] {
        assert!(
            text.contains(&format!("\"key\":\"{key}\"")),
            "plan lacks {key}: {text}"
        );
    }
    assert!(
        text.contains("\"old\":\"Europe/Berlin\"") && text.contains("\"new\":\"UTC\""),
        "{text}"
    );
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    let g = h.sim.guest(301).unwrap();
    assert!(
        g.pending.is_empty(),
        "pending keys were applied by a reboot: {g:?}"
    );
    assert!(
        h.sim.count_mutations("reboot", 301) >= 1,
        "a reboot applied the pending keys"
    );
    for (k, want) in [
        ("features", "nesting=0"),
        ("nameserver", "fd00::53"),
        ("searchdomain", "lan.example corp.example"),
        ("timezone", "UTC"),
        ("startup", "order=3,up=10,down=60"),
        ("cpulimit", "2"),
        ("cpuunits", "300"),
        ("console", "0"),
        ("tty", "4"),
        ("cmode", "shell"),
    ] {
        assert_eq!(conf(&h, 301, k).as_deref(), Some(want), "{k}: {g:?}");
    }
    let mp0 = conf(&h, 301, "mp0").unwrap();
    assert!(mp0.contains("ro=1") && mp0.contains("size=3G"), "{mp0}");
    assert!(conf(&h, 301, "mp2").unwrap().contains("mp=/var/cache/app"));
    assert_eq!(
        conf(&h, 301, "ostype").as_deref(),
        Some("debian"),
        "create only"
    );
    assert_eq!(
        h.sim.count_mutations("create", 301),
        1,
        "changed in place, never re-created"
    );
    let before = h.sim.mutations().len();
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert_eq!(h.sim.mutations().len(), before, "a converged pass mutated");
}

/// Refused keys: the whole document is refused with its code (naming file, guest and field),
/// nothing is sent to PVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_only_and_host_takeover_keys_refuse_the_document_with_their_code() {
    let h = Host::start(vec![]).await;
    let base = format!(
        "revision = 1\n[[guest]]\nvmid = 311\nhostname = \"r\"\ntemplate = \"{TEMPLATE}\"\nrootfs = \"local-lvm:4\"\n"
    );
    for (line, code_word, field) in [
        (
            "features = { keyctl = true }",
            "feature_root_only",
            "features.keyctl",
        ),
        (
            "features = { fuse = true }",
            "feature_root_only",
            "features.fuse",
        ),
        (
            "features = { mknod = true }",
            "feature_root_only",
            "features.mknod",
        ),
        (
            "features = { mount = true }",
            "feature_root_only",
            "features.mount",
        ),
        ("password = \"hunter22\"", "password_refused", "password"),
        (
            "hookscript = \"local:snippets/x.sh\"",
            "hookscript_refused",
            "hookscript",
        ),
        (
            "\"lxc.apparmor.profile\" = \"unconfined\"",
            "raw_lxc_refused",
            "lxc.apparmor.profile",
        ),
        ("pool = \"other\"", "pool_is_host_setting", "pool"),
        ("mpx = 1", "unknown field", "mpx"),
    ] {
        h.desired(&format!("{base}{line}\n"));
        let plan = h.drover_async(&["plan"]).await;
        assert_eq!(code(&plan), 1, "{line}");
        let err = String::from_utf8_lossy(&plan.stderr);
        assert!(
            err.contains(code_word)
                && err.contains("guest 311")
                && err.contains(&format!("field `{field}`"))
                && err.contains("desired.toml"),
            "{line}: {err}"
        );
        let run = h.drover_async(&["run", "--once"]).await;
        assert_eq!(code(&run), 1, "{line}");
    }
    assert!(
        h.sim.mutations().is_empty(),
        "a refused document reached PVE"
    );
}

/// Bind mounts and devices: refused unless this host's drover.toml lists them; when listed,
/// PVE still lets only root add them, so the plan says how (a note), and a guest where root
/// did it is converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_paths_and_devices_only_as_the_hosts_own_config_allows() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(321, true, 256)]).await;
    let doc =
        |extra: &str| format!("revision = 1\n[[guest]]\nvmid = 321\nensure = \"running\"\n{extra}");
    let bind = "mp0 = { host_path = \"/srv/shared/media\", path = \"/media\", ro = true }\n";
    let dev = "dev0 = { path = \"/dev/dri/renderD128\", gid = 44 }\n";
    h.desired(&doc(&format!("{bind}{dev}")));
    h.adopt_all().await;
    h.drover_async(&["run", "--once"]).await;
    let plan = h.drover_async(&["plan"]).await;
    let out = stdout(&plan);
    assert!(
        out.contains("host_path_not_allowed") && out.contains("device_not_allowed"),
        "{out}"
    );
    let before = h.sim.mutations().len();
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2, "held by a refusal");
    assert_eq!(h.sim.mutations().len(), before);

    h.write_config(
        "\n[guests]\nhost_paths = [\"/srv/shared\"]\ndevices = [\"/dev/dri/renderD128\"]\n",
    );
    let plan = h.drover_async(&["plan"]).await;
    let out = stdout(&plan);
    assert!(
        out.contains("host_mount_needs_root") && out.contains("device_needs_root"),
        "{out}"
    );
    assert!(
        out.contains("pct set 321 -mp0 /srv/shared/media,mp=/media"),
        "{out}"
    );
    // Root adds them by hand, as the note says: converged, nothing sent.
    h.sim
        .edit_config(321, "mp0", Some("/srv/shared/media,mp=/media,ro=1"));
    h.sim
        .edit_config(321, "dev0", Some("/dev/dri/renderD128,gid=44"));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    assert_eq!(
        h.sim.mutations().len(),
        before,
        "root's mounts were touched"
    );
}

/// Reported, never acted on: a document that flips `unprivileged` on an existing guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_unprivileged_on_an_existing_guest_is_only_reported() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(331, true, 256)]).await;
    h.desired("revision = 1\n[[guest]]\nvmid = 331\nunprivileged = false\n");
    h.adopt_all().await;
    let before = h.sim.mutations().len();
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("unprivileged_is_create_only"), "{err}");
    assert_eq!(h.sim.mutations().len(), before);
    assert_eq!(conf(&h, 331, "unprivileged").as_deref(), Some("1"));
}

fn sign_and_submit_all(h: &Host, dir: &str) -> Vec<std::path::PathBuf> {
    let ns = format!("destructive-op-v1@{DOMAIN}");
    let work = h.root().join(dir);
    std::fs::create_dir_all(&work).unwrap();
    let mut out = Vec::new();
    for request in h
        .pending_requests()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
    {
        let sig = sign("demo/TEST_demo_operator_ed25519", &ns, &request, &work);
        let copy = work.join(request.file_name().unwrap());
        let o = h
            .command(&["approve", copy.to_str().unwrap(), sig.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.push(request);
    }
    out
}

/// Destructive: a privileged create, removing a mount point (a reversible detach) and, after
/// the grace period, deleting the detached volume. Each waits for its own signature; the
/// request says in words what it loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_create_detach_and_delete_after_grace_each_need_a_signature() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![]).await;
    // A grace that a slow `run --once` after the detach cannot outlast (it would plan the
    // deletion in the same run).
    h.write_config("\n[safety]\ndetach_grace = \"8s\"\n");
    let entry = |unpriv: bool, mps: &str| {
        format!(
            "[[guest]]\nvmid = 341\nensure = \"running\"\nhostname = \"data-1\"\ntemplate = \"{TEMPLATE}\"\nrootfs = \"local-lvm:4\"\nunprivileged = {unpriv}\ndescription = \"data store, do not touch\"\nssh-public-keys = \"{KEY}\"\n{mps}"
        )
    };
    let two = "mp0 = { storage = \"local-lvm\", size = 2, path = \"/srv/a\" }\nmp1 = { storage = \"local-lvm\", size = 3, path = \"/srv/b\", backup = true }\n";

    // A privileged create waits for a signature, and the request says why.
    h.desired(&format!("revision = 1\n{}", entry(false, two)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert!(
        h.sim.guest(341).is_none(),
        "created privileged without a signature"
    );
    let approvals = h.drover_async(&["approvals"]).await;
    let shown = stdout(&approvals);
    assert!(
        shown.contains("creates CT 341 (data-1)") && shown.contains("PRIVILEGED"),
        "{shown}"
    );
    let request = h
        .pending_requests()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "txt"))
        .unwrap();
    let signed = std::fs::read_to_string(&request).unwrap();
    assert!(
        !signed.contains("PRIVILEGED"),
        "the words are not in the signed text"
    );
    // Free text (spaces) is bound by its hash, which the payload grammar can hold.
    assert!(signed.contains("param.unprivileged: 0\n"), "{signed}");
    assert!(signed.contains("param.description: sha256:"), "{signed}");
    assert!(
        signed.contains("param.ssh-public-keys: sha256:"),
        "{signed}"
    );

    // Back to unprivileged: a benign create, the request is withdrawn.
    h.desired(&format!("revision = 2\n{}", entry(true, two)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    assert!(
        h.pending_requests().is_empty(),
        "{:?}",
        h.pending_requests()
    );
    let mp1 = conf(&h, 341, "mp1").unwrap();
    let volume = mp1.split(',').next().unwrap().to_string();

    // mp1 leaves the document: a detach, signed, and the volume stays as unused0.
    h.desired(&format!(
        "revision = 3\n{}",
        entry(
            true,
            "mp0 = { storage = \"local-lvm\", size = 2, path = \"/srv/a\" }\n"
        )
    ));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert!(
        conf(&h, 341, "mp1").is_some(),
        "detached without a signature"
    );
    let shown = stdout(&h.drover_async(&["approvals"]).await);
    assert!(
        shown.contains("detaches a mount point from CT 341 (data-1)")
            && shown.contains(&format!("{volume} (3G) at /srv/b"))
            && shown.contains("no earlier than 8s"),
        "{shown}"
    );
    sign_and_submit_all(&h, "op1");
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    let g = h.sim.guest(341).unwrap();
    assert!(!g.config.contains_key("mp1"), "{g:?}");
    let unused: Vec<&String> = g
        .config
        .iter()
        .filter(|(k, _)| k.starts_with("unused"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(unused, vec![&volume], "the volume is kept: {g:?}");
    assert!(g.running, "{g:?}");

    // After the grace period: the deletion is its own destructive step.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2, "{}", stdout(&run));
    assert!(
        h.sim
            .guest(341)
            .unwrap()
            .config
            .values()
            .any(|v| v == &volume),
        "deleted without a signature"
    );
    let shown = stdout(&h.drover_async(&["approvals"]).await);
    assert!(
        shown.contains(&format!(
            "deletes the detached volume {volume} (unused0, 3G)"
        )) && shown.contains("data is lost"),
        "{shown}"
    );
    sign_and_submit_all(&h, "op2");
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    let g = h.sim.guest(341).unwrap();
    assert!(!g.config.values().any(|v| v.contains(&volume)), "{g:?}");
    let before = h.sim.mutations().len();
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert_eq!(h.sim.mutations().len(), before);
}

/// Clearing protection is destructive (a signature); setting it is benign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_protection_is_benign_clearing_it_needs_a_signature() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(351, true, 256)]).await;
    h.desired("revision = 1\n[[guest]]\nvmid = 351\nprotection = true\n");
    h.adopt_all().await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "{}", stdout(&run));
    assert!(h.sim.guest(351).unwrap().protection);
    h.desired("revision = 2\n[[guest]]\nvmid = 351\nprotection = false\n");
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert!(
        h.sim.guest(351).unwrap().protection,
        "cleared without a signature"
    );
    let shown = stdout(&h.drover_async(&["approvals"]).await);
    assert!(shown.contains("clearing protection"), "{shown}");
}
