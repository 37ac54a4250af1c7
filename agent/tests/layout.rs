//! The agent's folders depend only downwards (ARCHITECTURE.md, "agent"): a file may use its own
//! folder and any folder below it, never one above. This keeps the rooms free of import cycles
//! as they grow; a new folder must be given its place here and in ARCHITECTURE.md.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules of `agent/src`, lowest first.
const LAYERS: &[&[&str]] = &[
    // `out!`/`outln!` are `output`'s macros (exported at the crate root).
    &["clock", "local_file", "output", "out", "outln"],
    &["model"],
    &["store"],
    &["lost_task"],
    &["approval"],
    &["desired"],
    &["safety"],
    &["reconcile"],
    &["jobs"],
    &["operator"],
    &["service"],
    &["cli", "fleet", "job_cli"],
    &["demo", "sim"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading agent/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::NAME` references in code (comments are skipped: a doc link is not a dependency).
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn folders_depend_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut unplaced = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = rank(&top) else {
            unplaced.insert(top);
            continue;
        };
        let source = std::fs::read_to_string(file).expect("reading a source file");
        for used in crate_references(&source) {
            match rank(&used) {
                Some(r) if r < own || used == top => {}
                Some(_) => violations.push(format!("{} uses crate::{used}", rel.display())),
                None => {
                    unplaced.insert(used);
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules with no layer (add them to LAYERS and ARCHITECTURE.md): {unplaced:?}"
    );
    assert!(
        violations.is_empty(),
        "upward dependencies between folders:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_upward_references() {
    let refs = crate_references("use crate::service::config::Config; // crate::cli\n");
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["service"]);
    assert!(rank("reconcile") > rank("desired"));
}
