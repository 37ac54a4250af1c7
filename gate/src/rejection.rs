//! Stable rejection codes (signing-gate.md §5.10) and the rejection record every refusal carries.
//!
//! The codes are part of the agent's interface (logs, JSON output, the hub): never rename one.

use std::fmt;

/// Why the gate refused something. `as_str()` is the stable machine-readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectionCode {
    ApprovalRequired,
    PayloadTooLarge,
    SignatureTooLarge,
    TooManySignatures,
    MalformedPayload,
    UnsupportedVersion,
    UnknownOp,
    WrongFleet,
    WrongHost,
    EpochMismatch,
    BindingMismatch,
    StaleState,
    MalformedSignature,
    UnsupportedAlgorithm,
    UnknownSigner,
    WrongNamespace,
    RoleDenied,
    KeyNotYetValid,
    KeyExpired,
    RevokedKey,
    BadSignature,
    UserPresenceMissing,
    UserVerificationMissing,
    ThresholdNotMet,
    RoleMismatch,
    ClockUntrusted,
    NotYetValid,
    Expired,
    ValidityTooLong,
    Replayed,
    TrustStoreInvalid,
    RotationVersionInvalid,
    RotationChainMismatch,
    RotationWouldLockOut,
    InternalError,
}

impl RejectionCode {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        use RejectionCode::*;
        match self {
            ApprovalRequired => "approval_required",
            PayloadTooLarge => "payload_too_large",
            SignatureTooLarge => "signature_too_large",
            TooManySignatures => "too_many_signatures",
            MalformedPayload => "malformed_payload",
            UnsupportedVersion => "unsupported_version",
            UnknownOp => "unknown_op",
            WrongFleet => "wrong_fleet",
            WrongHost => "wrong_host",
            EpochMismatch => "epoch_mismatch",
            BindingMismatch => "binding_mismatch",
            StaleState => "stale_state",
            MalformedSignature => "malformed_signature",
            UnsupportedAlgorithm => "unsupported_algorithm",
            UnknownSigner => "unknown_signer",
            WrongNamespace => "wrong_namespace",
            RoleDenied => "role_denied",
            KeyNotYetValid => "key_not_yet_valid",
            KeyExpired => "key_expired",
            RevokedKey => "revoked_key",
            BadSignature => "bad_signature",
            UserPresenceMissing => "user_presence_missing",
            UserVerificationMissing => "user_verification_missing",
            ThresholdNotMet => "threshold_not_met",
            RoleMismatch => "role_mismatch",
            ClockUntrusted => "clock_untrusted",
            NotYetValid => "not_yet_valid",
            Expired => "expired",
            ValidityTooLong => "validity_too_long",
            Replayed => "replayed",
            TrustStoreInvalid => "trust_store_invalid",
            RotationVersionInvalid => "rotation_version_invalid",
            RotationChainMismatch => "rotation_chain_mismatch",
            RotationWouldLockOut => "rotation_would_lock_out",
            InternalError => "internal_error",
        }
    }
}

impl serde::Serialize for RejectionCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one signature of an envelope did not count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignatureProblem {
    /// Position of the signature in the envelope (0-based).
    pub index: usize,
    pub code: RejectionCode,
    /// A sentence for people.
    pub message: String,
}

/// A refusal: a stable code, whether a trusted signature had been established when the reason
/// was found, a sentence for people, and the reason for every signature that did not count.
///
/// Serializes (for logs and `--output json`) as
/// `{"code":"binding_mismatch","field":"param.force","authenticated":false,"message":"...","per_signature":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: RejectionCode,
    /// For `binding_mismatch`: the field that differs (`op`, `guest`, `param.force`,
    /// `no_planned_action`, ...).
    pub field: Option<String>,
    /// True when at least one valid trusted signature had been verified before the reason was
    /// found; false means every claim in the envelope is unauthenticated.
    pub authenticated: bool,
    pub message: String,
    pub per_signature: Vec<SignatureProblem>,
}

impl Rejection {
    pub(crate) fn new(code: RejectionCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            field: None,
            authenticated: false,
            message: message.into(),
            per_signature: Vec::new(),
        }
    }

    pub(crate) fn binding(field: &str, message: impl Into<String>) -> Self {
        Rejection {
            field: Some(field.to_string()),
            ..Rejection::new(RejectionCode::BindingMismatch, message)
        }
    }

    pub(crate) fn authenticated(mut self, yes: bool) -> Self {
        self.authenticated = yes;
        self
    }

    /// The rejection for an approval that names a step the agent does not currently plan
    /// (`binding_mismatch` with field `no_planned_action`).
    pub fn no_planned_action(what: &str) -> Self {
        Rejection::binding(
            "no_planned_action",
            format!("the approval is for {what}, which the current plan does not contain"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_snake_case_and_serialize_as_such() {
        let r = Rejection::binding("param.force", "differs");
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"code":"binding_mismatch","field":"param.force","authenticated":false,"message":"differs","per_signature":[]}"#
        );
        assert_eq!(
            RejectionCode::RotationWouldLockOut.as_str(),
            "rotation_would_lock_out"
        );
        assert_eq!(
            RejectionCode::UserPresenceMissing.to_string(),
            "user_presence_missing"
        );
    }
}
