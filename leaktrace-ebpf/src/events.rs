//! Records for userspace, through the `EVENTS` ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_ktime_get_ns, generated::bpf_jiffies64},
};
use leaktrace_common::{AllocEvent, DropCounter, EventKind, FreeEvent};

use crate::{
    drops::count_drop,
    maps::{CLOCK, EVENTS, RING_LOOK},
};

/// A CPU's clock tick and the time at its first record in it (the [`CLOCK`] map's value).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Tick {
    jiffies: u64,
    ns: u64,
}

/// The time for a record: CLOCK_MONOTONIC when the current clock tick (1 to 4 ms) started on
/// this CPU, as far as the probes know, that is at its first record in the tick. Reading the
/// clock costs a traced call as much as sending a record, and the ledger counts ages in
/// milliseconds; the tick counter costs next to nothing.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: the helpers take no arguments; one reads the tick counter, one the clock.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(tick) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_ns() };
    };
    // SAFETY: `tick` is this CPU's slot of a map value, valid while the program runs. A probe
    // on this CPU that preempts this one between the two stores below reads a stale tick and
    // reads the clock itself: the time is written first.
    unsafe {
        if (*tick).jiffies != jiffies {
            let ns = bpf_ktime_get_ns();
            core::ptr::addr_of_mut!((*tick).ns).write_volatile(ns);
            core::ptr::addr_of_mut!((*tick).jiffies).write_volatile(jiffies);
            return ns;
        }
        (*tick).ns
    }
}

/// The record of `kind` for the calling thread (`pid_tgid`), stamped now.
#[inline(always)]
pub(crate) fn event(
    pid_tgid: u64,
    kind: EventKind,
    address: u64,
    size: u64,
    stack_id: i32,
) -> AllocEvent {
    AllocEvent {
        timestamp_ns: now(),
        address,
        size,
        stack_hash: 0,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        stack_id,
        kind: kind as u32,
    }
}

#[inline(always)]
pub(crate) fn emit(pid_tgid: u64, kind: EventKind, address: u64, size: u64, stack_id: i32) {
    send(event(pid_tgid, kind, address, size, stack_id));
}

/// Sends one record: an [`AllocEvent`] or a [`FreeEvent`], which userspace tells apart by
/// length.
#[inline(always)]
pub(crate) fn send<T: 'static>(record: T) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_drop(DropCounter::RingBufferFull);
        return;
    };
    entry.write(record);
    entry.submit(wake_flags());
}

/// A free of `address` by the calling thread (`pid_tgid`), stamped now: a [`FreeEvent`].
/// `size` is what the allocator says the block holds, or 0 when the probe does not ask.
#[inline(always)]
pub(crate) fn emit_free(pid_tgid: u64, address: u64, size: u64) {
    send(FreeEvent {
        timestamp_ns: now(),
        address,
        size,
        tgid: (pid_tgid >> 32) as u32,
        kind: EventKind::Free as u32,
    });
}

/// Records a CPU sends between two looks at how full the ring buffer is.
pub(crate) const FILL_CHECK_EVERY: u32 = 8;

/// What a CPU last saw of the ring buffer (the [`RING_LOOK`] map's value).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct RingLook {
    /// Records this CPU sent, or skipped for room, wrapping: it looks at the fill at every
    /// [`FILL_CHECK_EVERY`]th.
    records: u32,
    /// Nonzero while the last look found the ring buffer more than three quarters full.
    nearly_full: u32,
}

/// Wakes the reader only once the ring buffer is a quarter full; until then userspace finds
/// the records on its next poll (every few milliseconds). By default the kernel wakes the
/// reader for the first record after each drain, through an irq_work: a self-interrupt that
/// under virtualization costs the traced thread several microseconds, on every other event.
#[inline(always)]
pub(crate) fn wake_flags() -> u64 {
    match look_at_ring() {
        Some((pending, size)) if pending >= size / 4 => BPF_RB_FORCE_WAKEUP as u64,
        _ => BPF_RB_NO_WAKEUP as u64,
    }
}

/// Whether an allocation's records (its event, its stack copy) may go: not while this CPU last
/// saw the ring buffer more than three quarters full. The last quarter is kept for frees: an
/// allocation lost makes the live figures a lower bound, but a free lost leaves its block live
/// for good, and the live figures too high. A skipped allocation is counted
/// ([`DropCounter::AllocationSkipped`]) and counts as a record for the looks, so that a CPU
/// that only allocates still looks again.
#[inline(always)]
pub(crate) fn room_for_allocation() -> bool {
    let Some(look) = RING_LOOK.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: `look` is this CPU's slot of a map value, valid while the program runs.
    if unsafe { (*look).nearly_full } == 0 {
        return true;
    }
    count_drop(DropCounter::AllocationSkipped);
    look_at_ring();
    false
}

/// Counts a record of this CPU's and, at every [`FILL_CHECK_EVERY`]th, looks at how full the
/// ring buffer is: the bytes in it and its size, and notes whether it is nearly full for
/// [`room_for_allocation`]. The two questions to the ring buffer cost ~15 ns a record here,
/// and a look a few records late is still early enough: a wake-up with three quarters of the
/// ring buffer free, allocations held back with a quarter.
#[inline(always)]
fn look_at_ring() -> Option<(u64, u64)> {
    let look = RING_LOOK.get_ptr_mut(0);
    if let Some(look) = look {
        // SAFETY: `look` is this CPU's slot of a map value, valid while the program runs. A
        // probe that preempts this one between the load and the store costs a count, which
        // only moves the next look by a record.
        let count = unsafe {
            (*look).records = (*look).records.wrapping_add(1);
            (*look).records
        };
        if !count.is_multiple_of(FILL_CHECK_EVERY) {
            return None;
        }
    }
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if let Some(look) = look {
        // SAFETY: as above.
        unsafe { (*look).nearly_full = u32::from(pending > size - size / 4) };
    }
    Some((pending, size))
}
