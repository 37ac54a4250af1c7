//! One method per PVE endpoint the agent uses (paths below `/api2/json`, see
//! `proxmox-api.md` §3-4). Mutations that PVE runs as tasks return their [`Upid`].

use reqwest::Method;
use tracing::Instrument;

use crate::client::{Client, seg};
use crate::error::Error;
use crate::params::{
    ConfigUpdate, ContentFilter, CreateLxc, DestroyOptions, Params, ResizeSize, RestoreLxc,
    ShutdownOptions, TaskListFilter, VolumeUpdate, VzdumpRequest,
};
use crate::types::{
    ClusterResource, InterfaceInfo, LxcConfig, LxcListEntry, LxcStatus, PendingEntry, PruneEntry,
    SnapshotEntry, StorageContentEntry, StorageStatus, TaskListEntry, TaskLog, TaskLogLine,
    TaskStatus, VersionInfo, VolumeInfo, VzdumpDefaults, VzdumpStarted,
};
use crate::upid::Upid;

fn lxc(node: &str, vmid: u32) -> String {
    format!("/nodes/{}/lxc/{vmid}", seg(node))
}

fn task(upid: &Upid) -> String {
    format!(
        "/nodes/{}/tasks/{}",
        seg(&upid.node),
        seg(&upid.to_string())
    )
}

fn invalid(method: Method, path: String, message: String) -> Error {
    Error::new(
        Some(method),
        path,
        crate::error::ErrorKind::Config { message },
    )
}

impl Client {
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        params: &Params,
        vmid: Option<u32>,
    ) -> Result<T, Error> {
        Ok(self.call(Method::GET, path, params, vmid).await?.0)
    }

    async fn task_call(
        &self,
        method: Method,
        path: &str,
        params: &Params,
        vmid: Option<u32>,
    ) -> Result<Upid, Error> {
        let upid: Upid = self.call(method, path, params, vmid).await?.0;
        tracing::debug!(upid = %upid, vmid, "task started");
        Ok(upid)
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<VersionInfo, Error> {
        self.get("/version", &Params::new(), None).await
    }

    /// `GET /access/permissions?path=PATH`: the privileges the token holds on `path` (PVE:
    /// a map of ACL path to privilege → propagate flag; for a privilege-separated token the
    /// intersection of the user's and the token's).
    pub async fn permissions(
        &self,
        path: &str,
    ) -> Result<
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>>,
        Error,
    > {
        let mut p = Params::new();
        p.set("path", path);
        self.get("/access/permissions", &p, None).await
    }

    /// `GET /nodes/{node}/lxc`: every CT on the node (filtered to those the token may audit).
    pub async fn list_lxc(&self, node: &str) -> Result<Vec<LxcListEntry>, Error> {
        self.get(&format!("/nodes/{}/lxc", seg(node)), &Params::new(), None)
            .await
    }

    /// `GET .../config`. By default pending values are merged in; `current = true` returns the
    /// values in effect now.
    pub async fn lxc_config(
        &self,
        node: &str,
        vmid: u32,
        current: bool,
    ) -> Result<LxcConfig, Error> {
        let mut p = Params::new();
        if current {
            p.set_bool("current", true);
        }
        self.get(&format!("{}/config", lxc(node, vmid)), &p, Some(vmid))
            .await
    }

    /// `PUT .../config` (synchronous, no task). Send the `digest` the change was planned on.
    pub async fn update_lxc_config(
        &self,
        node: &str,
        vmid: u32,
        update: &ConfigUpdate,
    ) -> Result<(), Error> {
        let path = format!("{}/config", lxc(node, vmid));
        if update.is_empty() {
            return Err(invalid(Method::PUT, path, "nothing to change".into()));
        }
        let p = update
            .to_params()
            .map_err(|m| invalid(Method::PUT, path.clone(), m))?;
        let _: Option<serde_json::Value> = self.call(Method::PUT, &path, &p, Some(vmid)).await?.0;
        Ok(())
    }

    /// `GET .../pending`.
    pub async fn lxc_pending(&self, node: &str, vmid: u32) -> Result<Vec<PendingEntry>, Error> {
        self.get(
            &format!("{}/pending", lxc(node, vmid)),
            &Params::new(),
            Some(vmid),
        )
        .await
    }

    /// The config (with pending values merged in, as `GET .../config` returns it by default)
    /// and the pending entries, from one `GET .../pending`: PVE lists every key of the config
    /// there, the digest included, each with its current value and what is pending for it. One
    /// request where `config` and `pending` would be two (a lane turn's fresh read).
    pub async fn lxc_config_with_pending(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<(LxcConfig, Vec<PendingEntry>), Error> {
        let entries = self.lxc_pending(node, vmid).await?;
        let config = LxcConfig::from_pending(&entries).map_err(|message| {
            Error::new(
                Some(Method::GET),
                format!("{}/pending", lxc(node, vmid)),
                crate::error::ErrorKind::Decode { message },
            )
        })?;
        Ok((config, entries))
    }

    /// `GET .../status/current`.
    pub async fn lxc_status(&self, node: &str, vmid: u32) -> Result<LxcStatus, Error> {
        self.get(
            &format!("{}/status/current", lxc(node, vmid)),
            &Params::new(),
            Some(vmid),
        )
        .await
    }

    /// `POST .../status/start`.
    pub async fn start_lxc(&self, node: &str, vmid: u32) -> Result<Upid, Error> {
        self.task_call(
            Method::POST,
            &format!("{}/status/start", lxc(node, vmid)),
            &Params::new(),
            Some(vmid),
        )
        .await
    }

    /// `POST .../status/stop` (kills the CT).
    pub async fn stop_lxc(&self, node: &str, vmid: u32) -> Result<Upid, Error> {
        self.task_call(
            Method::POST,
            &format!("{}/status/stop", lxc(node, vmid)),
            &Params::new(),
            Some(vmid),
        )
        .await
    }

    /// `POST .../status/shutdown` (clean shutdown, optionally forced after `timeout`).
    pub async fn shutdown_lxc(
        &self,
        node: &str,
        vmid: u32,
        opts: &ShutdownOptions,
    ) -> Result<Upid, Error> {
        let mut p = Params::new();
        if let Some(t) = opts.timeout {
            p.set("timeout", t);
        }
        if opts.force_stop {
            p.set_bool("forceStop", true);
        }
        self.task_call(
            Method::POST,
            &format!("{}/status/shutdown", lxc(node, vmid)),
            &p,
            Some(vmid),
        )
        .await
    }

    /// `POST .../status/reboot` (applies pending changes).
    pub async fn reboot_lxc(
        &self,
        node: &str,
        vmid: u32,
        timeout: Option<u32>,
    ) -> Result<Upid, Error> {
        let mut p = Params::new();
        if let Some(t) = timeout {
            p.set("timeout", t);
        }
        self.task_call(
            Method::POST,
            &format!("{}/status/reboot", lxc(node, vmid)),
            &p,
            Some(vmid),
        )
        .await
    }

    /// `POST /nodes/{node}/lxc` with `start=0`.
    pub async fn create_lxc(&self, node: &str, create: &CreateLxc) -> Result<Upid, Error> {
        let path = format!("/nodes/{}/lxc", seg(node));
        let p = create
            .to_params()
            .map_err(|m| invalid(Method::POST, path.clone(), m))?;
        self.task_call(Method::POST, &path, &p, Some(create.vmid))
            .await
    }

    /// `DELETE /nodes/{node}/lxc/{vmid}`.
    pub async fn destroy_lxc(
        &self,
        node: &str,
        vmid: u32,
        opts: &DestroyOptions,
    ) -> Result<Upid, Error> {
        let mut p = Params::new();
        if opts.purge {
            p.set_bool("purge", true);
        }
        if opts.destroy_unreferenced_disks {
            p.set_bool("destroy-unreferenced-disks", true);
        }
        if opts.force {
            p.set_bool("force", true);
        }
        self.task_call(Method::DELETE, &lxc(node, vmid), &p, Some(vmid))
            .await
    }

    /// `GET .../snapshot` (includes the synthetic `current` entry).
    pub async fn list_snapshots(&self, node: &str, vmid: u32) -> Result<Vec<SnapshotEntry>, Error> {
        self.get(
            &format!("{}/snapshot", lxc(node, vmid)),
            &Params::new(),
            Some(vmid),
        )
        .await
    }

    /// `POST .../snapshot`.
    pub async fn create_snapshot(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        description: Option<&str>,
    ) -> Result<Upid, Error> {
        let mut p = Params::new();
        p.set("snapname", name);
        if let Some(d) = description {
            p.set("description", d);
        }
        self.task_call(
            Method::POST,
            &format!("{}/snapshot", lxc(node, vmid)),
            &p,
            Some(vmid),
        )
        .await
    }

    /// `DELETE .../snapshot/{name}`.
    pub async fn delete_snapshot(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        force: bool,
    ) -> Result<Upid, Error> {
        let mut p = Params::new();
        if force {
            p.set_bool("force", true);
        }
        self.task_call(
            Method::DELETE,
            &format!("{}/snapshot/{}", lxc(node, vmid), seg(name)),
            &p,
            Some(vmid),
        )
        .await
    }

    /// `POST .../snapshot/{name}/rollback` (kills a running CT first; `start` restarts it).
    pub async fn rollback_snapshot(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        start: bool,
    ) -> Result<Upid, Error> {
        let mut p = Params::new();
        if start {
            p.set_bool("start", true);
        }
        self.task_call(
            Method::POST,
            &format!("{}/snapshot/{}/rollback", lxc(node, vmid), seg(name)),
            &p,
            Some(vmid),
        )
        .await
    }

    /// `PUT .../resize` of `rootfs` or `mpN`.
    pub async fn resize_lxc(
        &self,
        node: &str,
        vmid: u32,
        disk: &str,
        size: ResizeSize,
        digest: Option<&str>,
    ) -> Result<Upid, Error> {
        let mut p = Params::new();
        p.set("disk", disk);
        p.set("size", size);
        if let Some(d) = digest {
            p.set("digest", d);
        }
        self.task_call(
            Method::PUT,
            &format!("{}/resize", lxc(node, vmid)),
            &p,
            Some(vmid),
        )
        .await
    }

    /// `GET /nodes/{upid.node}/tasks/{upid}/status`.
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, Error> {
        let span = tracing::debug_span!("pve_task", upid = %upid);
        self.get(
            &format!("{}/status", task(upid)),
            &Params::new(),
            upid.vmid(),
        )
        .instrument(span)
        .await
    }

    /// `GET /nodes/{upid.node}/tasks/{upid}/log?start=&limit=` (line numbers start at 1;
    /// `start` is a 0-based offset).
    pub async fn task_log(&self, upid: &Upid, start: u64, limit: u64) -> Result<TaskLog, Error> {
        let mut p = Params::new();
        p.set("start", start);
        p.set("limit", limit);
        let span = tracing::debug_span!("pve_task", upid = %upid);
        let (lines, total): (Vec<TaskLogLine>, _) = self
            .call(Method::GET, &format!("{}/log", task(upid)), &p, upid.vmid())
            .instrument(span)
            .await?;
        Ok(TaskLog { lines, total })
    }

    /// `GET /nodes/{node}/tasks` with filters (`TaskListFilter::active_for(vmid)` shows
    /// someone else's running operation on a CT).
    pub async fn list_tasks(
        &self,
        node: &str,
        filter: &TaskListFilter,
    ) -> Result<Vec<TaskListEntry>, Error> {
        self.get(
            &format!("/nodes/{}/tasks", seg(node)),
            &filter.to_params(),
            filter.vmid,
        )
        .await
    }

    /// `GET .../interfaces`: addresses inside a running CT.
    pub async fn lxc_interfaces(&self, node: &str, vmid: u32) -> Result<Vec<InterfaceInfo>, Error> {
        self.get(
            &format!("{}/interfaces", lxc(node, vmid)),
            &Params::new(),
            Some(vmid),
        )
        .await
    }

    /// `GET /cluster/nextid`: the first free vmid. It reserves nothing (creators race); the
    /// agent should choose vmids deterministically instead.
    pub async fn next_free_vmid(&self) -> Result<u32, Error> {
        #[derive(serde::Deserialize)]
        struct Id(#[serde(deserialize_with = "crate::lenient::u32_")] u32);
        let id: Id = self.get("/cluster/nextid", &Params::new(), None).await?;
        Ok(id.0)
    }

    /// `GET /cluster/resources?type=vm` (status lags ~10 s; lock and tags are live).
    pub async fn cluster_vm_resources(&self) -> Result<Vec<ClusterResource>, Error> {
        let mut p = Params::new();
        p.set("type", "vm");
        self.get("/cluster/resources", &p, None).await
    }
}

// ---------------------------------------------------------------- storage and backups
// (`safety-nets.md` §1, `pve-backup-api-schema.json`)

fn storage_path(node: &str, storage: &str) -> String {
    format!("/nodes/{}/storage/{}", seg(node), seg(storage))
}

fn volume_path(node: &str, storage: &str, volid: &str) -> String {
    format!("{}/content/{}", storage_path(node, storage), seg(volid))
}

impl Client {
    /// `GET /nodes/{node}/storage[?content=..]`: storages with free space (filtered to
    /// those the token may audit).
    pub async fn list_storages(
        &self,
        node: &str,
        content: Option<&str>,
    ) -> Result<Vec<StorageStatus>, Error> {
        let mut p = Params::new();
        if let Some(c) = content {
            p.set("content", c);
        }
        self.get(&format!("/nodes/{}/storage", seg(node)), &p, None)
            .await
    }

    /// `GET /nodes/{node}/storage/{storage}/status`.
    pub async fn storage_status(&self, node: &str, storage: &str) -> Result<StorageStatus, Error> {
        self.get(
            &format!("{}/status", storage_path(node, storage)),
            &Params::new(),
            None,
        )
        .await
    }

    /// `GET /nodes/{node}/storage/{storage}/content`. Backups are listed per item only where
    /// the token may see them: an empty list is not proof that none exist.
    pub async fn storage_content(
        &self,
        node: &str,
        storage: &str,
        filter: &ContentFilter,
    ) -> Result<Vec<StorageContentEntry>, Error> {
        self.get(
            &format!("{}/content", storage_path(node, storage)),
            &filter.to_params(),
            filter.vmid,
        )
        .await
    }

    /// `GET .../content/{volume}`: path, size, full notes, protection.
    pub async fn volume_info(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
    ) -> Result<VolumeInfo, Error> {
        self.get(&volume_path(node, storage, volid), &Params::new(), None)
            .await
    }

    /// `PUT .../content/{volume}` (synchronous): protect/unprotect, set notes. Protecting
    /// beyond the storage's `max-protected-backups` is refused by PVE.
    pub async fn update_volume(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
        update: &VolumeUpdate,
    ) -> Result<(), Error> {
        let path = volume_path(node, storage, volid);
        let p = update
            .to_params()
            .map_err(|m| invalid(Method::PUT, path.clone(), m))?;
        let _: Option<serde_json::Value> = self.call(Method::PUT, &path, &p, None).await?.0;
        Ok(())
    }

    /// `DELETE .../content/{volume}`: an `imgdel` task (a protected backup fails inside it).
    pub async fn delete_volume(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
    ) -> Result<Upid, Error> {
        self.task_call(
            Method::DELETE,
            &volume_path(node, storage, volid),
            &Params::new(),
            None,
        )
        .await
    }

    /// `GET .../prunebackups` (dry run): what a policy would keep and remove.
    pub async fn prune_backups_dry_run(
        &self,
        node: &str,
        storage: &str,
        prune_backups: Option<&str>,
        vmid: Option<u32>,
    ) -> Result<Vec<PruneEntry>, Error> {
        let mut p = Params::new();
        if let Some(pb) = prune_backups {
            p.set("prune-backups", pb);
        }
        if let Some(v) = vmid {
            p.set("type", "lxc");
            p.set("vmid", v);
        }
        self.get(
            &format!("{}/prunebackups", storage_path(node, storage)),
            &p,
            vmid,
        )
        .await
    }

    /// `POST /nodes/{node}/vzdump` of one CT. PVE answers a UPID, or the plain `"OK"` when
    /// the vmid is not on this node ([`VzdumpStarted::NotOnNode`]). The archive's volid is in
    /// the task log ([`crate::types::backup_volid_from_log`]).
    pub async fn vzdump(&self, node: &str, req: &VzdumpRequest) -> Result<VzdumpStarted, Error> {
        let path = format!("/nodes/{}/vzdump", seg(node));
        let p = req
            .to_params()
            .map_err(|m| invalid(Method::POST, path.clone(), m))?;
        let answer: String = self.call(Method::POST, &path, &p, Some(req.vmid)).await?.0;
        if answer == "OK" {
            return Ok(VzdumpStarted::NotOnNode);
        }
        let upid: Upid = answer.parse().map_err(|e: crate::upid::UpidParseError| {
            Error::new(
                Some(Method::POST),
                path.clone(),
                crate::error::ErrorKind::Decode {
                    message: format!("vzdump answered neither a UPID nor \"OK\": {e}"),
                },
            )
        })?;
        tracing::debug!(upid = %upid, vmid = req.vmid, "task started");
        Ok(VzdumpStarted::Task(upid))
    }

    /// `GET /nodes/{node}/vzdump/defaults[?storage=..]`: the effective options, including the
    /// storage's `prune-backups`.
    pub async fn vzdump_defaults(
        &self,
        node: &str,
        storage: Option<&str>,
    ) -> Result<VzdumpDefaults, Error> {
        let mut p = Params::new();
        if let Some(s) = storage {
            p.set("storage", s);
        }
        self.get(&format!("/nodes/{}/vzdump/defaults", seg(node)), &p, None)
            .await
    }

    /// `GET /nodes/{node}/vzdump/extractconfig?volume=..`: the archived `pct.conf` text.
    pub async fn extract_config(&self, node: &str, volid: &str) -> Result<String, Error> {
        let mut p = Params::new();
        p.set("volume", volid);
        self.get(
            &format!("/nodes/{}/vzdump/extractconfig", seg(node)),
            &p,
            None,
        )
        .await
    }

    /// `POST /nodes/{node}/lxc` with `restore=1`: a `vzrestore` task.
    pub async fn restore_lxc(&self, node: &str, req: &RestoreLxc) -> Result<Upid, Error> {
        let path = format!("/nodes/{}/lxc", seg(node));
        let p = req
            .to_params()
            .map_err(|m| invalid(Method::POST, path.clone(), m))?;
        self.task_call(Method::POST, &path, &p, Some(req.vmid))
            .await
    }

    /// `GET .../feature?feature=snapshot|clone|copy[&snapname=..]`: `false` e.g. with a bind
    /// mount or a volume on dir storage.
    pub async fn lxc_has_feature(
        &self,
        node: &str,
        vmid: u32,
        feature: &str,
        snapname: Option<&str>,
    ) -> Result<bool, Error> {
        #[derive(serde::Deserialize)]
        struct Has {
            #[serde(rename = "hasFeature", deserialize_with = "crate::lenient::bool_")]
            has: bool,
        }
        let mut p = Params::new();
        p.set("feature", feature);
        if let Some(s) = snapname {
            p.set("snapname", s);
        }
        let h: Has = self
            .get(&format!("{}/feature", lxc(node, vmid)), &p, Some(vmid))
            .await?;
        Ok(h.has)
    }
}
