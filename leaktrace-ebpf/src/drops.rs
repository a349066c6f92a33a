//! What the probes could not deliver whole: counted per CPU for the report, and under
//! `--verbose` logged (aya-log) the first time each kind happens, when it can still be lined
//! up with what the target was doing.

use aya_log_ebpf::{info, warn};
use leaktrace_common::DropCounter;

use crate::{
    config,
    maps::{DROPS, DROPS_LOGGED},
};

/// Counts one drop of `counter`'s kind.
#[inline(always)]
pub(crate) fn count_drop(counter: DropCounter) {
    if let Some(slot) = DROPS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a map value, valid while the program runs;
        // no other CPU writes it, so a plain add is enough.
        unsafe { *slot += 1 };
    }
    if config::log_drops() {
        log_first(counter);
    }
}

/// Logs `counter`'s kind of drop, unless it was logged already. Two CPUs dropping at the same
/// instant may both log it: Rust's BPF target has no atomic exchange (no compare-and-swap), so
/// the flag is a plain load and store.
///
/// Not inlined, so the messages are in the object once; while `LOG_DROPS` is 0 the verifier
/// never reaches the call and leaves this out of every program.
#[inline(never)]
fn log_first(counter: DropCounter) {
    let Some(logged) = DROPS_LOGGED.get_ptr_mut(counter as u32) else {
        return;
    };
    // SAFETY: the pointer is a slot of an array map value, valid while the program runs; a race
    // with another CPU can only make the message come twice.
    unsafe {
        if *logged != 0 {
            return;
        }
        *logged = 1;
    }
    // The context is not used by aya-log's macros.
    let ctx = &();
    match counter {
        DropCounter::RingBufferFull => warn!(
            ctx,
            "the ring buffer is full: events are lost (ring_buffer_full; see --ring-bytes)"
        ),
        DropCounter::StackMapFull => info!(
            ctx,
            "a stack found the stack map full or its bucket taken: it goes inline (stack_map_full)"
        ),
        DropCounter::StackUnreadable => warn!(
            ctx,
            "a user stack could not be read: its allocation has no site (stack_unreadable)"
        ),
        DropCounter::PendingMapFull => warn!(
            ctx,
            "the map of calls in flight is full: calls are lost (pending_map_full; see --max-threads)"
        ),
        DropCounter::StackSampleSkipped => info!(
            ctx,
            "the ring buffer is filling up: stack copies are skipped (stack_samples_skipped)"
        ),
        DropCounter::SampledMapFull => warn!(
            ctx,
            "the map of sampled blocks is full: sampled allocations are lost (sampled_map_full; see --sampled-blocks)"
        ),
        DropCounter::AllocationSkipped => warn!(
            ctx,
            "the ring buffer is nearly full: allocations are lost, to leave room for frees (allocations_skipped; see --ring-bytes)"
        ),
    }
}
