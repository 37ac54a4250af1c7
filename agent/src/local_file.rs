//! Reading local files whose type and size the agent does not control (the config, the desired
//! document, the token secret, approvals, the trust document).
//!
//! Anyone who can write a directory the agent reads can put a FIFO, a device or a directory
//! where a file belongs. A plain `open` of a FIFO blocks until a writer appears, and reading
//! `/dev/zero` never ends, so one such file would stall an async worker (and with it the
//! control socket and SIGTERM). Here every open is non-blocking, the *opened* descriptor's type
//! is checked (no race between a check and the open), and the size cap is applied before
//! anything is allocated.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a local file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LocalFileError {
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: not a regular file (it is {kind}); refusing to read it")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path}: larger than {cap} bytes")]
    TooLarge { path: String, cap: u64 },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl LocalFileError {
    /// Stable code for refusals and audits.
    pub fn code(&self) -> &'static str {
        match self {
            LocalFileError::NotFound { .. } => "file_not_found",
            LocalFileError::NotRegular { .. } => "not_a_regular_file",
            LocalFileError::TooLarge { .. } => "file_too_large",
            LocalFileError::Io { .. } => "file_unreadable",
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, LocalFileError::NotFound { .. })
    }
}

/// What a non-regular file is, in words.
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Opens `path` for reading without blocking and checks that the descriptor is a regular
/// file. Symlinks are followed (operators link configs), but the type checked is the target's.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), LocalFileError> {
    let name = || path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LocalFileError::NotFound { path: name() },
            _ => LocalFileError::Io {
                path: name(),
                message: format!("cannot open: {}", e.to_string().to_lowercase()),
            },
        })?;
    let meta = file.metadata().map_err(|e| LocalFileError::Io {
        path: name(),
        message: format!("cannot stat: {e}"),
    })?;
    if !meta.file_type().is_file() {
        return Err(LocalFileError::NotRegular {
            path: name(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok((file, meta))
}

/// Reads a regular file of at most `cap` bytes (see the module documentation).
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, LocalFileError> {
    let (file, meta) = open_regular(path)?;
    let name = || path.display().to_string();
    if meta.len() > cap {
        return Err(LocalFileError::TooLarge { path: name(), cap });
    }
    // The file may grow between fstat and read: still never more than cap + 1 bytes.
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| LocalFileError::Io {
            path: name(),
            message: format!("cannot read: {e}"),
        })?;
    if buf.len() as u64 > cap {
        return Err(LocalFileError::TooLarge { path: name(), cap });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"hello");
        assert_eq!(read_regular(&f, 4).unwrap_err().code(), "file_too_large");
        assert_eq!(
            read_regular(d.path(), 100).unwrap_err().code(),
            "not_a_regular_file"
        );
        assert_eq!(
            read_regular(Path::new("/dev/zero"), 100)
                .unwrap_err()
                .code(),
            "not_a_regular_file"
        );
        assert!(
            read_regular(&d.path().join("missing"), 1)
                .unwrap_err()
                .is_not_found()
        );
        let fifo = d.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = read_regular(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
    }
}
