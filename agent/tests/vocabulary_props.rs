//! Property: any valid document converges, against the simulator over real TLS, to a state
//! whose next plan is empty; and so does any benign change of it afterwards. The planner's
//! steps are sent by the agent's own PVE adapter (`reconcile::pve`), one at a time with a
//! fresh read before each, as a lane turn does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Host, TEMPLATE};
use drover::reconcile::planner;
use drover::reconcile::pve::{Pve, Submission, WaitPolicy};
use drover::service::{config::Config, daemon};
use proptest::prelude::*;

/// A small deterministic generator, so one proptest seed is one document.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn coin(&mut self) -> bool {
        self.below(2) == 0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

#[derive(Clone)]
struct Mount {
    size: u64,
    flags: Vec<(&'static str, bool)>,
    options: Vec<&'static str>,
}

/// The generated parts of one guest entry.
#[derive(Clone)]
struct Entry {
    running: bool,
    scalars: Vec<String>,
    protection: Option<bool>,
    mounts: Vec<Mount>,
}

fn random_mount(d: &mut Dice) -> Mount {
    let mut flags = Vec::new();
    for f in ["backup", "ro", "acl", "quota", "replicate", "shared"] {
        if d.coin() {
            flags.push((f, d.coin()));
        }
    }
    let mut options = Vec::new();
    for o in ["noatime", "nodev", "nosuid"] {
        if d.below(3) == 0 {
            options.push(o);
        }
    }
    Mount {
        size: 1 + d.below(3),
        flags,
        options,
    }
}

fn random_scalars(d: &mut Dice) -> Vec<String> {
    let mut s = vec![
        format!("cores = {}", 1 + d.below(4)),
        format!("memory = {}", d.pick(&["256", "512", "1024"])),
    ];
    let mut maybe = |line: String, d: &mut Dice| {
        if d.coin() {
            s.push(line);
        }
    };
    let v = d.coin();
    maybe(format!("features = {{ nesting = {v} }}"), d);
    let v = d.pick(&[
        "[\"10.0.0.53\"]",
        "[\"10.0.0.53\", \"fd00::53\"]",
        "[\"1.1.1.1\"]",
    ]);
    maybe(format!("nameserver = {v}"), d);
    let v = d.pick(&["[\"lan.example\"]", "[\"a.example\", \"b.example\"]"]);
    maybe(format!("searchdomain = {v}"), d);
    let v = d.pick(&["host", "UTC", "Europe/Berlin"]);
    maybe(format!("timezone = \"{v}\""), d);
    let (o, u) = (d.below(5), d.below(60));
    maybe(format!("startup = {{ order = {o}, up = {u} }}"), d);
    let v = d.pick(&["0", "0.5", "2"]);
    maybe(format!("cpulimit = {v}"), d);
    let v = d.pick(&["100", "1024", "50"]);
    maybe(format!("cpuunits = {v}"), d);
    let v = d.coin();
    maybe(format!("console = {v}"), d);
    let v = d.below(7);
    maybe(format!("tty = {v}"), d);
    let v = d.pick(&["tty", "console", "shell"]);
    maybe(format!("cmode = \"{v}\""), d);
    let v = d.coin();
    maybe(format!("onboot = {v}"), d);
    s
}

fn random_entry(d: &mut Dice) -> Entry {
    Entry {
        running: d.coin(),
        scalars: random_scalars(d),
        protection: if d.below(3) == 0 { Some(true) } else { None },
        mounts: (0..d.below(3)).map(|_| random_mount(d)).collect(),
    }
}

/// A benign change of `a`: new scalars, mount points grown or changed, one maybe added;
/// never a removal and never clearing protection (those are signed, not converged).
fn benign_change(a: &Entry, d: &mut Dice) -> Entry {
    let mut b = random_entry(d);
    b.protection = a.protection.or(b.protection);
    let mut mounts: Vec<Mount> = a
        .mounts
        .iter()
        .map(|m| {
            let mut n = random_mount(d);
            n.size = m.size + d.below(2);
            n
        })
        .collect();
    if d.coin() {
        mounts.push(random_mount(d));
    }
    b.mounts = mounts;
    b
}

fn render(vmid: u32, e: &Entry) -> String {
    let mut t = format!(
        "[[guest]]\nvmid = {vmid}\nensure = \"{}\"\nhostname = \"p-{vmid}\"\ntemplate = \"{TEMPLATE}\"\nrootfs = \"local-lvm:4\"\nnet0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"\n",
        if e.running { "running" } else { "stopped" }
    );
    for s in &e.scalars {
        t.push_str(s);
        t.push('\n');
    }
    if let Some(p) = e.protection {
        t.push_str(&format!("protection = {p}\n"));
    }
    for (i, m) in e.mounts.iter().enumerate() {
        let mut parts = vec![
            "storage = \"local-lvm\"".to_string(),
            format!("size = {}", m.size),
            format!("path = \"/srv/m{i}\""),
        ];
        for (k, v) in &m.flags {
            parts.push(format!("{k} = {v}"));
        }
        if !m.options.is_empty() {
            let o: Vec<String> = m.options.iter().map(|o| format!("\"{o}\"")).collect();
            parts.push(format!("mountoptions = [{}]", o.join(", ")));
        }
        t.push_str(&format!("mp{i} = {{ {} }}\n", parts.join(", ")));
    }
    t
}

/// Runs the plan's first step until nothing is left (at most 20 steps); panics on a step the
/// property does not allow (destructive kinds) or a PVE error.
async fn converge(pve: &Pve, doc_text: &str, vmid: u32) -> usize {
    let doc = drover::desired::parse(doc_text.as_bytes(), "prop").expect("a valid document");
    let spec = doc.guests[&vmid].clone();
    for n in 0..20 {
        let actual = pve.read_guest(vmid).await.unwrap();
        let gp = planner::plan_guest(&spec, actual.as_ref(), None);
        // The one thing a valid document may ask that PVE refuses: drive changes while the
        // guest is protected (reported, and the rest converges).
        assert!(
            gp.notes.iter().all(|n| n.code == "mp_protected"),
            "{doc_text}\n{:?}",
            gp.notes
        );
        let Some(step) = gp.steps.first() else {
            return n;
        };
        assert!(
            !matches!(
                step.kind,
                planner::StepKind::Destroy
                    | planner::StepKind::Detach
                    | planner::StepKind::DeleteVolume
            ),
            "{doc_text}\n{step:?}"
        );
        let digest = actual.as_ref().map(|a| a.digest.clone());
        match pve.submit(step, digest.as_deref()).await {
            Ok(Submission::Task(upid)) => {
                let outcome = pve.wait(&upid, step.kind).await.unwrap();
                assert!(outcome.is_success(), "{doc_text}\n{step:?}: {outcome:?}");
            }
            Ok(Submission::Done) => {}
            Err(e) => panic!("{doc_text}\n{step:?}: {e}"),
        }
    }
    panic!("{doc_text}\ndid not converge in 20 steps");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_document_converges_to_an_empty_next_plan(seed in any::<u64>()) {
        static RT: std::sync::OnceLock<(tokio::runtime::Runtime, Host, Pve)> = std::sync::OnceLock::new();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(500);
        let (rt, _host, pve) = RT.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (host, pve) = rt.block_on(async {
                let host = Host::start_with(pve_sim::SimConfig {
                    task_duration: Duration::from_millis(5),
                    ..pve_sim::SimConfig::default()
                })
                .await;
                let config = Config::load(&host.config()).unwrap();
                let pve = daemon::pve_from_config(
                    &config,
                    WaitPolicy { poll_interval: Some(Duration::from_millis(10)) },
                )
                .unwrap();
                (host, pve)
            });
            (rt, host, pve)
        });
        let vmid = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut d = Dice(seed);
        let a = random_entry(&mut d);
        let b = benign_change(&a, &mut d);
        rt.block_on(async {
            let first = format!("revision = 1\n{}", render(vmid, &a));
            converge(pve, &first, vmid).await;
            // Converged means the next plan is empty: a second round sends nothing.
            assert_eq!(converge(pve, &first, vmid).await, 0, "{first}");
            let second = format!("revision = 2\n{}", render(vmid, &b));
            converge(pve, &second, vmid).await;
            assert_eq!(converge(pve, &second, vmid).await, 0, "{second}");
        });
    }
}
