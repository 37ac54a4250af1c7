//! Payload parser: never panics, and whatever it accepts renders back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = gate::ApprovalPayload::parse(data) {
        let again = p.render().expect("an accepted payload renders");
        assert_eq!(again.as_bytes(), data);
    }
});
