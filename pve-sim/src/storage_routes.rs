//! Routing of the storage, backup and restore endpoints (`pve-backup-api-schema.json`), kept
//! apart from `server.rs` so the LXC routes and these evolve separately. `server::route`
//! asks this module first; `None` means "not one of mine".

use std::collections::BTreeMap;

use serde_json::Value;

use crate::state::ApiError;
use crate::{backup, schema, storage};

fn not_implemented(method: &str, path: &str) -> ApiError {
    ApiError::new(501, format!("Method '{method} /{path}' not implemented"))
}

/// Handles `method` on the path segments `seg` if it is a storage/backup endpoint.
pub async fn route(
    shared: &crate::Shared,
    method: &str,
    seg: &[&str],
    params: &BTreeMap<String, String>,
    user: &str,
) -> Option<Result<Value, ApiError>> {
    if let ["storage", s] = seg {
        // The storage config needs Datastore.Allocate, which the sim's tokens lack.
        return Some(Err(ApiError::new(
            403,
            format!("Permission check failed (/storage/{s}, Datastore.Allocate)"),
        )));
    }
    let ["nodes", n, rest @ ..] = seg else {
        return None;
    };
    if *n != shared.config.node && *n != "localhost" {
        return None;
    }
    let restore = params.get("restore").is_some_and(|r| r == "1");
    // Most requests are LXC ones: decide before copying anything.
    let mine = match rest {
        ["storage", ..] | ["vzdump", ..] => true,
        ["lxc"] => method == "POST" && restore,
        ["lxc", _, "feature"] => true,
        _ => false,
    };
    if !mine {
        return None;
    }
    let mut params = params.clone();
    params.insert("node".into(), shared.config.node.clone());
    let path = format!("/{}", seg.join("/"));
    let template: String = match rest {
        ["storage"] => "/nodes/{node}/storage".into(),
        ["storage", s, tail @ ..] => {
            params.insert("storage".into(), storage::decode(s));
            match tail {
                [] => "/nodes/{node}/storage/{storage}".into(),
                ["status"] => "/nodes/{node}/storage/{storage}/status".into(),
                ["content"] => "/nodes/{node}/storage/{storage}/content".into(),
                // A volid may arrive with its '/' encoded or not.
                ["content", vol @ ..] => {
                    let v: Vec<String> = vol.iter().map(|p| storage::decode(p)).collect();
                    params.insert("volume".into(), v.join("/"));
                    "/nodes/{node}/storage/{storage}/content/{volume}".into()
                }
                ["prunebackups"] => "/nodes/{node}/storage/{storage}/prunebackups".into(),
                _ => return Some(Err(not_implemented(method, &path))),
            }
        }
        ["vzdump"] => "/nodes/{node}/vzdump".into(),
        ["vzdump", "defaults"] => "/nodes/{node}/vzdump/defaults".into(),
        ["vzdump", "extractconfig"] => "/nodes/{node}/vzdump/extractconfig".into(),
        ["lxc"] if method == "POST" && restore => "/nodes/{node}/lxc".into(),
        ["lxc", v, "feature"] => {
            params.insert("vmid".into(), v.to_string());
            "/nodes/{node}/lxc/{vmid}/feature".into()
        }
        _ => return None,
    };
    if template != "/nodes/{node}/storage/{storage}"
        && let Err(e) = schema::validate(method, &template, &params)
    {
        return Some(Err(ApiError::params(e)));
    }
    let sid = params.get("storage").cloned().unwrap_or_default();
    let result = match (method, template.as_str()) {
        ("GET", "/nodes/{node}/storage") => {
            let mut h = shared.lock();
            h.advance();
            storage::list(&h, &params)
        }
        ("GET", "/nodes/{node}/storage/{storage}") => {
            let h = shared.lock();
            h.layout.require(&sid).map(|_| {
                serde_json::json!([
                    {"subdir": "content"}, {"subdir": "download-url"}, {"subdir": "file-restore"},
                    {"subdir": "import-metadata"}, {"subdir": "prunebackups"}, {"subdir": "rrd"},
                    {"subdir": "rrddata"}, {"subdir": "status"}, {"subdir": "upload"}
                ])
            })
        }
        ("GET", "/nodes/{node}/storage/{storage}/status") => {
            let mut h = shared.lock();
            h.advance();
            storage::status(&h, &sid)
        }
        ("GET", "/nodes/{node}/storage/{storage}/content") => {
            let mut h = shared.lock();
            h.advance();
            storage::content(&h, &sid, &params, backup::may_backup(shared, user))
        }
        ("GET", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            let mut h = shared.lock();
            h.advance();
            let vol = params.get("volume").cloned().unwrap_or_default();
            backup::check_archive_access(shared, user, &vol)
                .and_then(|()| storage::volume_info(&h, &sid, &vol))
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/feature") => {
            let mut h = shared.lock();
            h.advance();
            let vmid: u32 = params.get("vmid").and_then(|v| v.parse().ok()).unwrap_or(0);
            storage::feature(&h, vmid, &params)
        }
        _ => backup::route(shared, method, &template, &path, &params, user).await,
    };
    Some(result)
}
