//! The exclusive lock on `<dir>/drover.lock`: one writer per journal directory.
//!
//! The lock is an `flock` on the file, which the kernel drops when the holder dies (even by
//! SIGKILL). Such a lock belongs to the open file, and a child process inherits that open file
//! between its fork and its exec (std closes it at exec). So for that moment the lock can be
//! held by a process that is no journal's: when a journal is dropped while another thread of
//! its process spawns a child (the agent runs `ssh-keygen`, tests spawn helpers), the lock
//! outlives the drop, and an open in that moment, in this process or another, would be refused
//! for a holder that has let go.
//!
//! So a busy lock is refused at once only while the process named in the file still has the
//! lock file open, or when that cannot be seen (another user's process, no `/proc`); a lock
//! whose named holder has let go is a child's inherited copy and is waited out.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::JournalError;

/// How long a lock held only by an inherited copy is waited for. The fork-to-exec moment is
/// microseconds; the margin covers a loaded machine.
const INHERITED_WAIT: Duration = Duration::from_secs(5);

/// The held lock; the kernel releases it when the file closes (drop, exit or SIGKILL).
pub(crate) struct DirLock {
    _file: File,
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
    let deadline = Instant::now() + INHERITED_WAIT;
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.rewind();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim().to_string();
                if Instant::now() < deadline && has_let_go(&holder, &f) {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                return Err(JournalError::Locked {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(dir, "locking", e)),
        }
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    let _ = f.sync_all();
    Ok(DirLock { _file: f })
}

/// Whether the process the lock file names is seen to no longer have the lock file open (it
/// closed its journal, or it died and a child it spawned holds the lock). Anything unclear (no
/// pid, another user's process whose `/proc` entry is unreadable, no `/proc`) is "no": the
/// lock is then refused at once. (Under `hidepid=2` another user's process looks gone, which
/// costs that refusal the 5 s wait.)
fn has_let_go(holder: &str, lock_file: &File) -> bool {
    let Ok(pid) = holder.parse::<u32>() else {
        return false;
    };
    let Ok(ours) = lock_file.metadata() else {
        return false;
    };
    let (dev, ino) = (ours.dev(), ours.ino());
    let this_process = pid == std::process::id();
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        // A holder that is gone has let go; the lock is an inherited copy.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::path::Path::new("/proc/self/fd").exists();
        }
        Err(_) => return false,
    };
    for fd in fds.flatten() {
        // This process's own descriptor of the file, opened to ask, is not a holder.
        if this_process
            && fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
                == Some(lock_file.as_raw_fd())
        {
            continue;
        }
        // Only a descriptor named like the lock file is looked at further: following every
        // link would stat the holder's other files, and one on a hung network storage blocks.
        let named_like_it = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.file_name() == Some(std::ffi::OsStr::new("drover.lock")));
        if !named_like_it {
            continue;
        }
        // `metadata` follows the link to what the descriptor refers to, without opening it.
        if let Ok(m) = std::fs::metadata(fd.path())
            && m.dev() == dev
            && m.ino() == ino
        {
            return false;
        }
    }
    true
}
