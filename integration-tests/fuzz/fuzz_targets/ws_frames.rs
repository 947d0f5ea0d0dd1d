//! Fuzz target `ws_frames`: client WebSocket frames, fed to `ws::FrameReader` in several chunkings.
//! The harness and its invariants: `gpush_integration_tests::fuzzing::ws_frames`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpush_integration_tests::fuzzing::ws_frames(data);
});
