//! The handoff decoder (marker and manifest) against arbitrary bytes:
//! `cargo +nightly fuzz run handoff -- -max_total_time=60`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flip::fuzz::decode(data);
});
