//! /proc/PID/maps text, as a kernel (or a hostile /proc) could write it.
#![no_main]

use leaktrace::target::maps::ProcessMaps;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let maps = ProcessMaps::parse(text);
    for mapping in maps.mappings() {
        let _ = maps.find(mapping.start);
        let _ = maps.find(mapping.end.wrapping_sub(1));
        let _ = mapping.map_file(1);
    }
});
