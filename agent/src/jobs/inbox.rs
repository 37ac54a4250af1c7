//! Where signed jobs arrive and where requests wait for a signature.
//!
//! A job travels like an approval: `NAME.txt` (the `drover-job v1` text) with `NAME.txt.sig`
//! (or `NAME.txt.<signer>.sig`) in the approvals inbox (`drover approve` puts it there), the
//! source's approvals directory, or the hub's `hosts/<host>/jobs/` (mirrored into
//! `<state_dir>/hub-jobs`). The approval code leaves job texts alone (it knows them by their
//! first line), and this module leaves approvals alone.
//!
//! Layout under the state directory: `jobs/pending/<vmid>-<kind>-<nonce>.txt` (rendered by
//! `drover job new`, waiting for a signature), `jobs/used/` (accepted: the nonce is spent),
//! `jobs/refused/` (refused: the reason is in the journal and `drover jobs`).

use std::path::{Path, PathBuf};

use gate::JobPayload;

use crate::approval::files::{self, Candidate};

/// The job directories of one agent.
#[derive(Debug, Clone)]
pub struct JobDirs {
    /// The hub's mirror: its files are the hub's to remove (never moved by the agent).
    pub mirror: PathBuf,
    pub pending: PathBuf,
    pub used: PathBuf,
    pub refused: PathBuf,
    /// Where signed jobs are looked for, in order.
    pub incoming: Vec<PathBuf>,
}

/// The directory the hub's `hosts/<host>/jobs/` is mirrored into.
pub fn hub_jobs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("hub-jobs")
}

impl JobDirs {
    pub fn new(state_dir: &Path, approval_dirs: Vec<PathBuf>) -> JobDirs {
        let base = state_dir.join("jobs");
        let mut incoming = approval_dirs;
        incoming.push(hub_jobs_dir(state_dir));
        JobDirs {
            mirror: hub_jobs_dir(state_dir),
            pending: base.join("pending"),
            used: base.join("used"),
            refused: base.join("refused"),
            incoming,
        }
    }

    /// Signed jobs waiting to be looked at (parsed or not; unverified).
    pub fn signed(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for dir in &self.incoming {
            files::visit(
                dir,
                &[],
                files::MAX_CANDIDATES,
                &mut |c| {
                    if gate::is_job_document(&c.payload) {
                        out.push(c)
                    }
                },
                &mut |_| {},
            );
        }
        out
    }

    /// Pending requests (rendered, not signed yet): (file, text).
    pub fn pending(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.pending) {
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

    /// Writes a rendered request; returns its path.
    pub fn write_pending(&self, job: &JobPayload, text: &str) -> std::io::Result<PathBuf> {
        let path = self.pending.join(format!(
            "{}-{}-{}.txt",
            job.vmid,
            job.kind.as_str().replace('_', "-"),
            &job.nonce[..8]
        ));
        files::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Whether `path` is in the hub's mirror.
    pub fn is_mirror(&self, path: &Path) -> bool {
        path.starts_with(&self.mirror)
    }

    /// Moves a job's files (and the pending request with its nonce) out of the way: into
    /// `used` or `refused`. A read-only source and the hub's mirror keep their files; the
    /// journal remembers them.
    pub fn retire(&self, c: &Candidate, to: &Path, nonce: Option<&str>) {
        if self.is_mirror(&c.payload_path) {
            self.remove_pending(nonce);
            return;
        }
        let _ = std::fs::create_dir_all(to);
        let dir = c.payload_path.parent().map(Path::to_path_buf);
        let mut moved = vec![c.payload_path.clone()];
        if let Some(d) = &dir {
            moved.extend(c.signatures.iter().map(|(n, _)| d.join(n)));
        }
        for f in moved {
            if let Some(name) = f.file_name()
                && std::fs::rename(&f, to.join(name)).is_err()
            {
                tracing::debug!(path = %f.display(), "job file left in place");
            }
        }
        self.remove_pending(nonce);
    }

    fn remove_pending(&self, nonce: Option<&str>) {
        if let Some(n) = nonce {
            for (p, text) in self.pending() {
                if JobPayload::parse(text.as_bytes()).is_ok_and(|j| j.nonce == n) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}
