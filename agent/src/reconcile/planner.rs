//! The planner: desired document + actual host → steps per guest.
//!
//! Pure and deterministic, so `drover plan` and the engine always agree and it can be tested
//! (and benchmarked) without any I/O. It returns the *whole* sequence a guest needs, assuming
//! each step succeeds; the engine only ever executes the first step of a guest and re-plans from
//! fresh state afterwards (level-triggered), so a stale plan is never executed.

use std::collections::BTreeMap;

pub use crate::model::step::{Change, Note, Step, StepKind};

use crate::desired::{DesiredDoc, Ensure, GuestSpec, parse_rootfs_spec};
use crate::model::{
    ActualGuest, ActualHost, Power, normalize_description, render_net_keeping_hwaddr,
};
use crate::reconcile::vocabulary;
pub use crate::reconcile::vocabulary::{HostRules, PlanContext};

/// The plan for one guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestPlan {
    pub vmid: u32,
    /// The guest's hostname (the document's, else PVE's), for tables.
    pub name: Option<String>,
    pub steps: Vec<Step>,
    pub notes: Vec<Note>,
}

/// The plan for the host.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub revision: u64,
    /// Guests with steps or notes, by vmid.
    pub guests: BTreeMap<u32, GuestPlan>,
    /// Host-wide notes (fuses, unmanaged guests).
    pub notes: Vec<Note>,
    /// CTs on this node that the document does not list.
    pub unmanaged: Vec<u32>,
}

impl Plan {
    pub fn step_count(&self) -> usize {
        self.guests.values().map(|g| g.steps.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.step_count() == 0
    }
}

/// Destroy parameters: always the same, so an approval binds a stable set (`force` stops a
/// running CT first, which is part of what the operator approves).
pub fn destroy_params() -> BTreeMap<String, String> {
    [
        ("destroy-unreferenced-disks", "1"),
        ("force", "1"),
        ("purge", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Plans the whole host with no host rules and no journal (tests, benchmarks).
pub fn plan(desired: &DesiredDoc, actual: &ActualHost) -> Plan {
    plan_with(desired, actual, &PlanContext::default())
}

/// Plans the whole host with the host's rules and what the journal knows.
pub fn plan_with(desired: &DesiredDoc, actual: &ActualHost, ctx: &PlanContext) -> Plan {
    let mut out = Plan {
        revision: desired.revision,
        ..Plan::default()
    };
    for (vmid, spec) in &desired.guests {
        if actual.vanished.contains(vmid) {
            out.guests.insert(*vmid, vanished_guest(spec));
            continue;
        }
        let gp = plan_guest_with(
            spec,
            actual.guests.get(vmid).map(|g| &**g),
            actual.elsewhere.get(vmid),
            ctx,
        );
        if !gp.steps.is_empty() || !gp.notes.is_empty() {
            out.guests.insert(*vmid, gp);
        }
    }
    out.unmanaged = actual
        .guests
        .keys()
        .filter(|v| !desired.guests.contains_key(v))
        .copied()
        .collect();
    if !out.unmanaged.is_empty() {
        out.notes.push(Note {
            code: "unmanaged_guests",
            vmid: None,
            message: format!(
                "{} guest(s) on this node are not in the desired state and are left alone: {}",
                out.unmanaged.len(),
                join_ids(&out.unmanaged)
            ),
        });
    }
    apply_destroy_fuses(desired, actual, &mut out);
    out
}

/// Blows the fuses: an empty document, or one that would destroy more than half of the managed
/// guests, plans no destroy at all. Both are far more likely a broken hub than an intent.
fn apply_destroy_fuses(desired: &DesiredDoc, actual: &ActualHost, plan: &mut Plan) {
    let destroys: Vec<u32> = plan
        .guests
        .values()
        .filter(|g| g.steps.iter().any(|s| s.kind == StepKind::Destroy))
        .map(|g| g.vmid)
        .collect();
    if destroys.is_empty() {
        if desired.guests.is_empty() && !actual.guests.is_empty() {
            plan.notes.push(Note {
                code: "fuse_empty_document",
                vmid: None,
                message: "the desired document lists no guests; nothing will be destroyed".into(),
            });
        }
        return;
    }
    let managed = desired
        .guests
        .keys()
        .filter(|v| actual.guests.contains_key(v))
        .count();
    if destroys.len() * 2 > managed {
        for vmid in &destroys {
            if let Some(g) = plan.guests.get_mut(vmid) {
                g.steps.retain(|s| s.kind != StepKind::Destroy);
                g.notes.push(Note {
                    code: "fuse_mass_destroy",
                    vmid: Some(*vmid),
                    message: "destroy withheld: the document would destroy more than half of the managed guests".into(),
                });
            }
        }
        plan.notes.push(Note {
            code: "fuse_mass_destroy",
            vmid: None,
            message: format!(
                "the document would destroy {} of {managed} managed guests (more than half); no destroy is planned: {}",
                destroys.len(),
                join_ids(&destroys)
            ),
        });
    }
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn note(code: &'static str, vmid: u32, message: String) -> Note {
    Note {
        code,
        vmid: Some(vmid),
        message,
    }
}

/// Plans one guest with no host rules and no journal.
pub fn plan_guest(
    spec: &GuestSpec,
    actual: Option<&ActualGuest>,
    elsewhere: Option<&String>,
) -> GuestPlan {
    plan_guest_with(spec, actual, elsewhere, &PlanContext::default())
}

/// The plan of a guest the host read could not pin down (`ActualHost::vanished`): no step
/// (a create could collide with the guest on the node it moved to), only the note.
pub fn vanished_guest(spec: &GuestSpec) -> GuestPlan {
    let vmid = spec.vmid;
    GuestPlan {
        vmid,
        name: spec.hostname.clone(),
        steps: Vec::new(),
        notes: vec![note(
            "guest_vanished",
            vmid,
            format!(
                "CT {vmid} was not found where the host read expected it (migrated or destroyed while the node was read); nothing is planned for it until a pass reads it again"
            ),
        )],
    }
}

/// Plans one guest.
pub fn plan_guest_with(
    spec: &GuestSpec,
    actual: Option<&ActualGuest>,
    elsewhere: Option<&String>,
    ctx: &PlanContext,
) -> GuestPlan {
    let vmid = spec.vmid;
    let mut gp = GuestPlan {
        vmid,
        name: spec
            .hostname
            .clone()
            .or_else(|| actual.and_then(|a| a.config.hostname.clone())),
        steps: Vec::new(),
        notes: Vec::new(),
    };
    let Some(actual) = actual else {
        if let Some(node) = elsewhere {
            if spec.ensure != Ensure::Absent {
                gp.notes.push(note(
                    "exists_on_other_node",
                    vmid,
                    format!("CT {vmid} exists on node {node:?}; it is never created here"),
                ));
            }
            return gp;
        }
        match spec.ensure {
            Ensure::Absent => {}
            _ => match create_step(spec) {
                Ok(step) => {
                    gp.notes.extend(vocabulary::notes(spec, None, ctx));
                    gp.steps.push(step);
                    if spec.ensure == Ensure::Running {
                        gp.steps
                            .push(simple(vmid, StepKind::Start, "stopped", "running"));
                    }
                }
                Err(msg) => gp.notes.push(note("cannot_create", vmid, msg)),
            },
        }
        return gp;
    };

    if actual.template {
        gp.notes.push(note(
            "is_template",
            vmid,
            format!("CT {vmid} is a template; templates are not managed"),
        ));
        return gp;
    }
    if let Some(lock) = &actual.lock {
        gp.notes.push(note(
            "guest_locked",
            vmid,
            format!("CT {vmid} is locked ({lock}); waiting for the lock to clear"),
        ));
        return gp;
    }

    if spec.ensure == Ensure::Absent {
        if actual.config.protection {
            gp.notes.push(note(
                "protected",
                vmid,
                format!(
                    "CT {vmid} has protection=1; it is not destroyed, and Drover never clears protection in the same plan"
                ),
            ));
        } else {
            gp.steps.push(Step {
                vmid,
                kind: StepKind::Destroy,
                params: destroy_params(),
                changes: vec![Change {
                    key: "guest".into(),
                    old: Some(format!(
                        "{} ({})",
                        actual.config.hostname.as_deref().unwrap_or("?"),
                        power_str(&actual.power)
                    )),
                    new: None,
                }],
            });
        }
        return gp;
    }

    gp.notes.extend(vocabulary::notes(spec, Some(actual), ctx));
    let running = actual.power == Power::Running;
    let want_running = spec.ensure == Ensure::Running;
    // Stop first when the guest should be stopped: config changes then apply directly.
    if running && !want_running {
        gp.steps
            .push(simple(vmid, StepKind::Shutdown, "running", "stopped"));
    }
    // A mount point grows before its options change: the option change re-prints the volume
    // with its size, and on a running guest it waits (pending) until the reboot, so it must
    // not carry the old size past the resize.
    gp.steps.extend(vocabulary::mount_resizes(spec, actual));
    let (set, changes) = config_diff(spec, actual);
    if !set.is_empty() {
        gp.steps.push(Step {
            vmid,
            kind: StepKind::SetConfig,
            params: set,
            changes,
        });
    }
    match resize_step(spec, actual) {
        Ok(Some(step)) => gp.steps.push(step),
        Ok(None) => {}
        Err(n) => gp.notes.push(n),
    }
    if want_running && !running {
        gp.steps
            .push(simple(vmid, StepKind::Start, "stopped", "running"));
    } else if want_running && running && !actual.pending.is_empty() && gp.steps.is_empty() {
        // Keys PVE could not hot-plug wait in [pve:pending] until a reboot applies them.
        let keys: Vec<&str> = actual.pending.iter().map(String::as_str).collect();
        gp.steps.push(Step {
            vmid,
            kind: StepKind::Reboot,
            params: BTreeMap::new(),
            changes: vec![Change {
                key: "pending".into(),
                old: Some(keys.join(",")),
                new: None,
            }],
        });
    }
    // Destructive removals come last: benign convergence is never held up by a signature.
    let (removals, notes) = vocabulary::removals(spec, actual, ctx);
    gp.steps.extend(removals);
    gp.notes.extend(notes);
    gp
}

fn power_str(p: &Power) -> &str {
    match p {
        Power::Running => "running",
        Power::Stopped => "stopped",
        Power::Other(s) => s,
    }
}

fn simple(vmid: u32, kind: StepKind, old: &str, new: &str) -> Step {
    Step {
        vmid,
        kind,
        params: BTreeMap::new(),
        changes: vec![Change {
            key: "status".into(),
            old: Some(old.into()),
            new: Some(new.into()),
        }],
    }
}

fn create_step(spec: &GuestSpec) -> Result<Step, String> {
    let vmid = spec.vmid;
    let template = spec.template.as_ref().ok_or_else(|| {
        format!("CT {vmid} does not exist and its entry has no `template` to create it from")
    })?;
    let mut p = BTreeMap::new();
    p.insert("vmid".to_string(), vmid.to_string());
    p.insert("ostemplate".to_string(), template.clone());
    p.insert("start".to_string(), "0".to_string());
    // Shown under the document's name for it (`template`); PVE's is `ostemplate`.
    let mut changes = vec![Change {
        key: "template".into(),
        old: None,
        new: Some(template.clone()),
    }];
    let mut put = |k: &str, v: String| {
        changes.push(Change {
            key: k.into(),
            old: None,
            new: Some(v.clone()),
        });
        p.insert(k.to_string(), v);
    };
    if let Some(h) = &spec.hostname {
        put("hostname", h.clone());
    }
    if let Some(c) = spec.cores {
        put("cores", c.to_string());
    }
    if let Some(m) = spec.memory {
        put("memory", m.to_string());
    }
    if let Some(s) = spec.swap {
        put("swap", s.to_string());
    }
    if let Some(r) = &spec.rootfs {
        put("rootfs", r.clone());
    }
    for (i, n) in &spec.nets {
        put(&format!("net{i}"), n.to_string());
    }
    if let Some(o) = spec.onboot {
        put("onboot", bool01(o));
    }
    if let Some(t) = &spec.tags {
        put("tags", t.join(";"));
    }
    if let Some(d) = &spec.description {
        put("description", d.clone());
    }
    vocabulary::create_params(spec, &mut put);
    Ok(Step {
        vmid,
        kind: StepKind::Create,
        params: p,
        changes,
    })
}

fn bool01(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// The config keys whose desired value differs from the actual one, as PUT parameters.
fn config_diff(spec: &GuestSpec, actual: &ActualGuest) -> (BTreeMap<String, String>, Vec<Change>) {
    let a = &actual.config;
    let mut set = BTreeMap::new();
    let mut changes = Vec::new();
    let mut diff = |key: String, old: Option<String>, new: String, send: String| {
        changes.push(Change {
            key: key.clone(),
            old,
            new: Some(new),
        });
        set.insert(key, send);
    };
    if let Some(h) = &spec.hostname
        && a.hostname.as_ref() != Some(h)
    {
        diff("hostname".into(), a.hostname.clone(), h.clone(), h.clone());
    }
    if let Some(c) = spec.cores
        && a.cores != Some(c)
    {
        diff(
            "cores".into(),
            a.cores.map(|v| v.to_string()),
            c.to_string(),
            c.to_string(),
        );
    }
    if let Some(m) = spec.memory
        && a.memory != Some(m)
    {
        diff(
            "memory".into(),
            a.memory.map(|v| v.to_string()),
            m.to_string(),
            m.to_string(),
        );
    }
    if let Some(s) = spec.swap
        && a.swap != Some(s)
    {
        diff(
            "swap".into(),
            a.swap.map(|v| v.to_string()),
            s.to_string(),
            s.to_string(),
        );
    }
    for (i, want) in &spec.nets {
        let have = a.nets.get(i);
        if !have.is_some_and(|h| h.same_as_desired(want)) {
            // Shown as it will be after the PUT: the MAC address (kept) and `type=veth` (PVE
            // adds it) are on both sides, so only what really changes differs.
            let mut shown = want.clone();
            if let Some(h) = have {
                if shown.hwaddr.is_none() {
                    shown.hwaddr = h.hwaddr.clone();
                }
                if shown.type_.is_none() {
                    shown.type_ = h.type_.clone();
                }
            }
            diff(
                format!("net{i}"),
                have.map(|h| render_net_keeping_hwaddr(h, None)),
                shown.to_string(),
                render_net_keeping_hwaddr(want, have.map(|h| &**h)),
            );
        }
    }
    if let Some(o) = spec.onboot
        && a.onboot != o
    {
        diff(
            "onboot".into(),
            Some(bool01(a.onboot)),
            bool01(o),
            bool01(o),
        );
    }
    if let Some(want) = &spec.tags
        && &a.tags != want
    {
        diff(
            "tags".into(),
            Some(a.tags.join(";")),
            want.join(";"),
            want.join(";"),
        );
    }
    if let Some(d) = &spec.description {
        let want = d.trim_end_matches('\n');
        if a.description.as_deref().map(|x| x.trim_end_matches('\n')) != Some(want) {
            diff(
                "description".into(),
                a.description.clone(),
                normalize_description(want),
                d.clone(),
            );
        }
    }
    for (key, old, new, send) in vocabulary::config_changes(spec, actual) {
        diff(key, old, new, send);
    }
    (set, changes)
}

/// Grows the root filesystem when the document asks for more; never shrinks (PVE cannot, and
/// it would lose data) and never moves storage.
fn resize_step(spec: &GuestSpec, actual: &ActualGuest) -> Result<Option<Step>, Note> {
    let vmid = spec.vmid;
    let Some(want) = &spec.rootfs else {
        return Ok(None);
    };
    let Ok((storage, gib)) = parse_rootfs_spec(want) else {
        return Ok(None);
    };
    let Some(have) = &actual.config.rootfs else {
        return Ok(None);
    };
    if have.storage != storage {
        return Err(note(
            "rootfs_storage_differs",
            vmid,
            format!(
                "rootfs is on storage {:?}, the document asks for {storage:?}; moving volumes is not done automatically",
                have.storage
            ),
        ));
    }
    let want_mib = gib * 1024;
    match have.size_mib {
        Some(h) if h < want_mib => {
            let mut params = BTreeMap::new();
            params.insert("disk".to_string(), "rootfs".to_string());
            params.insert("size".to_string(), format!("{gib}G"));
            Ok(Some(Step {
                vmid,
                kind: StepKind::Resize,
                params,
                changes: vec![Change {
                    key: "rootfs.size".into(),
                    old: Some(format!("{}G", h.div_ceil(1024))),
                    new: Some(format!("{gib}G")),
                }],
            }))
        }
        Some(h) if h > want_mib => Err(note(
            "rootfs_shrink_refused",
            vmid,
            format!(
                "rootfs is {}G, the document asks for {gib}G; shrinking is never done",
                h.div_ceil(1024)
            ),
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::desired;
    use crate::model::{ActualConfig, RootfsState, parse_net};
    use std::collections::BTreeSet;

    const DOC: &str = r#"
revision = 7
[[guest]]
vmid = 201
ensure = "running"
hostname = "web-1"
template = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
cores = 2
memory = 1024
swap = 512
rootfs = "local-lvm:8"
net0 = "name=eth0,bridge=vmbr0,ip=dhcp"
onboot = true
tags = ["web", "Prod"]
description = "managed by drover"
"#;

    fn converged() -> ActualGuest {
        ActualGuest {
            vmid: 201,
            power: Power::Running,
            lock: None,
            config: ActualConfig {
                hostname: Some("web-1".into()),
                cores: Some(2),
                memory: Some(1024),
                swap: Some(512),
                rootfs: Some(RootfsState {
                    storage: "local-lvm".into(),
                    size_mib: Some(8192),
                }),
                nets: [(
                    0u8,
                    Box::new(
                        parse_net(
                            "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth",
                        )
                        .unwrap(),
                    ),
                )]
                .into(),
                onboot: true,
                tags: vec!["prod".into(), "web".into()],
                description: Some("managed by drover\n".into()),
                protection: false,
                unprivileged: true,
                ..ActualConfig::default()
            },
            digest: "0".repeat(40),
            pending: BTreeSet::new(),
            template: false,
        }
    }

    fn host(g: ActualGuest) -> ActualHost {
        ActualHost {
            guests: [(g.vmid, Box::new(g))].into(),
            ..ActualHost::default()
        }
    }

    fn doc() -> DesiredDoc {
        desired::parse(DOC.as_bytes(), "d").unwrap()
    }

    #[test]
    fn converged_guest_plans_nothing() {
        let p = plan(&doc(), &host(converged()));
        assert!(p.is_empty(), "{p:#?}");
        assert!(p.guests.is_empty());
    }

    #[test]
    fn missing_guest_is_created_stopped_then_started() {
        let p = plan(&doc(), &ActualHost::default());
        let kinds: Vec<_> = p.guests[&201].steps.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec![StepKind::Create, StepKind::Start]);
        let create = &p.guests[&201].steps[0];
        assert_eq!(create.params["start"], "0");
        assert_eq!(create.params["tags"], "prod;web");
        assert_eq!(create.params["onboot"], "1");
    }

    #[test]
    fn drift_is_set_and_mac_is_kept() {
        let mut g = converged();
        g.config.memory = Some(512);
        g.config.nets.insert(
            0,
            Box::new(
                crate::model::parse_net(
                    "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth",
                )
                .unwrap(),
            ),
        );
        let p = plan(&doc(), &host(g));
        let steps = &p.guests[&201].steps;
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].kind, StepKind::SetConfig);
        assert_eq!(steps[0].params["memory"], "1024");
        assert_eq!(
            steps[0].params["net0"],
            "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp"
        );
        // The change people read differs only where the value changes: the MAC address
        // and `type=veth` are on both sides.
        let net = steps[0].changes.iter().find(|c| c.key == "net0").unwrap();
        assert_eq!(
            net.old.as_deref(),
            Some("name=eth0,bridge=vmbr1,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth")
        );
        assert_eq!(
            net.new.as_deref(),
            Some("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth")
        );
    }

    #[test]
    fn a_create_shows_the_documents_field_names() {
        let p = plan(&doc(), &ActualHost::default());
        let create = &p.guests[&201].steps[0];
        assert!(
            create.params.contains_key("ostemplate"),
            "PVE's name is sent"
        );
        let keys: Vec<&str> = create.changes.iter().map(|c| c.key.as_str()).collect();
        assert!(keys.contains(&"template"), "{keys:?}");
        assert!(!keys.contains(&"ostemplate"), "{keys:?}");
    }

    #[test]
    fn pending_keys_on_a_running_guest_plan_a_reboot() {
        let mut g = converged();
        g.pending.insert("rootfs".into());
        let p = plan(&doc(), &host(g));
        assert_eq!(p.guests[&201].steps[0].kind, StepKind::Reboot);
    }

    #[test]
    fn stopped_wanted_shuts_down_first() {
        let d = desired::parse(DOC.replace("\"running\"", "\"stopped\"").as_bytes(), "d").unwrap();
        let mut g = converged();
        g.config.cores = Some(1);
        let kinds: Vec<_> = plan(&d, &host(g)).guests[&201]
            .steps
            .iter()
            .map(|s| s.kind)
            .collect();
        assert_eq!(kinds, vec![StepKind::Shutdown, StepKind::SetConfig]);
    }

    #[test]
    fn absent_destroys_unless_protected_or_fused() {
        let d = desired::parse(DOC.replace("\"running\"", "\"absent\"").as_bytes(), "d").unwrap();
        // One managed guest, destroying it is more than half: the fuse holds it.
        let p = plan(&d, &host(converged()));
        assert!(p.is_empty());
        assert!(p.notes.iter().any(|n| n.code == "fuse_mass_destroy"));

        // Three managed guests, one destroyed: allowed.
        let mut text = DOC.replace("\"running\"", "\"absent\"");
        let mut h = host(converged());
        for v in [202u32, 203] {
            text.push_str(&format!("[[guest]]\nvmid = {v}\nensure = \"running\"\n"));
            let mut g = converged();
            g.vmid = v;
            h.guests.insert(v, Box::new(g));
        }
        let d = desired::parse(text.as_bytes(), "d").unwrap();
        let p = plan(&d, &h);
        assert_eq!(p.guests[&201].steps[0].kind, StepKind::Destroy);
        assert_eq!(p.guests[&201].steps[0].params, destroy_params());

        h.guests.get_mut(&201).unwrap().config.protection = true;
        let p = plan(&d, &h);
        assert!(p.guests[&201].steps.is_empty());
        assert_eq!(p.guests[&201].notes[0].code, "protected");
    }

    #[test]
    fn guest_elsewhere_is_reported_not_created() {
        let h = ActualHost {
            guests: BTreeMap::new(),
            elsewhere: [(201, "pve2".to_string())].into(),
            ..ActualHost::default()
        };
        let p = plan(&doc(), &h);
        assert!(p.is_empty());
        assert_eq!(p.guests[&201].notes[0].code, "exists_on_other_node");
    }

    #[test]
    fn a_guest_that_vanished_during_the_read_gets_no_step() {
        let h = ActualHost {
            vanished: [201].into(),
            ..ActualHost::default()
        };
        let p = plan(&doc(), &h);
        assert!(
            p.is_empty(),
            "no create for a guest that may exist elsewhere: {p:?}"
        );
        assert_eq!(p.guests[&201].notes[0].code, "guest_vanished");
        assert!(p.unmanaged.is_empty());
    }

    #[test]
    fn unmanaged_guests_are_only_reported() {
        let mut g = converged();
        g.vmid = 999;
        let p = plan(&doc(), &host(g));
        assert_eq!(p.unmanaged, vec![999]);
        assert!(!p.guests.contains_key(&999));
    }

    #[test]
    fn rootfs_grows_never_shrinks() {
        let mut g = converged();
        g.config.rootfs = Some(RootfsState {
            storage: "local-lvm".into(),
            size_mib: Some(4096),
        });
        let p = plan(&doc(), &host(g.clone()));
        assert_eq!(p.guests[&201].steps[0].kind, StepKind::Resize);
        g.config.rootfs = Some(RootfsState {
            storage: "local-lvm".into(),
            size_mib: Some(16384),
        });
        let p = plan(&doc(), &host(g));
        assert!(p.guests[&201].steps.is_empty());
        assert_eq!(p.guests[&201].notes[0].code, "rootfs_shrink_refused");
    }

    #[test]
    fn locked_guest_waits() {
        let mut g = converged();
        g.lock = Some("backup".into());
        g.config.cores = Some(1);
        let p = plan(&doc(), &host(g));
        assert!(p.guests[&201].steps.is_empty());
        assert_eq!(p.guests[&201].notes[0].code, "guest_locked");
    }

    fn with_mounts(doc_extra: &str) -> (DesiredDoc, ActualHost) {
        let text = format!("{DOC}{doc_extra}");
        let d = desired::parse(text.as_bytes(), "d").unwrap();
        let mut g = converged();
        g.config.mounts.insert(
            0,
            "local-lvm:vm-201-disk-1,mp=/srv/a,size=2G".parse().unwrap(),
        );
        g.config.mounts.insert(
            1,
            "local-lvm:vm-201-disk-2,mp=/srv/b,backup=1,size=3G"
                .parse()
                .unwrap(),
        );
        (d, host(g))
    }

    #[test]
    fn mount_points_are_left_alone_unless_listed_and_removal_is_a_detach() {
        // No mpN in the entry: mount points are not managed.
        let (d, h) = with_mounts("");
        assert!(plan(&d, &h).is_empty());
        // mp0 listed (as it is), mp1 not: mp1 is detached, nothing else.
        let (d, h) =
            with_mounts("mp0 = { storage = \"local-lvm\", size = 2, path = \"/srv/a\" }\n");
        let p = plan(&d, &h);
        let steps = &p.guests[&201].steps;
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0].kind, StepKind::Detach);
        assert_eq!(steps[0].params["delete"], "mp1");
        assert_eq!(steps[0].params["volume"], "local-lvm:vm-201-disk-2");
        // `mp = []`: both go; a protected guest keeps them (a note).
        let (d, mut h) = with_mounts("mp = []\n");
        assert_eq!(plan(&d, &h).guests[&201].steps.len(), 2);
        h.guests.get_mut(&201).unwrap().config.protection = true;
        let p = plan(&d, &h);
        assert!(p.guests[&201].steps.is_empty());
        assert!(p.guests[&201].notes.iter().all(|n| n.code == "protected"));
        // Growing is a resize; shrinking a note.
        let (d, h) = with_mounts(
            "mp0 = { storage = \"local-lvm\", size = 4, path = \"/srv/a\" }\nmp1 = { storage = \"local-lvm\", size = 1, path = \"/srv/b\" }\n",
        );
        let p = plan(&d, &h);
        assert_eq!(p.guests[&201].steps[0].kind, StepKind::Resize);
        assert_eq!(p.guests[&201].steps[0].params["disk"], "mp0");
        assert_eq!(p.guests[&201].notes[0].code, "mp_shrink_refused");
    }

    #[test]
    fn a_detached_volume_is_deleted_only_after_the_grace_period_and_only_if_drover_detached_it() {
        let d = desired::parse(DOC.as_bytes(), "d").unwrap();
        let mut g = converged();
        g.config.unused.insert(0, "local-lvm:vm-201-disk-2".into());
        g.config.unused.insert(1, "local-lvm:vm-201-disk-7".into());
        let h = host(g);
        let detached = crate::model::vocabulary::DetachedVolume {
            vmid: 201,
            key: "mp1".into(),
            volume: "local-lvm:vm-201-disk-2".into(),
            mount: "local-lvm:vm-201-disk-2,mp=/srv/b,size=3G".into(),
            detached_at: 1_000,
        };
        let mut ctx = PlanContext {
            now: 1_000 + 3600,
            detached: [(201, vec![detached])].into(),
            ..PlanContext::default()
        };
        assert!(
            plan_with(&d, &h, &ctx).is_empty(),
            "within the grace period"
        );
        ctx.now = 1_000 + ctx.rules.detach_grace_secs;
        let p = plan_with(&d, &h, &ctx);
        let steps = &p.guests[&201].steps;
        assert_eq!(
            steps.len(),
            1,
            "unused1 was not detached by Drover: {steps:?}"
        );
        assert_eq!(steps[0].kind, StepKind::DeleteVolume);
        assert_eq!(steps[0].params["delete"], "unused0");
    }
}
