//! Planning the vocabulary beyond sizing and networking (`desired::vocabulary`): the create
//! parameters, in-place changes, mount points (add, change, grow, detach, delete after the
//! grace period) and the notes for what Drover reports but never does.
//!
//! Pure, like the planner it serves. What the host allows (bind mounts, devices) and what the
//! journal knows (volumes Drover detached, and when) come in a [`PlanContext`], so the same
//! document plans the same way on every run of `drover plan` and the engine.

use std::collections::BTreeMap;

use crate::desired::GuestSpec;
use crate::model::step::{Change, Note, Step, StepKind};
use crate::model::vocabulary::is_host_mount;
use crate::model::{ActualGuest, MountSource, MountSpec};

/// The grace period between detaching a mount point and deleting its volume, by default.
pub const DEFAULT_DETACH_GRACE_SECS: i64 = 14 * 24 * 3600;

/// What this host allows beyond the document, from its own `drover.toml` (the hub can never
/// widen it): host paths that bind mounts may name, devices `dev[n]` may pass through, and
/// how long a detached volume is kept before its deletion is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRules {
    pub host_paths: Vec<String>,
    pub devices: Vec<String>,
    pub detach_grace_secs: i64,
}

impl Default for HostRules {
    fn default() -> Self {
        HostRules {
            host_paths: Vec::new(),
            devices: Vec::new(),
            detach_grace_secs: DEFAULT_DETACH_GRACE_SECS,
        }
    }
}

impl HostRules {
    /// `path` is an allowed host path or lies beneath one.
    pub fn allows_host_path(&self, path: &str) -> bool {
        self.host_paths.iter().any(|a| {
            path == a
                || path
                    .strip_prefix(a.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    }
    pub fn allows_device(&self, path: &str) -> bool {
        self.devices.iter().any(|d| d == path)
    }
}

/// Everything the planner needs besides the document and PVE's view.
#[derive(Debug, Clone, Default)]
pub struct PlanContext {
    pub rules: HostRules,
    /// Unix time of this plan (when a detached volume's grace period ends is judged here).
    pub now: i64,
    /// Volumes Drover detached, per guest, from the journal.
    pub detached: BTreeMap<u32, Vec<crate::model::vocabulary::DetachedVolume>>,
}

fn bool01(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn fmt_f64(f: f64) -> String {
    format!("{f}")
}

/// Adds the vocabulary's keys to a create call. Drover always sends `unprivileged`: PVE's API
/// default is a privileged container.
pub fn create_params(spec: &GuestSpec, put: &mut dyn FnMut(&str, String)) {
    let m = &spec.more;
    let unprivileged = m.unprivileged.unwrap_or(true);
    put("unprivileged", bool01(unprivileged));
    // PVE lets only root set features on a privileged guest (a note says so).
    if let Some(n) = m.nesting.filter(|_| unprivileged) {
        put("features", format!("nesting={}", u8::from(n)));
    }
    if let Some(k) = &m.ssh_public_keys {
        put("ssh-public-keys", k.clone());
    }
    if let Some(o) = &m.ostype {
        put("ostype", o.clone());
    }
    if let Some(a) = &m.arch {
        put("arch", a.clone());
    }
    scalar_values(spec, &mut |k, v| put(k, v));
    for (i, mp) in &m.mounts {
        // Bind and device mounts are root-only: never in a token's create (see the notes).
        if let Some(v) = mp.new_volume_value() {
            put(&format!("mp{i}"), v);
        }
    }
}

/// The scalar keys the document sets, as PVE values.
fn scalar_values(spec: &GuestSpec, put: &mut dyn FnMut(&str, String)) {
    let m = &spec.more;
    if let Some(v) = &m.nameserver {
        put("nameserver", v.join(" "));
    }
    if let Some(v) = &m.searchdomain {
        put("searchdomain", v.join(" "));
    }
    if let Some(v) = &m.timezone {
        put("timezone", v.clone());
    }
    if let Some(v) = &m.startup {
        put("startup", v.to_string());
    }
    if let Some(v) = m.cpulimit {
        put("cpulimit", fmt_f64(v));
    }
    if let Some(v) = m.cpuunits {
        put("cpuunits", v.to_string());
    }
    if let Some(v) = m.console {
        put("console", bool01(v));
    }
    if let Some(v) = m.tty {
        put("tty", v.to_string());
    }
    if let Some(v) = &m.cmode {
        put("cmode", v.clone());
    }
    if let Some(v) = m.protection {
        put("protection", bool01(v));
    }
}

/// The vocabulary's in-place changes: `(key, old shown, new shown, value sent)`.
pub fn config_changes(
    spec: &GuestSpec,
    actual: &ActualGuest,
) -> Vec<(String, Option<String>, String, String)> {
    let m = &spec.more;
    let a = &actual.config;
    let mut out = Vec::new();
    let mut diff = |k: &str, old: Option<String>, new: String| {
        out.push((k.to_string(), old, new.clone(), new));
    };
    let opt_list = |l: &[String]| (!l.is_empty()).then(|| l.join(" "));
    if let Some(w) = &m.nameserver
        && &a.nameserver != w
    {
        diff("nameserver", opt_list(&a.nameserver), w.join(" "));
    }
    if let Some(w) = &m.searchdomain
        && &a.searchdomain != w
    {
        diff("searchdomain", opt_list(&a.searchdomain), w.join(" "));
    }
    if let Some(w) = &m.timezone
        && a.timezone.as_ref() != Some(w)
    {
        diff("timezone", a.timezone.clone(), w.clone());
    }
    if let Some(w) = &m.startup
        && a.startup.unwrap_or_default() != *w
    {
        diff("startup", a.startup.map(|s| s.to_string()), w.to_string());
    }
    if let Some(w) = m.cpulimit
        && (a.cpulimit.unwrap_or(0.0) - w).abs() > 1e-9
    {
        diff("cpulimit", a.cpulimit.map(fmt_f64), fmt_f64(w));
    }
    if let Some(w) = m.cpuunits
        && a.cpuunits != Some(w)
    {
        diff("cpuunits", a.cpuunits.map(|v| v.to_string()), w.to_string());
    }
    // Absent keys mean PVE's defaults (console 1, tty 2, cmode tty).
    if let Some(w) = m.console
        && a.console.unwrap_or(true) != w
    {
        diff("console", a.console.map(bool01), bool01(w));
    }
    if let Some(w) = m.tty
        && a.tty.unwrap_or(2) != w
    {
        diff("tty", a.tty.map(|v| v.to_string()), w.to_string());
    }
    if let Some(w) = &m.cmode
        && a.cmode.as_deref().unwrap_or("tty") != w
    {
        diff("cmode", a.cmode.clone(), w.clone());
    }
    if let Some(w) = m.protection
        && a.protection != w
    {
        diff("protection", Some(bool01(a.protection)), bool01(w));
    }
    if let Some(w) = m.nesting
        && a.features.nesting() != w
        && a.unprivileged
    {
        // PVE lets a token change nesting only: every other flag is sent as it is.
        let mut f = a.features.clone();
        f.nesting = Some(w);
        let old = a.features.to_string();
        diff("features", (!old.is_empty()).then_some(old), f.to_string());
    }
    for (i, want) in &m.mounts {
        let key = format!("mp{i}");
        let MountSource::Volume { storage, .. } = &want.source else {
            continue;
        };
        if a.protection {
            // PVE refuses drive changes on a protected guest (note `mp_protected`).
            continue;
        }
        match a.mounts.get(i) {
            None => {
                if let Some(v) = want.new_volume_value() {
                    out.push((key, None, want.describe(), v));
                }
            }
            Some(have) if !is_host_mount(have) && have.storage() == Some(storage.as_str()) => {
                if !want.options_match(have) {
                    out.push((
                        key,
                        Some(have.to_string()),
                        want.changed_value(have),
                        want.changed_value(have),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// Grows mount point volumes the document makes larger (a resize each; PVE cannot shrink).
pub fn mount_resizes(spec: &GuestSpec, actual: &ActualGuest) -> Vec<Step> {
    let mut out = Vec::new();
    for (i, want) in &spec.more.mounts {
        let MountSource::Volume { storage, size_gib } = &want.source else {
            continue;
        };
        let Some(have) = actual.config.mounts.get(i) else {
            continue;
        };
        if is_host_mount(have) || have.storage() != Some(storage.as_str()) {
            continue;
        }
        let want_mib = size_gib * 1024;
        if let Some(h) = have.size.map(|s| s.mib())
            && h < want_mib
        {
            out.push(Step {
                vmid: spec.vmid,
                kind: StepKind::Resize,
                params: [
                    ("disk".to_string(), format!("mp{i}")),
                    ("size".to_string(), format!("{size_gib}G")),
                ]
                .into(),
                changes: vec![Change {
                    key: format!("mp{i}.size"),
                    old: Some(format!("{}G", h.div_ceil(1024))),
                    new: Some(format!("{size_gib}G")),
                }],
            });
        }
    }
    out
}

fn note(code: &'static str, vmid: u32, message: String) -> Note {
    Note {
        code,
        vmid: Some(vmid),
        message,
    }
}

/// What the plan reports but never does for an existing guest (or, with `actual` None, for
/// one about to be created).
pub fn notes(spec: &GuestSpec, actual: Option<&ActualGuest>, ctx: &PlanContext) -> Vec<Note> {
    let vmid = spec.vmid;
    let m = &spec.more;
    let mut out = Vec::new();
    if let (Some(a), Some(w)) = (actual, m.unprivileged)
        && a.config.unprivileged != w
    {
        out.push(note(
            "unprivileged_is_create_only",
            vmid,
            format!(
                "CT {vmid} is {}, the document asks for {}; PVE fixes this at create, so Drover reports it and changes nothing",
                if a.config.unprivileged { "unprivileged" } else { "privileged" },
                if w { "unprivileged" } else { "privileged" }
            ),
        ));
    }
    let privileged = match actual {
        Some(a) => !a.config.unprivileged,
        None => m.unprivileged == Some(false),
    };
    if let Some(w) = m.nesting
        && privileged
        && actual.is_none_or(|a| a.config.features.nesting() != w)
    {
        out.push(note(
            "feature_root_only",
            vmid,
            format!(
                "CT {vmid} is privileged: PVE lets only root@pam change its features (nesting={})",
                u8::from(w)
            ),
        ));
    }
    for (i, want) in &m.mounts {
        let have = actual.and_then(|a| a.config.mounts.get(i));
        match &want.source {
            MountSource::Host { path } => {
                if !ctx.rules.allows_host_path(path) {
                    out.push(note(
                        "host_path_not_allowed",
                        vmid,
                        format!("mp{i}: the host path {path:?} is not in this host's [guests] host_paths; the document cannot widen that list"),
                    ));
                } else if !have.is_some_and(|h| h.volume == *path && want.options_match(h)) {
                    out.push(note(
                        "host_mount_needs_root",
                        vmid,
                        format!("mp{i}: PVE lets only root@pam add bind mounts; on the host run: pct set {vmid} -mp{i} {path},mp={}", want.path),
                    ));
                }
            }
            MountSource::Volume { storage, size_gib } => {
                let Some(h) = have else {
                    if actual.is_some_and(|a| a.config.protection) {
                        out.push(note(
                            "mp_protected",
                            vmid,
                            format!("mp{i} is not added: CT {vmid} has protection=1, and PVE refuses drive changes while it is set"),
                        ));
                    }
                    continue;
                };
                if actual.is_some_and(|a| a.config.protection) && !want.options_match(h) {
                    out.push(note(
                        "mp_protected",
                        vmid,
                        format!("mp{i} is not changed: CT {vmid} has protection=1, and PVE refuses drive changes while it is set"),
                    ));
                }
                if is_host_mount(h) {
                    out.push(note(
                        "mp_kind_differs",
                        vmid,
                        format!("mp{i} is a bind mount of {} on the guest, the document wants a volume; remove it from the document first (it is detached), then add the volume", h.volume),
                    ));
                } else if h.storage() != Some(storage.as_str()) {
                    out.push(note(
                        "mp_storage_differs",
                        vmid,
                        format!("mp{i} is on storage {:?}, the document asks for {storage:?}; moving volumes is not done automatically", h.storage().unwrap_or("?")),
                    ));
                } else if let Some(s) = h.size
                    && s.mib() > size_gib * 1024
                {
                    out.push(note(
                        "mp_shrink_refused",
                        vmid,
                        format!("mp{i} is {}G, the document asks for {size_gib}G; shrinking is never done", s.mib().div_ceil(1024)),
                    ));
                }
            }
        }
    }
    for (i, want) in &m.devices {
        let have = actual.and_then(|a| a.config.devices.get(i));
        if !ctx.rules.allows_device(&want.path) {
            out.push(note(
                "device_not_allowed",
                vmid,
                format!("dev{i}: {:?} is not in this host's [guests] devices; the document cannot widen that list", want.path),
            ));
        } else if !have.is_some_and(|h| want.matches(h)) {
            out.push(note(
                "device_needs_root",
                vmid,
                format!("dev{i}: PVE lets only root@pam pass devices through; on the host run: pct set {vmid} -dev{i} {}", want.path),
            ));
        }
    }
    out
}

/// Detaches the mount points a document that lists its mount points no longer has, and
/// deletes volumes Drover detached once their grace period is over. Both are destructive
/// steps an operator signs; the detach is reversible while `unusedN` exists.
pub fn removals(
    spec: &GuestSpec,
    actual: &ActualGuest,
    ctx: &PlanContext,
) -> (Vec<Step>, Vec<Note>) {
    let vmid = spec.vmid;
    let a = &actual.config;
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    let protected = a.protection || spec.more.protection == Some(true);
    if spec.more.mounts_managed {
        for (i, have) in &a.mounts {
            if spec.more.mounts.contains_key(i) {
                continue;
            }
            if protected {
                notes.push(note(
                    "protected",
                    vmid,
                    format!("mp{i} is not in the document, but CT {vmid} has protection=1; PVE keeps its mount points"),
                ));
                continue;
            }
            steps.push(Step {
                vmid,
                kind: StepKind::Detach,
                params: [
                    ("delete".to_string(), format!("mp{i}")),
                    ("volume".to_string(), have.volume.clone()),
                ]
                .into(),
                changes: vec![Change {
                    key: format!("mp{i}"),
                    old: Some(have.to_string()),
                    new: if is_host_mount(have) {
                        None
                    } else {
                        Some(format!(
                            "unused (kept {})",
                            grace_words(ctx.rules.detach_grace_secs)
                        ))
                    },
                }],
            });
        }
    }
    let mine = ctx.detached.get(&vmid).map(Vec::as_slice).unwrap_or(&[]);
    for (k, vol) in &a.unused {
        let Some(d) = mine.iter().find(|d| &d.volume == vol) else {
            continue;
        };
        if protected || ctx.now < d.detached_at + ctx.rules.detach_grace_secs {
            continue;
        }
        steps.push(Step {
            vmid,
            kind: StepKind::DeleteVolume,
            params: [
                ("delete".to_string(), format!("unused{k}")),
                ("volume".to_string(), vol.clone()),
            ]
            .into(),
            changes: vec![Change {
                key: format!("unused{k}"),
                old: Some(format!("{vol} (was {} {})", d.key, d.mount_path())),
                new: None,
            }],
        });
    }
    (steps, notes)
}

/// `7d`, `36h`, `90m`: how people read a grace period.
pub fn grace_words(secs: i64) -> String {
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The words about a mount point people read in a plan.
pub fn describe_mount(m: &MountSpec) -> String {
    m.describe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_allow_what_lies_beneath() {
        let r = HostRules {
            host_paths: vec!["/srv/shared".into()],
            devices: vec!["/dev/dri/renderD128".into()],
            ..HostRules::default()
        };
        assert!(r.allows_host_path("/srv/shared"));
        assert!(r.allows_host_path("/srv/shared/media"));
        assert!(!r.allows_host_path("/srv/sharedx"));
        assert!(!r.allows_host_path("/srv"));
        assert!(r.allows_device("/dev/dri/renderD128"));
        assert!(!r.allows_device("/dev/dri/card0"));
        assert_eq!(grace_words(DEFAULT_DETACH_GRACE_SECS), "14d");
    }
}
