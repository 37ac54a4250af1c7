//! `drover fleet publish TREE --key HUB_KEY --trust TRUST`: validate every host's
//! `desired.toml` with the agent's own code, refuse a revision not above the one already
//! published, sign the changed documents with the hub key in one `ssh-keygen -Y sign` run,
//! check each new signature as the agents will, write the `.sig` files and regenerate every
//! approvals index (and the jobs index of every host that has a `jobs/` directory).
//!
//! All or nothing: when any host's document is refused, nothing is signed or written, so a CI
//! job either publishes the commit or fails naming every problem. `--dry-run` stops after the
//! checks and reports what would change, host by host.

use std::path::PathBuf;

use gate::{Role, TrustStore};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::sign::{SshKeygen, sig_path};
use super::tree::{Inbox, IndexPlan, Published, Tree};
use super::{FleetError, Refusal};
use crate::approval::files::read_capped;
use crate::desired::hub::{self, MAX_SIGNATURE_BYTES};

/// What publish does with one host's document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new revision: sign it.
    Sign,
    /// The published bytes again, with a signature that is missing or no longer accepted
    /// (the hub key changed, or its validity ended): sign the same bytes again.
    Resign,
    /// Signed and recorded as it is.
    Unchanged,
    /// Refused (see `refusal`); nothing is written for any host.
    Refused,
    /// The host directory has no `desired.toml`.
    NoDocument,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Sign => "sign",
            Action::Resign => "resign",
            Action::Unchanged => "unchanged",
            Action::Refused => "refused",
            Action::NoDocument => "no_document",
        }
    }
}

/// One host's line of the outcome.
#[derive(Debug, Clone, Serialize)]
pub struct HostChange {
    pub host: String,
    pub action: Action,
    /// The revision recorded by the last publish.
    pub published_revision: Option<u64>,
    /// The revision of the document in the tree.
    pub revision: Option<u64>,
    pub guests: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    pub index: IndexPlan,
    /// `jobs/index.json`, for a host with a `jobs/` directory.
    pub jobs_index: IndexPlan,
    /// Things worth knowing that change nothing (a report showing a higher revision, ...).
    pub notes: Vec<String>,
    #[serde(skip)]
    bytes: Vec<u8>,
    #[serde(skip)]
    sha256: String,
}

/// The outcome of a publish (or of a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub dry_run: bool,
    pub namespace: String,
    pub hosts: Vec<HostChange>,
    /// Directories under `hosts/` the agents could never ask for (bad host names).
    pub ignored_dirs: Vec<String>,
    /// True when something was (or, for a dry run, would be) written.
    pub changes: bool,
    /// True when nothing was written because of a refusal.
    pub refused: bool,
    pub warnings: Vec<String>,
}

impl Outcome {
    pub fn count(&self, action: Action) -> usize {
        self.hosts.iter().filter(|h| h.action == action).count()
    }
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct Options {
    /// The hub key for `ssh-keygen -f` (private key file, or a public key held in ssh-agent).
    pub key: PathBuf,
    /// The trust document the agents use: its domain gives the namespace, its hub key checks
    /// every new signature.
    pub trust: TrustStore,
    pub dry_run: bool,
    pub now: i64,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Runs a publish over the whole tree.
pub fn publish(tree: &Tree, opts: &Options) -> Result<Outcome, FleetError> {
    let namespace = Role::Hub.namespace(&opts.trust.domain);
    let hub_key = !opts.trust.principals(Role::Hub).is_empty();
    let (hosts, ignored_dirs) = tree.hosts()?;
    let mut out = Outcome {
        dry_run: opts.dry_run,
        namespace: namespace.clone(),
        hosts: Vec::with_capacity(hosts.len()),
        ignored_dirs,
        changes: false,
        refused: false,
        warnings: Vec::new(),
    };
    if !hub_key {
        out.warnings.push(format!(
            "the trust document lists no {namespace} key: agents accept documents unsigned and new signatures cannot be checked"
        ));
    }
    for host in &hosts {
        out.hosts
            .push(plan_host(tree, host, &opts.trust, hub_key, opts.now));
    }
    out.refused = out.hosts.iter().any(|h| h.action == Action::Refused);
    out.changes = out.hosts.iter().any(|h| {
        matches!(h.action, Action::Sign | Action::Resign)
            || h.index.write
            || h.jobs_index.write
            || (h.action == Action::Unchanged && tree.record(&h.host).ok().flatten().is_none())
    });
    if out.refused || opts.dry_run {
        return Ok(out);
    }

    // Sign copies in a private directory: the tree only ever sees finished `.sig` files.
    let staging = tempfile::tempdir().map_err(|e| FleetError::Write {
        path: std::env::temp_dir().display().to_string(),
        message: format!("creating a staging directory: {e}"),
    })?;
    let mut staged: Vec<(usize, PathBuf)> = Vec::new();
    for (i, h) in out.hosts.iter().enumerate() {
        if matches!(h.action, Action::Sign | Action::Resign) {
            let dir = staging.path().join(&h.host);
            let file = dir.join("desired.toml");
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&file, &h.bytes))
                .map_err(|e| FleetError::Write {
                    path: file.display().to_string(),
                    message: e.to_string().to_lowercase(),
                })?;
            staged.push((i, file));
        }
    }
    let mut signatures: Vec<(usize, Vec<u8>)> = Vec::new();
    if !staged.is_empty() {
        let files: Vec<PathBuf> = staged.iter().map(|(_, f)| f.clone()).collect();
        SshKeygen::new(&opts.key).sign(&namespace, &files)?;
        for (i, file) in &staged {
            let sig = read_capped(&sig_path(file), MAX_SIGNATURE_BYTES as u64)
                .map_err(|m| FleetError::SshKeygen(format!("reading its signature: {m}")))?;
            let h = &mut out.hosts[*i];
            if hub_key {
                let name = tree.name_of(&h.host, "desired.toml");
                if let Err(e) =
                    hub::verify_document_signature(&opts.trust, &name, &h.bytes, &sig, opts.now)
                {
                    // The wrong key, or one the trust document does not list for the hub:
                    // the agents would refuse the document.
                    h.action = Action::Refused;
                    h.refusal = Some(Refusal::from_hub(&e));
                }
            }
            signatures.push((*i, sig));
        }
    }
    // A document edited while ssh-keygen ran would be published with a signature over the
    // old bytes: check every file again before writing anything.
    for (i, _) in &signatures {
        let h = &mut out.hosts[*i];
        let now = std::fs::read(tree.document(&h.host)).unwrap_or_default();
        if sha256_hex(&now) != h.sha256 {
            h.action = Action::Refused;
            h.refusal = Some(Refusal::new(
                "desired_changed_while_publishing",
                format!(
                    "{} changed while it was being signed; run publish again",
                    tree.name_of(&h.host, "desired.toml")
                ),
            ));
        }
    }
    if out.hosts.iter().any(|h| h.action == Action::Refused) {
        out.refused = true;
        out.changes = false;
        return Ok(out);
    }
    let sig_of: std::collections::HashMap<usize, &Vec<u8>> =
        signatures.iter().map(|(i, s)| (*i, s)).collect();
    // Hosts are independent: their files are written by a few threads at once, so the
    // durable writes (fsync of each file and its directory) overlap instead of queueing.
    let work: Vec<(usize, &HostChange)> = out.hosts.iter().enumerate().collect();
    let workers = WRITERS.min(work.len().max(1));
    let per = work.len().div_ceil(workers).max(1);
    let results: Vec<Result<(), FleetError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks(per)
            .map(|chunk| {
                let sig_of = &sig_of;
                scope.spawn(move || -> Result<(), FleetError> {
                    for (i, h) in chunk {
                        write_host(tree, h, sig_of.get(i).copied(), opts.now)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(FleetError::Write {
                        path: tree.root().display().to_string(),
                        message: "a writer thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(out)
}

/// Threads writing host files at once.
const WRITERS: usize = 8;

/// One host's files: the signature first, then the record, then the approvals index.
fn write_host(
    tree: &Tree,
    h: &HostChange,
    sig: Option<&Vec<u8>>,
    now: i64,
) -> Result<(), FleetError> {
    if let Some(sig) = sig {
        super::tree::write_if_changed(&tree.signature(&h.host), sig)?;
    }
    if matches!(h.action, Action::Sign | Action::Resign | Action::Unchanged)
        && let Some(revision) = h.revision
    {
        let keep = tree
            .record(&h.host)
            .ok()
            .flatten()
            .filter(|r| r.sha256 == h.sha256);
        let record = keep.unwrap_or(Published {
            revision,
            sha256: h.sha256.clone(),
            published_unix: now,
        });
        tree.write_record(&h.host, &record)?;
    }
    if h.index.write {
        tree.write_index(&h.host, Inbox::Approvals, &h.index)?;
    }
    if h.jobs_index.write {
        tree.write_index(&h.host, Inbox::Jobs, &h.jobs_index)?;
    }
    Ok(())
}

/// Decides one host without writing anything.
fn plan_host(tree: &Tree, host: &str, trust: &TrustStore, hub_key: bool, now: i64) -> HostChange {
    let mut h = HostChange {
        host: host.to_string(),
        action: Action::NoDocument,
        published_revision: None,
        revision: None,
        guests: None,
        refusal: None,
        index: tree.index_plan(host, Inbox::Approvals),
        jobs_index: tree.index_plan(host, Inbox::Jobs),
        notes: Vec::new(),
        bytes: Vec::new(),
        sha256: String::new(),
    };
    for i in &h.index.ignored {
        h.notes.push(format!("approvals/{i} (not listed)"));
    }
    for i in &h.jobs_index.ignored {
        h.notes.push(format!("jobs/{i} (not listed)"));
    }
    if h.jobs_index.write {
        h.notes.push(format!(
            "jobs index: +{} -{}",
            h.jobs_index.added.len(),
            h.jobs_index.removed.len()
        ));
    }
    let checked = tree
        .check_index(host, Inbox::Approvals, &h.index)
        .and_then(|()| tree.check_index(host, Inbox::Jobs, &h.jobs_index));
    if let Err(r) = checked {
        h.action = Action::Refused;
        h.refusal = Some(r);
        return h;
    }
    let refuse = |h: &mut HostChange, r: Refusal| {
        h.action = Action::Refused;
        h.refusal = Some(r);
    };
    let record = match tree.record(host) {
        Ok(r) => r,
        Err(m) => {
            refuse(&mut h, Refusal::new("fleet_record_invalid", m));
            return h;
        }
    };
    h.published_revision = record.as_ref().map(|r| r.revision);
    let path = tree.document(host);
    if !path.exists() {
        return h;
    }
    let name = tree.name_of(host, "desired.toml");
    let cap = crate::desired::MAX_DOCUMENT_BYTES;
    let bytes = match read_capped(&path, cap as u64) {
        Ok(b) => b,
        Err(m) if m.starts_with("larger than") => {
            let e = hub::HubError::TooLarge {
                url: name.clone(),
                cap,
            };
            refuse(&mut h, Refusal::from_hub(&e));
            return h;
        }
        Err(m) => {
            refuse(
                &mut h,
                Refusal::new("fleet_tree", format!("{}: {m}", path.display())),
            );
            return h;
        }
    };
    // The agent's own checks, with the agent's codes.
    let doc = match hub::accept_document(&name, &bytes, cap, None) {
        Ok(d) => d,
        Err(e) => {
            refuse(&mut h, Refusal::from_hub(&e));
            return h;
        }
    };
    h.revision = Some(doc.revision);
    h.guests = Some(doc.guests.len());
    h.sha256 = sha256_hex(&bytes);
    h.bytes = bytes;
    let current_sig = signature_state(tree, host, &name, &h.bytes, trust, hub_key, now);
    h.action = match &record {
        Some(r) if r.sha256 == h.sha256 => match current_sig {
            Ok(()) => Action::Unchanged,
            Err(why) => {
                h.notes.push(format!("signing again: {why}"));
                Action::Resign
            }
        },
        Some(r) => {
            if let Err(e) = hub::accept_document(&name, &h.bytes, cap, Some(r.revision)) {
                // Lower than published: the agents would refuse it as a rollback.
                refuse(&mut h, Refusal::from_hub(&e));
                return h;
            }
            if doc.revision == r.revision {
                refuse(
                    &mut h,
                    Refusal::new(
                        "desired_revision_not_above",
                        format!(
                            "{name}: revision {} is already published with other content; raise `revision` above {}",
                            doc.revision, r.revision
                        ),
                    ),
                );
                return h;
            }
            Action::Sign
        }
        // Never published with this tool: adopt a signature the agents accept as it is.
        None if current_sig.is_ok() && tree.signature(host).exists() => Action::Unchanged,
        None => Action::Sign,
    };
    if let Some(Ok(report)) = tree.report(host)
        && let Some(applied) = report.revision_applied
        && applied > doc.revision
    {
        h.notes.push(format!(
            "the agent reports revision {applied} applied, above {}: it will refuse this document as desired_rollback",
            doc.revision
        ));
    }
    h
}

/// Whether the `.sig` in the tree is one the agents accept for `bytes`.
fn signature_state(
    tree: &Tree,
    host: &str,
    name: &str,
    bytes: &[u8],
    trust: &TrustStore,
    hub_key: bool,
    now: i64,
) -> Result<(), String> {
    let path = tree.signature(host);
    let sig = read_capped(&path, MAX_SIGNATURE_BYTES as u64)
        .map_err(|m| format!("desired.toml.sig: {m}"))?;
    if !hub_key {
        return Ok(());
    }
    hub::verify_document_signature(trust, name, bytes, &sig, now)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "the current signature is refused ({})",
                e.gate_code().unwrap_or(e.code())
            )
        })
}
