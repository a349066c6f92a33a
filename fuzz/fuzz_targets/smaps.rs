//! /proc/PID/status, smaps_rollup and smaps texts, split by NUL bytes.
#![no_main]

use leaktrace::target::memory::MemorySample;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut parts = text.splitn(3, '\0');
    let (status, rollup, smaps) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let _ = MemorySample::parse(status, rollup, smaps, 0.0);
});
