//! The agent's side of the PVE API: reads the actual state into the planner's model and turns a
//! planned step into exactly one API call.
//!
//! Everything PVE-shaped stops here; the planner, gate and lanes see only `model` and `planner`
//! types.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use proxmox_client::{
    Client, ConfigUpdate, CreateLxc, DestroyOptions, DiskSize, Error, GuestStatus, LxcConfig,
    LxcListEntry, ResizeSize, ShutdownOptions, TaskOutcome, Upid, WaitOptions,
};

use crate::model::{
    ActualConfig, ActualGuest, ActualHost, Power, RootfsState, normalize_description, split_tags,
};
use crate::reconcile::planner::{Step, StepKind};

/// How many config reads run at once during a full pass: enough to hide latency, few enough
/// not to crowd pveproxy's workers.
const READ_CONCURRENCY: usize = 3;

/// Timeouts applied to task waits, per step kind (`proxmox-api.md` §4 recommendations).
#[derive(Debug, Clone)]
pub struct WaitPolicy {
    /// Overrides the poll schedule (tests and benchmarks use fast polls against the simulator).
    pub poll_interval: Option<Duration>,
}

impl WaitPolicy {
    pub fn production() -> WaitPolicy {
        WaitPolicy {
            poll_interval: None,
        }
    }

    pub fn deadline(kind: StepKind) -> Duration {
        match kind {
            StepKind::Create => Duration::from_secs(30 * 60),
            StepKind::Destroy | StepKind::Resize => Duration::from_secs(10 * 60),
            StepKind::Reboot => Duration::from_secs(5 * 60),
            StepKind::Shutdown => Duration::from_secs(SHUTDOWN_TIMEOUT_SECS as u64 + 30),
            StepKind::Start | StepKind::Stop => Duration::from_secs(120),
            StepKind::SetConfig | StepKind::Adopt | StepKind::Detach | StepKind::DeleteVolume => {
                Duration::from_secs(60)
            }
        }
    }

    pub fn options(&self, kind: StepKind) -> WaitOptions {
        let deadline = Self::deadline(kind);
        match self.poll_interval {
            Some(i) => WaitOptions::fast(i, deadline),
            None => WaitOptions::with_deadline(deadline),
        }
    }
}

/// Seconds a clean shutdown may take before PVE stops the CT hard.
pub const SHUTDOWN_TIMEOUT_SECS: u32 = 60;

/// What submitting a step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// A PVE task to wait for.
    Task(Upid),
    /// The call completed synchronously (`PUT config`).
    Done,
}

/// The PVE API of this node.
#[derive(Clone)]
pub struct Pve {
    pub client: Client,
    pub node: String,
    pub waits: WaitPolicy,
    pub metrics: std::sync::Arc<crate::reconcile::metrics::Metrics>,
    /// Learned task durations: the production poll schedule starts near them.
    pub estimates: std::sync::Arc<crate::reconcile::task_estimate::TaskEstimates>,
    /// The pool new guests join (`[proxmox] pool`): with `pve-setup.sh --pool` the token may
    /// only create a guest into it. Not a step parameter: it is this host's setting, not the
    /// document's, and changing it must not change what an approval is bound to.
    pub pool: Option<String>,
    /// This host's own rules for bind mounts, devices and the detach grace period
    /// (`[guests]`, `[safety] detach_grace`): never the document's.
    pub rules: crate::reconcile::vocabulary::HostRules,
}

impl Pve {
    /// `metrics` should be the ones the client's [`proxmox_client::RequestObserver`] counts
    /// every request into (see `service::daemon::pve_from_config`).
    pub fn new(
        client: Client,
        node: impl Into<String>,
        waits: WaitPolicy,
        metrics: std::sync::Arc<crate::reconcile::metrics::Metrics>,
    ) -> Pve {
        Pve {
            client,
            node: node.into(),
            waits,
            metrics,
            estimates: Default::default(),
            pool: None,
            rules: Default::default(),
        }
    }

    /// This host's rules for bind mounts, devices and the detach grace period.
    pub fn with_rules(mut self, rules: crate::reconcile::vocabulary::HostRules) -> Pve {
        self.rules = rules;
        self
    }

    /// New guests are created into `pool`.
    pub fn with_pool(mut self, pool: Option<String>) -> Pve {
        self.pool = pool;
        self
    }

    /// Reads everything the planner needs for a whole pass: the CT list, the cluster view (to
    /// know vmids on other nodes) and each CT's config. N + 2 API calls for N CTs.
    pub async fn read_host(&self) -> Result<ActualHost, Error> {
        let (list, cluster) = tokio::try_join!(
            self.client.list_lxc(&self.node),
            self.client.cluster_vm_resources()
        )?;
        // Each guest goes straight into the map: collecting them first held every guest of
        // a large host twice at the peak of each pass. A CT gone between the list and its
        // config read (an HA migration, a `pct destroy`) is noted as vanished instead of
        // failing the whole read: the next pass sees where it went.
        let mut host = stream::iter(list.into_iter().map(|entry| async move {
            match self.client.lxc_config(&self.node, entry.vmid, false).await {
                Ok(config) => Ok(Ok(to_actual(&entry, &config, BTreeSet::new()))),
                Err(e) if e.is_not_found() => {
                    tracing::info!(vmid = entry.vmid, "the CT was listed but is gone: {e}");
                    Ok(Err(entry.vmid))
                }
                Err(e) => Err(e),
            }
        }))
        .buffer_unordered(READ_CONCURRENCY)
        .try_fold(ActualHost::default(), |mut host, read| async move {
            match read {
                Ok(g) => {
                    host.guests.insert(g.vmid, Box::new(g));
                }
                Err(vmid) => {
                    host.vanished.insert(vmid);
                }
            }
            Ok(host)
        })
        .await?;
        for r in cluster {
            let Some(vmid) = r.vmid else { continue };
            match r.node {
                Some(node) if node != self.node && !host.guests.contains_key(&vmid) => {
                    host.elsewhere.insert(vmid, node);
                }
                Some(node) if node != self.node => {}
                // The cluster view, read at the same time, places a CT here that the list did
                // not name: one of the two answers predates a migration (or a destroy, or a
                // create). Not known this pass either.
                Some(_)
                    if r.resource_type == "lxc"
                        && !host.guests.contains_key(&vmid)
                        && !host.vanished.contains(&vmid) =>
                {
                    tracing::info!(
                        vmid,
                        "the cluster view places the CT on this node, but the node's list does not name it"
                    );
                    host.vanished.insert(vmid);
                }
                _ => {}
            }
        }
        Ok(host)
    }

    /// Reads one guest afresh, including pending changes; `None` when it does not exist here.
    /// Two requests, sent together: the status (power, lock) and `pending`, which carries the
    /// whole config with its digest as well as what is pending (the config read is not needed).
    pub async fn read_guest(&self, vmid: u32) -> Result<Option<ActualGuest>, Error> {
        let gone = |e: &Error| e.is_not_found() || e.already_in_state().is_some();
        let (status, config) = tokio::join!(
            self.client.lxc_status(&self.node, vmid),
            self.client.lxc_config_with_pending(&self.node, vmid)
        );
        let status = match status {
            Ok(s) => s,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (config, entries) = match config {
            Ok(c) => c,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        // A stopped CT applies what is pending at its next start: the merged config is what it
        // will run with, and nothing counts as pending for the planner.
        let pending: BTreeSet<String> = if status.entry.is_running() {
            entries
                .into_iter()
                .filter(|p| p.has_pending_change())
                .map(|p| p.key)
                .collect()
        } else {
            BTreeSet::new()
        };
        Ok(Some(to_actual(&status.entry, &config, pending)))
    }

    /// Reads only the power state and lock of a guest (`status/current`, one request): what a
    /// power step (start, stop, shutdown, reboot) changes. `None` when it does not exist here.
    pub async fn read_power(&self, vmid: u32) -> Result<Option<(Power, Option<String>)>, Error> {
        match self.client.lxc_status(&self.node, vmid).await {
            Ok(s) => Ok(Some((power_of(&s.entry.status), s.entry.lock.clone()))),
            Err(e) if e.is_not_found() || e.already_in_state().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends exactly the call a step stands for. `digest` is the config digest the step was
    /// planned on, so a concurrent change makes PVE refuse instead of overwriting it.
    pub async fn submit(&self, step: &Step, digest: Option<&str>) -> Result<Submission, Error> {
        let node = self.node.as_str();
        let vmid = step.vmid;
        let p = &step.params;
        let flag = |k: &str| p.get(k).is_some_and(|v| v == "1");
        match step.kind {
            // Adoption is journaled, never sent (the engine never submits it).
            StepKind::Adopt => Ok(Submission::Done),
            StepKind::Create => {
                let template = p.get("ostemplate").cloned().unwrap_or_default();
                let mut create = CreateLxc::new(vmid, template);
                for (k, v) in p {
                    if !matches!(k.as_str(), "vmid" | "ostemplate" | "start") {
                        create = create.param(k.clone(), v);
                    }
                }
                if let Some(pool) = &self.pool {
                    create = create.param("pool", pool);
                }
                Ok(Submission::Task(
                    self.client.create_lxc(node, &create).await?,
                ))
            }
            StepKind::SetConfig => {
                let mut update = ConfigUpdate::new();
                if let Some(d) = digest {
                    update = update.with_digest(d);
                }
                for (k, v) in p {
                    update = update.set(k.clone(), v);
                }
                self.client.update_lxc_config(node, vmid, &update).await?;
                Ok(Submission::Done)
            }
            StepKind::Resize => {
                let gib: u64 = p
                    .get("size")
                    .and_then(|s| s.trim_end_matches('G').parse().ok())
                    .unwrap_or(0);
                let disk = p.get("disk").map(String::as_str).unwrap_or("rootfs");
                Ok(Submission::Task(
                    self.client
                        .resize_lxc(
                            node,
                            vmid,
                            disk,
                            ResizeSize::Absolute(DiskSize::from_gib(gib)),
                            digest,
                        )
                        .await?,
                ))
            }
            // Only `delete` is sent: `volume` names what the approval is bound to.
            StepKind::Detach | StepKind::DeleteVolume => {
                let mut update = ConfigUpdate::new();
                if let Some(d) = digest {
                    update = update.with_digest(d);
                }
                if let Some(key) = p.get("delete") {
                    update = update.delete(key.clone());
                }
                self.client.update_lxc_config(node, vmid, &update).await?;
                Ok(Submission::Done)
            }
            StepKind::Start => Ok(Submission::Task(self.client.start_lxc(node, vmid).await?)),
            StepKind::Stop => Ok(Submission::Task(self.client.stop_lxc(node, vmid).await?)),
            StepKind::Shutdown => Ok(Submission::Task(
                self.client
                    .shutdown_lxc(
                        node,
                        vmid,
                        &ShutdownOptions {
                            timeout: Some(SHUTDOWN_TIMEOUT_SECS),
                            force_stop: true,
                        },
                    )
                    .await?,
            )),
            StepKind::Reboot => Ok(Submission::Task(
                self.client
                    .reboot_lxc(node, vmid, Some(SHUTDOWN_TIMEOUT_SECS))
                    .await?,
            )),
            StepKind::Destroy => Ok(Submission::Task(
                self.client
                    .destroy_lxc(
                        node,
                        vmid,
                        &DestroyOptions {
                            purge: flag("purge"),
                            destroy_unreferenced_disks: flag("destroy-unreferenced-disks"),
                            force: flag("force"),
                        },
                    )
                    .await?,
            )),
        }
    }

    /// Finds the PVE task a step started when the agent never saw the answer (a crash or a
    /// timeout between sending the call and journaling the UPID), from the moment its intent
    /// was journaled: see [`crate::lost_task::find_unclaimed_task`]. `None` means the call never reached PVE.
    pub async fn find_task_for(
        &self,
        kind: StepKind,
        vmid: u32,
        intent_unix: i64,
        claimed: &BTreeSet<String>,
    ) -> Result<Option<Upid>, Error> {
        let Some(worker) = worker_type(kind) else {
            return Ok(None);
        };
        crate::lost_task::find_unclaimed_task(
            &self.client,
            &self.node,
            worker,
            vmid,
            intent_unix,
            claimed,
        )
        .await
    }

    /// A volume's size in bytes, as its storage reports it (`Datastore.Audit`), for the words
    /// beside a `delete_volume` request: `unusedN` carries no size. `None` when PVE cannot say.
    pub async fn volume_size(&self, volid: &str) -> Option<u64> {
        let (storage, _) = volid.split_once(':')?;
        match self.client.volume_info(&self.node, storage, volid).await {
            Ok(v) => v.size,
            Err(e) => {
                tracing::debug!(volid, "reading the size of a detached volume: {e}");
                None
            }
        }
    }

    /// Waits for a step's task with the deadline its kind allows.
    pub async fn wait(&self, upid: &Upid, kind: StepKind) -> Result<TaskOutcome, Error> {
        let worker = upid.worker_type.as_str();
        let (expected, latest) = self.estimates.expected(worker);
        let opts = self
            .waits
            .options(kind)
            .expecting(expected)
            .expecting_by(latest);
        let (outcome, trace) = self.client.wait_task_traced(upid, &opts).await?;
        self.estimates.observe(worker, opts.expected, &trace);
        Ok(outcome)
    }
}

/// The PVE worker type a step's task runs as (`proxmox-api.md` §4); `None` for synchronous calls.
pub fn worker_type(kind: StepKind) -> Option<&'static str> {
    Some(match kind {
        StepKind::Create => "vzcreate",
        StepKind::Start => "vzstart",
        StepKind::Stop => "vzstop",
        StepKind::Shutdown => "vzshutdown",
        StepKind::Reboot => "vzreboot",
        StepKind::Destroy => "vzdestroy",
        StepKind::Resize => "resize",
        StepKind::SetConfig | StepKind::Adopt | StepKind::Detach | StepKind::DeleteVolume => {
            return None;
        }
    })
}

fn power_of(status: &GuestStatus) -> Power {
    match status {
        GuestStatus::Running => Power::Running,
        GuestStatus::Stopped => Power::Stopped,
        GuestStatus::Other(s) => Power::Other(s.clone()),
    }
}

/// Brings a CT as PVE reports it into the planner's model.
pub fn to_actual(entry: &LxcListEntry, c: &LxcConfig, pending: BTreeSet<String>) -> ActualGuest {
    let nets: crate::model::Nets = c
        .net
        .iter()
        .filter_map(|(i, n)| u8::try_from(*i).ok().map(|i| (i, Box::new(n.clone()))))
        .collect();
    ActualGuest {
        vmid: entry.vmid,
        power: power_of(&entry.status),
        lock: c.lock.clone().or_else(|| entry.lock.clone()),
        config: ActualConfig {
            hostname: c.hostname.clone(),
            cores: c.cores,
            memory: c.memory,
            swap: c.swap,
            rootfs: c.rootfs.as_ref().and_then(|r| {
                Some(RootfsState {
                    storage: r.storage()?.to_string(),
                    size_mib: r.size.map(|s| s.mib()),
                })
            }),
            nets,
            onboot: c.onboot.unwrap_or(false),
            tags: c.tags.as_deref().map(split_tags).unwrap_or_default(),
            description: c.description.as_deref().map(normalize_description),
            protection: c.protection.unwrap_or(false),
            mounts: c
                .mp
                .iter()
                .filter_map(|(i, m)| u8::try_from(*i).ok().map(|i| (i, m.clone())))
                .collect(),
            unused: c
                .extra
                .iter()
                .filter_map(|(k, v)| {
                    let i: u8 = k.strip_prefix("unused")?.parse().ok()?;
                    // `unusedN` is a bare volume id (older configs may add `,size=`).
                    Some((i, v.split(',').next().unwrap_or("").to_string()))
                })
                .collect(),
            devices: crate::model::vocabulary::devices_of(&c.extra),
            features: c.features.clone().unwrap_or_default(),
            unprivileged: c.unprivileged.unwrap_or(false),
            nameserver: c
                .nameserver
                .as_deref()
                .map(crate::model::vocabulary::split_list)
                .unwrap_or_default(),
            searchdomain: c
                .searchdomain
                .as_deref()
                .map(crate::model::vocabulary::split_list)
                .unwrap_or_default(),
            timezone: c.extra.get("timezone").cloned(),
            startup: c
                .extra
                .get("startup")
                .and_then(|s| crate::model::Startup::parse(s).ok()),
            cpulimit: c.cpulimit,
            cpuunits: c.cpuunits,
            console: c
                .extra
                .get("console")
                .map(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on")),
            tty: c.extra.get("tty").and_then(|v| v.parse().ok()),
            cmode: c.extra.get("cmode").cloned(),
            hookscript: c.extra.get("hookscript").cloned(),
        },
        digest: c.digest.clone().unwrap_or_default(),
        pending,
        template: c.template.unwrap_or(false) || entry.is_template(),
    }
}
