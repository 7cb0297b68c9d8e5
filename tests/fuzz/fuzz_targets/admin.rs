#![no_main]
//! See `gateway_user::fuzzing::admin_request`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway_user::fuzzing::admin_request(data));
