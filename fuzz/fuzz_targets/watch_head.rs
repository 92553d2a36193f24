//! The accept loop reads every connection's first request head itself (the raw watch path).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| transcast::fuzzing::watch_head(data));
