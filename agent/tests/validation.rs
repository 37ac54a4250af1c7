//! Values from the desired document are checked with PVE's formats before anything is sent:
//! a hostile property string refuses the whole document (`desired_invalid`, guest, field) and
//! no request reaches the simulator's mutation log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Host, code, guest};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_property_strings_refuse_the_document_before_anything_is_sent() {
    let h = Host::start(vec![]).await;
    let good = guest(201, "running", 256);
    for (field, from, to) in [
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip=dhcp",
            "name=eth0,bridge=vmbr0;rm -rf /",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip=dhcp",
            "name=eth0,bridge=vmbr0,hookscript=local:snippets/x.sh",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip=dhcp",
            "name=eth0,bridge=vmbr0\\nlxc.hook.pre-start: /x",
        ),
        (
            "template",
            "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
            "local:backup/vzdump-lxc-101-2026_01_01-00_00_00.tar.zst",
        ),
    ] {
        let bad = good.replace(from, to);
        assert_ne!(bad, good);
        h.desired(&format!(
            "revision = 1\n{bad}{}",
            guest(202, "running", 256)
        ));
        let plan = h.drover_async(&["plan"]).await;
        assert_eq!(code(&plan), 1, "{}", text(&plan));
        let t = text(&plan);
        assert!(
            t.contains("desired_invalid") || t.contains("desired state"),
            "{t}"
        );
        assert!(
            t.contains("guest 201") && t.contains(&format!("field `{field}`")),
            "{t}"
        );
        if field == "template" {
            assert!(t.contains("template_is_backup"), "{t}");
        }
        // (Its exit code is issue 13 point 6's business; what matters here is that nothing
        // was sent and the refusal carries its code.)
        let run = h.drover_async(&["run", "--once"]).await;
        assert!(text(&run).contains("desired_invalid"), "{}", text(&run));
        assert!(
            h.sim.mutations().is_empty(),
            "a request reached PVE: {:?}",
            h.sim.mutations()
        );
    }
}
