//! The trust document `drover-trust v1`: a strict header, then a strict subset of OpenSSH
//! allowed_signers lines (signing-gate.md §5.7), so the same lines work with
//! `ssh-keygen -Y verify`. Also the local deny list of revoked keys.
//!
//! Anything outside the subset is refused, never interpreted: a document that breaks a rule is
//! `trust_store_invalid`, which the agent turns into "every destructive step blocked".

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use ssh_key::PublicKey;
use ssh_key::public::KeyData;

use crate::action::Role;
use crate::clock::{parse_signers_time, parse_utc};
use crate::rejection::{Rejection, RejectionCode};

/// First line of every v1 trust document.
pub const TRUST_MAGIC: &str = "drover-trust v1";
/// Largest trust document accepted (bytes).
pub const MAX_TRUST_BYTES: usize = 64 * 1024;
/// Most signer lines in a trust document.
pub const MAX_SIGNERS: usize = 64;
/// Largest threshold a document may set.
pub const MAX_THRESHOLD: u32 = 16;

/// Why a trust document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustErrorKind {
    /// Breaks a grammar or policy rule.
    Invalid,
    /// Well-formed, but a threshold can never be met by the keys it lists.
    LockOut,
}

/// A refused trust document: which rule, where, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trust document invalid{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
pub struct TrustError {
    pub kind: TrustErrorKind,
    /// 1-based line number, when the problem is on one line.
    pub line: Option<usize>,
    pub message: String,
}

impl TrustError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        TrustError {
            kind: TrustErrorKind::Invalid,
            line: Some(line),
            message: message.into(),
        }
    }
    fn doc(message: impl Into<String>) -> Self {
        TrustError {
            kind: TrustErrorKind::Invalid,
            line: None,
            message: message.into(),
        }
    }

    /// The `trust_store_invalid` rejection that blocks destructive steps while the document is
    /// broken.
    pub fn to_rejection(&self) -> Rejection {
        Rejection::new(RejectionCode::TrustStoreInvalid, self.to_string())
    }
}

/// One trusted key (one allowed_signers line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub principal: String,
    pub role: Role,
    pub valid_after: Option<i64>,
    pub valid_before: i64,
    pub public_key: PublicKey,
    /// Wire encoding of the key: the value compared with a signature's embedded key.
    pub blob: Vec<u8>,
    /// `SHA256:...` as ssh-keygen prints it.
    pub fingerprint: String,
    /// The allowed_signers line as written.
    pub line: String,
}

/// A parsed, validated trust document plus the local deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustStore {
    pub fleet: String,
    pub domain: String,
    pub version: u64,
    pub previous_sha256: String,
    pub not_before: Option<i64>,
    pub expires_at: Option<i64>,
    pub threshold_destructive_op: u32,
    pub threshold_trust_rotation: u32,
    keys: Vec<TrustedKey>,
    sha256: String,
    text: String,
    revoked: BTreeSet<Vec<u8>>,
}

/// `SHA256:<base64 without padding>` of a key blob, as OpenSSH prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(blob))
    )
}

fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && s.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
}

fn is_principal(s: &str) -> bool {
    let Some((user, host)) = s.split_once('@') else {
        return false;
    };
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
        && is_domain(host)
}

fn rsa_bits(k: &KeyData) -> Option<usize> {
    let n = k.rsa()?.n.as_positive_bytes()?;
    let first = *n.first()?;
    Some(n.len() * 8 - first.leading_zeros() as usize)
}

/// Decodes `keytype base64` into a key the gate accepts, returning (key, blob).
fn parse_key(ktype: &str, b64: &str) -> Result<(PublicKey, Vec<u8>), String> {
    if b64.starts_with("REPLACE-WITH-") {
        return Err(format!(
            "{b64} is the template's placeholder: put the base64 part of the public key here (the middle field of the .pub file)"
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| {
            let shown: String = b64.chars().take(40).collect();
            format!("the key {shown:?} is not valid base64: {e}")
        })?;
    if crate::sshsig::key_type(&blob) != Some(ktype.as_bytes()) {
        return Err(format!("the key blob is not of type {ktype}"));
    }
    match ktype {
        "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ssh-rsa" | "sk-ssh-ed25519@openssh.com" => {}
        "ssh-dss" => return Err("DSA keys are not accepted".into()),
        t if t.ends_with("-cert-v01@openssh.com") => {
            return Err("certificates are not accepted".into());
        }
        t => {
            return Err(format!(
                "key type {t} is not accepted (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, sk-ssh-ed25519@openssh.com are)"
            ));
        }
    }
    let key = PublicKey::from_bytes(&blob).map_err(|e| format!("the key does not decode: {e}"))?;
    if key.to_bytes().ok().as_deref() != Some(blob.as_slice()) {
        return Err("the key is not canonically encoded".into());
    }
    if ktype == "ssh-rsa" {
        match rsa_bits(key.key_data()) {
            Some(b) if (2048..=4096).contains(&b) => {}
            Some(b) => {
                return Err(format!(
                    "RSA keys must have 2048-4096 bits, this one has {b}"
                ));
            }
            None => return Err("the RSA modulus is invalid".into()),
        }
    }
    Ok((key, blob))
}

/// Parses the options field of a signer line: `namespaces="..."`, `valid-before="..."` and an
/// optional `valid-after="..."`, lowercase, each once.
fn parse_options(opts: &str, domain: &str) -> Result<(Role, Option<i64>, i64), String> {
    let mut ns = None;
    let mut after = None;
    let mut before = None;
    for opt in opts.split(',') {
        let (name, value) = opt
            .split_once('=')
            .ok_or_else(|| format!("option {opt:?} must be name=\"value\""))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .filter(|v| !v.contains('"'))
            .ok_or_else(|| format!("option {name} must have a double-quoted value"))?;
        let slot = match name {
            "namespaces" => {
                let role = Role::from_namespace(value, domain).ok_or_else(|| {
                    format!(
                        "namespaces={value:?} must be exactly one of destructive-op-v1@{domain}, trust-rotation-v1@{domain}, desired-state-v1@{domain}"
                    )
                })?;
                if ns.replace(role).is_some() {
                    return Err("namespaces appears twice".into());
                }
                continue;
            }
            "valid-after" => &mut after,
            "valid-before" => &mut before,
            other => {
                return Err(format!(
                    "option {other:?} is not allowed (only namespaces, valid-after, valid-before; no cert-authority)"
                ));
            }
        };
        let t = parse_signers_time(value).ok_or_else(|| {
            format!("{name}={value:?} must be YYYYMMDD[HHMM[SS]]Z (UTC, with the Z)")
        })?;
        if slot.replace(t).is_some() {
            return Err(format!("{name} appears twice"));
        }
    }
    let role = ns.ok_or("every signer needs namespaces=")?;
    let before = before.ok_or("every signer needs valid-before=")?;
    if let Some(a) = after
        && a >= before
    {
        return Err("valid-after must be earlier than valid-before".into());
    }
    Ok((role, after, before))
}

/// The `*i`-th line that is not a comment, as (1-based number in the file, text; empty past
/// the end), advancing `i`.
fn line_at<'a>(lines: &[(usize, &'a str)], i: &mut usize) -> (usize, &'a str) {
    let n = *i;
    *i += 1;
    lines
        .get(n)
        .copied()
        .unwrap_or((lines.last().map_or(1, |l| l.0 + 1), ""))
}

impl TrustStore {
    /// Parses and validates a trust document.
    pub fn parse(text: &str) -> Result<TrustStore, TrustError> {
        if text.len() > MAX_TRUST_BYTES {
            return Err(TrustError::doc(format!(
                "the document is {} bytes; at most {MAX_TRUST_BYTES} are allowed",
                text.len()
            )));
        }
        if let Some(pos) = text
            .bytes()
            .position(|c| c != b'\n' && !(0x20..=0x7e).contains(&c))
        {
            return Err(TrustError::doc(format!(
                "byte {pos} is not printable ASCII (no CR, TAB or non-ASCII characters)"
            )));
        }
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| TrustError::doc("the document must end with a newline"))?;
        // `#` comment lines, as in OpenSSH's allowed_signers, may stand anywhere (a whole line
        // starting with `#`). They are skipped here but stay in the bytes that are hashed, so
        // a changed comment is a different document (a new version), never an equivalent one.
        let lines: Vec<(usize, &str)> = body
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.starts_with('#'))
            .collect();
        let mut i = 0usize;
        let (_, first) = line_at(&lines, &mut i);
        if first != TRUST_MAGIC {
            return Err(TrustError::at(
                1,
                format!("the first line must be {TRUST_MAGIC:?}"),
            ));
        }
        let field = |(n, l): (usize, &str), key: &str| -> Result<String, TrustError> {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(": "))
                .map(str::to_string)
                .ok_or_else(|| TrustError::at(n, format!("expected `{key}: ...`, found {l:?}")))
        };
        let (n, l) = line_at(&lines, &mut i);
        let fleet = field((n, l), "fleet")?;
        if !(1..=63).contains(&fleet.len())
            || !fleet
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return Err(TrustError::at(
                n,
                "fleet must be 1-63 characters of a-z, 0-9 and -",
            ));
        }
        let (n, l) = line_at(&lines, &mut i);
        let domain = field((n, l), "domain")?;
        if !is_domain(&domain) {
            return Err(TrustError::at(n, "domain must be a lowercase DNS name"));
        }
        let (n, l) = line_at(&lines, &mut i);
        let v = field((n, l), "version")?;
        let version = v
            .parse::<u64>()
            .ok()
            .filter(|x| *x >= 1 && x.to_string() == v)
            .ok_or_else(|| TrustError::at(n, "version must be a positive integer"))?;
        let (n, l) = line_at(&lines, &mut i);
        let previous_sha256 = field((n, l), "previous-sha256")?;
        if previous_sha256.len() != 64
            || !previous_sha256
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(TrustError::at(
                n,
                "previous-sha256 must be 64 lowercase hex digits",
            ));
        }
        let mut line = line_at(&lines, &mut i);
        let mut times = [None, None];
        for (slot, key) in times.iter_mut().zip(["not-before", "expires-at"]) {
            if line.1.starts_with(&format!("{key}: ")) {
                let v = field(line, key)?;
                *slot = Some(parse_utc(&v).ok_or_else(|| {
                    TrustError::at(line.0, format!("{key} must be YYYY-MM-DDTHH:MM:SSZ"))
                })?);
                line = line_at(&lines, &mut i);
            }
        }
        let [not_before, expires_at] = times;
        if let (Some(a), Some(b)) = (not_before, expires_at)
            && b <= a
        {
            return Err(TrustError::doc("expires-at must be later than not-before"));
        }
        let threshold = |(n, l): (usize, &str), key: &str| -> Result<u32, TrustError> {
            let v = field((n, l), key)?;
            v.parse::<u32>()
                .ok()
                .filter(|x| (1..=MAX_THRESHOLD).contains(x) && x.to_string() == v)
                .ok_or_else(|| TrustError::at(n, format!("{key} must be 1-{MAX_THRESHOLD}")))
        };
        let threshold_destructive_op = threshold(line, "threshold.destructive-op")?;
        let threshold_trust_rotation =
            threshold(line_at(&lines, &mut i), "threshold.trust-rotation")?;
        let (n, l) = line_at(&lines, &mut i);
        if l != "signers:" {
            return Err(TrustError::at(
                n,
                format!("expected `signers:`, found {l:?}"),
            ));
        }
        let mut keys: Vec<TrustedKey> = Vec::new();
        let mut role_of: BTreeMap<String, Role> = BTreeMap::new();
        while i < lines.len() {
            let (n, l) = line_at(&lines, &mut i);
            if keys.len() >= MAX_SIGNERS {
                return Err(TrustError::at(
                    n,
                    format!("more than {MAX_SIGNERS} signers"),
                ));
            }
            let parts: Vec<&str> = l.split(' ').collect();
            let [principal, opts, ktype, b64] = parts.as_slice() else {
                return Err(TrustError::at(
                    n,
                    "a signer line must be `principal options keytype base64` separated by single spaces (no comment)",
                ));
            };
            if !is_principal(principal) {
                return Err(TrustError::at(
                    n,
                    format!(
                        "principal {principal:?} must be a literal user@domain (no patterns, lowercase)"
                    ),
                ));
            }
            let (role, valid_after, valid_before) =
                parse_options(opts, &domain).map_err(|m| TrustError::at(n, m))?;
            let (public_key, blob) = parse_key(ktype, b64).map_err(|m| TrustError::at(n, m))?;
            if keys.iter().any(|k| k.blob == blob) {
                return Err(TrustError::at(
                    n,
                    "this key is already listed; each key appears once",
                ));
            }
            if let Some(r) = role_of.insert(principal.to_string(), role)
                && r != role
            {
                return Err(TrustError::at(
                    n,
                    format!(
                        "principal {principal} already holds the {r} role; a principal has one role"
                    ),
                ));
            }
            keys.push(TrustedKey {
                principal: principal.to_string(),
                role,
                valid_after,
                valid_before,
                fingerprint: fingerprint(&blob),
                public_key,
                blob,
                line: l.to_string(),
            });
        }
        if keys.is_empty() {
            return Err(TrustError::doc("the document lists no signers"));
        }
        let store = TrustStore {
            fleet,
            domain,
            version,
            previous_sha256,
            not_before,
            expires_at,
            threshold_destructive_op,
            threshold_trust_rotation,
            keys,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            text: text.to_string(),
            revoked: BTreeSet::new(),
        };
        for (role, t) in [
            (Role::Recovery, store.threshold_trust_rotation),
            (Role::Operational, store.threshold_destructive_op),
        ] {
            let have = store.principals(role).len();
            if have < t as usize {
                return Err(TrustError {
                    kind: TrustErrorKind::LockOut,
                    line: None,
                    message: format!(
                        "the threshold for the {role} role is {t} but only {have} {role} principal(s) are listed"
                    ),
                });
            }
        }
        Ok(store)
    }

    /// Hex sha256 of the document bytes (what the next version's `previous-sha256` names).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The document exactly as parsed.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Distinct principals holding `role`.
    pub fn principals(&self, role: Role) -> BTreeSet<&str> {
        self.keys
            .iter()
            .filter(|k| k.role == role)
            .map(|k| k.principal.as_str())
            .collect()
    }

    /// The `signers:` section: valid input for `ssh-keygen -Y verify -f`.
    pub fn allowed_signers(&self) -> String {
        self.keys.iter().map(|k| format!("{}\n", k.line)).collect()
    }

    /// The trusted key whose wire encoding is exactly `blob` (no cryptography involved).
    pub fn find(&self, blob: &[u8]) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.blob == blob)
    }

    /// Threshold for signatures of `role`'s purpose (hub documents need one).
    pub fn threshold(&self, role: Role) -> u32 {
        match role {
            Role::Operational => self.threshold_destructive_op,
            Role::Recovery => self.threshold_trust_rotation,
            Role::Hub => 1,
        }
    }

    /// Installs the local deny list (keys refused with `revoked_key` even while listed).
    pub fn with_deny_list(mut self, deny: &DenyList) -> Self {
        self.revoked = deny.blobs.clone();
        self
    }

    pub(crate) fn with_deny_list_of(mut self, other: &TrustStore) -> Self {
        self.revoked = other.revoked.clone();
        self
    }

    pub(crate) fn is_revoked(&self, blob: &[u8]) -> bool {
        self.revoked.contains(blob)
    }

    /// `trust_store_invalid` if the document's own validity window excludes `now`.
    pub fn check_window(&self, now: i64) -> Result<(), Rejection> {
        if self.not_before.is_some_and(|t| now < t) {
            return Err(Rejection::new(
                RejectionCode::TrustStoreInvalid,
                "the trust document is not valid yet (not-before is in the future)",
            ));
        }
        if self.expires_at.is_some_and(|t| now >= t) {
            return Err(Rejection::new(
                RejectionCode::TrustStoreInvalid,
                "the trust document has expired; a rotation signed by the recovery keys is needed",
            ));
        }
        Ok(())
    }
}

/// Local deny list: one public key per line (`keytype base64 [comment]`), `#` comments and blank
/// lines allowed: the same file works as `ssh-keygen -Y verify -r`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    blobs: BTreeSet<Vec<u8>>,
}

impl DenyList {
    pub fn parse(text: &str) -> Result<DenyList, TrustError> {
        if text.len() > MAX_TRUST_BYTES {
            return Err(TrustError::doc("the deny list is larger than 64 KiB"));
        }
        let mut blobs = BTreeSet::new();
        for (n, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let mut parts = l.split_ascii_whitespace();
            let (Some(_ktype), Some(b64)) = (parts.next(), parts.next()) else {
                return Err(TrustError::at(
                    n + 1,
                    "a deny-list line must be `keytype base64`",
                ));
            };
            let blob = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| TrustError::at(n + 1, format!("invalid base64: {e}")))?;
            blobs.insert(blob);
        }
        Ok(DenyList { blobs })
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}
