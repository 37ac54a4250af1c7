//! Approval files on disk: pending requests the agent writes, and signed approvals it picks up.
//!
//! Layout (all under the state directory unless noted):
//! - `approvals/pending/<vmid>-<op>.txt`: the request text an operator signs with
//!   `ssh-keygen -Y sign`; kept unchanged while it is valid so a signature made from it matches.
//! - `approvals/inbox/` and `<source>/approvals/`: `NAME.txt` with `NAME.txt.sig` (one signer)
//!   or `NAME.txt.<signer>.sig` (several signers).
//!
//! Files are only ever read with a size cap, and written atomically (temp file + rename in the
//! same directory), so a half-written file is never picked up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest payload read from disk: a signed trust rotation travels the same way as an approval
/// and may be as large as a trust document (the gate refuses approvals over 4 KiB anyway).
pub const MAX_PAYLOAD_BYTES: u64 = gate::trust::MAX_TRUST_BYTES as u64;
/// Largest signature file read from disk.
pub const MAX_SIGNATURE_BYTES: u64 = 16 * 1024;
/// At most this many signatures per approval are read.
pub const MAX_SIGNATURES: usize = 8;
/// At most this many candidate approvals are read per directory per pass.
pub const MAX_CANDIDATES: usize = 256;

/// A file holding a trust document rather than an approval (decided by its first line).
pub fn is_trust_document(payload: &[u8]) -> bool {
    payload.starts_with(gate::trust::TRUST_MAGIC.as_bytes())
        && payload
            .get(gate::trust::TRUST_MAGIC.len())
            .is_some_and(|b| *b == b'\n')
}

/// A signed approval found on disk, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub payload_path: PathBuf,
    pub payload: Vec<u8>,
    /// (file name, armored signature bytes).
    pub signatures: Vec<(String, Vec<u8>)>,
}

/// A problem with one file; reported, never fatal for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub path: PathBuf,
    /// Stable code (`not_a_regular_file`, `file_too_large`, `file_unreadable`, ...).
    pub code: &'static str,
    pub message: String,
}

impl FileProblem {
    fn of(path: PathBuf, e: crate::local_file::LocalFileError) -> FileProblem {
        FileProblem {
            path,
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// Reads a regular file with a size cap; a larger file is refused without reading it, and a
/// FIFO or device is refused without blocking (see `local_file`).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    crate::local_file::read_regular(path, cap).map_err(|e| match e {
        crate::local_file::LocalFileError::NotRegular { kind, .. } => {
            format!("not a regular file (it is {kind})")
        }
        crate::local_file::LocalFileError::TooLarge { cap, .. } => {
            format!("larger than {cap} bytes")
        }
        crate::local_file::LocalFileError::NotFound { .. } => "cannot open: not found".into(),
        crate::local_file::LocalFileError::Io { message, .. } => message,
    })
}

/// Finds every `NAME.txt` in `dir` that has at least one signature beside it.
pub fn scan(dir: &Path) -> (Vec<Candidate>, Vec<FileProblem>) {
    scan_preferring(dir, &[])
}

/// As [`scan`], but the payloads named in `first` (the pending requests' file names) are read
/// before any other and do not count against [`MAX_CANDIDATES`]: however many junk files sort
/// before it, the approval an operator signed for a pending request is always found.
pub fn scan_preferring(dir: &Path, first: &[String]) -> (Vec<Candidate>, Vec<FileProblem>) {
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    visit(dir, first, MAX_CANDIDATES, &mut |c| out.push(c), &mut |p| {
        problems.push(p)
    });
    (out, problems)
}

/// Reads the candidates of `dir` one at a time (the payloads named in `first`, then at most
/// `limit` others in name order), so a caller that looks at every file holds one in memory.
pub fn visit(
    dir: &Path,
    first: &[String],
    limit: usize,
    on_candidate: &mut dyn FnMut(Candidate),
    on_problem: &mut dyn FnMut(FileProblem),
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            on_problem(FileProblem {
                path: dir.to_path_buf(),
                code: "approvals_unreadable",
                message: format!("cannot list approvals: {e}"),
            });
            return;
        }
    };
    // Names only: the type is checked on the opened file (a FIFO or device is refused there,
    // without blocking), so a race between listing and opening changes nothing.
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut sigs_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &names {
        if let Some(stem) = n.strip_suffix(".sig") {
            // NAME.txt.sig or NAME.txt.<signer>.sig
            let payload = if stem.ends_with(".txt") {
                stem.to_string()
            } else if let Some(idx) = stem.rfind(".txt.") {
                stem[..idx + 4].to_string()
            } else {
                continue;
            };
            sigs_of.entry(payload).or_default().push(n.clone());
        }
    }
    let mut ordered: Vec<(String, Vec<String>)> = Vec::new();
    for f in first {
        if let Some(sigs) = sigs_of.remove(f) {
            ordered.push((f.clone(), sigs));
        }
    }
    ordered.extend(sigs_of.into_iter().take(limit));
    for (payload_name, sig_names) in ordered {
        let payload_path = dir.join(&payload_name);
        let payload = match crate::local_file::read_regular(&payload_path, MAX_PAYLOAD_BYTES) {
            Ok(p) => p,
            Err(e) => {
                on_problem(FileProblem::of(payload_path, e));
                continue;
            }
        };
        let mut signatures = Vec::new();
        for s in sig_names.into_iter().take(MAX_SIGNATURES) {
            let p = dir.join(&s);
            match crate::local_file::read_regular(&p, MAX_SIGNATURE_BYTES) {
                Ok(b) => signatures.push((s, b)),
                Err(e) => on_problem(FileProblem::of(p, e)),
            }
        }
        if !signatures.is_empty() {
            on_candidate(Candidate {
                payload_path,
                payload,
                signatures,
            });
        }
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes what `write_atomic` calls of another process left behind in `dir` (`.NAME.tmp-PID`
/// of a process killed between create and rename). Only for directories this process alone
/// writes (the pending requests: one agent per state directory); returns how many were removed.
pub fn sweep_interrupted_writes(dir: &Path) -> usize {
    let mine = format!(".tmp-{}", std::process::id());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && name.contains(".tmp-")
            && !name.ends_with(&mine)
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Copies an approval and its signatures into `inbox` atomically (`drover approve` without a
/// running daemon). Signatures are written first, so the payload appears only with them.
pub fn copy_into_inbox(
    inbox: &Path,
    payload_file: &Path,
    signature_files: &[PathBuf],
) -> Result<PathBuf, String> {
    let payload = read_capped(payload_file, MAX_PAYLOAD_BYTES)
        .map_err(|e| format!("reading {}: {e}", payload_file.display()))?;
    if signature_files.is_empty() {
        return Err("at least one signature file is needed".into());
    }
    if signature_files.len() > MAX_SIGNATURES {
        return Err(format!("at most {MAX_SIGNATURES} signatures are accepted"));
    }
    let stem = payload_file
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".txt").unwrap_or(n).to_string())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .ok_or_else(|| format!("{} has no usable file name", payload_file.display()))?;
    let target = inbox.join(format!("{stem}.txt"));
    for (i, s) in signature_files.iter().enumerate() {
        let sig = read_capped(s, MAX_SIGNATURE_BYTES)
            .map_err(|e| format!("reading {}: {e}", s.display()))?;
        let name = if signature_files.len() == 1 {
            format!("{stem}.txt.sig")
        } else {
            format!("{stem}.txt.signer{}.sig", i + 1)
        };
        write_atomic(&inbox.join(name), &sig).map_err(|e| format!("writing inbox: {e}"))?;
    }
    write_atomic(&target, &payload).map_err(|e| format!("writing inbox: {e}"))?;
    Ok(target)
}

/// Gives `dirs` and the files in the last of them to the owner of `state_dir`, so that files
/// root writes there (`sudo drover approve` while the service is stopped) can be read and
/// retired by the service user. Best effort: without the right to chown, nothing changes.
pub fn give_to_state_owner(state_dir: &Path, dirs: &[&Path]) {
    use std::os::unix::fs::MetadataExt;
    let Ok(owner) = std::fs::metadata(state_dir) else {
        return;
    };
    let (uid, gid) = (owner.uid(), owner.gid());
    let mut paths: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    if let Some(last) = dirs.last()
        && let Ok(entries) = std::fs::read_dir(last)
    {
        paths.extend(entries.flatten().map(|e| e.path()));
    }
    for p in paths {
        // symlink_metadata: never follow a link planted in the directory.
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.file_type().is_symlink() && (m.uid() != uid || m.gid() != gid) => {
                if let Err(e) = std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
                    tracing::debug!(path = %p.display(), "leaving the owner as it is: {e}");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scan_pairs_payloads_with_one_or_several_signatures() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("a.txt"), b"A").unwrap();
        std::fs::write(p.join("a.txt.sig"), b"SA").unwrap();
        std::fs::write(p.join("b.txt"), b"B").unwrap();
        std::fs::write(p.join("b.txt.alice.sig"), b"S1").unwrap();
        std::fs::write(p.join("b.txt.bob.sig"), b"S2").unwrap();
        std::fs::write(p.join("unsigned.txt"), b"U").unwrap();
        std::fs::write(p.join("orphan.txt.sig"), b"O").unwrap();
        let (c, problems) = scan(p);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].payload, b"A");
        assert_eq!(c[1].signatures.len(), 2);
        assert_eq!(
            problems.len(),
            1,
            "the orphan signature's payload is missing"
        );
    }

    #[test]
    fn oversized_files_are_refused_without_reading_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(
            p.join("big.txt"),
            vec![b'x'; MAX_PAYLOAD_BYTES as usize + 1],
        )
        .unwrap();
        std::fs::write(p.join("big.txt.sig"), b"S").unwrap();
        let (c, problems) = scan(p);
        assert!(c.is_empty());
        assert!(problems[0].message.contains("larger than"));
    }

    #[test]
    fn interrupted_writes_of_other_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".701-destroy_guest.txt.tmp-1"), "half").unwrap();
        let mine = format!(".702-adopt.txt.tmp-{}", std::process::id());
        std::fs::write(d.join(&mine), "in progress").unwrap();
        std::fs::write(d.join("701-destroy_guest.txt"), "kept").unwrap();
        assert_eq!(sweep_interrupted_writes(d), 1);
        assert!(d.join(&mine).exists() && d.join("701-destroy_guest.txt").exists());
        assert!(!d.join(".701-destroy_guest.txt.tmp-1").exists());
    }

    #[test]
    fn approve_copies_atomically_into_the_inbox() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("101-destroy_guest.txt"), b"P").unwrap();
        std::fs::write(src.join("x.sig"), b"S").unwrap();
        let inbox = d.path().join("inbox");
        let t = copy_into_inbox(
            &inbox,
            &src.join("101-destroy_guest.txt"),
            &[src.join("x.sig")],
        )
        .unwrap();
        assert_eq!(std::fs::read(&t).unwrap(), b"P");
        let (c, _) = scan(&inbox);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].signatures[0].1, b"S");
        assert!(copy_into_inbox(&inbox, &src.join("missing.txt"), &[src.join("x.sig")]).is_err());
    }
}
