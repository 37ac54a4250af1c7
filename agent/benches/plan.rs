//! Planning 10,000 guests (goal < 20 ms): the pure planner over a converged host with some
//! drift, measured in-process. Run: `cargo bench -p drover --bench plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use drover::desired;
use drover::model::{ActualConfig, ActualGuest, ActualHost, Power, RootfsState, parse_net};
use drover::reconcile::planner;

fn main() {
    let n = 10_000u32;
    let mut doc = String::from("revision = 1\n");
    let mut host = ActualHost::default();
    for i in 0..n {
        let vmid = 1000 + i;
        doc.push_str(&format!(
            "[[guest]]\nvmid = {vmid}\nhostname = \"ct-{vmid}\"\ntemplate = \"local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst\"\ncores = 2\nmemory = 1024\nswap = 512\nrootfs = \"local-lvm:8\"\nnet0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"\nonboot = true\ntags = [\"web\", \"prod\"]\ndescription = \"managed by drover\"\n"
        ));
        // Every tenth guest has drifted memory; the rest are converged.
        host.guests.insert(
            vmid,
            Box::new(ActualGuest {
                vmid,
                power: Power::Running,
                lock: None,
                config: ActualConfig {
                    hostname: Some(format!("ct-{vmid}")),
                    cores: Some(2),
                    memory: Some(if i % 10 == 0 { 512 } else { 1024 }),
                    swap: Some(512),
                    rootfs: Some(RootfsState {
                        storage: "local-lvm".into(),
                        size_mib: Some(8192),
                    }),
                    nets: [(
                        0u8,
                        Box::new(
                            parse_net(
                                "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth",
                            )
                            .expect("valid net"),
                        ),
                    )]
                    .into(),
                    onboot: true,
                    tags: vec!["prod".into(), "web".into()],
                    description: Some("managed by drover\n".into()),
                    protection: false,
                    unprivileged: true,
                    ..ActualConfig::default()
                },
                digest: "0".repeat(40),
                pending: BTreeSet::new(),
                template: false,
            }),
        );
    }
    host.elsewhere = BTreeMap::new();
    let t = Instant::now();
    let doc = desired::parse(doc.as_bytes(), "bench").expect("valid document");
    let parse_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut samples = Vec::new();
    let mut steps = 0;
    for _ in 0..21 {
        let t = Instant::now();
        let p = planner::plan(&doc, &host);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        steps = p.step_count();
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "plan 10000 guests: median {:.2} ms (min {:.2}, max {:.2}) over 21 runs, {steps} steps; parsing the document: {parse_ms:.1} ms",
        samples[10], samples[0], samples[20]
    );
}
