//! A module file as the symbolizer loads it (ELF, DWARF, debug links), then an address in it.
#![no_main]

use std::io::Write;

use leaktrace::stacks::symbolize::frames_in_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (address, elf) = data.split_at(8);
    let address = u64::from_le_bytes(address.try_into().unwrap());
    let path = std::env::temp_dir().join(format!("leaktrace-fuzz-{}.so", std::process::id()));
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    if file.write_all(elf).is_ok() {
        let _ = frames_in_file(&path, address);
    }
    let _ = std::fs::remove_file(&path);
});
