//! SSHSIG blob decoding and the checks `ssh-key` does not do (PROTOCOL.sshsig §2,
//! signing-gate.md §2.3): exact structure with no trailing data, version 1, non-empty namespace,
//! empty `reserved`, hash sha256/sha512, an algorithm allowlist that pairs the key type with the
//! signature type (no `ssh-rsa` SHA-1, no DSA, no certificates), and the sk flags byte.
//!
//! Nothing here runs cryptography or decodes the embedded key into a usable verifier: the key
//! bytes are only compared with trusted keys (see `signature`).

use ssh_key::{Algorithm, EcdsaCurve, HashAlg, Signature};

use crate::rejection::{Rejection, RejectionCode};

/// FIDO flag: user presence (a touch).
pub const SK_FLAG_USER_PRESENCE: u8 = 0x01;
/// FIDO flag: user verification (PIN or biometrics).
pub const SK_FLAG_USER_VERIFIED: u8 = 0x04;

/// The raw fields of an SSHSIG blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSigBlob<'a> {
    pub version: u32,
    pub public_key: &'a [u8],
    pub namespace: &'a [u8],
    pub reserved: &'a [u8],
    pub hash_alg: &'a [u8],
    pub signature: &'a [u8],
}

/// A blob that passed every structural and algorithm check.
#[derive(Debug, Clone)]
pub struct CheckedSig<'a> {
    /// Wire encoding of the signer's key as the blob states it (compared, never trusted).
    pub public_key: &'a [u8],
    pub namespace: &'a str,
    pub hash_alg: HashAlg,
    pub signature: Signature,
    /// `Some((flags, counter))` for sk signatures.
    pub sk: Option<(u8, u32)>,
}

fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::new(RejectionCode::MalformedSignature, msg)
}

fn unsupported(msg: impl Into<String>) -> Rejection {
    Rejection::new(RejectionCode::UnsupportedAlgorithm, msg)
}

/// A cursor over SSH wire data that never allocates and never reads past the end.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits a blob into its fields: magic, version and five strings, with nothing after.
pub fn parse_blob(blob: &[u8]) -> Result<SshSigBlob<'_>, Rejection> {
    let mut w = Wire(blob);
    if w.bytes(6) != Some(b"SSHSIG".as_slice()) {
        return Err(malformed("the signature blob does not start with SSHSIG"));
    }
    let truncated = || malformed("the signature blob is truncated");
    let version = w.u32().ok_or_else(truncated)?;
    let public_key = w.string().ok_or_else(truncated)?;
    let namespace = w.string().ok_or_else(truncated)?;
    let reserved = w.string().ok_or_else(truncated)?;
    let hash_alg = w.string().ok_or_else(truncated)?;
    let signature = w.string().ok_or_else(truncated)?;
    if !w.is_empty() {
        return Err(malformed("the signature blob has trailing data"));
    }
    Ok(SshSigBlob {
        version,
        public_key,
        namespace,
        reserved,
        hash_alg,
        signature,
    })
}

/// The key type named at the start of a public-key blob.
pub fn key_type(public_key: &[u8]) -> Option<&[u8]> {
    Wire(public_key).string()
}

/// Structural and algorithm checks on a parsed blob.
pub fn check_blob<'a>(b: &SshSigBlob<'a>) -> Result<CheckedSig<'a>, Rejection> {
    if b.version != 1 {
        return Err(malformed(format!(
            "SSHSIG version {} is not supported (only 1)",
            b.version
        )));
    }
    let namespace = std::str::from_utf8(b.namespace)
        .ok()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| malformed("the signature namespace is empty or not text"))?;
    if !b.reserved.is_empty() {
        return Err(malformed(
            "the signature's reserved field is not empty (OpenSSH ignores it, so it is refused)",
        ));
    }
    let hash_alg = match b.hash_alg {
        b"sha256" => HashAlg::Sha256,
        b"sha512" => HashAlg::Sha512,
        other => {
            return Err(malformed(format!(
                "hash algorithm {:?} is not sha256 or sha512",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let ktype = key_type(b.public_key).ok_or_else(|| malformed("the public key is truncated"))?;
    let mut sw = Wire(b.signature);
    let sig_type = sw
        .string()
        .ok_or_else(|| malformed("the signature field is truncated"))?;
    let raw = sw
        .string()
        .ok_or_else(|| malformed("the signature field is truncated"))?;
    let ktype_s = String::from_utf8_lossy(ktype);
    let (algorithm, is_sk) = match (ktype, sig_type) {
        (b"ssh-ed25519", b"ssh-ed25519") => (Algorithm::Ed25519, false),
        (b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp256") => (
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            false,
        ),
        (b"ssh-rsa", b"rsa-sha2-256") => (
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
            false,
        ),
        (b"ssh-rsa", b"rsa-sha2-512") => (
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            false,
        ),
        (b"sk-ssh-ed25519@openssh.com", b"sk-ssh-ed25519@openssh.com") => {
            (Algorithm::SkEd25519, true)
        }
        (b"ssh-rsa", b"ssh-rsa") => {
            return Err(unsupported(
                "legacy ssh-rsa (SHA-1) signatures are refused; sign with rsa-sha2-512",
            ));
        }
        (k, _) if k.ends_with(b"-cert-v01@openssh.com") => {
            return Err(unsupported(format!(
                "certificate keys ({ktype_s}) are not accepted; sign with the plain key"
            )));
        }
        (b"ssh-dss", _) => return Err(unsupported("DSA keys are refused")),
        (
            b"ssh-ed25519" | b"ecdsa-sha2-nistp256" | b"ssh-rsa" | b"sk-ssh-ed25519@openssh.com",
            s,
        ) => {
            return Err(unsupported(format!(
                "a {ktype_s} key cannot make a {:?} signature",
                String::from_utf8_lossy(s)
            )));
        }
        _ => {
            return Err(unsupported(format!(
                "key type {ktype_s} is not accepted (ed25519, ecdsa-p256, RSA, sk-ed25519 are)"
            )));
        }
    };
    let mut data = raw.to_vec();
    let sk = if is_sk {
        let flags = sw
            .u8()
            .ok_or_else(|| malformed("the sk signature has no flags"))?;
        let counter = sw
            .u32()
            .ok_or_else(|| malformed("the sk signature has no counter"))?;
        data.push(flags);
        data.extend_from_slice(&counter.to_be_bytes());
        Some((flags, counter))
    } else {
        None
    };
    if !sw.is_empty() {
        return Err(malformed("the signature field has trailing data"));
    }
    let signature = Signature::new(algorithm, data)
        .map_err(|e| malformed(format!("the signature value is malformed: {e}")))?;
    Ok(CheckedSig {
        public_key: b.public_key,
        namespace,
        hash_alg,
        signature,
        sk,
    })
}
