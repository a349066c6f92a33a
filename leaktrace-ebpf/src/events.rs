//! Records for userspace, through the `EVENTS` ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::bpf_ktime_get_ns,
};
use leaktrace_common::{AllocEvent, DropCounter, EventKind};

use crate::{drops::count_drop, maps::EVENTS};

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
        // SAFETY: the helper takes no arguments and reads the monotonic clock.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
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

#[inline(always)]
pub(crate) fn send(record: AllocEvent) {
    let Some(mut entry) = EVENTS.reserve::<AllocEvent>(0) else {
        count_drop(DropCounter::RingBufferFull);
        return;
    };
    entry.write(record);
    entry.submit(wake_flags());
}

/// Wakes the reader only once the ring buffer is a quarter full; until then userspace finds
/// the records on its next poll (every few milliseconds). By default the kernel wakes the
/// reader for the first record after each drain, through an irq_work: a self-interrupt that
/// under virtualization costs the traced thread several microseconds, on every other event.
#[inline(always)]
pub(crate) fn wake_flags() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if pending >= EVENTS.query(BPF_RB_RING_SIZE as u64) / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
