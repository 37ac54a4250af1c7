//! Shared helpers for the agent's end-to-end tests: a simulated PVE host (in the test process),
//! a real `drover` binary as a child process, real config files, real `ssh-keygen` signatures.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const DOMAIN: &str = "demo.drover.invalid";

pub const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

/// A fully specified `[[guest]]` entry (matches what `seed` creates).
pub fn guest(vmid: u32, ensure: &str, memory: u32) -> String {
    format!(
        "[[guest]]\nvmid = {vmid}\nensure = \"{ensure}\"\nhostname = \"ct-{vmid}\"\ntemplate = \"{TEMPLATE}\"\ncores = 1\nmemory = {memory}\nswap = 0\nrootfs = \"local-lvm:4\"\nnet0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"\nonboot = true\ntags = [\"web\"]\ndescription = \"managed by drover\"\n"
    )
}

/// A simulator guest matching `guest(vmid, "running"|"stopped", memory)`.
pub fn seed(vmid: u32, running: bool, memory: u64) -> pve_sim::SeedGuest {
    pve_sim::SeedGuest {
        vmid,
        hostname: format!("ct-{vmid}"),
        running,
        cores: 1,
        memory,
        swap: 0,
        rootfs_gib: 4,
        net0: Some("name=eth0,bridge=vmbr0,ip=dhcp".into()),
        onboot: true,
        tags: vec!["web".into()],
        description: Some("managed by drover".into()),
        ..pve_sim::SeedGuest::default()
    }
}

/// A test host: the simulator plus the agent's directory layout.
pub struct Host {
    pub sim: pve_sim::RunningSim,
    pub dir: tempfile::TempDir,
}

impl Host {
    pub async fn start(guests: Vec<pve_sim::SeedGuest>) -> Host {
        Host::start_with(pve_sim::SimConfig {
            task_duration: Duration::from_millis(100),
            guests,
            ..pve_sim::SimConfig::default()
        })
        .await
    }

    pub async fn start_with(cfg: pve_sim::SimConfig) -> Host {
        let sim = pve_sim::start(cfg).await.expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let h = Host { sim, dir };
        std::fs::create_dir_all(h.source()).unwrap();
        std::fs::write(h.root().join("pve-token"), pve_sim::DEFAULT_TOKEN_SECRET).unwrap();
        std::fs::write(
            h.root().join("trust"),
            include_str!("../../../testdata/demo/trust"),
        )
        .unwrap();
        h.write_config("");
        h
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn source(&self) -> PathBuf {
        self.root().join("desired")
    }
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn config(&self) -> PathBuf {
        self.root().join("drover.toml")
    }

    /// Writes drover.toml; `extra` is appended (more sections or overrides).
    pub fn write_config(&self, extra: &str) {
        self.write_config_with_source(&format!("path = {:?}", self.source()), extra);
    }

    /// Writes drover.toml with `source` as the body of its `[source]` section.
    pub fn write_config_with_source(&self, source: &str, extra: &str) {
        // Destructive steps need a storage for safety copies; the simulator's `local` holds
        // backups. A test that is about `[safety]` writes its own section.
        let safety = if extra.contains("[safety]") {
            ""
        } else {
            "\n[safety]\nstorage = \"local\"\n"
        };
        let extra = format!("{extra}{safety}");
        let text = format!(
            "host = \"pve1\"\nfleet = \"demo\"\nstate_dir = {state:?}\ninterval = \"1s\"\n\n[proxmox]\nurl = {url:?}\ntoken_id = {tok:?}\ntoken_secret_file = {secret:?}\nfingerprint = {fp:?}\nmax_parallel = 3\ntask_poll_interval = \"20ms\"\n\n[source]\n{source}\n\n[trust]\nfile = {trust:?}\n\n[control]\nsocket = {sock:?}\n{extra}",
            state = self.state(),
            url = self.sim.base_url(),
            tok = pve_sim::DEFAULT_TOKEN_ID,
            secret = self.root().join("pve-token"),
            fp = self.sim.fingerprint(),
            trust = self.root().join("trust"),
            sock = self.root().join("drover.sock"),
        );
        std::fs::write(self.config(), text).unwrap();
    }

    pub fn desired(&self, text: &str) {
        std::fs::write(self.source().join("desired.toml"), text).unwrap();
    }

    /// Runs `drover ARGS` to completion as a child process.
    pub fn drover(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("drover runs");
        eprintln!(
            "--- drover {args:?} exit {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
        c.arg("--config").arg(self.config()).args(args);
        c.env_remove("NOTIFY_SOCKET");
        c.env("DROVER_LOG", "info");
        c
    }

    /// Runs drover in a blocking thread so the in-process simulator keeps serving.
    pub async fn drover_async(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        let label = format!("{args:?}");
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("drover runs"))
            .await
            .unwrap();
        eprintln!(
            "--- drover {label} exit {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `drover VERB FILE SIG...` (`approve`, `verify-approval`) as a child process.
    pub async fn submit(&self, verb: &str, file: &Path, signatures: &[&Path]) -> Output {
        let mut args = vec![verb, file.to_str().unwrap()];
        args.extend(signatures.iter().map(|s| s.to_str().unwrap()));
        self.drover_async(&args).await
    }

    /// The request files as `drover approvals` lists them (`*.txt`): never the temp file of
    /// a request being written, which is renamed away a moment later.
    pub fn pending_requests(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.state().join("approvals/pending"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "txt"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// True when `tool` is missing and the test should be skipped: the README's `cargo test` works
/// on a machine without it. CI sets `DROVER_REQUIRE_TOOLS=1`, where a missing tool fails the
/// test instead: a CI run must never pass by skipping.
pub fn skip_without(tool: &str, probe_arg: &str) -> bool {
    if std::process::Command::new(tool)
        .arg(probe_arg)
        .output()
        .is_ok()
    {
        return false;
    }
    assert!(
        std::env::var_os("DROVER_REQUIRE_TOOLS").is_none(),
        "{tool} is not installed and DROVER_REQUIRE_TOOLS is set"
    );
    println!("SKIPPED: {tool} is not installed");
    true
}

/// Signs `file` with a TEST key from testdata (copied to a 0600 file, as ssh-keygen demands);
/// returns the signature path. Tests that sign start with `skip_without("ssh-keygen", "-?")`.
pub fn sign(key_in_testdata: &str, namespace: &str, file: &Path, out_dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testdata")
        .join(key_in_testdata);
    let key = out_dir.join(src.file_name().unwrap());
    std::fs::copy(&src, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let copy = out_dir.join(file.file_name().unwrap());
    // Copying a file onto itself would truncate it.
    if copy != file {
        std::fs::copy(file, &copy).unwrap();
    }
    let out = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-f"])
        .arg(&key)
        .args(["-n", namespace])
        .arg(&copy)
        .output()
        .expect("running ssh-keygen (install openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(format!("{}.sig", copy.display()))
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A `drover run` child process. Its output goes to a file (a child holding the test's own
/// pipes would keep the test runner waiting); it is SIGKILLed if the test ends early.
pub struct Daemon {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Host {
    /// Starts `drover run` with the current config.
    pub fn spawn_daemon(&self) -> Daemon {
        let log = self.root().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = self
            .command(&["run"])
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("drover run starts");
        Daemon { child, log }
    }

    /// `drover status --output json`, once the daemon answers (panics after `timeout`).
    pub async fn status_json(&self, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut cmd = self.command(&["status", "--output", "json"]);
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon never answered: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` and the daemon log after `timeout`.
pub async fn eventually(
    daemon: &Daemon,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}\n--- daemon log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 10 s) for the exit status.
    pub async fn stop(self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.exited().await
    }

    /// Waits (10 s at most) for the agent to exit after a signal the test already sent; a
    /// second SIGTERM would make it exit at once with 130, by design.
    pub async fn exited(mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "drover did not stop on SIGTERM\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("--- daemon log:\n{}", self.log_text());
        }
    }
}

/// `previous` with a new version, chained to it by hash, plus `extra` signer lines.
pub fn successor(previous: &str, version: u64, extra: &str) -> String {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(previous.as_bytes()));
    let mut out = String::new();
    for line in previous.lines() {
        if line.starts_with("version: ") {
            out.push_str(&format!("version: {version}\n"));
        } else if line.starts_with("previous-sha256: ") {
            out.push_str(&format!("previous-sha256: {sha}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra);
    out
}

/// Signs several files with ONE `ssh-keygen -Y sign -f KEY -n NS a.txt b.txt ...` call (as
/// the operator guide shows for hosts with many existing guests); returns the signature paths
/// in the same order. The files are copied into `out_dir` first.
pub fn sign_all(
    key_in_testdata: &str,
    namespace: &str,
    files: &[PathBuf],
    out_dir: &Path,
) -> Vec<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(out_dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testdata")
        .join(key_in_testdata);
    let key = out_dir.join(src.file_name().unwrap());
    std::fs::copy(&src, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let copies: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            let copy = out_dir.join(f.file_name().unwrap());
            std::fs::copy(f, &copy).unwrap();
            copy
        })
        .collect();
    let out = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-f"])
        .arg(&key)
        .args(["-n", namespace])
        .args(&copies)
        .output()
        .expect("running ssh-keygen (install openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    copies
        .into_iter()
        .map(|c| {
            let sig = PathBuf::from(format!("{}.sig", c.display()));
            assert!(sig.exists(), "no signature for {}", c.display());
            (c, sig)
        })
        .collect()
}

impl Host {
    /// The pending `adopt` requests, by vmid.
    pub fn pending_adoptions(&self) -> Vec<(u32, PathBuf)> {
        self.pending_requests()
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                let vmid = name.strip_suffix("-adopt.txt")?.parse().ok()?;
                Some((vmid, p))
            })
            .collect()
    }

    /// Adopts the guests seeded in the simulator the legitimate way (a guest with no
    /// provenance is unmanaged until adopted): `drover run --once` writes one adopt request
    /// per unmanaged guest the document lists, the demo operator signs them all with one
    /// ssh-keygen call, and `drover approve` hands each to the agent (its inbox when no daemon
    /// runs). The next `run` records the adoptions, then manages the guests. Tests that call
    /// it start with `skip_without("ssh-keygen", "-?")`. Returns the vmids submitted.
    pub async fn adopt_all(&self) -> Vec<u32> {
        self.adopt_all_with("demo/TEST_demo_operator_ed25519", DOMAIN)
            .await
    }

    /// [`Host::adopt_all`] signed by another key (in testdata) for another namespace domain.
    pub async fn adopt_all_with(&self, key_in_testdata: &str, domain: &str) -> Vec<u32> {
        let run = self.drover_async(&["run", "--once"]).await;
        assert_eq!(code(&run), 2, "adoptions are pending");
        let pending = self.pending_adoptions();
        assert!(!pending.is_empty(), "no adopt request was written");
        let files: Vec<PathBuf> = pending.iter().map(|(_, p)| p.clone()).collect();
        let signed = sign_all(
            key_in_testdata,
            &format!("destructive-op-v1@{domain}"),
            &files,
            &self.root().join("adopt-signing"),
        );
        for (copy, sig) in &signed {
            let out = self.submit("approve", copy, &[sig.as_path()]).await;
            assert_eq!(code(&out), 0, "{}", stdout(&out));
        }
        pending.into_iter().map(|(v, _)| v).collect()
    }
}
