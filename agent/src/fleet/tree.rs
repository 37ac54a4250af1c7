//! The hub's tree on local disk: host directories, the publish record, approval indexes and
//! reports. Files are written atomically (temp file + rename) and only when their bytes
//! change, so a static server's ETag (nginx: mtime and size) stays the same and an agent's
//! poll stays a `304`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FleetError;
use crate::approval::files::{self as approval_files, read_capped, write_atomic};
use crate::desired::hub::{MAX_INDEX_ENTRIES, valid_approval_name, valid_host_name};
use crate::desired::report::{MAX_REPORT_BYTES, Report};

/// What `fleet publish` last signed for a host (`hosts/<host>/published.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub revision: u64,
    /// Hex SHA-256 of the signed `desired.toml`.
    pub sha256: String,
    pub published_unix: i64,
}

/// A host's `approvals/` directory as the index should list it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IndexPlan {
    /// What `index.json` should list: every payload that has a signature, and its signatures.
    pub names: Vec<String>,
    /// Listed now but not any more / not yet listed.
    pub removed: Vec<String>,
    pub added: Vec<String>,
    /// Files left out, with the reason (bad name, no signature, no payload, too large).
    pub ignored: Vec<String>,
    /// `index.json` must be (re)written (its bytes differ, or it is missing).
    pub write: bool,
    /// The directory could not be listed (other than missing): nothing may be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The two directories of a host the agent mirrors by their `index.json`: signed approvals
/// of destructive steps, and signed jobs (`drover-job v1`). Both hold `NAME.txt` payloads with
/// `NAME.txt.sig` / `NAME.txt.<signer>.sig` beside them, under the same limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inbox {
    Approvals,
    Jobs,
}

impl Inbox {
    /// The directory's name under `hosts/<host>/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Inbox::Approvals => "approvals",
            Inbox::Jobs => "jobs",
        }
    }

    /// Which inbox a signed payload goes to.
    pub fn of_payload(payload: &[u8]) -> Inbox {
        if gate::job::is_job_document(payload) {
            Inbox::Jobs
        } else {
            Inbox::Approvals
        }
    }
}

/// A local copy of the hub's tree (the directory that holds `hosts/`).
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// Opens a tree; it must hold a `hosts/` directory.
    pub fn open(root: &Path) -> Result<Tree, FleetError> {
        let hosts = root.join("hosts");
        if !hosts.is_dir() {
            return Err(FleetError::Tree {
                path: root.display().to_string(),
                message: "has no hosts/ directory (expected hosts/<host>/desired.toml)".into(),
            });
        }
        Ok(Tree {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Locks the tree's `hosts/` directory itself (flock on the directory, so no lock file
    /// ends up in what is served) for the life of the returned handle: two writers
    /// (`publish`, `add-approvals`) never interleave their files; a second one fails at once
    /// with `fleet_busy`. The kernel drops the lock when the process ends.
    pub fn lock(&self) -> Result<std::fs::File, FleetError> {
        let path = self.root.join("hosts");
        let f = std::fs::File::open(&path).map_err(|e| FleetError::Write {
            path: path.display().to_string(),
            message: e.to_string().to_lowercase(),
        })?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(FleetError::Busy(path.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(FleetError::Write {
                path: path.display().to_string(),
                message: format!("locking: {}", e.to_string().to_lowercase()),
            }),
        }
    }

    /// Every host directory, sorted. Directories whose name is not a valid host name are
    /// returned separately (the agent could never ask for them).
    pub fn hosts(&self) -> Result<(Vec<String>, Vec<String>), FleetError> {
        let dir = self.root.join("hosts");
        let entries = std::fs::read_dir(&dir).map_err(|e| FleetError::Tree {
            path: dir.display().to_string(),
            message: format!("cannot list: {e}"),
        })?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if valid_host_name(&name) {
                good.push(name);
            } else {
                bad.push(name);
            }
        }
        good.sort();
        bad.sort();
        Ok((good, bad))
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.root.join("hosts").join(host)
    }

    /// True for a valid host name with a directory in the tree.
    pub fn has_host(&self, host: &str) -> bool {
        valid_host_name(host) && self.host_dir(host).is_dir()
    }

    pub fn document(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("desired.toml")
    }

    pub fn signature(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("desired.toml.sig")
    }

    pub fn approvals_dir(&self, host: &str) -> PathBuf {
        self.inbox_dir(host, Inbox::Approvals)
    }

    pub fn inbox_dir(&self, host: &str, inbox: Inbox) -> PathBuf {
        self.host_dir(host).join(inbox.dir_name())
    }

    /// `hosts/<host>/<name>`: how messages name a file (the path below the hub's URL).
    pub fn name_of(&self, host: &str, name: &str) -> String {
        format!("hosts/{host}/{name}")
    }

    /// The publish record, `None` when the host was never published with `fleet publish`.
    pub fn record(&self, host: &str) -> Result<Option<Published>, String> {
        let path = self.host_dir(host).join("published.json");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = read_capped(&path, 64 * 1024)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a publish record: {e}", path.display()))
    }

    pub fn write_record(&self, host: &str, record: &Published) -> Result<(), FleetError> {
        let mut bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        bytes.push(b'\n');
        write_if_changed(&self.host_dir(host).join("published.json"), &bytes)
    }

    /// The host's last report: `None` when there is none, `Some(Err)` when it is unreadable.
    pub fn report(&self, host: &str) -> Option<Result<Report, String>> {
        let path = self.host_dir(host).join("report.json");
        if !path.exists() {
            return None;
        }
        Some(read_capped(&path, MAX_REPORT_BYTES).and_then(|b| Report::parse(&b)))
    }

    /// What the host's `approvals/index.json` (or `jobs/index.json`) should list, compared
    /// with what it lists now. A host without a `jobs/` directory gets no jobs index: the
    /// agent takes the hub's 404 for "no jobs".
    pub fn index_plan(&self, host: &str, inbox: Inbox) -> IndexPlan {
        let dir = self.inbox_dir(host, inbox);
        let mut plan = IndexPlan::default();
        if inbox == Inbox::Jobs {
            match std::fs::symlink_metadata(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return plan,
                Err(e) => {
                    plan.error = Some(format!("{}: cannot read: {e}", dir.display()));
                    return plan;
                }
                Ok(_) => {}
            }
        }
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && n != "index.json")
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                // Writing an index from a listing we could not read would withdraw approvals.
                plan.error = Some(format!("{}: cannot list: {e}", dir.display()));
                return plan;
            }
        };
        names.sort();
        let mut payloads = BTreeSet::new();
        let mut sigs: Vec<(String, String)> = Vec::new();
        for n in &names {
            if !valid_approval_name(n) {
                plan.ignored.push(format!("{n}: not an approval file name"));
                continue;
            }
            if let Some(stem) = payload_of_signature(n) {
                sigs.push((n.clone(), stem));
            } else {
                payloads.insert(n.clone());
            }
        }
        let mut signed = BTreeSet::new();
        let mut listed = BTreeSet::new();
        for (sig, payload) in &sigs {
            if !payloads.contains(payload) {
                plan.ignored.push(format!("{sig}: no {payload} beside it"));
                continue;
            }
            if too_large(&dir.join(sig), approval_files::MAX_SIGNATURE_BYTES) {
                plan.ignored.push(format!(
                    "{sig}: larger than {} bytes",
                    approval_files::MAX_SIGNATURE_BYTES
                ));
                continue;
            }
            signed.insert(payload.clone());
            listed.insert(sig.clone());
        }
        for p in &payloads {
            if !signed.contains(p) {
                plan.ignored.push(format!("{p}: no signature beside it"));
            } else if too_large(&dir.join(p), approval_files::MAX_PAYLOAD_BYTES) {
                plan.ignored.push(format!(
                    "{p}: larger than {} bytes",
                    approval_files::MAX_PAYLOAD_BYTES
                ));
                listed.retain(|s| payload_of_signature(s).as_deref() != Some(p.as_str()));
            } else {
                listed.insert(p.clone());
            }
        }
        plan.names = listed.into_iter().collect();
        let current = read_capped(
            &dir.join("index.json"),
            crate::desired::hub::MAX_INDEX_BYTES as u64,
        )
        .ok()
        .and_then(|b| crate::desired::hub::parse_index(&b).ok().map(|n| (b, n)));
        let wanted = index_bytes(&plan.names);
        match &current {
            Some((bytes, names)) => {
                let now: BTreeSet<&String> = names.iter().collect();
                let next: BTreeSet<&String> = plan.names.iter().collect();
                plan.removed = now.difference(&next).map(|s| s.to_string()).collect();
                plan.added = next.difference(&now).map(|s| s.to_string()).collect();
                plan.write = *bytes != wanted;
            }
            None => {
                plan.added = plan.names.clone();
                plan.write = true;
            }
        }
        plan
    }

    /// Checks an index plan against the agent's limits (`hub_approvals_invalid` otherwise).
    pub fn check_index(
        &self,
        host: &str,
        inbox: Inbox,
        plan: &IndexPlan,
    ) -> Result<(), super::Refusal> {
        if let Some(e) = &plan.error {
            return Err(super::Refusal::new("fleet_tree", e.clone()));
        }
        let bytes = index_bytes(&plan.names);
        if plan.names.len() > MAX_INDEX_ENTRIES
            || bytes.len() > crate::desired::hub::MAX_INDEX_BYTES
        {
            return Err(super::Refusal::new(
                "hub_approvals_invalid",
                format!(
                    "{}: would list {} files ({} bytes); agents accept at most {MAX_INDEX_ENTRIES} files and {} bytes (remove used or expired {})",
                    self.name_of(host, &format!("{}/index.json", inbox.dir_name())),
                    plan.names.len(),
                    bytes.len(),
                    crate::desired::hub::MAX_INDEX_BYTES,
                    inbox.dir_name()
                ),
            ));
        }
        Ok(())
    }

    /// Writes the host's `approvals/index.json` (or `jobs/index.json`) as planned (only if
    /// its bytes change).
    pub fn write_index(
        &self,
        host: &str,
        inbox: Inbox,
        plan: &IndexPlan,
    ) -> Result<(), FleetError> {
        write_if_changed(
            &self.inbox_dir(host, inbox).join("index.json"),
            &index_bytes(&plan.names),
        )
    }
}

/// `NAME.txt.sig` / `NAME.txt.<signer>.sig` → `NAME.txt`; `None` for a payload.
pub fn payload_of_signature(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".sig")?;
    if stem.ends_with(".txt") {
        return Some(stem.to_string());
    }
    stem.rfind(".txt.").map(|i| stem[..i + 4].to_string())
}

/// The bytes of an `index.json` listing `names` (a JSON array, one line).
pub fn index_bytes(names: &[String]) -> Vec<u8> {
    let mut b = serde_json::to_vec(names).unwrap_or_else(|_| b"[]".to_vec());
    b.push(b'\n');
    b
}

fn too_large(path: &Path, cap: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > cap)
}

/// Writes atomically, and not at all when the file already holds `bytes` (keeps its ETag).
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    write_atomic(path, bytes).map_err(|e| FleetError::Write {
        path: path.display().to_string(),
        message: e.to_string().to_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn index_lists_complete_sets_only_and_keeps_unchanged_bytes() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("hosts/pve1/approvals");
        std::fs::create_dir_all(&a).unwrap();
        let tree = Tree::open(d.path()).unwrap();
        for (n, c) in [
            ("105-destroy_guest.txt", "P"),
            ("105-destroy_guest.txt.alice.sig", "S"),
            ("106-destroy_guest.txt", "unsigned"),
            ("orphan.txt.sig", "S"),
            ("bad name.txt", "x"),
        ] {
            std::fs::write(a.join(n), c).unwrap();
        }
        let plan = tree.index_plan("pve1", Inbox::Approvals);
        assert_eq!(
            plan.names,
            vec!["105-destroy_guest.txt", "105-destroy_guest.txt.alice.sig"]
        );
        assert_eq!(plan.ignored.len(), 3, "{:?}", plan.ignored);
        assert!(plan.write);
        tree.write_index("pve1", Inbox::Approvals, &plan).unwrap();
        let mtime = std::fs::metadata(a.join("index.json"))
            .unwrap()
            .modified()
            .unwrap();
        let again = tree.index_plan("pve1", Inbox::Approvals);
        assert!(!again.write && again.added.is_empty() && again.removed.is_empty());
        std::thread::sleep(std::time::Duration::from_millis(20));
        tree.write_index("pve1", Inbox::Approvals, &again).unwrap();
        assert_eq!(
            std::fs::metadata(a.join("index.json"))
                .unwrap()
                .modified()
                .unwrap(),
            mtime,
            "an unchanged index is not rewritten"
        );
        std::fs::remove_file(a.join("105-destroy_guest.txt.alice.sig")).unwrap();
        let gone = tree.index_plan("pve1", Inbox::Approvals);
        assert!(gone.names.is_empty());
        let held = tree.lock().unwrap();
        assert_eq!(tree.lock().unwrap_err().code(), "fleet_busy");
        drop(held);
        // Released on drop. A child another test of this binary spawns holds the lock between
        // its fork and its exec (flock goes with the open file), so the retake may wait that out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while tree.lock().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock was not released"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(gone.removed.len(), 2);
        assert_eq!(payload_of_signature("a.txt.sig").as_deref(), Some("a.txt"));
        assert_eq!(
            payload_of_signature("a.txt.bob.sig").as_deref(),
            Some("a.txt")
        );
        assert_eq!(payload_of_signature("a.txt"), None);
        // An approvals "directory" that cannot be listed is refused, never indexed as empty.
        std::fs::create_dir_all(d.path().join("hosts/pve2")).unwrap();
        std::fs::write(d.path().join("hosts/pve2/approvals"), "not a directory").unwrap();
        let broken = tree.index_plan("pve2", Inbox::Approvals);
        assert!(broken.error.is_some() && !broken.write);
        assert_eq!(
            tree.check_index("pve2", Inbox::Approvals, &broken)
                .unwrap_err()
                .code,
            "fleet_tree"
        );
        // Jobs: no `jobs/` directory, no index (the agent reads the 404 as "no jobs"); with
        // one, the same rules as approvals.
        let none = tree.index_plan("pve1", Inbox::Jobs);
        assert!(!none.write && none.names.is_empty() && none.error.is_none());
        let j = d.path().join("hosts/pve1/jobs");
        std::fs::create_dir_all(&j).unwrap();
        std::fs::write(j.join("101-snapshot-1a2b3c4d.txt"), "drover-job v1\n").unwrap();
        std::fs::write(j.join("101-snapshot-1a2b3c4d.txt.alice.sig"), "S").unwrap();
        let jobs = tree.index_plan("pve1", Inbox::Jobs);
        assert_eq!(jobs.names.len(), 2, "{jobs:?}");
        assert!(jobs.write);
        tree.write_index("pve1", Inbox::Jobs, &jobs).unwrap();
        assert!(j.join("index.json").exists());
        assert_eq!(Inbox::of_payload(b"drover-job v1\n"), Inbox::Jobs);
        assert_eq!(Inbox::of_payload(b"drover-approval v1\n"), Inbox::Approvals);
    }
}
