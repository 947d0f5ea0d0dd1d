//! Fuzz target `envelope`: bus message bodies, through `envelope::decode`.
//! The harness and its invariants: `gpush_integration_tests::fuzzing::envelope`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpush_integration_tests::fuzzing::envelope(data);
});
