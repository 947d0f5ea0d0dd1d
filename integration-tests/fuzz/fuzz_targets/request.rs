//! Fuzz target `request`: client requests, as JSON text and as MessagePack binary messages.
//! The harness and its invariants: `gpush_integration_tests::fuzzing::request`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpush_integration_tests::fuzzing::request(data);
});
