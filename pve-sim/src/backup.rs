//! Backups and restores: `vzdump` tasks, archives, protection, notes, pruning and restore.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::state::ApiError;

/// The backup endpoints (everything of `storage_routes` that changes state).
pub async fn route(
    _shared: &crate::Shared,
    method: &str,
    _template: &str,
    path: &str,
    _params: &BTreeMap<String, String>,
    _user: &str,
) -> Result<Value, ApiError> {
    Err(ApiError::new(
        501,
        format!("Method '{method} /{path}' not implemented"),
    ))
}
