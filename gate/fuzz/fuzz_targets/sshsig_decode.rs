//! Armor + SSHSIG decoding + the full per-signature path against a fixed trust store: never
//! panics, whatever the bytes. The first byte picks whether the input is armored or a raw blob.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static TRUST: OnceLock<gate::TrustStore> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let trust = TRUST.get_or_init(|| {
        gate::TrustStore::parse(include_str!("../../../testdata/gate/trust_v1.txt"))
            .expect("the committed trust vector parses")
    });
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = gate::armor::decode_armor(rest);
        let _ = gate::verify_signature(trust, gate::Role::Operational, b"msg", rest, 1_795_383_000);
    } else if let Ok(b) = gate::sshsig::parse_blob(rest) {
        let _ = gate::sshsig::check_blob(&b);
    }
});
