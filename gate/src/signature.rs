//! Per-signature verification in the order of signing-gate.md §5.6 step 5, and the
//! distinct-principal tally of step 6.
//!
//! The trusted key is found by exact wire-encoding equality *before* any cryptography, and the
//! signature is verified with that trusted key, never with the key the signature carries: a
//! signature from an unknown (or huge) key costs a byte comparison, not an exponentiation.

use std::collections::BTreeSet;

use ssh_key::SshSig;

use crate::action::Role;
use crate::armor::decode_armor;
use crate::rejection::{Rejection, RejectionCode, SignatureProblem};
use crate::sshsig::{SK_FLAG_USER_PRESENCE, check_blob, parse_blob};
use crate::trust::TrustStore;

/// Who made a signature that counted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignerInfo {
    pub principal: String,
    /// `SHA256:...` of the trusted key.
    pub fingerprint: String,
    pub role: Role,
}

fn reject(code: RejectionCode, msg: impl Into<String>) -> Rejection {
    Rejection::new(code, msg)
}

/// Verifies one armored signature over `msg` for one of `roles`' namespaces at the agent's
/// clock `now`.
pub(crate) fn verify_one(
    trust: &TrustStore,
    roles: &[Role],
    msg: &[u8],
    armored: &[u8],
    now: i64,
) -> Result<SignerInfo, Rejection> {
    let blob = decode_armor(armored)?;
    let parsed = parse_blob(&blob)?;
    let sig = check_blob(&parsed)?;
    let Some(key) = trust.find(sig.public_key) else {
        return Err(reject(
            RejectionCode::UnknownSigner,
            format!(
                "the signing key {} is not in trust document version {}",
                crate::trust::fingerprint(sig.public_key),
                trust.version
            ),
        ));
    };
    let Some(ns_role) = roles
        .iter()
        .copied()
        .find(|r| r.namespace(&trust.domain) == sig.namespace)
    else {
        let wanted: Vec<String> = roles.iter().map(|r| r.namespace(&trust.domain)).collect();
        return Err(reject(
            RejectionCode::WrongNamespace,
            format!(
                "{} signed with namespace {:?}; expected {}",
                key.principal,
                sig.namespace,
                wanted.join(" or ")
            ),
        ));
    };
    if key.role != ns_role {
        return Err(reject(
            RejectionCode::RoleDenied,
            format!(
                "{} holds the {} role, which may not sign in namespace {}",
                key.principal, key.role, sig.namespace
            ),
        ));
    }
    if key.valid_after.is_some_and(|t| now < t) {
        return Err(reject(
            RejectionCode::KeyNotYetValid,
            format!(
                "the key of {} is not valid yet (valid-after)",
                key.principal
            ),
        ));
    }
    if now > key.valid_before {
        return Err(reject(
            RejectionCode::KeyExpired,
            format!("the key of {} has expired (valid-before)", key.principal),
        ));
    }
    if trust.is_revoked(&key.blob) {
        return Err(reject(
            RejectionCode::RevokedKey,
            format!(
                "the key {} of {} is on the local deny list",
                key.fingerprint, key.principal
            ),
        ));
    }
    let sshsig = SshSig::new(
        key.public_key.key_data().clone(),
        sig.namespace,
        sig.hash_alg,
        sig.signature.clone(),
    )
    .map_err(|e| {
        reject(
            RejectionCode::InternalError,
            format!("building the signature: {e}"),
        )
    })?;
    key.public_key
        .verify(sig.namespace, msg, &sshsig)
        .map_err(|_| {
            reject(
                RejectionCode::BadSignature,
                format!(
                    "the signature of {} does not match these bytes (signed something else, or altered)",
                    key.principal
                ),
            )
        })?;
    if let Some((flags, _)) = sig.sk
        && flags & SK_FLAG_USER_PRESENCE == 0
    {
        return Err(reject(
            RejectionCode::UserPresenceMissing,
            format!(
                "the security-key signature of {} was made without a touch (user presence)",
                key.principal
            ),
        ));
    }
    Ok(SignerInfo {
        principal: key.principal.clone(),
        fingerprint: key.fingerprint.clone(),
        role: key.role,
    })
}

/// Verifies one signature for `role`'s namespace (e.g. a hub's desired-state document with
/// `Role::Hub`). Returns who signed, or why it does not count.
pub fn verify_signature(
    trust: &TrustStore,
    role: Role,
    msg: &[u8],
    armored: &[u8],
    now: i64,
) -> Result<SignerInfo, Rejection> {
    verify_one(trust, &[role], msg, armored, now)
}

/// The outcome of checking every signature of an envelope.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// One entry per distinct principal, in envelope order.
    pub valid: Vec<SignerInfo>,
    pub problems: Vec<SignatureProblem>,
}

impl Tally {
    pub fn count(&self, role: Role) -> usize {
        self.valid.iter().filter(|s| s.role == role).count()
    }

    /// The rejection when fewer than `threshold` principals counted: the single shared reason
    /// when nothing counted and all signatures failed alike, else `threshold_not_met`.
    pub fn shortfall(&self, have: usize, threshold: u32, what: &str) -> Rejection {
        let codes: BTreeSet<RejectionCode> = self.problems.iter().map(|p| p.code).collect();
        let mut r = if have == 0 && codes.len() == 1 && !self.problems.is_empty() {
            let p = &self.problems[0];
            let msg = if self.problems.len() == 1 {
                p.message.clone()
            } else {
                format!("no signature counted: {}", p.message)
            };
            Rejection::new(p.code, msg)
        } else if self.problems.is_empty() && have == 0 {
            Rejection::new(
                RejectionCode::ThresholdNotMet,
                format!("{what} carries no signature"),
            )
        } else {
            Rejection::new(
                RejectionCode::ThresholdNotMet,
                format!(
                    "{what} needs {threshold} distinct principal(s); {have} valid signature(s) counted"
                ),
            )
        };
        r.authenticated = !self.valid.is_empty();
        r.per_signature = self.problems.clone();
        r
    }
}

pub(crate) fn tally(
    trust: &TrustStore,
    roles: &[Role],
    msg: &[u8],
    signatures: &[&[u8]],
    now: i64,
) -> Tally {
    tally_counting(trust, roles, roles, msg, signatures, now)
}

/// As [`tally`], but a valid signature of a role in `known` and not in `counting` is refused
/// as `role_denied` by name (an operator signing a rotation), not as a namespace mistake.
pub(crate) fn tally_counting(
    trust: &TrustStore,
    known: &[Role],
    counting: &[Role],
    msg: &[u8],
    signatures: &[&[u8]],
    now: i64,
) -> Tally {
    let mut t = Tally::default();
    for (index, armored) in signatures.iter().enumerate() {
        match verify_one(trust, known, msg, armored, now) {
            Ok(s) if !counting.contains(&s.role) => t.problems.push(SignatureProblem {
                index,
                code: RejectionCode::RoleDenied,
                message: format!(
                    "{} holds the {} role; only {} principals may sign this",
                    s.principal,
                    s.role,
                    counting
                        .iter()
                        .map(Role::to_string)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            }),
            Ok(s) if t.valid.iter().any(|v| v.principal == s.principal) => {
                t.problems.push(SignatureProblem {
                    index,
                    code: RejectionCode::ThresholdNotMet,
                    message: format!(
                        "{} already counted; a principal counts once however many signatures or keys it uses",
                        s.principal
                    ),
                });
            }
            Ok(s) => t.valid.push(s),
            Err(r) => t.problems.push(SignatureProblem {
                index,
                code: r.code,
                message: r.message,
            }),
        }
    }
    t
}
