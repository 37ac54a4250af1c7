//! Help that never drifts: the examples every verb's `--help` ends with, and the man pages and
//! shell completions, all generated from the one clap definition of the command line.
//!
//! The generated files are checked in (`deploy/man/`, `deploy/completions/`) so that the
//! package needs no build step beyond `cargo build`; `agent/tests/help.rs` fails when they
//! differ from what the binary generates (`drover man --out deploy/man`, `drover completions
//! --out deploy/completions` regenerate them).

use std::path::Path;

use clap::Command;

/// `(verb path, example lines)`: what `drover VERB --help` shows under "Examples:". Every verb
/// has one; a test walks the command tree and fails on a verb without.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "job",
        "drover job new snapshot --vmid 105 --snapshot pre-upgrade --description before-upgrade\n\
         drover job new restore --vmid 101 --backup safety:backup/vzdump-lxc-101-2026_11_22-21_00_01.tar.zst",
    ),
    (
        "job new",
        "drover job new snapshot --vmid 105 --snapshot pre-upgrade\n\
         drover job new rollback --vmid 230 --snapshot pre-upgrade      # held afterwards\n\
         drover job new backup --vmid 105 --storage safety --protected\n\
         drover job new restore --vmid 101 --backup VOLID                # over CT 101\n\
         drover job new restore --vmid 150 --backup VOLID --no-hold      # beside it, on a free vmid\n\
         drover job new reboot --vmid 105",
    ),
    (
        "jobs",
        "drover jobs                         # pending signature, queued, running, done, failed\n\
         drover jobs --output json",
    ),
    (
        "run",
        "drover run              # the service (systemd runs this)\n\
         drover run --once       # one pass, wait for its steps: 0 converged, 2 pending",
    ),
    (
        "plan",
        "drover plan                         # the document on disk (or the hub's) vs. the host\n\
         drover plan --output json | jq .    # the same as data",
    ),
    (
        "check-config",
        "drover check-config                 # after every edit of /etc/drover/drover.toml\n\
         drover --config ./drover.toml check-config --offline",
    ),
    (
        "status",
        "drover status                       # one line per guest; 0 when all converged\n\
         drover status 105                   # one guest; 0 when it is converged\n\
         drover status --output json",
    ),
    (
        "reconcile",
        "drover reconcile 105                # now, whatever the backoff says\n\
         drover reconcile                    # every guest",
    ),
    (
        "suspend",
        "drover suspend 105 --reason \"restoring a backup by hand\"\n\
         drover suspend --reason \"maintenance window\"    # the whole host",
    ),
    (
        "resume",
        "drover resume 105\n\
         drover resume                       # the whole host",
    ),
    (
        "journal",
        "drover journal                      # recent steps\n\
         drover journal --in-flight          # what a restart would re-attach to\n\
         drover journal --audit              # every gate decision",
    ),
    (
        "journal check",
        "drover journal check                # exit 1 and a report when the store is damaged",
    ),
    (
        "journal move-aside",
        "systemctl stop drover && drover journal move-aside && systemctl start drover",
    ),
    (
        "trust",
        "drover trust > trust-v1.txt         # the document the next rotation starts from",
    ),
    (
        "copies",
        "drover copies                       # every safety copy: volid, state, sha256\n\
         drover copies 105 --output json     # one guest's manifests as data",
    ),
    (
        "approvals",
        "drover approvals                    # pending requests and the command to sign each",
    ),
    (
        "approve",
        "drover approve 105-destroy_guest.txt 105-destroy_guest.txt.sig\n\
         drover approve trust-v2.txt trust-v2.txt.sig      # a signed trust rotation",
    ),
    (
        "verify-approval",
        "drover verify-approval 105-destroy_guest.txt 105-destroy_guest.txt.sig",
    ),
    (
        "sim",
        "drover sim -- --seed-demo           # a simulated PVE host on 127.0.0.1:8006\n\
         drover sim -- --help                # the simulator's options",
    ),
    (
        "demo",
        "drover demo                         # the whole loop in a few seconds",
    ),
    (
        "fleet",
        "drover fleet publish ./hub --key ~/.ssh/hub_signing.pub --trust trust --dry-run\n\
         drover fleet status ./hub",
    ),
    (
        "fleet publish",
        "drover fleet publish ./hub --key ~/.ssh/hub_signing --trust trust --dry-run\n\
         drover fleet publish ./hub --key ~/.ssh/hub_signing.pub --trust trust   # key in ssh-agent",
    ),
    (
        "fleet pending",
        "drover fleet pending ./hub                               # every pending approval\n\
         drover fleet pending ./hub --op destroy_guest --extract ./to-sign --key ~/.ssh/drover_operator",
    ),
    (
        "fleet add-approvals",
        "drover fleet add-approvals ./hub ./to-sign --trust trust",
    ),
    (
        "fleet status",
        "drover fleet status ./hub                                # one row per host",
    ),
    (
        "completions",
        "drover completions bash > /etc/bash_completion.d/drover\n\
         drover completions --out deploy/completions       # all shells, as packaged",
    ),
    (
        "man",
        "drover man | man -l -                # read the page without installing it\n\
         drover man --out deploy/man         # all pages, as packaged",
    ),
];

fn example(path: &str) -> Option<&'static str> {
    EXAMPLES.iter().find(|(p, _)| *p == path).map(|(_, e)| *e)
}

fn with_example(path: String, cmd: Command) -> Command {
    let cmd = match example(&path) {
        Some(e) => cmd.after_help(format!(
            "Examples:\n{}",
            e.lines()
                .map(|l| format!("  {}", l.trim_start()))
                .collect::<Vec<_>>()
                .join("\n")
        )),
        None => cmd,
    };
    cmd.mut_subcommands(|sub| {
        let p = format!("{path} {}", sub.get_name());
        with_example(p, sub)
    })
}

/// For `#[command(mut_subcommands = ...)]` on the top-level parser: gives every verb (and
/// nested verb) its examples.
pub fn add_examples(cmd: Command) -> Command {
    let path = cmd.get_name().to_string();
    with_example(path, cmd)
}

/// Every verb path of `cmd` (`"journal check"`, ...), without `help`.
pub fn verb_paths(cmd: &Command) -> Vec<String> {
    fn walk(prefix: &str, cmd: &Command, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let p = if prefix.is_empty() {
                sub.get_name().to_string()
            } else {
                format!("{prefix} {}", sub.get_name())
            };
            out.push(p.clone());
            walk(&p, sub, out);
        }
    }
    let mut out = Vec::new();
    walk("", cmd, &mut out);
    out
}

/// The release date the pages carry: the date of the newest `deploy/debian/changelog` entry
/// (`23 Nov 2026`), so the pages change with a release, not with the day they were built.
fn release_date() -> String {
    const CHANGELOG: &str = include_str!("../../../deploy/debian/changelog");
    CHANGELOG
        .lines()
        .find_map(|l| l.strip_prefix(" -- "))
        .and_then(|l| l.split_once(">  "))
        .and_then(|(_, date)| date.split_once(", "))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The hand-written part of drover(8): what no option list says.
const MAN_SECTIONS: &str = include_str!("../../../deploy/man/drover.8.sections");

/// clap_mangen heads `after_help` "EXTRA" and lets roff fill its lines; ours is always the
/// examples, which must keep their lines (`.nf`).
fn examples_section(roff: &str) -> String {
    let Some(start) = roff.find(".SH EXTRA\nExamples:\n") else {
        return roff.to_string();
    };
    let body_start = start + ".SH EXTRA\nExamples:\n".len();
    let body_end = roff[body_start..]
        .find("\n.SH ")
        .map(|i| body_start + i + 1)
        .unwrap_or(roff.len());
    format!(
        "{}.SH EXAMPLES\n.nf\n{}.fi\n{}",
        &roff[..start],
        &roff[body_start..body_end],
        &roff[body_end..]
    )
}

/// Man pages for `cmd` and every verb: `(file name, roff)`. drover(8) is the overview (its
/// verbs, options, then the hand-written sections); `drover-VERB(8)` has the verb's options
/// and examples. Deterministic (no date), so the checked-in copies compare byte for byte.
pub fn man_pages(cmd: Command) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: Command, name: String, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        let subs: Vec<Command> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .cloned()
            .collect();
        let page = cmd.clone().display_name(name.clone());
        let man = clap_mangen::Man::new(page)
            .title(name.to_uppercase())
            .section("8")
            .date(release_date())
            .manual("System Administration")
            .source(format!("drover {}", env!("CARGO_PKG_VERSION")));
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        let mut roff = examples_section(&String::from_utf8_lossy(&roff)).into_bytes();
        if name == "drover" {
            roff.extend_from_slice(MAN_SECTIONS.as_bytes());
        } else {
            roff.extend_from_slice(b".SH \"SEE ALSO\"\n.BR drover (8)\n");
        }
        out.push((format!("{name}.8"), roff));
        for sub in subs {
            let sub_name = format!("{name}-{}", sub.get_name());
            walk(sub, sub_name, out)?;
        }
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, "drover".into(), &mut out)?;
    Ok(out)
}

/// The shells completions are generated (and packaged) for, with their file names.
pub const COMPLETION_FILES: &[(clap_complete::Shell, &str)] = &[
    (clap_complete::Shell::Bash, "drover.bash"),
    (clap_complete::Shell::Zsh, "_drover"),
    (clap_complete::Shell::Fish, "drover.fish"),
];

/// The completion script for `shell`.
pub fn completion(mut cmd: Command, shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "drover", &mut out);
    out
}

/// Writes every man page into `dir`.
pub fn write_man_pages(cmd: Command, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let pages = man_pages(cmd)?;
    for (name, roff) in &pages {
        std::fs::write(dir.join(name), roff)?;
    }
    Ok(pages.len())
}

/// Writes every completion script into `dir`.
pub fn write_completions(cmd: Command, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    for (shell, file) in COMPLETION_FILES {
        std::fs::write(dir.join(file), completion(cmd.clone(), *shell))?;
    }
    Ok(COMPLETION_FILES.len())
}
