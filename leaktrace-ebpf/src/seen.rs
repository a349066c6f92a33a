//! Which blocks were allocated since the attach, as far as a free must know
//! ([`leaktrace_common::allocated_here`]). A bit lost to two CPUs setting bits of one word at
//! once costs a read of a block's size, nothing else: plain loads and stores do.

use leaktrace_common::allocated_here;

use crate::{config, maps::ALLOCATED_HERE};

/// Marks the block at `address` allocated since the attach, when frees read sizes at all. Only
/// recorded blocks: the free of any other is not sent, and reads no size.
#[inline(always)]
pub(crate) fn mark_allocated(address: u64) {
    if !config::free_size_header() {
        return;
    }
    let (word, bit) = allocated_here::bit(address);
    if let Some(word) = ALLOCATED_HERE.get_ptr_mut(word) {
        // SAFETY: the pointer is a slot of a map value, valid while the program runs.
        unsafe {
            if *word & bit == 0 {
                *word |= bit;
            }
        }
    }
}

/// Whether the block at `address` may have been allocated before the attach: its bit is clear.
#[inline(always)]
pub(crate) fn maybe_older(address: u64) -> bool {
    let (word, bit) = allocated_here::bit(address);
    ALLOCATED_HERE.get(word).is_none_or(|word| *word & bit == 0)
}
