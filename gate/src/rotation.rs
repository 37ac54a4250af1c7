//! Trust rotation (signing-gate.md §5.11): version N+1 is applied only if it is chained to N by
//! hash and version, inside its own validity window, and signed by
//! a threshold of N's recovery principals (namespace `trust-rotation-v1@<domain>`), plus a
//! threshold of N+1's recovery principals when the recovery set or its threshold changes.
//!
//! Only recovery keys rotate trust (§5.7's fixed role table): a rotation can add operational
//! and hub keys, so letting operators sign one would let a single stolen operator key mint
//! more operator keys. An operational signature on a rotation is `role_denied`.
//!
//! N+1 must itself pass every rule and be able to meet its own thresholds (no lock-out).

use std::collections::BTreeSet;

use crate::action::Role;
use crate::armor::MAX_SIGNATURE_BYTES;
use crate::rejection::{Rejection, RejectionCode};
use crate::signature::{tally, tally_counting};
use crate::trust::{MAX_TRUST_BYTES, TrustErrorKind, TrustStore};
use crate::verify::{MAX_SIGNATURES, Policy};

fn recovery_set(t: &TrustStore) -> BTreeSet<(&str, &[u8], Option<i64>, i64)> {
    t.keys()
        .iter()
        .filter(|k| k.role == Role::Recovery)
        .map(|k| {
            (
                k.principal.as_str(),
                k.blob.as_slice(),
                k.valid_after,
                k.valid_before,
            )
        })
        .collect()
}

/// Checks `next_doc` as the successor of `current` and returns it (carrying over the local deny
/// list). On any error the caller keeps `current` unchanged. `clock_high_water` is the nonce
/// store's (§5.9): a clock set back behind it could revive a withheld rotation whose window
/// has passed, so it is `clock_untrusted`, as for approvals.
pub fn verify_rotation(
    current: &TrustStore,
    next_doc: &[u8],
    signatures: &[&[u8]],
    now: i64,
    clock_high_water: Option<i64>,
) -> Result<TrustStore, Rejection> {
    let leeway = Policy::default().leeway_secs;
    if next_doc.len() > MAX_TRUST_BYTES {
        return Err(Rejection::new(
            RejectionCode::PayloadTooLarge,
            format!("the trust document is larger than {MAX_TRUST_BYTES} bytes"),
        ));
    }
    if signatures.len() > MAX_SIGNATURES {
        return Err(Rejection::new(
            RejectionCode::TooManySignatures,
            format!("at most {MAX_SIGNATURES} signatures are allowed"),
        ));
    }
    if signatures.iter().any(|s| s.len() > MAX_SIGNATURE_BYTES) {
        return Err(Rejection::new(
            RejectionCode::SignatureTooLarge,
            format!("a signature is larger than {MAX_SIGNATURE_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(next_doc).map_err(|_| {
        Rejection::new(
            RejectionCode::TrustStoreInvalid,
            "the new trust document is not ASCII",
        )
    })?;
    let next = TrustStore::parse(text).map_err(|e| match e.kind {
        TrustErrorKind::LockOut => Rejection::new(
            RejectionCode::RotationWouldLockOut,
            format!(
                "the new trust document would lock the fleet out: {}",
                e.message
            ),
        ),
        TrustErrorKind::Invalid => Rejection::new(
            RejectionCode::TrustStoreInvalid,
            format!("the new trust document is refused (the current one stays): {e}"),
        ),
    })?;
    if next.fleet != current.fleet {
        return Err(Rejection::new(
            RejectionCode::WrongFleet,
            format!(
                "the new trust document is for fleet {:?}, not {:?}",
                next.fleet, current.fleet
            ),
        ));
    }
    if next.domain != current.domain {
        return Err(Rejection::new(
            RejectionCode::RotationChainMismatch,
            "a rotation cannot change the namespace domain",
        ));
    }
    if Some(next.version) != current.version.checked_add(1) {
        return Err(Rejection::new(
            RejectionCode::RotationVersionInvalid,
            format!(
                "the new trust document has version {}; only {} can follow {}",
                next.version,
                current.version.saturating_add(1),
                current.version
            ),
        ));
    }
    if next.previous_sha256 != current.sha256() {
        return Err(Rejection::new(
            RejectionCode::RotationChainMismatch,
            format!(
                "previous-sha256 {} does not name the current document ({})",
                next.previous_sha256,
                current.sha256()
            ),
        ));
    }
    if clock_high_water.is_some_and(|hw| now < hw - leeway) {
        return Err(Rejection::new(
            RejectionCode::ClockUntrusted,
            "the system clock is behind the latest time the agent has recorded; fix the clock",
        ));
    }
    if next.not_before.is_some_and(|t| now + leeway < t) {
        return Err(Rejection::new(
            RejectionCode::NotYetValid,
            "the new trust document is not valid yet",
        ));
    }
    if next.expires_at.is_some_and(|t| now - leeway >= t) {
        return Err(Rejection::new(
            RejectionCode::Expired,
            "the new trust document has already expired; a withheld rotation cannot be applied late",
        ));
    }
    // Operational keys are known to the tally only so that their signatures are refused by
    // name (`role_denied`), not as a namespace mistake.
    let old = tally_counting(
        current,
        &[Role::Recovery, Role::Operational],
        &[Role::Recovery],
        next_doc,
        signatures,
        now,
    );
    let recovery_changed = recovery_set(current) != recovery_set(&next)
        || current.threshold_trust_rotation != next.threshold_trust_rotation;
    let old_recovery = old.valid.len();
    let new_recovery = if recovery_changed {
        tally(&next, &[Role::Recovery], next_doc, signatures, now).count(Role::Recovery)
    } else {
        usize::MAX
    };
    if old_recovery >= current.threshold_trust_rotation as usize
        && new_recovery >= next.threshold_trust_rotation as usize
    {
        return Ok(next.with_deny_list_of(current));
    }
    let mut r = if old_recovery >= current.threshold_trust_rotation as usize {
        Rejection::new(
            RejectionCode::ThresholdNotMet,
            format!(
                "the recovery keys change, so {} recovery principal(s) of the new document must sign too",
                next.threshold_trust_rotation
            ),
        )
    } else {
        old.shortfall(
            old_recovery,
            current.threshold_trust_rotation,
            "the rotation",
        )
    };
    r.authenticated = !old.valid.is_empty();
    r.per_signature = old.problems;
    Err(r)
}
