//! `GET /access/permissions`: the privileges the calling token holds, as PVE answers it (a map
//! of ACL path to a map of privilege to its propagate flag). Minimal: the simulator has no ACL
//! tree, only one privilege list per token (`SimConfig::token_privileges`), granted on `/`
//! with propagation, or every privilege when none is configured (an administrator's token).

use serde_json::{Map, Value, json};

/// Every privilege PVE 8/9 knows that matters for LXC guests and their storage; what an
/// administrator's token holds.
pub const ALL: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "SDN.Audit",
    "SDN.Use",
    "Sys.Audit",
    "Sys.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// The answer for a token holding `privileges` (None: all), for `path` (None: the whole tree).
pub fn answer(privileges: Option<&[String]>, path: Option<&str>) -> Value {
    let mut privs = Map::new();
    match privileges {
        Some(list) => {
            for p in list {
                privs.insert(p.clone(), json!(1));
            }
        }
        None => {
            for p in ALL {
                privs.insert((*p).to_string(), json!(1));
            }
        }
    }
    // Granted on `/` and propagated: every path below holds the same privileges.
    let key = path.unwrap_or("/").to_string();
    let mut out = Map::new();
    out.insert(key, Value::Object(privs));
    Value::Object(out)
}
