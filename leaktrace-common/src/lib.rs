//! The wire format between leaktrace's eBPF programs and its userspace.
//!
//! Both sides compile this crate, so a field added here cannot be read differently on the two
//! sides. Everything is `#[repr(C)]` with explicit padding-free layouts, because the kernel copies
//! these bytes verbatim through the ring buffer.
#![no_std]

/// One allocator event, as the ring buffer carries it.
///
/// Allocations and frees share one record so that the ring buffer keeps them in the order the
/// target performed them: a free that overtook its allocation would look like a leak.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, so userspace can compare it with its own clock.
    pub timestamp_ns: u64,
    /// The block's address: the returned pointer for an allocation, the argument for a free.
    pub address: u64,
    /// Requested bytes for an allocation; 0 for a free.
    pub size: u64,
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Id in the `STACKS` map, or a negative errno when the stack could not be recorded.
    pub stack_id: i32,
    /// [`EVENT_ALLOC`] or [`EVENT_FREE`].
    pub kind: u32,
}

/// [`AllocEvent::kind`] of a successful allocation.
pub const EVENT_ALLOC: u32 = 1;
/// [`AllocEvent::kind`] of a free of a non-NULL pointer.
pub const EVENT_FREE: u32 = 2;

/// Slots of the per-CPU `DROPS` array: each counts events the kernel side could not deliver
/// whole, so that reports can say their numbers are a lower bound instead of hiding the loss.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCounter {
    /// The ring buffer had no room: the event is lost entirely.
    RingBufferFull = 0,
    /// The stack map was full, or its bucket held another stack: the event keeps its size but
    /// not its call site.
    StackMapFull = 1,
    /// The stack could not be read (e.g. unmapped user stack): the event keeps its size only.
    StackUnreadable = 2,
    /// The per-thread pending map was full: the allocation's entry was not remembered, so the
    /// allocation is lost.
    PendingMapFull = 3,
}

impl DropCounter {
    /// Every counter, in slot order.
    pub const ALL: [DropCounter; 4] = [
        DropCounter::RingBufferFull,
        DropCounter::StackMapFull,
        DropCounter::StackUnreadable,
        DropCounter::PendingMapFull,
    ];
}

/// Size of the `DROPS` array.
pub const DROP_COUNTERS: u32 = DropCounter::ALL.len() as u32;

/// Names of the maps userspace opens by name.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const STACKS: &str = "STACKS";
    pub const DROPS: &str = "DROPS";
}
