//! Approval verification in exactly the order of signing-gate.md §5.6: size limits, grammar,
//! scope, binding, per-signature checks, distinct-principal threshold, role claim, time window,
//! and the nonce consumed last, only when everything else passed (so garbage can never burn a
//! legitimate approval).

use sha2::{Digest, Sha256};

use crate::action::{GateContext, PlannedAction, Role};
use crate::armor::MAX_SIGNATURE_BYTES;
use crate::clock::format_utc;
use crate::payload::{ApprovalPayload, MAX_PAYLOAD_BYTES, render_request};
use crate::rejection::{Rejection, RejectionCode, SignatureProblem};
use crate::signature::{SignerInfo, Tally, tally};
use crate::trust::TrustStore;

/// Most signatures an envelope may carry.
pub const MAX_SIGNATURES: usize = 8;

/// What the gate asks the nonce store to record, atomically and durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceClaim {
    pub nonce: String,
    pub payload_sha256: String,
    pub op: String,
    pub vmid: u32,
    pub expires_at: i64,
    /// The agent clock used for the whole verification (becomes the new clock high-water mark).
    pub now: i64,
    pub signer_fingerprints: Vec<String>,
}

/// Why the nonce store refused a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceRefusal {
    /// The nonce was consumed before (by any approval).
    Replayed,
    /// `expires_at <= gc_horizon`: the nonce may have been garbage-collected, so the approval
    /// is refused whatever the clock says.
    ExpiredForever,
    /// The store could not commit durably; fail closed.
    Unavailable(String),
}

/// The persistent nonce store, implemented by the agent on the journal. `consume` must be
/// atomic (exactly one of two concurrent identical claims wins) and durable before it returns.
pub trait NonceLedger {
    /// Random id created with the store; a reset store has a new one.
    fn state_epoch(&self) -> String;
    /// Latest agent clock ever committed, if any.
    fn clock_high_water(&self) -> Option<i64>;
    fn consume(&self, claim: &NonceClaim) -> Result<(), NonceRefusal>;
    /// Whether `nonce` was already consumed. Never part of verification (`consume` alone
    /// decides, atomically); the agent uses it to replace a pending request whose nonce a
    /// crash between consumption and execution used up, which could otherwise only ever be
    /// answered with `replayed`.
    fn is_consumed(&self, _nonce: &str) -> bool {
        false
    }
}

/// Clock policy (signing-gate.md §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Leeway for clock skew, seconds (default 120, at most 300).
    pub leeway_secs: i64,
    /// Longest `expires-at - not-before` accepted, seconds (default 24 h).
    pub max_validity_secs: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            leeway_secs: 120,
            max_validity_secs: 24 * 3600,
        }
    }
}

/// A verified approval; the nonce is already consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    /// Hex sha256 of the payload bytes (for the journal and the operator's cross-check).
    pub payload_sha256: String,
    pub signers: Vec<SignerInfo>,
    pub nonce: String,
    pub payload: ApprovalPayload,
    /// Extra signatures that did not count (reported, not fatal once the threshold is met).
    pub ignored: Vec<SignatureProblem>,
}

/// Verifies an approval for `action` with the default policy. See [`verify_approval_with`].
pub fn verify_approval(
    ctx: &GateContext,
    trust: &TrustStore,
    action: &PlannedAction,
    payload: &[u8],
    signatures: &[&[u8]],
    now: i64,
    ledger: &dyn NonceLedger,
) -> Result<Approved, Rejection> {
    verify_approval_with(
        &Policy::default(),
        ctx,
        trust,
        action,
        payload,
        signatures,
        now,
        ledger,
    )
}

/// Verifies `payload` + `signatures` as an approval of exactly `action` (the agent's own current
/// step) at the agent's clock `now` (read once by the caller), consuming the nonce on success.
#[allow(clippy::too_many_arguments)]
pub fn verify_approval_with(
    policy: &Policy,
    ctx: &GateContext,
    trust: &TrustStore,
    action: &PlannedAction,
    payload: &[u8],
    signatures: &[&[u8]],
    now: i64,
    ledger: &dyn NonceLedger,
) -> Result<Approved, Rejection> {
    // 1. size limits, before anything is parsed; the trust document must be usable at all.
    size_limits(payload, signatures)?;
    trust_usable(ctx, trust, now)?;
    // 2. grammar and canonical round trip.
    let p = ApprovalPayload::parse(payload)?;
    // 3. scope.
    scope("approval", &p.fleet, &p.host, &p.state_epoch, ctx, ledger)?;
    // 4. binding to the planned action.
    if p.op != action.op {
        return Err(Rejection::binding(
            "op",
            format!(
                "the approval is for op {}, the planned step is {}",
                p.op, action.op
            ),
        ));
    }
    if p.vmid != action.vmid {
        return Err(Rejection::binding(
            "guest",
            format!(
                "the approval is for CT {}, the planned step is for CT {}",
                p.vmid, action.vmid
            ),
        ));
    }
    compare_lines(
        "param",
        "approval",
        "planned step",
        &p.params,
        &action.params,
    )?;
    compare_lines("bind", "approval", "planned step", &p.bind, &action.bind)?;
    if p.guest_config_sha1 != action.guest_config_sha1 {
        return Err(stale(
            action.vmid,
            p.guest_config_sha1.as_deref(),
            action.guest_config_sha1.as_deref(),
        ));
    }
    let expected = render_request(
        ctx,
        action,
        &p.nonce,
        p.not_before,
        p.expires_at,
        p.role,
        p.ticket.as_deref(),
    )?;
    if expected.as_bytes() != payload {
        return Err(Rejection::binding(
            "payload",
            "the approval differs from the request the agent renders for its planned step",
        ));
    }
    // 5-8. signatures and threshold, role claim, time, nonce.
    let signed = Signed {
        what: "approval",
        payload,
        signatures,
        threshold: trust.threshold_destructive_op,
        role_claim: p.role,
        nonce: &p.nonce,
        not_before: p.not_before,
        expires_at: p.expires_at,
        op: p.op.as_str(),
        vmid: p.vmid,
    };
    let (payload_sha256, t) = authenticate_and_consume(policy, trust, &signed, now, ledger)?;
    Ok(Approved {
        payload_sha256,
        signers: t.valid,
        nonce: p.nonce.clone(),
        payload: p,
        ignored: t.problems,
    })
}

/// Step 1 (after the size limits): the trust document must be for this agent's fleet and
/// domain and inside its window, or nothing destructive can be verified (fail closed).
pub(crate) fn trust_usable(
    ctx: &GateContext,
    trust: &TrustStore,
    now: i64,
) -> Result<(), Rejection> {
    if trust.fleet != ctx.fleet || trust.domain != ctx.domain {
        return Err(Rejection::new(
            RejectionCode::TrustStoreInvalid,
            format!(
                "the trust document is for fleet {:?} / domain {:?}, this agent is configured for {:?} / {:?}",
                trust.fleet, trust.domain, ctx.fleet, ctx.domain
            ),
        ));
    }
    trust.check_window(now)
}

/// Step 3: the signed text's fleet, host and state epoch against the agent's own
/// (`what` names the document in the messages: "approval", "job").
pub(crate) fn scope(
    what: &str,
    fleet: &str,
    host: &str,
    epoch: &str,
    ctx: &GateContext,
    ledger: &dyn NonceLedger,
) -> Result<(), Rejection> {
    if fleet != ctx.fleet {
        return Err(Rejection::new(
            RejectionCode::WrongFleet,
            format!(
                "the {what} is for fleet {fleet:?}, this agent belongs to {:?}",
                ctx.fleet
            ),
        ));
    }
    if host != ctx.host {
        return Err(Rejection::new(
            RejectionCode::WrongHost,
            format!("the {what} is for host {host:?}, this is {:?}", ctx.host),
        ));
    }
    let current = ledger.state_epoch();
    if epoch != current {
        return Err(Rejection::new(
            RejectionCode::EpochMismatch,
            format!(
                "the {what} was requested in state epoch {epoch}, the agent's state is now epoch {current} (its state was reset); sign a new request"
            ),
        ));
    }
    Ok(())
}

/// Step 4, one line family (`param`, `bind`): every name on either side must carry the same
/// value, else `binding_mismatch` naming `family.name`.
pub(crate) fn compare_lines(
    family: &str,
    what: &str,
    planned: &str,
    got: &std::collections::BTreeMap<String, String>,
    want: &std::collections::BTreeMap<String, String>,
) -> Result<(), Rejection> {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for k in keys {
        let (g, w) = (got.get(k), want.get(k));
        if g != w {
            return Err(Rejection::binding(
                &format!("{family}.{k}"),
                format!(
                    "{family}.{k} is {} in the {what} and {} in the {planned}",
                    g.map_or("absent".to_string(), |v| format!("{v:?}")),
                    w.map_or("absent".to_string(), |v| format!("{v:?}"))
                ),
            ));
        }
    }
    Ok(())
}

/// Step 4's `stale_state`: the guest's config digest differs from the one signed.
pub(crate) fn stale(vmid: u32, signed: Option<&str>, now: Option<&str>) -> Rejection {
    Rejection::new(
        RejectionCode::StaleState,
        format!(
            "CT {vmid} changed since the request was rendered (config digest {} then, {} now)",
            signed.unwrap_or("none"),
            now.unwrap_or("none")
        ),
    )
}

/// What steps 5-8 need from a parsed, bound document.
pub(crate) struct Signed<'a> {
    /// "approval" or "job" (messages only).
    pub what: &'a str,
    pub payload: &'a [u8],
    pub signatures: &'a [&'a [u8]],
    /// Distinct operational principals needed.
    pub threshold: u32,
    pub role_claim: Role,
    pub nonce: &'a str,
    pub not_before: i64,
    pub expires_at: i64,
    /// Recorded with the nonce.
    pub op: &'a str,
    pub vmid: u32,
}

/// Steps 5-8, shared by every signed document the agent acts on: each signature in §5.6
/// order, distinct operational principals against `threshold`, the role claim, the clock and
/// the payload's window, and the nonce consumed last. Returns the payload's sha256 and the
/// tally.
pub(crate) fn authenticate_and_consume(
    policy: &Policy,
    trust: &TrustStore,
    s: &Signed<'_>,
    now: i64,
    ledger: &dyn NonceLedger,
) -> Result<(String, Tally), Rejection> {
    let t = authenticate(policy, trust, s, now, ledger.clock_high_water())?;
    let what = format!("the {}", s.what);
    let authed = |r: Rejection| {
        let mut r = r.authenticated(true);
        r.per_signature = t.problems.clone();
        r
    };
    // 8. consume the nonce, last.
    let payload_sha256 = hex::encode(Sha256::digest(s.payload));
    let claim = NonceClaim {
        nonce: s.nonce.to_string(),
        payload_sha256: payload_sha256.clone(),
        op: s.op.to_string(),
        vmid: s.vmid,
        expires_at: s.expires_at,
        now,
        signer_fingerprints: t.valid.iter().map(|s| s.fingerprint.clone()).collect(),
    };
    match ledger.consume(&claim) {
        Ok(()) => Ok((payload_sha256, t)),
        Err(NonceRefusal::Replayed) => Err(authed(Rejection::new(
            RejectionCode::Replayed,
            format!("nonce {} was already used; {what} works once", s.nonce),
        ))),
        Err(NonceRefusal::ExpiredForever) => Err(authed(Rejection::new(
            RejectionCode::Expired,
            format!("{what} expired before the agent's nonce garbage-collection horizon"),
        ))),
        Err(NonceRefusal::Unavailable(m)) => Err(authed(Rejection::new(
            RejectionCode::InternalError,
            format!("the nonce store could not record {what}: {m}"),
        ))),
    }
}

/// Steps 5-7 without the nonce (also the offline check): each signature, distinct
/// operational principals against `threshold`, the role claim, the clock against its
/// high-water mark (when known) and the payload's window.
pub(crate) fn authenticate(
    policy: &Policy,
    trust: &TrustStore,
    s: &Signed<'_>,
    now: i64,
    clock_high_water: Option<i64>,
) -> Result<Tally, Rejection> {
    let leeway = policy.leeway_secs.clamp(0, 300);
    let what = format!("the {}", s.what);
    let t = tally(trust, &[Role::Operational], s.payload, s.signatures, now);
    let threshold = s.threshold.max(1);
    if t.count(Role::Operational) < threshold as usize {
        return Err(t.shortfall(t.count(Role::Operational), threshold, &what));
    }
    let authed = |r: Rejection| {
        let mut r = r.authenticated(true);
        r.per_signature = t.problems.clone();
        r
    };
    if s.role_claim != Role::Operational {
        return Err(authed(Rejection::new(
            RejectionCode::RoleMismatch,
            format!(
                "{what} claims role {}, but it is signed by operational keys",
                s.role_claim
            ),
        )));
    }
    // 7. time, at the agent's clock.
    if clock_high_water.is_some_and(|hw| now < hw - leeway) {
        return Err(authed(Rejection::new(
            RejectionCode::ClockUntrusted,
            "the system clock is behind the latest time the agent has recorded; fix the clock",
        )));
    }
    time_window(policy, s.what, s.not_before, s.expires_at, now).map_err(authed)?;
    Ok(t)
}

/// The payload's own window at the agent clock (leeway applies), §5.9.
pub(crate) fn time_window(
    policy: &Policy,
    what: &str,
    not_before: i64,
    expires_at: i64,
    now: i64,
) -> Result<(), Rejection> {
    let leeway = policy.leeway_secs.clamp(0, 300);
    if expires_at - not_before > policy.max_validity_secs {
        return Err(Rejection::new(
            RejectionCode::ValidityTooLong,
            format!(
                "the {what} is valid for {} s; at most {} s are allowed",
                expires_at - not_before,
                policy.max_validity_secs
            ),
        ));
    }
    if now + leeway < not_before {
        return Err(Rejection::new(
            RejectionCode::NotYetValid,
            format!(
                "the {what} is valid from {}; it is now {}",
                format_utc(not_before),
                format_utc(now)
            ),
        ));
    }
    if now - leeway >= expires_at {
        return Err(Rejection::new(
            RejectionCode::Expired,
            format!(
                "the {what} expired at {}; it is now {}",
                format_utc(expires_at),
                format_utc(now)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn size_limits(payload: &[u8], signatures: &[&[u8]]) -> Result<(), Rejection> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::new(
            RejectionCode::PayloadTooLarge,
            format!(
                "the payload is {} bytes; at most {MAX_PAYLOAD_BYTES} are allowed",
                payload.len()
            ),
        ));
    }
    if signatures.len() > MAX_SIGNATURES {
        return Err(Rejection::new(
            RejectionCode::TooManySignatures,
            format!(
                "{} signatures; at most {MAX_SIGNATURES} are allowed",
                signatures.len()
            ),
        ));
    }
    if let Some(big) = signatures.iter().find(|s| s.len() > MAX_SIGNATURE_BYTES) {
        return Err(Rejection::new(
            RejectionCode::SignatureTooLarge,
            format!(
                "a signature is {} bytes; at most {MAX_SIGNATURE_BYTES} are allowed",
                big.len()
            ),
        ));
    }
    Ok(())
}

/// Offline check for people (`drover verify-approval`): size limits, the trust document's
/// window, payload grammar, fleet, signatures and threshold, the role claim and the payload's
/// time window. It binds to no step and consumes no nonce, so success here is *not* an
/// approval; only [`verify_approval`] is.
pub fn verify_offline(
    trust: &TrustStore,
    payload: &[u8],
    signatures: &[&[u8]],
    now: i64,
) -> Result<Vec<SignerInfo>, Rejection> {
    size_limits(payload, signatures)?;
    trust.check_window(now)?;
    let p = ApprovalPayload::parse(payload)?;
    if p.fleet != trust.fleet {
        return Err(Rejection::new(
            RejectionCode::WrongFleet,
            format!(
                "the approval is for fleet {:?}, the trust document for {:?}",
                p.fleet, trust.fleet
            ),
        ));
    }
    let t = tally(trust, &[Role::Operational], payload, signatures, now);
    let have = t.count(Role::Operational);
    if have < trust.threshold_destructive_op as usize {
        return Err(t.shortfall(have, trust.threshold_destructive_op, "the approval"));
    }
    let authed = |r: Rejection| {
        let mut r = r.authenticated(true);
        r.per_signature = t.problems.clone();
        r
    };
    if p.role != Role::Operational {
        return Err(authed(Rejection::new(
            RejectionCode::RoleMismatch,
            format!(
                "the approval claims role {}, but it is signed by operational keys",
                p.role
            ),
        )));
    }
    time_window(
        &Policy::default(),
        "approval",
        p.not_before,
        p.expires_at,
        now,
    )
    .map_err(authed)?;
    Ok(t.valid)
}

/// Picks the planned step an approval payload is about (by guest); `binding_mismatch` with
/// field `no_planned_action` if the plan has no step for that guest. Only the guest is used to
/// pick, so every other difference surfaces as a precise mismatch in [`verify_approval`].
pub fn select_planned<'a>(
    payload: &[u8],
    plan: &'a [PlannedAction],
) -> Result<&'a PlannedAction, Rejection> {
    let p = ApprovalPayload::parse(payload)?;
    plan.iter()
        .find(|a| a.vmid == p.vmid)
        .ok_or_else(|| Rejection::no_planned_action(&format!("{} of CT {}", p.op, p.vmid)))
}
