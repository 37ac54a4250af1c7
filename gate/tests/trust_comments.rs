//! Trust documents as operators write them: `#` comment lines as in OpenSSH's allowed_signers
//! (ignored by the parser, but part of the bytes that are hashed and chained, so editing a
//! comment is a new document), and the template's placeholders named in the error instead of
//! a base64 decoder's "Invalid symbol 45".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use gate::TrustStore;

#[test]
fn comment_lines_are_ignored_anywhere_and_hashed_with_the_rest() {
    let v1 = common::v1_text();
    let plain = TrustStore::parse(&v1).unwrap();
    let commented = format!(
        "# installed by hand on 2026-11-30\n{}",
        v1.replace("signers:\n", "# who may sign\nsigners:\n# operators\n")
    ) + "# end\n";
    let t = TrustStore::parse(&commented).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.version, plain.version);
    assert_eq!(t.fleet, plain.fleet);
    assert_eq!(t.keys().len(), plain.keys().len());
    // The chain covers the exact bytes: comments included.
    assert_ne!(t.sha256(), plain.sha256());
    assert_eq!(t.text(), commented);
}

#[test]
fn errors_after_comments_name_the_real_line() {
    let v1 = common::v1_text();
    let doc = v1.replace("version: 1\n", "# c1\n# c2\nversion: x\n");
    let err = TrustStore::parse(&doc).unwrap_err().to_string();
    let line = doc.lines().position(|l| l == "version: x").unwrap() + 1;
    assert!(err.contains(&format!("line {line}")), "{err}");
}

#[test]
fn a_comment_is_a_whole_line_only() {
    let v1 = common::v1_text();
    // Indented `#` or a trailing comment on a signer line stay refused (strict grammar).
    for doc in [
        v1.replace("signers:\n", " # indented\nsigners:\n"),
        v1.replacen("\nsigners:\n", "\nsigners: # note\n", 1),
    ] {
        assert!(TrustStore::parse(&doc).is_err(), "{doc}");
    }
}

#[test]
fn the_templates_placeholder_is_named() {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/trust.example"
    ))
    .unwrap();
    let err = TrustStore::parse(&template).unwrap_err().to_string();
    assert!(
        err.contains("REPLACE-WITH-ALICE-OPERATOR-PUBLIC-KEY") && err.contains("placeholder"),
        "{err}"
    );
    assert!(!err.contains("Invalid symbol"), "{err}");
}
