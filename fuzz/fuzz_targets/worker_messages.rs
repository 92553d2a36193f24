//! What a source's worker process sends the daemon is read as untrusted input (the worker parses a client's
//! bytes): any byte string is read message by message into an error or a bounded message, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| transcast::fuzzing::worker_messages(data));
