//! The changed keys' values as PVE holds them, compared by meaning, and the decision a verify
//! window takes from them. Recovery after a restart decides here, from PVE's live values
//! against the journaled old and new ones, never from "the guest answers now"
//! (`safety-nets.md` §4.4: seed B's recovery recorded a revert as a commit that way).

use std::collections::BTreeMap;

use proxmox_client::{LxcConfig, NetConfig};

/// A key's value in a config as PVE text (`None`: not set).
pub fn raw_value(c: &LxcConfig, key: &str) -> Option<String> {
    let numbered = |prefix: &str| key.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok());
    if let Some(i) = numbered("net") {
        return c.net.get(&i).map(|n| n.to_string());
    }
    if let Some(i) = numbered("mp") {
        return c.mp.get(&i).map(|m| m.to_string());
    }
    let b = |v: Option<bool>| v.map(|b| if b { "1" } else { "0" }.to_string());
    match key {
        "memory" => c.memory.map(|v| v.to_string()),
        "swap" => c.swap.map(|v| v.to_string()),
        "cores" => c.cores.map(|v| v.to_string()),
        "hostname" => c.hostname.clone(),
        "nameserver" => c.nameserver.clone(),
        "searchdomain" => c.searchdomain.clone(),
        "features" => c.features.as_ref().map(|f| f.to_string()),
        "onboot" => b(c.onboot),
        "protection" => b(c.protection),
        "tags" => c.tags.clone(),
        "description" => c.description.clone(),
        other => c.extra.get(other).cloned(),
    }
}

/// The values of `keys` in `c`.
pub fn live_values(c: &LxcConfig, keys: &[String]) -> BTreeMap<String, Option<String>> {
    keys.iter().map(|k| (k.clone(), raw_value(c, k))).collect()
}

/// Whether a live value is the wanted one, by meaning: PVE re-prints what it is given (a
/// `net[n]` gains `type=veth` and keeps its MAC), so text would differ when nothing did.
pub fn same_value(key: &str, live: Option<&str>, wanted: Option<&str>) -> bool {
    match (live, wanted) {
        (None, None) => true,
        (Some(l), Some(w)) => {
            if key.starts_with("net")
                && let (Ok(l), Ok(w)) = (l.parse::<NetConfig>(), w.parse::<NetConfig>())
            {
                return l.same_as_desired(&w);
            }
            l.trim_end_matches('\n') == w.trim_end_matches('\n')
        }
        _ => false,
    }
}

/// What the live config holds, against the window's old and new values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Every key holds Drover's new value.
    New,
    /// Every key holds its old value.
    Old,
    /// Anything else: a third party edited the guest.
    Neither,
}

pub fn classify(
    live: &BTreeMap<String, Option<String>>,
    old: &BTreeMap<String, Option<String>>,
    new: &BTreeMap<String, Option<String>>,
) -> Live {
    let all = |side: &BTreeMap<String, Option<String>>| {
        side.iter()
            .all(|(k, want)| same_value(k, live.get(k).and_then(|v| v.as_deref()), want.as_deref()))
    };
    if all(new) {
        Live::New
    } else if all(old) {
        Live::Old
    } else {
        Live::Neither
    }
}

/// What an open window does next, decided from its phase, the live values and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Not yet: look again at the given unix ms.
    WaitUntil(i64),
    /// Run a probe round now.
    Probe,
    /// Send the old values back.
    Revert,
    /// The change is live but was never judged and cannot be (its baseline failed).
    Unverifiable,
    /// The old values are live: the change was reverted (by this agent or someone else).
    FoundReverted,
    /// The old values are live and no push was recorded: the change never reached PVE.
    NeverApplied,
    /// Neither the old nor the new values: touch nothing, report, park.
    Conflict,
}

/// The open phases a window can be found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenPhase {
    Armed,
    Waiting,
    Reverting,
}

/// The rule table of `safety-nets.md` §6.2 "Restart recovery", used by every turn alike.
pub fn decide(
    phase: OpenPhase,
    live: Live,
    baseline_ok: bool,
    now_ms: i64,
    settle_until_ms: i64,
    deadline_ms: i64,
) -> Next {
    match (phase, live) {
        (_, Live::Neither) => Next::Conflict,
        (OpenPhase::Armed, Live::Old) => Next::NeverApplied,
        (OpenPhase::Reverting, Live::Old) | (OpenPhase::Waiting, Live::Old) => Next::FoundReverted,
        (OpenPhase::Reverting, Live::New) => Next::Revert,
        (_, Live::New) if !baseline_ok => Next::Unverifiable,
        (_, Live::New) if now_ms >= deadline_ms => Next::Revert,
        (_, Live::New) if now_ms < settle_until_ms => Next::WaitUntil(settle_until_ms),
        (_, Live::New) => Next::Probe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn live_is_judged_by_meaning() {
        let old = m(&[(
            "net0",
            Some("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,type=veth"),
        )]);
        let new = m(&[(
            "net0",
            Some("name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:01"),
        )]);
        let live_new = m(&[(
            "net0",
            Some("name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:01,type=veth"),
        )]);
        assert_eq!(classify(&live_new, &old, &new), Live::New);
        assert_eq!(classify(&old, &old, &new), Live::Old);
        let other = m(&[(
            "net0",
            Some("name=eth0,bridge=vmbr2,hwaddr=BC:24:11:00:00:01,type=veth"),
        )]);
        assert_eq!(classify(&other, &old, &new), Live::Neither);
        let mem_old = m(&[("memory", Some("512"))]);
        let mem_new = m(&[("memory", Some("256"))]);
        assert_eq!(classify(&mem_new, &mem_old, &mem_new), Live::New);
        assert_eq!(
            classify(&m(&[("memory", None)]), &mem_old, &mem_new),
            Live::Neither
        );
    }

    #[test]
    fn the_recovery_rules() {
        use Next::*;
        use OpenPhase::*;
        let d = |p, l, now| decide(p, l, true, now, 10, 20);
        assert_eq!(d(Armed, Live::Old, 0), NeverApplied);
        assert_eq!(
            d(Armed, Live::New, 0),
            WaitUntil(10),
            "pushed, not yet settled"
        );
        assert_eq!(d(Waiting, Live::New, 5), WaitUntil(10));
        assert_eq!(
            d(Waiting, Live::New, 12),
            Probe,
            "deadline not passed: resume"
        );
        assert_eq!(
            d(Waiting, Live::New, 20),
            Revert,
            "deadline passed, never confirmed"
        );
        assert_eq!(d(Waiting, Live::Old, 12), FoundReverted);
        assert_eq!(d(Waiting, Live::Neither, 12), Conflict);
        assert_eq!(
            d(Reverting, Live::New, 0),
            Revert,
            "the revert is sent again"
        );
        assert_eq!(d(Reverting, Live::Old, 0), FoundReverted);
        assert_eq!(d(Reverting, Live::Neither, 0), Conflict);
        assert_eq!(decide(Waiting, Live::New, false, 12, 10, 20), Unverifiable);
    }
}
