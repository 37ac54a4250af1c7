//! `[safety]` in `drover.toml`: where safety copies go and how long they are kept
//! (`safety-nets.md` §6.4). Strict like the rest of the config: unknown keys are errors, and
//! there is no default storage, because vzdump's own default (`local`) is rarely a place a copy
//! should live and a silent fallback would hide that destructive steps are unprotected.

use std::time::Duration;

use serde::Deserialize;

/// The keys as written (validated by [`SafetyPolicy::from_raw`]).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSafety {
    pub storage: Option<String>,
    pub keep_per_guest: Option<u32>,
    pub require_hash: Option<bool>,
    pub min_free_ratio: Option<f64>,
    pub lockwait_min: Option<u32>,
    pub compress: Option<String>,
    pub destroy_grace: Option<String>,
    pub restore_grace: Option<String>,
    pub rollback_grace: Option<String>,
    pub shrink_grace: Option<String>,
    pub detach_grace: Option<String>,
}

/// vzdump's `compress` for safety copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    Zstd,
    Gzip,
    None,
}

/// The validated `[safety]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyPolicy {
    /// The PVE storage (content `backup`) for vzdump copies. `None`: destructive steps that
    /// need a copy are refused (`safety_storage_unset`).
    pub storage: Option<String>,
    /// Drover's protected copies per guest at most; stays below PVE's
    /// `max-protected-backups` (5 for a token without `Datastore.Allocate`).
    pub keep_per_guest: u32,
    /// Refuse a copy whose archive the agent cannot read and hash (file storages).
    pub require_hash: bool,
    /// The storage must have `estimate × ratio` bytes free before a copy starts.
    pub min_free_ratio: f64,
    /// Minutes vzdump waits for the node's global backup lock (PVE's default is 180).
    pub lockwait_min: u32,
    pub compress: Compress,
    pub destroy_grace: Duration,
    pub restore_grace: Duration,
    pub rollback_grace: Duration,
    pub shrink_grace: Duration,
    /// A detached mount point's volume is deleted no earlier than this after the detach.
    pub detach_grace: Duration,
}

/// PVE's `max-protected-backups` default for a caller without `Datastore.Allocate`.
pub const PVE_PROTECTED_CAP: u32 = 5;

const DAY: u64 = 24 * 3600;

impl Default for SafetyPolicy {
    fn default() -> Self {
        SafetyPolicy {
            storage: None,
            keep_per_guest: 3,
            require_hash: true,
            min_free_ratio: 1.2,
            lockwait_min: 10,
            compress: Compress::Zstd,
            destroy_grace: Duration::from_secs(14 * DAY),
            restore_grace: Duration::from_secs(7 * DAY),
            rollback_grace: Duration::from_secs(3 * DAY),
            shrink_grace: Duration::from_secs(7 * DAY),
            detach_grace: Duration::from_secs(14 * DAY),
        }
    }
}

/// PVE's storage id rule (`pve-storage-id`: `[a-z][a-z0-9\-\_\.]*[a-z0-9]`).
pub fn is_storage_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(c))
        && (b.len() == 1 || b[b.len() - 1].is_ascii_alphanumeric())
}

impl SafetyPolicy {
    /// Validates the raw keys; the error names the key (`safety.<key>`) and what is wrong.
    pub fn from_raw(raw: RawSafety) -> Result<SafetyPolicy, (&'static str, String)> {
        let d = SafetyPolicy::default();
        if let Some(s) = &raw.storage
            && !is_storage_id(s)
        {
            return Err((
                "safety.storage",
                format!("{s:?} is not a PVE storage id (a-z first, then a-z, 0-9, '-', '_', '.')"),
            ));
        }
        let keep = raw.keep_per_guest.unwrap_or(d.keep_per_guest);
        if !(1..=PVE_PROTECTED_CAP).contains(&keep) {
            return Err((
                "safety.keep_per_guest",
                format!(
                    "{keep} is outside 1..={PVE_PROTECTED_CAP}: PVE protects at most {PVE_PROTECTED_CAP} backups per guest for a token without Datastore.Allocate"
                ),
            ));
        }
        let ratio = raw.min_free_ratio.unwrap_or(d.min_free_ratio);
        if !(1.0..=10.0).contains(&ratio) {
            return Err((
                "safety.min_free_ratio",
                format!("{ratio} is outside 1.0..=10.0"),
            ));
        }
        let lockwait = raw.lockwait_min.unwrap_or(d.lockwait_min);
        if lockwait > 180 {
            return Err((
                "safety.lockwait_min",
                format!("{lockwait} minutes is more than PVE's own default of 180"),
            ));
        }
        let compress = match raw.compress.as_deref() {
            None | Some("zstd") => Compress::Zstd,
            Some("gzip") => Compress::Gzip,
            Some("none") => Compress::None,
            Some(other) => {
                return Err((
                    "safety.compress",
                    format!("{other:?} is not one of zstd, gzip, none"),
                ));
            }
        };
        let grace = |key: &'static str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => {
                let g = humantime::parse_duration(t).map_err(|e| (key, format!("{t:?}: {e}")))?;
                if g > Duration::from_secs(366 * DAY) {
                    return Err((key, format!("{t:?} is longer than a year")));
                }
                Ok(g)
            }
        };
        Ok(SafetyPolicy {
            storage: raw.storage,
            keep_per_guest: keep,
            require_hash: raw.require_hash.unwrap_or(d.require_hash),
            min_free_ratio: ratio,
            lockwait_min: lockwait,
            compress,
            destroy_grace: grace("safety.destroy_grace", &raw.destroy_grace, d.destroy_grace)?,
            restore_grace: grace("safety.restore_grace", &raw.restore_grace, d.restore_grace)?,
            rollback_grace: grace(
                "safety.rollback_grace",
                &raw.rollback_grace,
                d.rollback_grace,
            )?,
            shrink_grace: grace("safety.shrink_grace", &raw.shrink_grace, d.shrink_grace)?,
            detach_grace: grace("safety.detach_grace", &raw.detach_grace, d.detach_grace)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<SafetyPolicy, (&'static str, String)> {
        SafetyPolicy::from_raw(
            toml::from_str::<RawSafety>(text).map_err(|e| ("toml", e.to_string()))?,
        )
    }

    #[test]
    fn defaults_have_no_storage() {
        let p = parse("").unwrap();
        assert_eq!(p, SafetyPolicy::default());
        assert!(p.storage.is_none());
    }

    #[test]
    fn every_key_is_checked() {
        let p = parse(
            "storage = \"safety\"\nkeep_per_guest = 2\ndestroy_grace = \"1h\"\ncompress = \"gzip\"",
        )
        .unwrap();
        assert_eq!(p.storage.as_deref(), Some("safety"));
        assert_eq!(p.destroy_grace, Duration::from_secs(3600));
        assert_eq!(p.compress, Compress::Gzip);
        for (text, key) in [
            ("storage = \"Safety\"", "safety.storage"),
            ("storage = \"\"", "safety.storage"),
            ("keep_per_guest = 0", "safety.keep_per_guest"),
            ("keep_per_guest = 6", "safety.keep_per_guest"),
            ("min_free_ratio = 0.5", "safety.min_free_ratio"),
            ("lockwait_min = 181", "safety.lockwait_min"),
            ("compress = \"lzo\"", "safety.compress"),
            ("destroy_grace = \"soon\"", "safety.destroy_grace"),
            ("detach_grace = \"400d\"", "safety.detach_grace"),
            ("storge = \"x\"", "toml"),
        ] {
            assert_eq!(parse(text).unwrap_err().0, key, "{text}");
        }
    }
}
