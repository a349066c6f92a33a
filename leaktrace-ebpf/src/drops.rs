//! What the probes could not deliver whole, counted per CPU for the report.

use leaktrace_common::DropCounter;

use crate::maps::DROPS;

/// Counts one drop of `counter`'s kind.
#[inline(always)]
pub(crate) fn count_drop(counter: DropCounter) {
    if let Some(slot) = DROPS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a map value, valid while the program runs;
        // no other CPU writes it, so a plain add is enough.
        unsafe { *slot += 1 };
    }
}
