//! `drover run` as systemd runs it: READY=1 only after recovery and the first PVE read,
//! STATUS= lines, STOPPING=1 and a prompt exit on SIGTERM that leaves running PVE tasks alone
//! (journaled, re-attached on the next start, never re-sent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Host, code};

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

fn recv_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_then_sigterm_exits_promptly_and_the_task_is_reattached() {
    // Creates take 6 s: SIGTERM arrives while one runs, and an exit that waited for it would
    // take seconds longer than a prompt one, even on a loaded machine.
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: Duration::from_secs(6),
        ..pve_sim::SimConfig::default()
    })
    .await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 120\nhostname = \"slow\"\ntemplate = \"{TEMPLATE}\"\nmemory = 256\nrootfs = \"local-lvm:4\"\n"
    ));
    let sock_path = h.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut cmd = h.command(&["run"]);
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let mut child = cmd.spawn().unwrap();

    let msgs = tokio::task::spawn_blocking({
        let sock = sock.try_clone().unwrap();
        move || recv_until(&sock, "READY=1", Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert!(
        msgs.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("STATUS=")), "{msgs:?}");

    // Wait until the create task is running, then stop the agent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.sim.count_mutations("create", 120) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.sim.count_mutations("create", 120), 1);
    let t = Instant::now();
    sigterm(child.id());
    let stopping = tokio::task::spawn_blocking({
        let sock = sock.try_clone().unwrap();
        move || recv_until(&sock, "STOPPING=1", Duration::from_secs(5))
    })
    .await
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_millis(4500),
        "did not exit promptly: {:?} (it must not wait for the PVE task)",
        t.elapsed()
    );
    assert!(
        stopping.iter().any(|m| m.contains("STOPPING=1")),
        "{stopping:?}"
    );

    // The step is journaled with its UPID and still in flight.
    let j = h.drover_async(&["journal", "--in-flight"]).await;
    let out = String::from_utf8_lossy(&j.stdout).into_owned();
    assert!(
        out.contains("running UPID:pve1:") && out.contains("vzcreate"),
        "{out}"
    );

    // The next start re-attaches instead of creating again, then converges.
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert_eq!(h.sim.count_mutations("create", 120), 1, "created twice");
    assert!(h.sim.guest(120).unwrap().running);
}

/// A hub that accepts connections and never answers (timeouts and retries could hold a fetch
/// for a minute): SIGTERM still stops the agent at once, also before READY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_hub_hangs_exits_promptly() {
    let h = Host::start(vec![]).await;
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = black_hole.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::spawn({
        let held = held.clone();
        move || {
            for c in black_hole.incoming().flatten() {
                held.lock().unwrap().push(c);
            }
        }
    });
    h.write_config_with_source(
        &format!("url = \"https://127.0.0.1:{port}/drover\"\ntimeout = \"20s\""),
        "",
    );
    let mut child = h.command(&["run"]).spawn().unwrap();
    // The agent is inside its first fetch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the agent never asked the hub"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    sigterm(child.id());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        // The hub's timeout is 20 s.
        t.elapsed() < Duration::from_secs(10),
        "SIGTERM waited for the hub: {:?}",
        t.elapsed()
    );
    assert!(
        status.success(),
        "a stop is a clean exit for the service: {status:?}"
    );
}

/// A host whose one stopped guest `vmid` Drover has adopted (desired running), and the PVE
/// handle the agent would use, for tests that make PVE calls behind the journal's back. None
/// without ssh-keygen (adoption is signed).
async fn adopted_guest_and_its_pve(vmid: u32) -> Option<(Host, drover::reconcile::pve::Pve)> {
    let h = Host::start(vec![common::seed(vmid, false, 256)]).await;
    h.desired(&format!(
        "revision = 1\n{}",
        common::guest(vmid, "running", 256)
    ));
    if common::skip_without("ssh-keygen", "-?") {
        return None;
    }
    h.adopt_all().await;
    let config = drover::service::config::Config::load(&h.config()).unwrap();
    let pve = drover::service::daemon::pve_from_config(
        &config,
        drover::reconcile::pve::WaitPolicy::production(),
    )
    .unwrap();
    Some((h, pve))
}

/// A step's close returns before its sync (`Store::done_behind`); a crash inside that window
/// leaves what this test builds by hand: the record `submitted` with the UPID of a task that
/// has ended. The next run rebuilds the close from the task's status and never sends the
/// call again. `drover run` returns only after the syncs behind its lanes, so the journal is
/// free and every record closed the moment it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_lost_behind_its_lane_is_rebuilt_from_the_task_and_never_resent() {
    use drover::model::step::{Step, StepKind};
    let Some((h, pve)) = adopted_guest_and_its_pve(1000).await else {
        return;
    };
    let step = Step {
        vmid: 1000,
        kind: StepKind::Start,
        params: Default::default(),
        changes: Vec::new(),
    };
    let drover::reconcile::pve::Submission::Task(upid) = pve.submit(&step, None).await.unwrap()
    else {
        panic!("a start is a task");
    };
    pve.wait(&upid, StepKind::Start).await.unwrap();
    let id = {
        let store = drover::store::Store::open(&h.state()).unwrap();
        let id = store
            .intent(&step, &gate::Classification::Benign, None, None)
            .unwrap();
        store.submitted(&id, &upid).unwrap();
        id
    };
    assert_eq!(h.sim.count_mutations("start", 1000), 1);

    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "{}", common::stdout(&o));
    assert_eq!(
        h.sim.count_mutations("start", 1000),
        1,
        "the start is never sent again"
    );
    let j = journal::Journal::open(&h.state()).expect("the journal is free once run returns");
    let rec = j.get(id.0).unwrap().unwrap();
    assert!(
        matches!(
            rec.phase,
            journal::Phase::Done {
                outcome: journal::Outcome::Ok,
                ..
            }
        ),
        "{rec:?}"
    );
    assert!(j.in_flight().unwrap().is_empty());
}

/// A start whose answer a crash lost, a second after an earlier start of the same guest that
/// the journal already holds: recovery adopts the task the lost call started, not the
/// earlier one (both are "a start of this CT by our token in the last seconds"), and sends
/// nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_matched_to_its_own_task_not_an_earlier_steps() {
    use drover::model::step::{Step, StepKind};
    let Some((h, pve)) = adopted_guest_and_its_pve(1001).await else {
        return;
    };
    let step = |kind| Step {
        vmid: 1001,
        kind,
        params: Default::default(),
        changes: Vec::new(),
    };
    let task = |s| match s {
        drover::reconcile::pve::Submission::Task(u) => u,
        _ => panic!("a power step is a task"),
    };
    let store = drover::store::Store::open(&h.state()).unwrap();
    // The earlier start, journaled to its end; then the guest is stopped again.
    let first = task(pve.submit(&step(StepKind::Start), None).await.unwrap());
    pve.wait(&first, StepKind::Start).await.unwrap();
    let earlier = store
        .intent(
            &step(StepKind::Start),
            &gate::Classification::Benign,
            None,
            None,
        )
        .unwrap();
    store.submitted(&earlier, &first).unwrap();
    store
        .done(&earlier, drover::store::StepOutcome::Ok)
        .unwrap();
    let stop = task(pve.submit(&step(StepKind::Stop), None).await.unwrap());
    pve.wait(&stop, StepKind::Stop).await.unwrap();
    // A second later (task start times are in seconds): the intent, then the call, whose
    // answer never reaches the journal.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lost = store
        .intent(
            &step(StepKind::Start),
            &gate::Classification::Benign,
            None,
            None,
        )
        .unwrap();
    let second = task(pve.submit(&step(StepKind::Start), None).await.unwrap());
    pve.wait(&second, StepKind::Start).await.unwrap();
    drop(store);
    assert_eq!(h.sim.count_mutations("start", 1001), 2);

    let o = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&o), 0, "{}", common::stdout(&o));
    assert_eq!(
        h.sim.count_mutations("start", 1001),
        2,
        "nothing sent again"
    );
    let j = journal::Journal::open(&h.state()).unwrap();
    let rec = j.get(lost.0).unwrap().unwrap();
    assert_eq!(rec.upid(), Some(second.to_string().as_str()), "{rec:?}");
    assert!(rec.is_done(), "{rec:?}");
}
