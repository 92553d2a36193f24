//! The WebM scanner reads every byte a source pushes or an origin relays: no input may panic it, in one piece
//! or split anywhere.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize * data.len() / 256);
    transcast::fuzzing::webm(data, split);
});
