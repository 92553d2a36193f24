//! `Content-Range` of continuation pieces (souphttpclientsink's series of PUTs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| transcast::fuzzing::content_range(data));
