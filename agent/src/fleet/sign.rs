//! Signing through OpenSSH's own `ssh-keygen -Y sign`, so the key never passes through Drover:
//! `-f` names a private key file, or a public key whose private half is in `ssh-agent` (a
//! hardware token behind the agent, a PKCS#11 provider loaded with `ssh-add -s`), or an `-sk`
//! key handle (the token asks for a touch per signature). One `ssh-keygen` run signs many
//! files, so a publish of the whole fleet unlocks the key once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::FleetError;

/// Files per `ssh-keygen` run (keeps the command line far below the kernel's limit).
const FILES_PER_RUN: usize = 512;

/// `ssh-keygen -Y sign -f KEY -n NAMESPACE FILE...`.
#[derive(Debug, Clone)]
pub struct SshKeygen {
    pub program: PathBuf,
    pub key: PathBuf,
}

impl SshKeygen {
    /// `ssh-keygen` from `PATH` (or `$DROVER_SSH_KEYGEN`) with `key`.
    pub fn new(key: &Path) -> SshKeygen {
        let program = std::env::var_os("DROVER_SSH_KEYGEN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("ssh-keygen"));
        SshKeygen {
            program,
            key: key.to_path_buf(),
        }
    }

    /// Signs every file, writing `FILE.sig` beside each (any old `.sig` is removed first:
    /// ssh-keygen would ask before overwriting). Prompts (passphrase, token touch) reach the
    /// terminal: stdin and stderr are inherited.
    pub fn sign(&self, namespace: &str, files: &[PathBuf]) -> Result<(), FleetError> {
        if !self.key.exists() {
            return Err(FleetError::SshKeygen(format!(
                "key {} does not exist (give the private key, or the public key of a key held in ssh-agent)",
                self.key.display()
            )));
        }
        for f in files {
            let _ = std::fs::remove_file(sig_path(f));
        }
        for chunk in files.chunks(FILES_PER_RUN) {
            let status = Command::new(&self.program)
                .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
                .arg(&self.key)
                .args(chunk)
                .stdin(Stdio::inherit())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
                .map_err(|e| {
                    FleetError::SshKeygen(format!("running {}: {e}", self.program.display()))
                })?;
            if !status.success() {
                return Err(FleetError::SshKeygen(format!(
                    "{} -Y sign with {} failed ({status}); its message is above",
                    self.program.display(),
                    self.key.display()
                )));
            }
        }
        for f in files {
            if !sig_path(f).exists() {
                return Err(FleetError::SshKeygen(format!(
                    "no signature was written for {}",
                    f.display()
                )));
            }
        }
        Ok(())
    }
}

/// `FILE.sig`.
pub fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// The command an operator runs to sign `files` (shell-quoted where needed).
pub fn command_line(key: &str, namespace: &str, files: &[PathBuf]) -> String {
    let mut parts = vec![
        "ssh-keygen".to_string(),
        "-Y".into(),
        "sign".into(),
        "-f".into(),
        quote(key),
        "-n".into(),
        quote(namespace),
    ];
    parts.extend(files.iter().map(|f| quote(&f.display().to_string())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@:=~,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted() {
        let c = command_line(
            "~/.ssh/id_ed25519",
            "destructive-op-v1@x.example",
            &[
                PathBuf::from("a/pve1/101-destroy_guest.txt"),
                PathBuf::from("it's"),
            ],
        );
        assert_eq!(
            c,
            "ssh-keygen -Y sign -f ~/.ssh/id_ed25519 -n destructive-op-v1@x.example a/pve1/101-destroy_guest.txt 'it'\\''s'"
        );
        assert_eq!(sig_path(Path::new("a.txt")), PathBuf::from("a.txt.sig"));
    }
}
