//! Drover's gate: trust store, approval payloads, SSHSIG verification and classification.
//!
//! A compromised hub, network or replayed message must never get a destructive step executed.
//! The crate is pure (no PVE calls, no storage, no network, no RNG): nonce consumption and
//! provenance come in through [`NonceLedger`] and [`ProvenanceSource`], which the agent
//! implements on its journal. Design: `signing-gate.md` §5; every refusal carries a stable
//! [`RejectionCode`].
//!
//! Module map:
//! - [`action`]: the planned step, the agent's identity, roles and namespaces.
//! - [`payload`]: `drover-approval v1` parse/render (canonical bytes).
//! - [`job`]: `drover-job v1` signed jobs (snapshot, rollback, backup, restore, reboot):
//!   parse/render and [`verify_job`], in the approval's order through the same checks.
//! - [`armor`]: strict SSH signature armor.
//! - [`sshsig`]: SSHSIG blob structure and algorithm allowlist.
//! - [`trust`]: `drover-trust v1` documents and the deny list.
//! - [`signature`]: per-signature verification and the distinct-principal tally.
//! - [`verify`]: approval verification in §5.6 order; the nonce ledger trait.
//! - [`rotation`]: trust rotation N → N+1.
//! - [`classify`]: benign vs destructive by provenance.
//! - [`clock`]: UTC timestamp grammar.
//! - [`rejection`]: codes and the rejection record.

pub mod action;
pub mod armor;
pub mod classify;
pub mod clock;
pub mod job;
pub mod payload;
pub mod rejection;
pub mod rotation;
pub mod signature;
pub mod sshsig;
pub mod trust;
pub mod verify;

pub use action::{GateContext, Op, PlannedAction, Role, nonce_hex};
pub use classify::{
    BENIGN_CONFIG_KEYS, Classification, CreateOutcome, GuestProvenance, Incarnation, KEY_TABLE,
    KeyClass, KeyRisk, Origin, ProvenanceSource, classify, config_value_class,
};
pub use job::{
    ApprovedJob, JOB_MAGIC, JobKind, JobPayload, PlannedJob, is_job_document, render_job_request,
    verify_job, verify_job_offline,
};
pub use payload::{ApprovalPayload, render_request};
pub use rejection::{Rejection, RejectionCode, SignatureProblem};
pub use rotation::verify_rotation;
pub use signature::{SignerInfo, verify_signature};
pub use trust::{DenyList, TrustError, TrustErrorKind, TrustStore, TrustedKey};
pub use verify::{
    Approved, NonceClaim, NonceLedger, NonceRefusal, Policy, select_planned, verify_approval,
    verify_approval_with, verify_offline,
};
