//! Machine code as the probe-point choice decodes it: any bytes at all.
#![no_main]

use std::collections::HashMap;

use leaktrace::plan::placement::{FunctionCode, ProbeNeeds, callees, entry_point, plt_slot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let code = FunctionCode {
        address: 0x1000,
        bytes,
    };
    for returns in [false, true] {
        let needs = ProbeNeeds {
            returns,
            ignores_null_first_argument: true,
            arguments: 4,
        };
        let point = entry_point(code, needs);
        assert!(point.offset < bytes.len().max(1) as u64);
    }
    let _ = callees(code, &HashMap::from([(0x2000, "malloc".to_owned())]));
    let _ = plt_slot(code);
});
