#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| realtime::fuzzing::websocket_frames(data));
