//! The document `drover status` shows (`GET /v1/status`, the hub report, `--output json`):
//! the engine's state gathered in one place, so every surface shows the same thing.

use crate::approval::trust::Trust;
use crate::reconcile::engine::Engine;

/// Everything `drover status` shows.
pub fn status_json(engine: &Engine) -> serde_json::Value {
    let snap = engine.status().snapshot();
    let lanes = engine.lanes().stats();
    let desired = engine.desired();
    serde_json::json!({
        "host": engine.host(),
        "desired": {
            "revision": snap.desired_revision,
            "origin": desired.as_ref().map(|d| d.origin.clone()),
            "stale": snap.desired_degraded,
        },
        "source": snap.source,
        "last_pass_unix": snap.last_pass_unix,
        "passes": snap.passes,
        "lanes": {"queued": lanes.queued, "active": lanes.active, "retries_total": lanes.retries_total},
        "trust": match engine.trust() {
            Trust::Valid(t) => {
                let origin = engine
                    .store()
                    .trust_record()
                    .ok()
                    .flatten()
                    .filter(|r| r.sha256 == t.sha256())
                    .map(|r| r.origin);
                serde_json::json!({"valid": true, "version": t.version, "sha256": t.sha256(), "origin": origin})
            }
            Trust::Invalid { code, message } => serde_json::json!({"valid": false, "code": code, "message": message}),
        },
        "suspensions": engine.store().suspensions(),
        "jobs": crate::jobs::listing::rows(
            engine.store(),
            &crate::jobs::inbox::JobDirs::new(
                engine.store().journal().dir(),
                engine.approvals().candidate_dirs(),
            ),
        ),
        "safety": safety_json(engine),
        "guests": snap.guests.values().collect::<Vec<_>>(),
        "unmanaged": snap.unmanaged,
    })
}

/// `[safety]` and the copies: the storage (or that destructive steps are refused), and per
/// state how many manifests there are, with the live ones listed.
fn safety_json(engine: &Engine) -> serde_json::Value {
    let copies = engine.store().copies().unwrap_or_default();
    let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
    for c in &copies {
        *by_state.entry(c.state.as_str()).or_default() += 1;
    }
    let live: Vec<serde_json::Value> = copies
        .iter()
        .filter(|c| c.is_live())
        .map(|c| {
            serde_json::json!({
                "id": c.id, "vmid": c.vmid, "kind": c.kind, "state": c.state.as_str(),
                "volid": c.volid, "sha256": c.sha256, "protect_until_ms": c.protect_until_ms,
            })
        })
        .collect();
    serde_json::json!({
        "storage": engine.safety().and_then(|s| s.policy().storage.clone()),
        "copies": by_state,
        "live": live,
    })
}
