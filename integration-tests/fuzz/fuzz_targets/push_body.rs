//! Fuzz target `push_body`: push API request bodies, through the ingress HTTP router.
//! The harness and its invariants: `gpush_integration_tests::fuzzing::push_body`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpush_integration_tests::fuzzing::push_body(data);
});
