//! Stream names, address masks, pull URLs and presented keys: text from paths, queries, headers and JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        transcast::fuzzing::names_and_keys(text);
    }
});
