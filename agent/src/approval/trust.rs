//! The trust document in force (signing-gate.md §5.7, §5.11).
//!
//! - **Bootstrap**: version 1 is installed out of band as the local file (`[trust] file`).
//! - **Signed rotation** (the normal way to change keys): document N+1, signed by N's recovery
//!   quorum (never by operators: a rotation can add operator keys), travels like an approval: the
//!   inbox, `drover approve`, the socket or the hub's approvals directory. The gate's
//!   [`gate::verify_rotation`] decides; the applied document is kept in the journal, because
//!   the service cannot write `/etc` and because the *next* rotation is verified against it.
//!   Rotations apply one version at a time, in order.
//! - **Break glass**: root installing a file with a *higher* version than the document in
//!   force is out of band and accepted, but never silently: it is logged and audited as
//!   `trust_store_replaced_locally`. A file not newer than that (an old copy, a stale
//!   config-management push, an edit that kept the version) is ignored and audited as
//!   `trust_file_superseded`: versions only go up, so nothing rolls a revocation back.
//!
//! Which one is in force is decided from the journal's record (kept in the database and, so
//! that moving a damaged database aside forgets nothing, in a file beside it), not from file
//! timestamps: the record holds the hash of the file as last read, and versions only go up,
//! so "the file is unchanged", "the file is older" (any version not above the one in force)
//! and "root installed a newer document" are told apart exactly. Trust changes are audited
//! before they take effect.
//! Anything unreadable fails closed (`trust_store_invalid`): destructive steps wait, benign
//! convergence goes on.

use std::path::Path;
use std::sync::Arc;

use gate::trust::MAX_TRUST_BYTES;
use gate::{NonceLedger, TrustStore};
use sha2::{Digest, Sha256};

use crate::approval::files::{self, Candidate, is_trust_document};
use crate::approval::requests::Approvals;
use crate::store::Decision;
use crate::store::Store;

/// Audit code of a rotation that was applied.
pub const ROTATED: &str = "trust_rotated";
/// Audit code of a local file that replaced the document in force.
pub const REPLACED_LOCALLY: &str = "trust_store_replaced_locally";
/// Audit code of a local file older than the document in force (ignored).
pub const FILE_SUPERSEDED: &str = "trust_file_superseded";

/// The trust document as loaded; an invalid one blocks every destructive step and nothing else.
#[derive(Debug, Clone)]
pub enum Trust {
    Valid(Arc<TrustStore>),
    Invalid { code: &'static str, message: String },
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn invalid(message: String) -> Trust {
    Trust::Invalid {
        code: "trust_store_invalid",
        message,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, Trust> {
    files::read_capped(path, MAX_TRUST_BYTES as u64)
        .map_err(|e| invalid(format!("reading trust document {}: {e}", path.display())))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<TrustStore, Trust> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid(format!("trust document {}: not ASCII", path.display())))?;
    TrustStore::parse(text).map_err(|e| invalid(format!("trust document {}: {e}", path.display())))
}

/// The local file alone, as `drover check-config` and a first start see it.
pub fn load_file(path: &Path) -> Trust {
    match read_file(path).and_then(|b| parse(path, &b)) {
        Ok(t) => Trust::Valid(Arc::new(t)),
        Err(t) => t,
    }
}

/// What the journal says is in force, judged against the local file, without writing
/// anything (offline commands: `drover plan`, `verify-approval`, `check-config`, `trust`).
pub fn effective_read_only(path: &Path, state_dir: &Path) -> Trust {
    match open_read_only(state_dir) {
        Ok(store) => effective(path, &store),
        Err(t) => t,
    }
}

/// The journal as offline commands read it. A state directory without a journal opens as an
/// empty one (the file is all there is); a journal we cannot read may hold a rotation that
/// revoked a key in the file, so that is `trust_store_invalid`, never "the file alone".
pub fn open_read_only(state_dir: &Path) -> Result<Store, Trust> {
    Store::open_read_only(state_dir).map_err(|e| {
        invalid(format!(
            "reading the journal in {} to find the trust document in force: {e}",
            state_dir.display()
        ))
    })
}

/// How the local file relates to the journal's record of the document in force.
enum FileIs {
    /// The file as last read, or the document in force itself: keep the record.
    Current(journal::TrustRecord),
    /// A document whose version is not above the one in force (an earlier document of the
    /// chain, or an edit that kept the version): taking it would roll back a rotation,
    /// perhaps one that revoked a key. Break glass takes a *higher* version.
    Superseded {
        record: journal::TrustRecord,
        file_version: u64,
    },
    /// A newer document root installed (break glass), or the first document (no record).
    New(TrustStore),
}

fn judge(
    record: Option<journal::TrustRecord>,
    path: &Path,
    bytes: &[u8],
    file_sha: &str,
) -> Result<FileIs, Trust> {
    if let Some(r) = &record
        && (r.file_sha256 == file_sha || r.sha256 == file_sha)
    {
        return Ok(FileIs::Current(r.clone()));
    }
    let t = parse(path, bytes)?;
    Ok(match record {
        Some(r) if t.version <= r.version => FileIs::Superseded {
            record: r,
            file_version: t.version,
        },
        _ => FileIs::New(t),
    })
}

fn journal_document(r: &journal::TrustRecord) -> Trust {
    match TrustStore::parse(&r.document) {
        Ok(t) => Trust::Valid(Arc::new(t)),
        Err(e) => invalid(format!(
            "the trust document in force (v{}, from the journal): {e}",
            r.version
        )),
    }
}

/// As [`establish`] would decide, but read-only (no record is written, nothing is audited).
pub fn effective(path: &Path, store: &Store) -> Trust {
    let record = match store.trust_record() {
        Ok(r) => r,
        Err(e) => return invalid(format!("reading the trust record from the journal: {e}")),
    };
    let bytes = match read_file(path) {
        Ok(b) => b,
        Err(t) => return t,
    };
    match judge(record, path, &bytes, &sha256_hex(&bytes)) {
        Ok(FileIs::Current(r) | FileIs::Superseded { record: r, .. }) => journal_document(&r),
        Ok(FileIs::New(t)) => Trust::Valid(Arc::new(t)),
        Err(t) => t,
    }
}

/// The earliest time the clock may show for a rotation to be judged: the nonce store's
/// high-water mark and the time the document in force was applied (§5.9: a clock set back
/// must not revive a withheld rotation whose window has passed).
pub fn clock_floor(store: &Store) -> Option<i64> {
    let applied = store
        .trust_record()
        .ok()
        .flatten()
        .map(|r| r.applied_ms / 1000);
    store.clock_high_water().max(applied)
}

/// Decides the document in force when the agent starts, records it in the journal (durably,
/// before anything is verified against it) and audits a local replacement.
pub fn establish(path: &Path, store: &Store) -> Trust {
    let bytes = match read_file(path) {
        Ok(b) => b,
        // A missing or unreadable file is never papered over with the journal's copy: root
        // may have removed it on purpose.
        Err(t) => return t,
    };
    let file_sha = sha256_hex(&bytes);
    let record = match store.trust_record() {
        Ok(r) => r,
        Err(e) => {
            // Without the record a rotation (perhaps one that revoked a key) could silently
            // be rolled back to the file: fail closed.
            return invalid(format!(
                "reading the trust record from the journal: {e}; destructive steps wait until it is readable"
            ));
        }
    };
    let t = match judge(record.clone(), path, &bytes, &file_sha) {
        Err(t) => return t,
        Ok(FileIs::Current(r)) => {
            let trust = journal_document(&r);
            if r.file_sha256 != file_sha {
                // Root installed the document in force as the file too: nothing changes.
                let mut synced = r.clone();
                synced.file_sha256 = file_sha.clone();
                if let Err(e) = store.set_trust_record(&synced) {
                    // Harmless: the file still matches the record's document next time.
                    tracing::warn!("journal: recording the trust file's hash: {e}");
                }
            }
            if r.origin == "rotation" && r.sha256 != file_sha {
                tracing::info!(
                    version = r.version,
                    file = %path.display(),
                    "trust document v{} in force (a signed rotation; the file still holds an earlier version)",
                    r.version
                );
            }
            return trust;
        }
        Ok(FileIs::Superseded {
            record: r,
            file_version,
        }) => {
            let message = format!(
                "the trust file {} holds version {file_version}, not newer than the document in force (v{}); keeping v{} (taking it would roll back a rotation that may have revoked a key). To replace the document in force (break glass), install a document with version {} or higher; `drover trust` prints the current one",
                path.display(),
                r.version,
                r.version,
                r.version + 1
            );
            tracing::warn!(code = FILE_SUPERSEDED, "{message}");
            store.audit(&Decision {
                vmid: None,
                op: "trust".into(),
                allowed: false,
                code: FILE_SUPERSEDED.into(),
                message,
                signers: Vec::new(),
                authenticated: false,
                source: path.to_path_buf(),
            });
            return journal_document(&r);
        }
        Ok(FileIs::New(t)) => t,
    };
    let new = journal::TrustRecord {
        version: t.version,
        sha256: t.sha256().to_string(),
        document: t.text().to_string(),
        file_sha256: file_sha,
        origin: if record.is_some() {
            "local_replacement".into()
        } else {
            "file".into()
        },
        applied_ms: crate::clock::unix_now() * 1000,
    };
    match &record {
        None => tracing::info!(
            version = t.version,
            "trust document v{} installed from {}",
            t.version,
            path.display()
        ),
        Some(old) => {
            let message = format!(
                "the local trust file {} replaced the document in force (v{} {} -> v{} {}); this is the break-glass path, not a signed rotation",
                path.display(),
                old.version,
                old.sha256.get(..12).unwrap_or(&old.sha256),
                t.version,
                &t.sha256()[..12]
            );
            tracing::warn!(code = REPLACED_LOCALLY, "{message}");
            // Audited before it takes effect: a replacement is never in force unrecorded.
            let audited = store.audit_durable(&Decision {
                vmid: None,
                op: "trust".into(),
                allowed: true,
                code: REPLACED_LOCALLY.into(),
                message,
                signers: Vec::new(),
                authenticated: false,
                source: path.to_path_buf(),
            });
            if let Err(e) = audited {
                return invalid(format!(
                    "auditing the local replacement of the trust document: {e}; destructive steps wait"
                ));
            }
        }
    }
    if let Err(e) = store.set_trust_record(&new) {
        return invalid(format!(
            "recording the trust document in the journal: {e}; destructive steps wait"
        ));
    }
    Trust::Valid(Arc::new(t))
}

/// The `version:` a trust document claims (for ordering; the gate checks everything).
fn claimed_version(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    text.lines()
        .take(8)
        .find_map(|l| l.strip_prefix("version: "))
        .and_then(|v| v.parse().ok())
}

/// The trust document in force in a running agent: read by every destructive step, replaced
/// only at start or by a verified rotation. Rotations are serialized: two concurrent appliers
/// (a pass and a socket submission) starting from the same version could otherwise write an
/// older document last.
pub struct TrustInForce {
    current: std::sync::RwLock<Trust>,
    rotation: std::sync::Mutex<()>,
}

impl TrustInForce {
    pub fn new(trust: Trust) -> TrustInForce {
        TrustInForce {
            current: std::sync::RwLock::new(trust),
            rotation: std::sync::Mutex::new(()),
        }
    }

    pub fn get(&self) -> Trust {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, trust: Trust) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = trust;
    }

    /// Applies signed trust rotations waiting beside the approvals ([`apply_rotations`]);
    /// true when the document in force changed. `audit` makes a decision durable (false
    /// when it could not, and then nothing changes).
    pub fn rotate(
        &self,
        approvals: &Approvals,
        store: &Store,
        audit: &dyn Fn(Decision) -> bool,
    ) -> bool {
        let _one_at_a_time = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        let Trust::Valid(current) = self.get() else {
            return false;
        };
        match apply_rotations(&current, approvals, store, crate::clock::unix_now(), audit) {
            Some(next) => {
                self.set(Trust::Valid(next));
                true
            }
            None => false,
        }
    }
}

/// Applies signed rotations waiting in the approval directories, one version at a time.
/// Returns the new document when at least one was applied. Refusals are audited once per file.
pub fn apply_rotations(
    current: &Arc<TrustStore>,
    approvals: &Approvals,
    store: &Store,
    now: i64,
    audit: &dyn Fn(Decision) -> bool,
) -> Option<Arc<TrustStore>> {
    let mut current = current.clone();
    let mut applied = None;
    let clock_high_water = clock_floor(store);
    'rescan: loop {
        let mut candidates: Vec<Candidate> = approvals
            .candidate_dirs()
            .iter()
            .flat_map(|d| files::scan(d).0)
            .filter(|c| is_trust_document(&c.payload))
            .collect();
        candidates.sort_by_key(|c| claimed_version(&c.payload));
        for c in candidates {
            let claimed = claimed_version(&c.payload);
            if claimed.is_some_and(|v| v <= current.version) {
                // Applied already (or older): nothing to do with it any more.
                tracing::debug!(path = %c.payload_path.display(), "trust rotation already in force");
                approvals.retire(&c);
                continue;
            }
            let sigs: Vec<&[u8]> = c.signatures.iter().map(|(_, b)| b.as_slice()).collect();
            match gate::verify_rotation(&current, &c.payload, &sigs, now, clock_high_water) {
                Ok(next) => {
                    let next = Arc::new(next);
                    // The record carries the local file's hash on, so the next start knows
                    // the file is unchanged.
                    let previous = match store.trust_record() {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            tracing::error!(
                                "journal: no trust record to rotate from; rotation not applied"
                            );
                            break 'rescan;
                        }
                        Err(e) => {
                            tracing::error!(
                                "journal: reading the trust record: {e}; rotation not applied"
                            );
                            break 'rescan;
                        }
                    };
                    let record = journal::TrustRecord {
                        version: next.version,
                        sha256: next.sha256().to_string(),
                        document: next.text().to_string(),
                        file_sha256: previous.file_sha256,
                        origin: "rotation".into(),
                        applied_ms: now * 1000,
                    };
                    let message = format!(
                        "trust document v{} -> v{} (sha256 {}) from {}",
                        current.version,
                        next.version,
                        next.sha256(),
                        c.payload_path.display()
                    );
                    // Audited first, then recorded (durably, before use: a crash must not
                    // forget a rotation that may have revoked a key). A crash in between
                    // applies it again at the next pass, audited twice, never unaudited.
                    let audited = audit(Decision {
                        vmid: None,
                        op: "rotate_trust".into(),
                        allowed: true,
                        code: ROTATED.into(),
                        message: message.clone(),
                        signers: Vec::new(),
                        authenticated: true,
                        source: c.payload_path.clone(),
                    });
                    if !audited {
                        tracing::error!(
                            "journal: auditing trust rotation v{} failed; rotation not applied",
                            next.version
                        );
                        break 'rescan;
                    }
                    if let Err(e) = store.set_trust_record(&record) {
                        tracing::error!("journal: recording trust rotation v{}: {e}", next.version);
                        break 'rescan;
                    }
                    tracing::info!(code = ROTATED, version = next.version, "{message}");
                    approvals.retire(&c);
                    current = next.clone();
                    applied = Some(next);
                    continue 'rescan;
                }
                Err(r) => {
                    let code = r.code.as_str();
                    if approvals.first_report(&c, code) {
                        tracing::warn!(
                            code,
                            path = %c.payload_path.display(),
                            "trust rotation refused: {}",
                            r.message
                        );
                        let _ = audit(Decision {
                            vmid: None,
                            op: "rotate_trust".into(),
                            allowed: false,
                            code: code.to_string(),
                            message: r.message.clone(),
                            signers: Vec::new(),
                            authenticated: r.authenticated,
                            source: c.payload_path.clone(),
                        });
                    }
                }
            }
        }
        break;
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_documents_are_told_apart_from_approvals_by_their_first_line() {
        assert!(is_trust_document(b"drover-trust v1\nfleet: x\n"));
        assert!(!is_trust_document(b"drover-trust v10\n"));
        assert!(!is_trust_document(b"drover-approval v1\n"));
        assert!(!is_trust_document(b"drover-trust v1"));
        assert_eq!(
            claimed_version(b"drover-trust v1\nfleet: a\nversion: 7\n"),
            Some(7)
        );
        assert_eq!(claimed_version(b"drover-trust v1\nversion: x\n"), None);
    }
}
