//! pve-sim: a stateful simulator of the Proxmox VE API for LXC, faithful where the agent
//! depends on it (`shared/reference/proxmox-api.md`): token auth with PVE's delayed 401,
//! schema-validated parameters, tasks with real-format UPIDs, the config flock, the `lock`
//! property, digests, normalizations, idempotency errors, protection, faults, persistence and
//! a mutation log.
//!
//! It depends on no other Drover crate, so it and `proxmox-client` check each other.

mod archive;
mod backup;
pub mod permissions;
mod schema;
mod server;
mod state;
mod storage;
mod storage_routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;

pub use state::{Ct, Faults, Mutation, SeedGuest};
pub use storage::{SimStorage, StorageFaults, StorageType, Volume};

/// The token every default simulator accepts: the one `deploy/pve-setup.sh` creates on node
/// `pve1` (one token per node, `drover@pve!<node>`), as the operator guide and the example
/// `drover.toml` name it.
pub const DEFAULT_TOKEN_ID: &str = "drover@pve!pve1";
/// Its secret (a fixed test value).
pub const DEFAULT_TOKEN_SECRET: &str = "5f3c8a52-6d1e-4b7a-9c0f-7e2d1a9b3c4d";

/// Errors starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("pve-sim: {context}: {message}")]
    Io { context: String, message: String },
    #[error("pve-sim: {0}")]
    Config(String),
}

fn io_err(context: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Io {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum SimTls {
    #[default]
    Generate,
    Files {
        cert_pem: PathBuf,
        key_pem: PathBuf,
    },
}

/// An API token the simulator accepts.
#[derive(Debug, Clone)]
pub struct SimToken {
    pub id: String,
    pub secret: String,
    /// Holds `VM.Backup` (with `Datastore.AllocateSpace`), as Drover's role does. Without
    /// it backups are silently missing from content listings, vzdump fails inside its task
    /// and archives cannot be read, changed or deleted (`safety-nets.md` §2, §3 item 14).
    pub vm_backup: bool,
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub node: String,
    pub listen: SocketAddr,
    pub tls: SimTls,
    pub tokens: Vec<SimToken>,
    pub task_duration: Duration,
    /// PVE delays every 401 by about 3 s; tests use 0.
    pub auth_fail_delay: Duration,
    /// How long `PUT config`, create and every worker wait for a CT's config flock before
    /// "got timeout" (PVE's `lock_config`: 10 s, the default). Tests shorten it.
    pub lock_wait: Duration,
    pub state_file: Option<PathBuf>,
    pub faults: Faults,
    pub other_nodes: Vec<String>,
    pub guests: Vec<SeedGuest>,
    /// The node's storages (default: `local` dir with backups and templates, `local-lvm`
    /// LVM-thin for CT disks).
    pub storages: Vec<SimStorage>,
    /// Where file storages keep their archives (`<dir>/<storage>/dump`). `None`: beside the
    /// state file (`<state file>.storage`), else a fresh directory under the system temp
    /// directory that is removed when the simulator is dropped.
    pub storage_dir: Option<PathBuf>,
    /// What `GET /access/permissions` says every token holds; None: every privilege.
    pub token_privileges: Option<Vec<String>>,
    /// Serve the API like pveproxy does ([`PveProxyModel`]); None: as fast as possible, with
    /// no limit on concurrent requests (the default for tests).
    pub pveproxy: Option<PveProxyModel>,
}

/// pveproxy's shape, for benchmarks against a realistic PVE: a fixed pool of worker
/// processes (3 by default, `max_workers` in pveproxy) that each execute one API request at a
/// time, and a service time per request (a config read costs pveproxy 5-20 ms: perl, the
/// cluster filesystem, JSON). Requests beyond the workers wait in line, as they wait for a
/// free worker on PVE. Task workers (forked on PVE) are not limited by it. The 5 s keep-alive
/// idle timeout applies with or without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PveProxyModel {
    pub workers: usize,
    pub service_time: Duration,
}

impl PveProxyModel {
    /// 3 workers, 10 ms per request.
    pub fn pveproxy() -> PveProxyModel {
        PveProxyModel {
            workers: 3,
            service_time: Duration::from_millis(10),
        }
    }

    /// The fastest `requests` API requests can be served: in rounds of `workers`.
    pub fn ideal(&self, requests: u64) -> Duration {
        let workers = self.workers.max(1) as u64;
        self.service_time * u32::try_from(requests.div_ceil(workers)).unwrap_or(u32::MAX)
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            node: "pve1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: SimTls::Generate,
            tokens: vec![SimToken {
                id: DEFAULT_TOKEN_ID.into(),
                secret: DEFAULT_TOKEN_SECRET.into(),
                vm_backup: true,
            }],
            task_duration: Duration::from_millis(50),
            auth_fail_delay: Duration::ZERO,
            lock_wait: Duration::from_secs(10),
            state_file: None,
            faults: Faults::default(),
            other_nodes: Vec::new(),
            guests: Vec::new(),
            storages: storage::default_storages(),
            storage_dir: None,
            token_privileges: None,
            pveproxy: None,
        }
    }
}

/// A guest as the simulator holds it (for assertions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestView {
    pub vmid: u32,
    pub node: String,
    pub running: bool,
    pub hostname: Option<String>,
    pub cores: u64,
    pub memory: u64,
    pub swap: u64,
    pub net0: Option<String>,
    pub tags: Option<String>,
    pub lock: Option<String>,
    pub protection: bool,
    pub config: BTreeMap<String, String>,
    pub pending: BTreeMap<String, String>,
}

pub(crate) struct Shared {
    pub host: Mutex<state::Host>,
    pub config: SimConfig,
    pub requests: AtomicU64,
    /// TLS connections accepted (a client that does not reuse connections shows here).
    pub connections: AtomicU64,
    pub cert: Mutex<server::CertState>,
    /// pveproxy's workers when [`SimConfig::pveproxy`] is set: one permit per API request
    /// being executed.
    pub workers: Option<tokio::sync::Semaphore>,
    /// A storage directory the simulator made itself (removed on drop).
    pub owned_storage_dir: Option<PathBuf>,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, state::Host> {
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the state file atomically (temp file + rename).
    pub fn persist(&self, host: &state::Host) {
        if let Some(path) = &self.config.state_file
            && let Ok(bytes) = serde_json::to_vec(&host.p)
        {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}

/// A running simulator.
pub struct RunningSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the simulator on `cfg.listen`.
pub async fn start(cfg: SimConfig) -> Result<RunningSim, SimError> {
    let cert = server::CertState::new(&cfg.tls)?;
    let mut persisted = state::Persisted::default();
    if let Some(path) = &cfg.state_file
        && path.exists()
    {
        let bytes = std::fs::read(path).map_err(|e| io_err("reading the state file", e))?;
        persisted = serde_json::from_slice(&bytes)
            .map_err(|e| SimError::Config(format!("state file {}: {e}", path.display())))?;
        // Tasks that were running when the previous simulator stopped have finished since.
        for t in persisted.tasks.iter_mut().filter(|t| !t.done) {
            t.started_ms = Some(0);
            t.ends_at_ms = Some(0);
        }
    }
    let rng = match cfg.faults.seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_entropy(),
    };
    let (storage_root, owned_storage_dir) = match (&cfg.storage_dir, &cfg.state_file) {
        (Some(d), _) => (d.clone(), None),
        (None, Some(f)) => (f.with_extension("storage"), None),
        (None, None) => {
            static N: AtomicU64 = AtomicU64::new(0);
            let d = std::env::temp_dir().join(format!(
                "pve-sim-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            (d.clone(), Some(d))
        }
    };
    let layout = storage::Layout {
        storages: cfg.storages.clone(),
        root: storage_root,
    };
    layout
        .prepare()
        .map_err(|e| io_err(&format!("creating {}", layout.root.display()), e))?;
    let mut host = state::Host {
        node: cfg.node.clone(),
        p: persisted,
        epoch: Instant::now(),
        task_duration: cfg.task_duration,
        lock_wait: cfg.lock_wait,
        faults: cfg.faults.clone(),
        rng,
        layout,
    };
    storage::seed_templates(&mut host);
    host.advance();
    for g in &cfg.guests {
        if !host.p.cts.contains_key(&g.vmid) {
            host.seed(g);
        }
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| io_err(&format!("binding {}", cfg.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| io_err("reading the address", e))?;
    let cfg_workers = cfg.pveproxy.map(|m| m.workers.max(1));
    let shared = Arc::new(Shared {
        host: Mutex::new(host),
        config: cfg,
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        cert: Mutex::new(cert),
        owned_storage_dir,
        workers: cfg_workers.map(tokio::sync::Semaphore::new),
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server::serve(listener, shared.clone(), rx));
    Ok(RunningSim {
        shared,
        addr,
        shutdown: Some(tx),
        task: Some(task),
    })
}

impl RunningSim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }
    /// SHA-256 of the leaf certificate, `AA:BB:...` as PVE prints it.
    pub fn fingerprint(&self) -> String {
        self.shared
            .cert
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fingerprint()
    }
    pub fn cert_pem(&self) -> String {
        self.shared
            .cert
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cert_pem
            .clone()
    }
    /// Replaces the certificate with a new self-signed one (new connections use it).
    pub fn rotate_certificate(&self) -> Result<String, SimError> {
        let mut c = self.shared.cert.lock().unwrap_or_else(|p| p.into_inner());
        *c = server::CertState::new(&SimTls::Generate)?;
        Ok(c.cert_pem.clone())
    }
    /// Tasks started from now on run for `d` (those running keep their end): a test lengthens
    /// one task to observe the guest while it runs, without slowing every other.
    pub fn set_task_duration(&self, d: Duration) {
        self.shared.lock().task_duration = d;
    }
    pub fn set_faults(&self, f: Faults) {
        let mut h = self.shared.lock();
        if let Some(s) = f.seed {
            h.rng = rand::rngs::StdRng::seed_from_u64(s);
        }
        h.faults = f;
    }
    /// Adds (or replaces) a guest.
    pub fn seed(&self, g: SeedGuest) {
        let mut h = self.shared.lock();
        h.seed(&g);
        self.shared.persist(&h);
    }
    /// Removes a guest behind the agent's back (someone else destroyed it).
    pub fn remove(&self, vmid: u32) {
        let mut h = self.shared.lock();
        h.p.cts.remove(&vmid);
        self.shared.persist(&h);
    }
    /// Changes a guest behind the agent's back (an operator's `pct start`, `pct set`, ...);
    /// false when there is no such guest.
    pub fn alter(&self, vmid: u32, f: impl FnOnce(&mut Ct)) -> bool {
        let mut h = self.shared.lock();
        h.advance();
        let Some(ct) = h.p.cts.get_mut(&vmid) else {
            return false;
        };
        f(ct);
        self.shared.persist(&h);
        true
    }
    pub fn guest(&self, vmid: u32) -> Option<GuestView> {
        let mut h = self.shared.lock();
        h.advance();
        let ct = h.p.cts.get(&vmid)?;
        let n = |k: &str| ct.conf.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(GuestView {
            vmid,
            node: ct.node.clone(),
            running: ct.running,
            hostname: ct.conf.get("hostname").cloned(),
            cores: n("cores"),
            memory: n("memory"),
            swap: n("swap"),
            net0: ct.conf.get("net0").cloned(),
            tags: ct.conf.get("tags").cloned(),
            lock: ct.conf.get("lock").cloned(),
            protection: ct.conf.get("protection").is_some_and(|p| p == "1"),
            config: ct.conf.clone(),
            pending: ct.pending.clone(),
        })
    }
    pub fn mutations(&self) -> Vec<Mutation> {
        self.shared.lock().p.mutations.clone()
    }
    /// How many accepted mutations of `kind` (`create`, `destroy`, `start`, ...) hit `vmid`.
    pub fn count_mutations(&self, kind: &str, vmid: u32) -> usize {
        self.shared
            .lock()
            .p
            .mutations
            .iter()
            .filter(|m| m.kind == kind && m.vmid == Some(vmid))
            .count()
    }
    /// Sets (or with `None` removes) one config line behind the API, as root editing
    /// `/etc/pve/lxc/<vmid>.conf` would (e.g. a bind mount, which tokens may not add).
    pub fn edit_config(&self, vmid: u32, key: &str, value: Option<&str>) {
        let mut h = self.shared.lock();
        if let Some(ct) = h.p.cts.get_mut(&vmid) {
            match value {
                Some(v) => ct.conf.insert(key.to_string(), v.to_string()),
                None => ct.conf.remove(key),
            };
        }
        self.shared.persist(&h);
    }
    /// The directory file storages write to (`<dir>/<storage>/dump/vzdump-lxc-...`).
    pub fn storage_dir(&self) -> PathBuf {
        self.shared.lock().layout.root.clone()
    }
    /// Sets the pretend contents of a CT volume (what a backup captures and a restore brings
    /// back, or leaves empty for mount points outside the backup).
    pub fn set_volume_data(&self, volid: &str, data: &str) {
        let mut h = self.shared.lock();
        h.p.storage.data.insert(volid.to_string(), data.to_string());
        self.shared.persist(&h);
    }
    /// The pretend contents of a CT volume (`None`: empty, e.g. freshly allocated).
    pub fn volume_data(&self, volid: &str) -> Option<String> {
        let mut h = self.shared.lock();
        h.advance();
        h.p.storage.data.get(volid).cloned()
    }
    /// Backups and templates on every storage.
    pub fn volumes(&self) -> Vec<storage::Volume> {
        let mut h = self.shared.lock();
        h.advance();
        h.p.storage.volumes.values().cloned().collect()
    }
    /// API requests served so far (all of `/api2/json`).
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
    /// TLS connections accepted so far.
    pub fn tls_connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(d) = &self.owned_storage_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What `--help` prints.
const USAGE: &str = "\
pve-sim (also `drover sim --`): a simulated Proxmox VE node for trying and testing Drover.

Usage: pve-sim [OPTIONS]

Options:
  --listen ADDR             address to serve https on (default: a free port on
                            127.0.0.1; the address is printed)
  --node NAME               the node's name (default pve1)
  --token-id ID             the API token accepted (default drover@pve!<node>, as
                            pve-setup.sh names it)
  --token-secret-file F     read the token's secret from F (default: a fixed test secret)
  --state-file F            keep guests, tasks and volumes in F across restarts
  --faults F.json           inject latency, errors, resets and stuck tasks
  --task-ms N               how long a task runs (milliseconds)
  --lock-wait-ms N          how long a mutation waits for a guest's config lock
  --auth-delay-ms N         delay of a refused authentication (PVE: about 3 s)
  --pveproxy WORKERS:MS     model pveproxy: WORKERS requests at once, MS each
  --seed-demo               start with two demo guests (101 dns-1, 102 web-1)
  --storage-dir DIR         back the storages' volumes by files under DIR
  --storages F.json         the storages to offer
  --cert PEM --key PEM      serve this certificate (default: a new self-signed one)
  --write-cert PEM          write the certificate served to PEM (to pin or trust it)
  -h, --help                this text

On start it prints `listening URL`, `fingerprint SHA256`, `token_id ID` and
`token_secret SECRET` (one per line) for drover.toml's [proxmox] section, then serves until
SIGTERM or Ctrl-C.
";

/// The `pve-sim` command line (also `drover sim`). Prints `listening https://ADDR`,
/// `fingerprint AA:..`, `token_id ...` and `token_secret ...` on stdout, then serves until
/// SIGTERM/SIGINT.
pub async fn run_cli(args: Vec<String>) -> Result<(), SimError> {
    let mut cfg = SimConfig {
        auth_fail_delay: Duration::from_secs(3),
        ..SimConfig::default()
    };
    let mut it = args.into_iter();
    let mut token_id = None;
    let mut secret = DEFAULT_TOKEN_SECRET.to_string();
    let mut cert = None;
    let mut key = None;
    let mut write_cert = None;
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .ok_or_else(|| SimError::Config(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--listen" => {
                let v = val("--listen")?;
                cfg.listen = v
                    .parse()
                    .map_err(|e| SimError::Config(format!("--listen {v}: {e}")))?;
            }
            "--node" => cfg.node = val("--node")?,
            "--token-id" => token_id = Some(val("--token-id")?),
            "--token-secret-file" => {
                let p = val("--token-secret-file")?;
                secret = std::fs::read_to_string(&p)
                    .map_err(|e| io_err(&format!("reading {p}"), e))?
                    .trim()
                    .to_string();
            }
            "--state-file" => cfg.state_file = Some(PathBuf::from(val("--state-file")?)),
            "--faults" => {
                let p = val("--faults")?;
                let text =
                    std::fs::read_to_string(&p).map_err(|e| io_err(&format!("reading {p}"), e))?;
                cfg.faults = serde_json::from_str(&text)
                    .map_err(|e| SimError::Config(format!("faults file {p}: {e}")))?;
            }
            "--task-ms" => {
                let v = val("--task-ms")?;
                cfg.task_duration = Duration::from_millis(
                    v.parse()
                        .map_err(|e| SimError::Config(format!("--task-ms {v}: {e}")))?,
                );
            }
            "--lock-wait-ms" => {
                let v = val("--lock-wait-ms")?;
                cfg.lock_wait = Duration::from_millis(
                    v.parse()
                        .map_err(|e| SimError::Config(format!("--lock-wait-ms {v}: {e}")))?,
                );
            }
            "--auth-delay-ms" => {
                let v = val("--auth-delay-ms")?;
                cfg.auth_fail_delay = Duration::from_millis(
                    v.parse()
                        .map_err(|e| SimError::Config(format!("--auth-delay-ms {v}: {e}")))?,
                );
            }
            // pveproxy's shape: `--pveproxy 3:10` is 3 workers, 10 ms per request.
            "--pveproxy" => {
                let v = val("--pveproxy")?;
                let parsed = v.split_once(':').and_then(|(w, ms)| {
                    Some(PveProxyModel {
                        workers: w.parse().ok().filter(|w| *w > 0)?,
                        service_time: Duration::from_millis(ms.parse().ok()?),
                    })
                });
                cfg.pveproxy = Some(parsed.ok_or_else(|| {
                    SimError::Config(format!(
                        "--pveproxy {v}: expected WORKERS:MILLISECONDS, e.g. 3:10"
                    ))
                })?);
            }
            "--seed-demo" => cfg.guests = demo_guests(),
            "--storage-dir" => cfg.storage_dir = Some(PathBuf::from(val("--storage-dir")?)),
            "--storages" => {
                let p = val("--storages")?;
                let text =
                    std::fs::read_to_string(&p).map_err(|e| io_err(&format!("reading {p}"), e))?;
                cfg.storages = serde_json::from_str(&text)
                    .map_err(|e| SimError::Config(format!("storages file {p}: {e}")))?;
            }
            "--cert" => cert = Some(PathBuf::from(val("--cert")?)),
            // Writes the certificate in use (PEM) so clients can verify against it as a CA.
            "--write-cert" => write_cert = Some(PathBuf::from(val("--write-cert")?)),
            "--key" => key = Some(PathBuf::from(val("--key")?)),
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => {
                return Err(SimError::Config(format!(
                    "unknown argument {other:?} (see --help)"
                )));
            }
        }
    }
    if let (Some(cert_pem), Some(key_pem)) = (cert, key) {
        cfg.tls = SimTls::Files { cert_pem, key_pem };
    }
    let token_id = token_id.unwrap_or_else(|| format!("drover@pve!{}", cfg.node));
    cfg.tokens = vec![SimToken {
        id: token_id.clone(),
        secret: secret.clone(),
        vm_backup: true,
    }];
    let sim = start(cfg).await?;
    if let Some(path) = &write_cert {
        std::fs::write(path, sim.cert_pem())
            .map_err(|e| io_err(&format!("writing {}", path.display()), e))?;
    }
    println!("listening {}", sim.base_url());
    println!("fingerprint {}", sim.fingerprint());
    println!("token_id {token_id}");
    println!("token_secret {secret}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| io_err("installing a signal handler", e))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    sim.shutdown().await;
    Ok(())
}

/// A few guests for trying the simulator by hand.
pub fn demo_guests() -> Vec<SeedGuest> {
    vec![
        SeedGuest {
            vmid: 101,
            hostname: "dns-1".into(),
            running: true,
            ..SeedGuest::default()
        },
        SeedGuest {
            vmid: 102,
            hostname: "web-1".into(),
            running: false,
            ..SeedGuest::default()
        },
    ]
}
