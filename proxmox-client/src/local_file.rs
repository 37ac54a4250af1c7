//! Reading the local files the client needs (token secret, certificates) without ever
//! blocking: a FIFO or device where a file belongs is refused, and the size is capped before
//! anything is allocated. (The agent has the same rule for its own files; this crate depends on
//! no other Drover crate.)

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest certificate or CA bundle read.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// Largest token secret file read (a PVE secret is a 36-character UUID).
pub const MAX_SECRET_BYTES: u64 = 4096;

/// Why a file was not read; `NotFound` is separate so callers can try the next candidate.
#[derive(Debug)]
pub(crate) enum ReadError {
    NotFound,
    Other(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotFound => f.write_str("no such file or directory"),
            ReadError::Other(m) => f.write_str(m),
        }
    }
}

/// Opens non-blocking, checks the opened descriptor is a regular file, reads at most `cap`.
pub(crate) fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Other(e.to_string().to_lowercase()),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| ReadError::Other(e.to_string().to_lowercase()))?;
    if !meta.is_file() {
        return Err(ReadError::Other(
            "not a regular file (a directory, FIFO or device); refusing to read it".into(),
        ));
    }
    if meta.len() > cap {
        return Err(ReadError::Other(format!("larger than {cap} bytes")));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::Other(e.to_string().to_lowercase()))?;
    if buf.len() as u64 > cap {
        return Err(ReadError::Other(format!("larger than {cap} bytes")));
    }
    Ok(buf)
}
