//! The exclusive lock on `<dir>/drover.lock`: one writer per journal directory.
//!
//! The lock is an `flock` on the file. Such a lock belongs to the open file, and a child
//! process inherits that open file between its fork and its exec (std closes it at exec).
//! So when this process drops its journal while another of its threads is spawning a child
//! (the agent runs `ssh-keygen`, tests spawn helpers), the lock outlives the drop by that
//! moment, and a reopen in the same moment would see a second holder that does not exist.
//!
//! A busy lock whose file names this process, held by no journal this process has open, is
//! such a child and is waited out. Any other busy lock is refused at once: another process,
//! or a second open in this one.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::JournalError;

/// How long a lock held only by a child of this process between fork and exec is waited for.
/// That moment is microseconds; the margin covers a loaded machine.
const CHILD_WINDOW: Duration = Duration::from_secs(5);

/// Lock files (device, inode) this process holds through an open journal.
static HELD: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());

fn held() -> std::sync::MutexGuard<'static, BTreeSet<(u64, u64)>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// The held lock; released when dropped.
pub(crate) struct DirLock {
    key: (u64, u64),
    /// Declared last: the file closes (releasing the lock) after `drop` has forgotten `key`,
    /// so a reopen that finds the lock busy in between waits instead of being refused.
    _file: File,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        held().remove(&self.key);
    }
}

fn io(dir: &Path, context: &str, e: std::io::Error) -> JournalError {
    JournalError::Io {
        dir: dir.to_path_buf(),
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Takes the lock of `dir`, or fails with `Locked` naming the holder's pid.
pub(crate) fn take(dir: &Path) -> Result<DirLock, JournalError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("drover.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io(dir, "opening the lock file", e))?;
    let meta = f
        .metadata()
        .map_err(|e| io(dir, "reading the lock file", e))?;
    let key = (meta.dev(), meta.ino());
    let me = std::process::id().to_string();
    let deadline = Instant::now() + CHILD_WINDOW;
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.rewind();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                let a_child_of_ours = holder == me && !held().contains(&key);
                if a_child_of_ours && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                return Err(JournalError::Locked {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(dir, "locking", e)),
        }
    }
    held().insert(key);
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{me}");
    let _ = f.sync_all();
    Ok(DirLock { key, _file: f })
}
