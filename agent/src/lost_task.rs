//! Finding the PVE task a call started when its answer was lost (a crash or a timeout between
//! sending the call and journaling the UPID). Step recovery, the job runner and the safety-copy
//! sweep all ask this one question, so they share one rule.

use std::collections::BTreeSet;

use proxmox_client::{Client, Error, TaskListFilter, TaskSource, Upid};

/// The task a call whose answer was lost started: the earliest task of `worker` for `vmid`
/// that our own token started no earlier than `since_unix` (the moment before the call was
/// sent; PVE stamps tasks with its own clock, so 5 s of skew are allowed) and that `claimed`,
/// the tasks the journal already ties to a step, a copy or a job phase, does not hold. Two
/// calls of one kind on one guest can be seconds apart, so the earliest alone can be the
/// other's. Step recovery, the job runner and the safety-copy sweep all ask this question.
pub async fn find_unclaimed_task(
    client: &Client,
    node: &str,
    worker: &str,
    vmid: u32,
    since_unix: i64,
    claimed: &BTreeSet<String>,
) -> Result<Option<Upid>, Error> {
    let since = since_unix - 5;
    let filter = TaskListFilter {
        vmid: Some(vmid),
        typefilter: Some(worker.to_string()),
        since: Some(since),
        source: TaskSource::All,
        limit: Some(50),
    };
    let tasks = client.list_tasks(node, &filter).await?;
    let me = client.token_id();
    Ok(tasks
        .into_iter()
        .map(|t| t.upid)
        .filter(|u| {
            u.worker_type == worker
                && u.id == vmid.to_string()
                && u.user == me
                && i64::from(u.starttime) >= since
                && !claimed.contains(&u.to_string())
        })
        .min_by_key(|u| u.starttime))
}
