//! `drover demo`: the README's main command. Everything is real except the Proxmox host: an
//! in-process simulator (real HTTPS, real tasks), a real journal in a temporary directory, the
//! real gate with a demo trust document, and a real `ssh-keygen` signature over the request the
//! agent wrote.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::reconcile::lanes::BackoffPolicy;
use crate::reconcile::pve::WaitPolicy;
use crate::service::config::Config;
use crate::service::daemon::{self, RunOptions};
use crate::service::systemd::Systemd;

const DESIRED: &str = include_str!("../../testdata/demo/desired.toml");
const TRUST: &str = include_str!("../../testdata/demo/trust");
const OPERATOR_KEY: &str = include_str!("../../testdata/demo/TEST_demo_operator_ed25519");
const OPERATOR_PUB: &str = include_str!("../../testdata/demo/TEST_demo_operator_ed25519.pub");
const DOMAIN: &str = "demo.drover.invalid";

fn section(title: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        crate::outln!("\n\x1b[1m== {title}\x1b[0m");
    } else {
        crate::outln!("\n== {title}");
    }
}

/// The guests on the simulated host before Drover runs.
fn seed() -> Vec<pve_sim::SeedGuest> {
    let tpl = |vmid: u32, hostname: &str, running: bool| pve_sim::SeedGuest {
        vmid,
        hostname: hostname.to_string(),
        running,
        ..pve_sim::SeedGuest::default()
    };
    vec![
        // dns-1: already as desired.
        pve_sim::SeedGuest {
            cores: 1,
            memory: 512,
            swap: 512,
            rootfs_gib: 4,
            net0: Some("name=eth0,bridge=vmbr0,ip=dhcp".into()),
            onboot: true,
            tags: vec!["dns".into(), "infra".into()],
            description: Some("managed by drover".into()),
            ..tpl(101, "dns-1", true)
        },
        // web-1: someone lowered its memory and moved it to another bridge.
        pve_sim::SeedGuest {
            cores: 2,
            memory: 512,
            swap: 512,
            rootfs_gib: 8,
            net0: Some("name=eth0,bridge=vmbr1,ip=dhcp".into()),
            onboot: true,
            tags: vec!["web".into()],
            description: Some("managed by drover".into()),
            ..tpl(102, "web-1", true)
        },
        // db-1: stopped, should run.
        pve_sim::SeedGuest {
            cores: 2,
            memory: 2048,
            swap: 1024,
            rootfs_gib: 16,
            net0: Some("name=eth0,bridge=vmbr0,ip=dhcp".into()),
            onboot: true,
            tags: vec!["db".into()],
            ..tpl(103, "db-1", false)
        },
        // old-app: the document says absent; destroying it needs a signature.
        pve_sim::SeedGuest {
            cores: 1,
            memory: 256,
            rootfs_gib: 4,
            ..tpl(105, "old-app", true)
        },
        // legacy: not in the document, so Drover never touches it.
        pve_sim::SeedGuest {
            cores: 1,
            memory: 256,
            rootfs_gib: 4,
            ..tpl(110, "legacy", true)
        },
    ]
}

/// Fast polling: the simulator's tasks take a fraction of a second.
fn demo_options() -> RunOptions {
    RunOptions {
        once: true,
        waits: WaitPolicy {
            poll_interval: Some(Duration::from_millis(50)),
        },
        backoff: BackoffPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
        },
        once_timeout: Duration::from_secs(20),
        step_deadline: Duration::from_secs(30),
        progress: false,
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs the demo.
pub async fn run() -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("drover-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = tmp.path();

    section("1. A simulated Proxmox VE host");
    // A dedicated backup storage for safety copies, as the operator guide recommends.
    let mut storages = pve_sim::SimConfig::default().storages;
    storages.push(pve_sim::SimStorage {
        id: "safety".into(),
        kind: pve_sim::StorageType::Dir,
        content: ["backup".to_string()].into_iter().collect(),
        shared: true,
        ..pve_sim::SimStorage::default()
    });
    let sim = pve_sim::start(pve_sim::SimConfig {
        task_duration: Duration::from_millis(300),
        guests: seed(),
        storages,
        ..pve_sim::SimConfig::default()
    })
    .await
    .context("starting the PVE simulator")?;
    crate::outln!(
        "PVE API simulator on {} (TLS fingerprint {})",
        sim.base_url(),
        sim.fingerprint()
    );
    crate::outln!(
        "existing CTs: 101 dns-1, 102 web-1 (drifted), 103 db-1 (stopped), 105 old-app, 110 legacy (unmanaged)"
    );

    // The agent's files, as an operator would lay them out.
    let source = root.join("desired");
    write(&source.join("desired.toml"), DESIRED)?;
    write(&root.join("trust"), TRUST)?;
    write(&root.join("pve-token"), pve_sim::DEFAULT_TOKEN_SECRET)?;
    let config_path = root.join("drover.toml");
    write(
        &config_path,
        &format!(
            "host = \"pve1\"\nfleet = \"demo\"\nstate_dir = {state:?}\ninterval = \"30s\"\n\n[proxmox]\nurl = {url:?}\ntoken_id = {tok:?}\ntoken_secret_file = {secret:?}\nfingerprint = {fp:?}\nmax_parallel = 3\n\n[source]\npath = {src:?}\n\n[trust]\nfile = {trust:?}\n\n[control]\nsocket = {sock:?}\n\n[safety]\nstorage = \"safety\"\n",
            state = root.join("state"),
            url = sim.base_url(),
            tok = pve_sim::DEFAULT_TOKEN_ID,
            secret = root.join("pve-token"),
            fp = sim.fingerprint(),
            src = source,
            trust = root.join("trust"),
            sock = root.join("drover.sock"),
        ),
    )?;
    let config = Config::load(&config_path)?;

    section("2. drover plan");
    crate::cli::plan(&config_path, false).await?;

    section("3. drover run --once (CT 104 is created; the existing CTs wait for adoption)");
    let r = daemon::run(config.clone(), demo_options(), Systemd::default()).await?;
    crate::outln!("first pass finished: {r:?}");
    let approvals = crate::approval::requests::Approvals::new(&config.state_dir, None);
    let adopt: Vec<PathBuf> = approvals
        .pending()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.to_string_lossy().ends_with("-adopt.txt"))
        .collect();
    if adopt.is_empty() {
        anyhow::bail!("expected adopt requests for the existing CTs 101, 102, 103 and 105");
    }
    crate::outln!(
        "Drover did not create 101, 102, 103 and 105: nothing on them changes until an operator adopts them."
    );
    for p in &adopt {
        crate::outln!("  pending: {}", p.display());
    }

    section("4. An operator signs all adopt requests with one ssh-keygen call");
    let Some(signed) = sign(root, &adopt)? else {
        crate::outln!(
            "ssh-keygen is not installed; skipping the signed steps. Install OpenSSH to see them."
        );
        summary(&sim, started).await;
        return Ok(ExitCode::SUCCESS);
    };
    crate::outln!(
        "ssh-keygen -Y sign -f TEST_demo_operator_ed25519 -n destructive-op-v1@{DOMAIN} {}",
        signed
            .iter()
            .map(|(c, _)| c
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (copy, sig) in &signed {
        crate::cli::approve(&config_path, copy, std::slice::from_ref(sig), false).await?;
    }

    section(
        "5. drover run --once (adopted; drift corrected; the destroy waits for its own signature)",
    );
    let r = daemon::run(config.clone(), demo_options(), Systemd::default()).await?;
    crate::outln!("second pass finished: {r:?}");
    let pending = approvals.pending();
    let Some((request, text)) = pending.first().cloned() else {
        anyhow::bail!("expected a pending approval request for CT 105");
    };
    crate::outln!("pending approval request {}:\n{text}", request.display());
    let Some(signed) = sign(root, std::slice::from_ref(&request))? else {
        anyhow::bail!("ssh-keygen stopped working");
    };
    let (signed_copy, sig) = signed[0].clone();
    crate::outln!(
        "ssh-keygen -Y sign -f TEST_demo_operator_ed25519 -n destructive-op-v1@{DOMAIN} {}",
        request.display()
    );
    crate::cli::verify_approval(
        &config_path,
        &signed_copy,
        std::slice::from_ref(&sig),
        false,
    )?;
    crate::cli::approve(&config_path, &signed_copy, &[sig], false).await?;
    crate::outln!(
        "The request binds `bind.safety: vzdump@safety`: before destroying CT 105, Drover shuts it down, takes a protected vzdump to the storage `safety`, verifies it (volid from the task log, the listing, the archived config, a sha256) and only then spends the approval and destroys."
    );
    let r = daemon::run(config.clone(), demo_options(), Systemd::default()).await?;
    crate::outln!("third pass finished (the approved destroy ran, after its safety copy): {r:?}");
    if let Some(dump) = sim
        .mutations()
        .iter()
        .find(|m| m.kind == "vzdump" && m.vmid == Some(105))
    {
        let p = |k: &str| dump.params.get(k).cloned().unwrap_or_default();
        crate::outln!(
            "the safety copy's vzdump: storage={} mode={} compress={} protected={} remove={} lockwait={} notes-template={}",
            p("storage"),
            p("mode"),
            p("compress"),
            p("protected"),
            p("remove"),
            p("lockwait"),
            p("notes-template")
        );
    }

    section("6. drover copies (the destroy's verified safety copy)");
    crate::cli::copies(&config_path, None, false)?;

    section("7. drover plan (nothing left to do)");
    crate::cli::plan(&config_path, false).await?;
    section("8. drover journal");
    crate::cli::journal_show(&config.state_dir, false, false)?;
    summary(&sim, started).await;
    Ok(ExitCode::SUCCESS)
}

/// Signs `requests` with the TEST operator key in one `ssh-keygen -Y sign` call; returns
/// (signed copy, signature) pairs, or `None` when ssh-keygen is missing.
fn sign(root: &Path, requests: &[PathBuf]) -> anyhow::Result<Option<Vec<(PathBuf, PathBuf)>>> {
    let keydir = root.join("operator");
    std::fs::create_dir_all(&keydir)?;
    let key = keydir.join("TEST_demo_operator_ed25519");
    write(&key, OPERATOR_KEY)?;
    write(&keydir.join("TEST_demo_operator_ed25519.pub"), OPERATOR_PUB)?;
    // ssh-keygen refuses a private key others can read.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut copies = Vec::new();
    for r in requests {
        let copy = keydir.join(r.file_name().unwrap_or_default());
        // A signature of an earlier round would make ssh-keygen ask before overwriting.
        let _ = std::fs::remove_file(format!("{}.sig", copy.display()));
        std::fs::copy(r, &copy)?;
        copies.push(copy);
    }
    let out = match std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-f"])
        .arg(&key)
        .args(["-n", &format!("destructive-op-v1@{DOMAIN}")])
        .args(&copies)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running ssh-keygen"),
    };
    if !out.status.success() {
        anyhow::bail!(
            "ssh-keygen -Y sign failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(
        copies
            .into_iter()
            .map(|c| {
                let sig = PathBuf::from(format!("{}.sig", c.display()));
                (c, sig)
            })
            .collect(),
    ))
}

async fn summary(sim: &pve_sim::RunningSim, started: Instant) {
    section("Summary");
    let mutations = sim.mutations();
    crate::outln!("PVE mutations made by the agent, from the simulator's log:");
    for m in &mutations {
        crate::outln!(
            "  {} {} {}",
            m.method,
            m.path,
            m.vmid.map(|v| format!("(CT {v})")).unwrap_or_default()
        );
    }
    crate::outln!(
        "creates of CT 104: {}; safety copies of CT 105: {}; destroys of CT 105: {}; CT 110 (unmanaged) untouched: {}",
        sim.count_mutations("create", 104),
        sim.count_mutations("vzdump", 105),
        sim.count_mutations("destroy", 105),
        mutations.iter().all(|m| m.vmid != Some(110)),
    );
    crate::outln!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
}
