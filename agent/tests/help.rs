//! Help that never drifts: every verb's `--help` ends with examples, and the checked-in man
//! pages and shell completions (what the package installs) are exactly what the binary
//! generates from its command line. When a test here fails after a CLI change, regenerate:
//! `drover man --out deploy/man && drover completions --out deploy/completions`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn drover(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .env_remove("DROVER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drover {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The verbs `--help` lists under "Commands:", without `help`.
fn verbs(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_verb_has_examples_in_its_help() {
    let mut todo: Vec<Vec<String>> = verbs(&drover(&["--help"]))
        .into_iter()
        .map(|v| vec![v])
        .collect();
    assert!(todo.len() >= 15, "{todo:?}");
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = drover(&args);
        assert!(
            help.contains("\nExamples:\n  "),
            "drover {} --help has no examples (operator/help.rs EXAMPLES):\n{help}",
            path.join(" ")
        );
        for sub in verbs(&help) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        seen += 1;
    }
    assert!(seen >= 18, "{seen}");
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "sections"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn deploy(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(sub)
}

/// Generates into a temporary directory with `verb --out`, compares with `deploy/<sub>`.
fn assert_checked_in_is_generated(verb: &str, sub: &str) {
    let tmp = tempfile::tempdir().unwrap();
    drover(&[verb, "--out", tmp.path().to_str().unwrap()]);
    let generated = files(tmp.path());
    let checked_in = files(&deploy(sub));
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        checked_in.keys().collect::<Vec<_>>(),
        "deploy/{sub} is stale: run `drover {verb} --out deploy/{sub}`"
    );
    for (name, bytes) in &generated {
        assert!(
            checked_in[name] == *bytes,
            "deploy/{sub}/{name} is stale: run `drover {verb} --out deploy/{sub}`"
        );
    }
}

#[test]
fn the_packaged_man_pages_are_generated_from_the_command_line() {
    assert_checked_in_is_generated("man", "man");
    // drover(8) lists every verb and carries the hand-written sections.
    let page = drover(&["man"]);
    for verb in verbs(&drover(&["--help"])) {
        assert!(
            page.contains(&format!("drover\\-{}(8)", verb.replace('-', "\\-"))),
            "drover(8) does not list {verb}"
        );
    }
    for section in [
        ".SH EXIT STATUS",
        ".SH FILES",
        ".SH ENVIRONMENT",
        ".SH OVERVIEW",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    // It renders: man(1) formats it without warnings, where man is installed.
    if let Ok(out) = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(deploy("man/drover-plan.8"))
        .env("MANWIDTH", "100")
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("EXAMPLES"), "{text}");
        assert!(
            text.contains("drover plan --output json | jq ."),
            "the examples keep their lines: {text}"
        );
    }
}

#[test]
fn the_packaged_completions_are_generated_from_the_command_line() {
    assert_checked_in_is_generated("completions", "completions");
    assert_eq!(
        drover(&["completions", "bash"]).into_bytes(),
        std::fs::read(deploy("completions/drover.bash")).unwrap()
    );
    // bash loads the script and completes the verbs.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(drover jo); COMP_CWORD=1; _drover drover jo drover; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            deploy("completions/drover.bash").display()
        ))
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && words.lines().any(|w| w == "journal"),
        "{words}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The other shells check their syntax where they are installed.
    for (shell, file) in [("zsh", "_drover"), ("fish", "drover.fish")] {
        if let Ok(o) = Command::new(shell)
            .arg("-n")
            .arg(deploy(&format!("completions/{file}")))
            .output()
        {
            assert!(o.status.success(), "{shell} -n {file}: {o:?}");
        }
    }
}

/// `drover sim -- --help` explains every option, and the simulator prints the token it
/// accepts, named as pve-setup.sh names it on that node and as the example drover.toml has it.
#[test]
fn the_simulator_explains_itself_and_prints_its_token() {
    let help = drover(&["sim", "--", "--help"]);
    assert!(help.lines().count() > 10, "{help}");
    for opt in [
        "--listen",
        "--node",
        "--token-id",
        "--seed-demo",
        "--write-cert",
    ] {
        assert!(help.contains(opt), "{opt} missing:\n{help}");
    }
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["sim", "--", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = BTreeMap::new();
    for _ in 0..4 {
        let l = lines.next().unwrap().unwrap();
        let (k, v) = l.split_once(' ').unwrap();
        got.insert(k.to_string(), v.to_string());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(got["token_id"], "drover@pve!pve1");
    assert_eq!(got["token_secret"], pve_sim::DEFAULT_TOKEN_SECRET);
    let example = std::fs::read_to_string(deploy("drover.toml")).unwrap();
    assert!(
        example.contains(&format!("token_id = \"{}\"", got["token_id"])),
        "deploy/drover.toml and the simulator name the token differently"
    );
}
