//! Trust parser: never panics; an accepted document re-parses to the same store and its
//! signers section has one line per key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = gate::TrustStore::parse(text)
    {
        assert_eq!(gate::TrustStore::parse(t.text()).ok().as_ref(), Some(&t));
        assert_eq!(t.allowed_signers().lines().count(), t.keys().len());
    }
});
