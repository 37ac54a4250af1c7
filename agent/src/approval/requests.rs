//! Approvals for destructive steps: the pending request an operator signs, and the search for a
//! signed approval that the gate accepts for exactly the step planned now.
//!
//! The agent renders the request from its own planned step (`drover-approval v1`, fresh 128-bit
//! nonce, one hour by default) and keeps the same request while it is valid, so a signature an
//! operator is producing offline still matches when it arrives. An approval is only ever
//! verified against the agent's *current* step: the gate re-renders that step with the
//! approval's nonce, times, role and ticket and requires the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gate::{
    ApprovalPayload, Approved, GateContext, NonceLedger, PlannedAction, Rejection, Role, TrustStore,
};
use sha2::{Digest, Sha256};

use crate::approval::files::{self, Candidate, write_atomic};
use crate::store::Decision;

/// Default validity of a request.
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// A request closer than this to its expiry is renewed rather than offered for signing.
const RENEW_MARGIN_SECS: i64 = 300;

/// The result of looking for an approval.
pub enum Lookup {
    /// Verified; the nonce is consumed. Run the step now.
    Approved(Box<Approved>),
    /// No acceptable approval yet; the request an operator should sign is at `request`.
    Pending { request: PathBuf, new: bool },
}

/// Where approval files live and what has been seen.
pub struct Approvals {
    pub pending_dir: PathBuf,
    pub inbox_dir: PathBuf,
    pub used_dir: PathBuf,
    /// `<source>/approvals`, when the source is a directory.
    pub source_dir: Option<PathBuf>,
    pub ttl_secs: i64,
    /// Refusals already reported, by file and content, so a bad file is audited once, not
    /// every pass; kept in `reported_file` so a restart does not audit them all again.
    reported: Mutex<Reported>,
    reported_file: PathBuf,
}

/// Distinct refused files remembered (see `first_report`).
const MAX_REPORTED: usize = 4096;

/// The refusals already on record: key (hex sha256 of file name and content) → code, oldest
/// first so the bound drops the oldest.
#[derive(Default)]
struct Reported {
    codes: HashMap<String, String>,
    order: std::collections::VecDeque<String>,
    dirty: bool,
}

impl Reported {
    fn load(path: &Path) -> Reported {
        let mut r = Reported::default();
        let Ok(bytes) = files::read_capped(path, 1024 * 1024) else {
            return r;
        };
        let Ok(rows) = serde_json::from_slice::<Vec<(String, String)>>(&bytes) else {
            tracing::warn!(path = %path.display(), "ignoring an unreadable list of reported refusals");
            return r;
        };
        for (k, c) in rows.into_iter().take(MAX_REPORTED) {
            r.order.push_back(k.clone());
            r.codes.insert(k, c);
        }
        r
    }

    /// True when `key` was not yet reported with `code` (and records it).
    fn first(&mut self, key: String, code: &str) -> bool {
        if self.codes.get(&key).map(String::as_str) == Some(code) {
            return false;
        }
        if !self.codes.contains_key(&key) {
            self.order.push_back(key.clone());
        }
        self.codes.insert(key, code.to_string());
        while self.order.len() > MAX_REPORTED {
            // Bounded memory against a directory flooded with bad files: forgetting only
            // means a refusal may be audited again.
            if let Some(old) = self.order.pop_front() {
                self.codes.remove(&old);
            }
        }
        self.dirty = true;
        true
    }

    fn save(&mut self, path: &Path) {
        if !self.dirty {
            return;
        }
        let rows: Vec<(&String, &String)> = self
            .order
            .iter()
            .filter_map(|k| self.codes.get(k).map(|c| (k, c)))
            .collect();
        match serde_json::to_vec(&rows)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(path, &b))
        {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(path = %path.display(), "keeping the list of reported refusals: {e}")
            }
        }
    }
}

impl Approvals {
    pub fn new(state_dir: &Path, source_dir: Option<PathBuf>) -> Approvals {
        let base = state_dir.join("approvals");
        Approvals {
            pending_dir: base.join("pending"),
            inbox_dir: base.join("inbox"),
            used_dir: base.join("used"),
            source_dir,
            ttl_secs: DEFAULT_TTL_SECS,
            reported: Mutex::new(Reported::load(&base.join("reported.json"))),
            reported_file: base.join("reported.json"),
        }
    }

    /// The request file for a step.
    pub fn request_path(&self, action: &PlannedAction) -> PathBuf {
        self.pending_dir
            .join(format!("{}-{}.txt", action.vmid, action.op.as_str()))
    }

    /// Looks for an approval of `action`; if none is accepted, makes sure a valid request is
    /// pending. `audit` sees every decision (once per distinct file).
    ///
    /// A file is verified against `action` when it is named after the step's request
    /// (`<vmid>-<op>.txt`), carries the pending request's nonce, or names the step's guest and
    /// op; so an approval whose `guest:` line was edited is refused as the gate's order says
    /// (`binding_mismatch`), not silently skipped. Every other file is
    /// [`Approvals::report_unclaimed`]'s.
    #[allow(clippy::too_many_arguments)]
    pub fn lookup(
        &self,
        ctx: &GateContext,
        trust: &TrustStore,
        action: &PlannedAction,
        now: i64,
        ledger: &dyn NonceLedger,
        audit: &dyn Fn(Decision),
    ) -> std::io::Result<Lookup> {
        self.lookup_keeping(ctx, trust, action, now, ledger, audit, true)
            .map(|(l, _)| l)
    }

    /// Like [`Approvals::lookup`], but an accepted approval's files stay where they are and
    /// the request stays pending: for a step whose nonce is consumed only later (after its
    /// safety copy, `safety::deferred`). The caller retires the returned candidate with
    /// [`Approvals::finish`] once the nonce is consumed; if the copy fails, the same
    /// approval is found again next turn.
    #[allow(clippy::too_many_arguments)]
    pub fn lookup_deferred(
        &self,
        ctx: &GateContext,
        trust: &TrustStore,
        action: &PlannedAction,
        now: i64,
        ledger: &dyn NonceLedger,
        audit: &dyn Fn(Decision),
    ) -> std::io::Result<(Lookup, Option<Candidate>)> {
        self.lookup_keeping(ctx, trust, action, now, ledger, audit, false)
    }

    /// Retires an approval used by a deferred lookup (its nonce is now consumed).
    pub fn finish(&self, action: &PlannedAction, c: &Candidate) {
        self.retire(c);
        let _ = std::fs::remove_file(self.request_path(action));
    }

    #[allow(clippy::too_many_arguments)]
    fn lookup_keeping(
        &self,
        ctx: &GateContext,
        trust: &TrustStore,
        action: &PlannedAction,
        now: i64,
        ledger: &dyn NonceLedger,
        audit: &dyn Fn(Decision),
        retire: bool,
    ) -> std::io::Result<(Lookup, Option<Candidate>)> {
        let own_name = Self::request_name(action);
        let pending_nonce =
            files::read_capped(&self.request_path(action), files::MAX_PAYLOAD_BYTES)
                .ok()
                .and_then(|b| ApprovalPayload::parse(&b).ok())
                .map(|p| p.nonce);
        for dir in &self.candidate_dirs() {
            let (candidates, problems) =
                files::scan_preferring(dir, std::slice::from_ref(&own_name));
            for p in &problems {
                self.report_problem(p, audit);
            }
            for c in candidates {
                if crate::approval::files::is_trust_document(&c.payload)
                    || gate::is_job_document(&c.payload)
                {
                    // A signed trust rotation or job travels the same way; `trust` applies
                    // the one, `jobs` runs the other.
                    continue;
                }
                let named_for_it = c
                    .payload_path
                    .file_name()
                    .is_some_and(|n| n.to_str() == Some(own_name.as_str()));
                let for_it = match ApprovalPayload::parse(&c.payload) {
                    Ok(p) => {
                        named_for_it
                            || (p.vmid == action.vmid && p.op == action.op)
                            || pending_nonce.as_deref() == Some(p.nonce.as_str())
                    }
                    Err(_) => named_for_it,
                };
                if !for_it {
                    // Waits for its own step; refused (and audited) by `report_unclaimed` when
                    // no such step is planned.
                    continue;
                }
                let sigs: Vec<&[u8]> = c.signatures.iter().map(|(_, b)| b.as_slice()).collect();
                match gate::verify_approval(ctx, trust, action, &c.payload, &sigs, now, ledger) {
                    Ok(approved) => {
                        audit(Decision {
                            vmid: Some(action.vmid),
                            op: action.op.as_str().to_string(),
                            allowed: true,
                            code: "approved".into(),
                            message: format!(
                                "approval {} accepted (payload sha256 {})",
                                c.payload_path.display(),
                                approved.payload_sha256
                            ),
                            signers: approved
                                .signers
                                .iter()
                                .map(|s| format!("{} {}", s.principal, s.fingerprint))
                                .collect(),
                            authenticated: true,
                            source: c.payload_path.clone(),
                        });
                        if retire {
                            self.retire(&c);
                            let _ = std::fs::remove_file(self.request_path(action));
                            let _ =
                                std::fs::remove_file(Self::words_path(&self.request_path(action)));
                        }
                        return Ok((Lookup::Approved(Box::new(approved)), Some(c)));
                    }
                    Err(rejection) => self.report_once(&c, action, Some(rejection), audit),
                }
            }
        }
        self.ensure_request(ctx, action, now, ledger)
            .map(|l| (l, None))
    }

    /// The file name of a step's request (`<vmid>-<op>.txt`).
    pub fn request_name(action: &PlannedAction) -> String {
        format!("{}-{}.txt", action.vmid, action.op.as_str())
    }

    /// Refuses (logs and audits, once per file) every approval file that no planned step can
    /// use: it does not parse, or it names a guest and op with no destructive step planned and
    /// is not named after a pending request. What the payload names is an unverified claim, so
    /// the audit entry carries no guest; the claim is in its detail.
    pub fn report_unclaimed(
        &self,
        planned: &std::collections::HashSet<(u32, String)>,
        audit: &dyn Fn(Decision),
    ) {
        let pending: Vec<String> = self
            .pending()
            .into_iter()
            .filter_map(|(p, _)| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        for dir in &self.candidate_dirs() {
            files::visit(
                dir,
                &pending,
                MAX_REPORTED,
                &mut |c| self.refuse_unclaimed(&c, &pending, planned, audit),
                &mut |p| self.report_problem(&p, audit),
            );
        }
    }

    fn refuse_unclaimed(
        &self,
        c: &Candidate,
        pending: &[String],
        planned: &std::collections::HashSet<(u32, String)>,
        audit: &dyn Fn(Decision),
    ) {
        if files::is_trust_document(&c.payload) || gate::is_job_document(&c.payload) {
            return;
        }
        let named = c
            .payload_path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| pending.iter().any(|p| p == n));
        if named {
            // The pending step's lane verifies it (and reports the exact reason).
            return;
        }
        let (code, message) = match ApprovalPayload::parse(&c.payload) {
            Err(r) => (r.code.as_str().to_string(), r.message),
            Ok(p) if planned.contains(&(p.vmid, p.op.as_str().to_string())) => return,
            Ok(p) => (
                gate::RejectionCode::BindingMismatch.as_str().to_string(),
                format!(
                    "the file claims {} of CT {} (unverified), but no such destructive step is planned",
                    p.op.as_str(),
                    p.vmid
                ),
            ),
        };
        if !self.first_report(c, &code) {
            return;
        }
        tracing::warn!(
            code = code.as_str(),
            path = %c.payload_path.display(),
            "approval refused: {message}"
        );
        audit(Decision {
            vmid: None,
            op: "approval".into(),
            allowed: false,
            code,
            message,
            signers: Vec::new(),
            authenticated: false,
            source: c.payload_path.clone(),
        });
    }

    /// A file that could not be read as an approval (a FIFO, a device, too large): logged and
    /// audited once with its code.
    fn report_problem(&self, p: &files::FileProblem, audit: &dyn Fn(Decision)) {
        let name = p.path.display().to_string();
        if !self.first_report_keyed(name.as_bytes(), p.message.as_bytes(), &[], p.code) {
            return;
        }
        tracing::warn!(path = %p.path.display(), code = p.code, "approval file ignored: {}", p.message);
        audit(Decision {
            vmid: None,
            op: "approval".into(),
            allowed: false,
            code: p.code.to_string(),
            message: p.message.clone(),
            signers: Vec::new(),
            authenticated: false,
            source: p.path.clone(),
        });
    }

    /// Where signed files are looked for: the inbox, then the source's approvals directory.
    pub fn candidate_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.inbox_dir.clone()];
        if let Some(s) = &self.source_dir {
            dirs.push(s.clone());
        }
        dirs
    }

    /// True the first time a candidate (by file and content) is refused with `code`: a bad
    /// file is audited once, not on every pass nor after every restart.
    pub fn first_report(&self, c: &Candidate, code: &str) -> bool {
        let sigs: Vec<&[u8]> = c.signatures.iter().map(|(_, s)| s.as_slice()).collect();
        let name = c.payload_path.display().to_string();
        self.first_report_keyed(name.as_bytes(), &c.payload, &sigs, code)
    }

    /// As [`Approvals::first_report`], for an approval that is not a file (the socket).
    pub fn first_report_of(&self, payload: &[u8], signatures: &[&[u8]], code: &str) -> bool {
        self.first_report_keyed(b"socket", payload, signatures, code)
    }

    fn first_report_keyed(
        &self,
        origin: &[u8],
        payload: &[u8],
        signatures: &[&[u8]],
        code: &str,
    ) -> bool {
        let mut h = Sha256::new();
        for part in [origin, payload]
            .into_iter()
            .chain(signatures.iter().copied())
        {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let key = hex::encode(h.finalize());
        let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let first = seen.first(key, code);
        seen.save(&self.reported_file);
        first
    }

    /// Moves a used approval out of the way (the nonce is consumed; keeping it would only
    /// produce `replayed` refusals).
    pub fn retire(&self, c: &Candidate) {
        let _ = std::fs::create_dir_all(&self.used_dir);
        let dir = c.payload_path.parent().map(Path::to_path_buf);
        let mut files = vec![c.payload_path.clone()];
        if let Some(d) = &dir {
            files.extend(c.signatures.iter().map(|(n, _)| d.join(n)));
        }
        for f in files {
            if let Some(name) = f.file_name()
                && std::fs::rename(&f, self.used_dir.join(name)).is_err()
            {
                // Another filesystem (the source dir may be read-only): leave it.
                tracing::debug!(path = %f.display(), "used approval left in place");
            }
        }
    }

    fn report_once(
        &self,
        c: &Candidate,
        action: &PlannedAction,
        rejection: Option<Rejection>,
        audit: &dyn Fn(Decision),
    ) {
        let (code, message, authenticated) = match &rejection {
            Some(r) => (
                r.code.as_str().to_string(),
                r.message.clone(),
                r.authenticated,
            ),
            None => (
                "malformed_payload".to_string(),
                "the approval payload does not parse".to_string(),
                false,
            ),
        };
        if !self.first_report(c, &code) {
            return;
        }
        tracing::warn!(
            vmid = action.vmid,
            op = action.op.as_str(),
            code = code.as_str(),
            path = %c.payload_path.display(),
            "approval refused: {message}"
        );
        audit(Decision {
            vmid: Some(action.vmid),
            op: action.op.as_str().to_string(),
            allowed: false,
            code,
            message,
            signers: Vec::new(),
            authenticated,
            source: c.payload_path.clone(),
        });
    }

    /// Keeps the current request if it still describes `action` and is valid for a while;
    /// otherwise writes a fresh one.
    fn ensure_request(
        &self,
        ctx: &GateContext,
        action: &PlannedAction,
        now: i64,
        ledger: &dyn NonceLedger,
    ) -> std::io::Result<Lookup> {
        let path = self.request_path(action);
        if let Ok(bytes) = files::read_capped(&path, files::MAX_PAYLOAD_BYTES)
            && let Ok(p) = ApprovalPayload::parse(&bytes)
            && p.expires_at > now + RENEW_MARGIN_SECS
            // A crash between consuming an approval and running its step leaves the request
            // with a used nonce: signing it again could only ever be `replayed`.
            && !ledger.is_consumed(&p.nonce)
            && gate::render_request(
                ctx,
                action,
                &p.nonce,
                p.not_before,
                p.expires_at,
                p.role,
                p.ticket.as_deref(),
            )
            .is_ok_and(|again| again.as_bytes() == bytes.as_slice())
        {
            return Ok(Lookup::Pending {
                request: path,
                new: false,
            });
        }
        let nonce = gate::nonce_hex(rand::random::<[u8; 16]>());
        let text = gate::render_request(
            ctx,
            action,
            &nonce,
            now,
            now + self.ttl_secs,
            Role::Operational,
            None,
        )
        .map_err(|r| std::io::Error::other(format!("rendering the approval request: {r}")))?;
        write_atomic(&path, text.as_bytes())?;
        Ok(Lookup::Pending {
            request: path,
            new: true,
        })
    }

    /// Where the words about what a request's step loses are kept: beside the pending
    /// requests, in `approvals/loses/<vmid>-<op>.txt`, never in the signed bytes (and never in
    /// `pending/`, which holds exactly the requests to sign).
    pub fn words_path(request: &Path) -> PathBuf {
        let base = request
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        base.join("loses")
            .join(request.file_name().unwrap_or_default())
    }

    /// Writes (atomically) the words about what a pending request's step loses.
    pub fn describe(&self, request: &Path, words: &str) -> std::io::Result<()> {
        let path = Self::words_path(request);
        if std::fs::read_to_string(&path).is_ok_and(|w| w == words) {
            return Ok(());
        }
        // Display only, rewritten on every turn the request is pending: no fsync (a crash
        // leaves the old words or none, and the next turn writes them again).
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::write(&tmp, words.as_bytes())?;
        std::fs::rename(&tmp, &path)
    }

    /// The words about what a pending request's step loses, when the agent wrote them.
    pub fn words(request: &Path) -> Option<String> {
        files::read_capped(&Self::words_path(request), files::MAX_PAYLOAD_BYTES)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The command an operator runs to sign a request.
    pub fn sign_command(domain: &str, request: &Path) -> String {
        format!(
            "ssh-keygen -Y sign -f ~/.ssh/YOUR_OPERATOR_KEY -n destructive-op-v1@{domain} {}",
            request.display()
        )
    }

    /// Every pending request on disk (for `drover approvals` and the status report).
    pub fn pending(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.pending_dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "txt")
                    && let Ok(b) = files::read_capped(&p, files::MAX_PAYLOAD_BYTES)
                {
                    out.push((p, String::from_utf8_lossy(&b).into_owned()));
                }
            }
        }
        out.sort();
        out
    }

    /// Drops requests whose destructive step is no longer planned (the document changed, or
    /// the guest converged another way), so operators are never asked to sign stale work.
    pub fn withdraw_unplanned(&self, planned: &std::collections::HashSet<(u32, String)>) {
        // A request write cut short by a crash leaves its temp file; nobody else writes here.
        let swept = files::sweep_interrupted_writes(&self.pending_dir);
        if swept > 0 {
            tracing::info!(swept, "removed request files a crash left half-written");
        }
        for (path, _) in self.pending() {
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Some((vmid, op)) = stem.split_once('-') else {
                continue;
            };
            let Ok(vmid) = vmid.parse::<u32>() else {
                continue;
            };
            if !planned.contains(&(vmid, op.to_string())) {
                tracing::info!(
                    vmid,
                    op,
                    "withdrawing an approval request: the step is no longer planned"
                );
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(Self::words_path(&path));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A crash between consuming an approval and running its step leaves the pending request
    /// with a used nonce; the next lookup must offer a fresh request, not the used one again.
    #[test]
    fn a_request_whose_nonce_was_used_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("journal")).unwrap();
        let trust = TrustStore::parse(include_str!("../../../testdata/demo/trust")).unwrap();
        let approvals = Approvals::new(dir.path(), None);
        let ctx = GateContext {
            fleet: "demo".into(),
            host: "pve1".into(),
            domain: trust.domain.clone(),
            epoch: store.state_epoch(),
        };
        let action = PlannedAction {
            op: gate::Op::DestroyGuest,
            vmid: 701,
            guest_config_sha1: Some("a".repeat(40)),
            params: [("force", "1"), ("purge", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bind: Default::default(),
        };
        let now = crate::clock::unix_now();
        let nonce_of = |r: &Lookup| match r {
            Lookup::Pending { request, .. } => {
                ApprovalPayload::parse(&std::fs::read(request).unwrap())
                    .unwrap()
                    .nonce
            }
            Lookup::Approved(_) => panic!("nothing was signed"),
        };
        let first = approvals
            .lookup(&ctx, &trust, &action, now, &store, &|_| {})
            .unwrap();
        let n1 = nonce_of(&first);
        let again = approvals
            .lookup(&ctx, &trust, &action, now, &store, &|_| {})
            .unwrap();
        assert_eq!(nonce_of(&again), n1, "a valid request is kept");
        store
            .consume(&gate::NonceClaim {
                nonce: n1.clone(),
                payload_sha256: "0".repeat(64),
                op: "destroy_guest".into(),
                vmid: 701,
                expires_at: now + 3600,
                now,
                signer_fingerprints: vec![],
            })
            .unwrap();
        let renewed = approvals
            .lookup(&ctx, &trust, &action, now, &store, &|_| {})
            .unwrap();
        assert_ne!(nonce_of(&renewed), n1, "the used request is replaced");
    }
}
