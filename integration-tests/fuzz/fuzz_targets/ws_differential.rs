//! Fuzz target `ws_differential`: the same client bytes through the edge's `ws::FrameReader` and
//! tungstenite's server-side reader; messages and the way reading ends must agree.
//! The harness: `gpush_integration_tests::fuzzing::ws_differential_fuzz`, which tolerates the
//! known edge bugs its lists name, so a run finds the others.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpush_integration_tests::fuzzing::ws_differential_fuzz(data);
});
