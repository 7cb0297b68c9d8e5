#![no_main]
//! See `gateway_user::fuzzing::limits`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        gateway_user::fuzzing::limits(text);
    }
});
