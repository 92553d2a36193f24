//! The token state file is read at startup: a damaged one must be refused with an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| transcast::fuzzing::token_state(data));
