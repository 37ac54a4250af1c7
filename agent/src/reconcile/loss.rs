//! What a destructive step loses, in words an operator reads before signing: the guest's
//! hostname, each volume it touches and its size, and whether it can be undone.
//!
//! The words go beside the approval request (`drover approvals`), never into the signed
//! payload: the payload binds the exact step, the words explain it. They are computed from
//! PVE's view of the guest at planning time, the same view the step's digest binds.

use crate::model::ActualGuest;
use crate::model::step::{Step, StepKind};
use crate::model::vocabulary::MountConfig;
use crate::model::vocabulary::is_host_mount;

fn size_of(m: &MountConfig) -> String {
    m.size
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown size".into())
}

fn volume_words(key: &str, m: &MountConfig) -> String {
    if is_host_mount(m) {
        format!(
            "{key}: host path {} at {} (a bind or device mount; the host's files are not deleted)",
            m.volume,
            m.mp.as_deref().unwrap_or("?")
        )
    } else {
        match &m.mp {
            Some(p) => format!("{key}: volume {} ({}) at {p}", m.volume, size_of(m)),
            None => format!("{key}: volume {} ({})", m.volume, size_of(m)),
        }
    }
}

fn guest_words(vmid: u32, actual: Option<&ActualGuest>) -> String {
    match actual.and_then(|a| a.config.hostname.as_deref()) {
        Some(h) => format!("CT {vmid} ({h})"),
        None => format!("CT {vmid}"),
    }
}

/// Every volume of the guest, rootfs first.
fn all_volumes(actual: &ActualGuest) -> Vec<String> {
    let c = &actual.config;
    let mut out = Vec::new();
    if let Some(r) = &c.rootfs {
        out.push(format!(
            "rootfs: volume on {} ({})",
            r.storage,
            r.size_mib
                .map(|m| format!("{}G", m.div_ceil(1024)))
                .unwrap_or_else(|| "unknown size".into())
        ));
    }
    for (i, m) in &c.mounts {
        out.push(volume_words(&format!("mp{i}"), m));
    }
    for (i, v) in &c.unused {
        out.push(format!("unused{i}: detached volume {v}"));
    }
    out
}

/// The words for `step`; `grace` is how the detach grace period reads (`7d`); `volume_bytes`
/// the size of the volume a `delete_volume` deletes, when its storage told.
pub fn describe(
    step: &Step,
    actual: Option<&ActualGuest>,
    grace: &str,
    volume_bytes: Option<u64>,
) -> String {
    let vmid = step.vmid;
    let who = guest_words(vmid, actual);
    let param = |k: &str| step.params.get(k).map(String::as_str).unwrap_or("?");
    let lines: Vec<String> = match step.kind {
        StepKind::Destroy => {
            let mut l = vec![format!(
                "destroys {who} and every volume it has; this cannot be undone:"
            )];
            l.extend(
                actual
                    .map(all_volumes)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| format!("  - {v}")),
            );
            l
        }
        StepKind::Detach => {
            let key = param("delete");
            let shown = actual
                .and_then(|a| {
                    let i: u8 = key.strip_prefix("mp")?.parse().ok()?;
                    a.config.mounts.get(&i)
                })
                .map(|m| volume_words(key, m))
                .unwrap_or_else(|| format!("{key}: {}", param("volume")));
            vec![
                format!("detaches a mount point from {who}: {shown}"),
                "the guest no longer sees it; PVE keeps the volume as unused[n], so it can be re-attached".into(),
                format!(
                    "the volume itself is deleted only by a later, separately signed step, no earlier than {grace} from now"
                ),
            ]
        }
        StepKind::DeleteVolume => {
            let key = param("delete");
            let size = volume_bytes
                .map(|b| format!(", {}", crate::model::vocabulary::DiskSize(b)))
                .unwrap_or_default();
            vec![
                format!(
                    "deletes the detached volume {} ({key}{size}) of {who}: its data is lost and cannot be undone",
                    param("volume")
                ),
                "snapshots that still reference it keep it on the storage (PVE)".into(),
            ]
        }
        StepKind::Create => {
            let name = step
                .params
                .get("hostname")
                .map(|h| format!("CT {vmid} ({h})"))
                .unwrap_or_else(|| format!("CT {vmid}"));
            let mut l = vec![format!("creates {name}")];
            if step.params.get("unprivileged").is_some_and(|v| v == "0") {
                l.push(
                    "as a PRIVILEGED container: root inside the guest is root on the host".into(),
                );
            }
            l
        }
        StepKind::SetConfig => {
            let mut l = vec![format!("changes {who}:")];
            for c in &step.changes {
                l.push(format!(
                    "  - {}: {} -> {}",
                    c.key,
                    c.old.as_deref().unwrap_or("(unset)"),
                    c.new.as_deref().unwrap_or("(removed)")
                ));
            }
            if step.params.get("protection").is_some_and(|v| v != "1") {
                l.push("clearing protection lets the guest and its volumes be destroyed or removed again".into());
            }
            l
        }
        StepKind::Adopt => {
            let mut l = vec![format!(
                "takes over {who}, which Drover did not create; from then on the document manages it, including these volumes:"
            )];
            l.extend(
                actual
                    .map(all_volumes)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| format!("  - {v}")),
            );
            l
        }
        StepKind::Resize => vec![format!(
            "resizes {} of {who} to {}",
            param("disk"),
            param("size")
        )],
        StepKind::Start | StepKind::Shutdown | StepKind::Stop | StepKind::Reboot => {
            vec![format!("{} {who}", step.kind.as_str())]
        }
    };
    lines
        .iter()
        .map(|l| crate::output::escape_controls(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{ActualConfig, Power, RootfsState};
    use std::collections::{BTreeMap, BTreeSet};

    fn guest() -> ActualGuest {
        ActualGuest {
            vmid: 201,
            power: Power::Running,
            lock: None,
            config: ActualConfig {
                hostname: Some("web-1".into()),
                rootfs: Some(RootfsState {
                    storage: "local-lvm".into(),
                    size_mib: Some(8192),
                }),
                mounts: [(
                    0u8,
                    "local-lvm:vm-201-disk-1,mp=/srv/data,size=32G"
                        .parse()
                        .unwrap(),
                )]
                .into(),
                ..ActualConfig::default()
            },
            digest: String::new(),
            pending: BTreeSet::new(),
            template: false,
        }
    }

    #[test]
    fn a_destroy_names_the_hostname_and_each_volume_with_its_size() {
        let step = Step {
            vmid: 201,
            kind: StepKind::Destroy,
            params: BTreeMap::new(),
            changes: vec![],
        };
        let w = describe(&step, Some(&guest()), "7d", None);
        assert!(w.contains("CT 201 (web-1)"), "{w}");
        assert!(w.contains("rootfs: volume on local-lvm (8G)"), "{w}");
        assert!(
            w.contains("mp0: volume local-lvm:vm-201-disk-1 (32G) at /srv/data"),
            "{w}"
        );
    }

    #[test]
    fn a_detach_says_it_is_reversible_and_when_the_delete_may_come() {
        let step = Step {
            vmid: 201,
            kind: StepKind::Detach,
            params: [("delete".to_string(), "mp0".to_string())].into(),
            changes: vec![],
        };
        let w = describe(&step, Some(&guest()), "7d", None);
        assert!(
            w.contains("local-lvm:vm-201-disk-1 (32G) at /srv/data"),
            "{w}"
        );
        assert!(w.contains("re-attached") && w.contains("7d"), "{w}");
    }
}
