//! Would the agent accept this approval now? The parts of the gate's order (signing-gate.md
//! §5.6) that need the agent's state rather than a step: the binding to a pending request
//! (`binding_mismatch` for op, guest or params, `stale_state` for the config digest) and the
//! nonce (`replayed`). Used where an approval arrives without a step at hand (the control
//! socket, `drover verify-approval`), so they answer what the gate would answer, in its order:
//! binding before any signature is looked at.
//!
//! Only an answer: the gate verifies again, bound to the step, before anything runs.

use std::path::PathBuf;

use gate::ApprovalPayload;

/// A reason the agent would refuse the approval now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: String) -> Option<Refusal> {
    Some(Refusal { code, message })
}

/// The pending request an approval is for: named like it, else with its nonce, else for the
/// same guest and op.
pub fn request_for<'a>(
    payload: &ApprovalPayload,
    name: Option<&str>,
    pending: &'a [(PathBuf, String)],
) -> Option<&'a (PathBuf, String)> {
    let file_name = |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).map(str::to_string);
    let parsed = |t: &str| ApprovalPayload::parse(t.as_bytes()).ok();
    name.and_then(|n| {
        pending
            .iter()
            .find(|(p, _)| file_name(p).as_deref() == Some(n))
    })
    .or_else(|| {
        pending
            .iter()
            .find(|(_, t)| parsed(t).is_some_and(|r| r.nonce == payload.nonce))
    })
    .or_else(|| {
        pending
            .iter()
            .find(|(_, t)| parsed(t).is_some_and(|r| r.vmid == payload.vmid && r.op == payload.op))
    })
}

/// Binding to the pending requests (step 4 of the gate's order). `None`: it matches one.
pub fn binding(
    payload: &ApprovalPayload,
    name: Option<&str>,
    pending: &[(PathBuf, String)],
) -> Option<Refusal> {
    let claim = format!(
        "the approval claims {} of CT {} (unverified)",
        payload.op.as_str(),
        payload.vmid
    );
    let Some((path, text)) = request_for(payload, name, pending) else {
        return refuse(
            "binding_mismatch",
            format!("{claim}, but no destructive step of that guest is pending on this host"),
        );
    };
    let Ok(req) = ApprovalPayload::parse(text.as_bytes()) else {
        return refuse(
            "binding_mismatch",
            format!(
                "{claim}; the pending request {} does not parse",
                path.display()
            ),
        );
    };
    let field = if req.op != payload.op {
        Some("op")
    } else if req.vmid != payload.vmid {
        Some("guest")
    } else if req.params != payload.params {
        Some("params")
    } else {
        None
    };
    if let Some(field) = field {
        return refuse(
            "binding_mismatch",
            format!(
                "{claim}: field {field} differs from the pending request {} ({} of CT {})",
                path.display(),
                req.op.as_str(),
                req.vmid
            ),
        );
    }
    if req.guest_config_sha1 != payload.guest_config_sha1 {
        return refuse(
            "stale_state",
            format!(
                "CT {} changed since this was signed (config digest); sign the current request {}",
                payload.vmid,
                path.display()
            ),
        );
    }
    if req.nonce != payload.nonce {
        return refuse(
            "binding_mismatch",
            format!(
                "{claim}: field nonce differs: the request was renewed; sign the current request {}",
                path.display()
            ),
        );
    }
    None
}

/// The nonce (step 8): `replayed` when the journal says it was consumed.
pub fn replay(payload: &ApprovalPayload, consumed: bool) -> Option<Refusal> {
    consumed.then(|| Refusal {
        code: "replayed",
        message: format!(
            "this approval (nonce {}) was already used; a used approval is never accepted again",
            payload.nonce
        ),
    })
}
