//! What the agent costs pveproxy on a host where nothing changes: a full read is N + 2
//! requests over a handful of reused TLS connections (pveproxy has 3 workers and every new
//! connection is a handshake for them). Measured with the simulator's own counters.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Host, code, guest, seed, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_200_guests_is_n_plus_2_requests_over_few_connections() {
    let n = 200u32;
    let h = Host::start((0..n).map(|i| seed(1000 + i, true, 256)).collect()).await;
    let doc: String = (0..n).map(|i| guest(1000 + i, "running", 256)).collect();
    h.desired(&format!("revision = 1\n{doc}"));
    let requests = h.sim.request_count();
    let connections = h.sim.tls_connections();
    let o = h.drover_async(&["plan", "--output", "json"]).await;
    assert!(code(&o) == 0 || code(&o) == 2, "{}", stdout(&o));
    let requests = h.sim.request_count() - requests;
    let connections = h.sim.tls_connections() - connections;
    assert_eq!(
        requests,
        u64::from(n) + 2,
        "the CT list, the cluster view and one config read per guest"
    );
    assert!(
        connections <= 10,
        "{connections} TLS connections for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_on_a_converged_host_is_one_read_of_n_plus_2_requests() {
    let n = 200u32;
    let h = Host::start((0..n).map(|i| seed(1000 + i, true, 256)).collect()).await;
    let doc: String = (0..n).map(|i| guest(1000 + i, "running", 256)).collect();
    h.desired(&format!("revision = 1\n{doc}"));
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    // Seeded guests are adopted first; the next run records that and journals the document;
    // the one after it is the steady state.
    h.adopt_all().await;
    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let requests = h.sim.request_count();
    let connections = h.sim.tls_connections();
    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "a converged host exits 0: {}", stdout(&o));
    let requests = h.sim.request_count() - requests;
    let connections = h.sim.tls_connections() - connections;
    assert_eq!(
        requests,
        u64::from(n) + 2,
        "one full read: nothing ran, so nothing needs verifying again"
    );
    assert!(
        connections <= 10,
        "{connections} TLS connections for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_with_work_still_verifies_the_host_after_its_steps() {
    // One stopped guest among converged ones: the step runs, and the final read must see
    // the result (a second full read), so the exit code is about the host as it is after.
    let n = 20u32;
    let h = Host::start((0..n).map(|i| seed(1000 + i, i != 0, 256)).collect()).await;
    let doc: String = (0..n).map(|i| guest(1000 + i, "running", 256)).collect();
    h.desired(&format!("revision = 1\n{doc}"));
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    h.adopt_all().await;
    let requests = h.sim.request_count();
    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(h.sim.guest(1000).is_some_and(|g| g.running));
    let requests = h.sim.request_count() - requests;
    assert!(
        requests >= 2 * (u64::from(n) + 2),
        "two full reads around the step, got {requests} requests"
    );
}

/// What one step costs on its lane (tasks end at once here, so every wait is one poll): a
/// start is 5 requests (the fresh read: status and `pending` together; the call; one poll; a
/// status read to confirm, since a start changes nothing else), and a new guest's create and
/// start are 9 (the create's confirmation read serves as the start's fresh read). Before
/// (counted from that code): 7 and 12 (status and config before every step; status, config
/// and pending after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_costs_few_requests_on_its_lane() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let n = 20u32;
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: std::time::Duration::ZERO,
        guests: (0..n).map(|i| seed(1000 + i, true, 256)).collect(),
        ..pve_sim::SimConfig::default()
    })
    .await;
    let doc: String = (0..n).map(|i| guest(1000 + i, "running", 256)).collect();
    h.desired(&format!("revision = 1\n{doc}"));
    h.adopt_all().await;
    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "the adoptions are recorded: {}", stdout(&o));
    // Someone stops a guest: its lane starts it again.
    assert!(h.sim.alter(1000, |ct| ct.running = false));
    let full_read = u64::from(n) + 2;

    let requests = h.sim.request_count();
    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(h.sim.guest(1000).is_some_and(|g| g.running));
    let lane = h.sim.request_count() - requests - 2 * full_read;
    assert_eq!(lane, 5, "read 2 + start 1 + poll 1 + confirm 1");

    let new = 1000 + n;
    h.desired(&format!(
        "revision = 2\n{doc}{}",
        guest(new, "running", 256)
    ));
    let requests = h.sim.request_count();
    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(h.sim.guest(new).is_some_and(|g| g.running));
    let lane = h.sim.request_count() - requests - full_read - (full_read + 1);
    assert_eq!(
        lane, 9,
        "create: read 2 + call 1 + poll 1 + confirm 2; start: call 1 + poll 1 + confirm 1"
    );
}

/// What one run learns of its tasks' durations is kept in the journal: the next `run --once`
/// makes its first poll at the learned end (one poll per wait) instead of learning the type
/// again on the growing schedule (50 ms, 100 ms, 200 ms, ... until the task is seen over).
/// Production polling here, not the tests' 20 ms interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_durations_learned_by_one_run_spare_the_next_its_polls() {
    let n = 4u32;
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: std::time::Duration::from_millis(800),
        ..pve_sim::SimConfig::default()
    })
    .await;
    let config = std::fs::read_to_string(h.config()).unwrap();
    let production: String = config
        .lines()
        .filter(|l| !l.starts_with("task_poll_interval"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(production, config);
    std::fs::write(h.config(), production).unwrap();
    let doc = |revision: u32, ensure: &str| {
        let guests: String = (0..n).map(|i| guest(300 + i, ensure, 256)).collect();
        format!("revision = {revision}\n{guests}")
    };
    h.desired(&doc(1, "stopped"));
    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "the creates: {}", stdout(&o));

    // A start step costs read 2 + call 1 + confirm 1 on its lane besides its polls, and a
    // run with work reads the host twice.
    let polls_of_a_run = || async {
        let requests = h.sim.request_count();
        let o = h.drover_async(&["run", "--once"]).await;
        assert_eq!(code(&o), 0, "{}", stdout(&o));
        for i in 0..n {
            assert!(h.sim.guest(300 + i).is_some_and(|g| g.running));
        }
        h.sim.request_count() - requests - 2 * (u64::from(n) + 2) - 4 * u64::from(n)
    };
    h.desired(&doc(2, "running"));
    let learning = polls_of_a_run().await;
    for i in 0..n {
        assert!(h.sim.alter(300 + i, |ct| ct.running = false));
    }
    let learned = polls_of_a_run().await;
    assert!(
        learned <= u64::from(n) + 1,
        "{learned} polls for {n} starts with the duration learned by the run before ({learning} while learning)"
    );
    assert!(
        learned + u64::from(n) <= learning,
        "{learned} polls with the learned duration, {learning} while learning"
    );
}
