//! The wire format between leaktrace's eBPF programs and its userspace.
//!
//! Both sides compile this crate, so a field added here cannot be read differently on the two
//! sides. Everything is `#[repr(C)]` with explicit padding-free layouts, because the kernel copies
//! these bytes verbatim through the ring buffer.
#![cfg_attr(not(test), no_std)]

pub mod allocated_here;
pub mod arguments;
pub mod cookie;
pub mod return_offsets;
pub mod sampling;
pub mod stack_key;

/// One allocator event, as the ring buffer carries it (a free comes as a shorter
/// [`FreeEvent`]).
///
/// Allocations and frees share one ring buffer so that it keeps them in the order the target
/// performed them: a free that overtook its allocation would look like a leak.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocEvent {
    /// CLOCK_MONOTONIC, so userspace can compare it with its own clock; read once per clock tick
    /// (1 to 4 ms) on each CPU, so up to a tick early.
    pub timestamp_ns: u64,
    /// The block's address: the returned pointer for an allocation, the argument for a free.
    pub address: u64,
    /// Requested bytes for an allocation.
    pub size: u64,
    /// With stack copies (DWARF unwinding): the stack's key, a hash of the return address and
    /// of the callers' return addresses found through offsets userspace learned from earlier
    /// copies (`RETURN_OFFSETS`), never 0. The probe walks no frame pointers then: in code
    /// built without them that walk costs microseconds and finds nothing. 0 when the stack is
    /// a frame-pointer one (`stack_id`).
    pub stack_hash: u64,
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Id in the `STACKS` map (frame pointers), or a negative errno when the stack could not
    /// be recorded. With stack copies it is 0, unless the copy could not be sent and the probe
    /// fell back to frame pointers.
    pub stack_id: i32,
    /// An [`EventKind`], as a `u32` (see there why).
    pub kind: u32,
}

/// A free: the commonest record, in two thirds of an [`AllocEvent`]'s bytes. A reservation in the ring
/// buffer costs the same whatever its size, but each byte less is one the ring buffer holds
/// for other records, and userspace copies.
///
/// Records are told apart by their length first: a record of this size is a `FreeEvent`, any
/// other starts with an [`AllocEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeEvent {
    /// As [`AllocEvent::timestamp_ns`].
    pub timestamp_ns: u64,
    /// The pointer freed.
    pub address: u64,
    /// The bytes glibc's chunk header gives for the block, when free's probe reads it
    /// (`FREE_SIZE_HEADER`), else 0: what a free of a block allocated before the attach
    /// releases.
    pub size: u64,
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// [`EventKind::Free`], as a `u32`.
    pub kind: u32,
}

/// What an [`AllocEvent`] tells of, in [`AllocEvent::kind`].
///
/// The wire carries a `u32`, not this enum: bytes from the kernel are decoded with
/// [`EventKind::try_from`], so that a kind this binary does not know is skipped rather than
/// read as an enum value that does not exist.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A successful allocation.
    Alloc = 1,
    /// A free of a non-NULL pointer. Sent as a [`FreeEvent`].
    Free = 2,
    /// An allocation whose stack came inline ([`AllocEventWithStack`]).
    AllocWithStack = 3,
    /// realloc's old block, sent when realloc starts: before the allocator can hand the block
    /// to another thread, whose allocation must not arrive first.
    ReallocFree = 4,
    /// A realloc that failed (NULL for a nonzero size): its old block, already reported freed,
    /// is live again. `address` is 0; `tid` says whose realloc.
    ReallocFailed = 5,
    /// A successful fork, vfork or posix_spawn in a traced process: `address` is the child's
    /// pid; `size` is 1 after a vfork or posix_spawn, whose parent resumes only once the child
    /// has exec'd (or exited): the child runs another image already.
    Fork = 6,
    /// A successful exec in a traced process (`tgid`): its address space, and every block in
    /// it, is gone; what follows is a new program.
    Exec = 7,
    /// An anonymous mapping the program made (`--mmap`): `size` is its length in whole pages.
    Mmap = 8,
    /// [`EventKind::Mmap`] with its stack inline, as [`EventKind::AllocWithStack`] is to
    /// [`EventKind::Alloc`].
    MmapWithStack = 9,
    /// An munmap of `size` bytes (whole pages) at `address`: all or part of earlier mappings.
    Munmap = 10,
    /// A [`StackSample`]: sent just before the allocation event of the first allocation with a
    /// new stack key (`stack_hash`), when DWARF unwinding is on.
    StackSample = 11,
}

impl TryFrom<u32> for EventKind {
    /// The kind as it came: not one this binary knows.
    type Error = u32;

    fn try_from(kind: u32) -> Result<EventKind, u32> {
        Ok(match kind {
            1 => EventKind::Alloc,
            2 => EventKind::Free,
            3 => EventKind::AllocWithStack,
            4 => EventKind::ReallocFree,
            5 => EventKind::ReallocFailed,
            6 => EventKind::Fork,
            7 => EventKind::Exec,
            8 => EventKind::Mmap,
            9 => EventKind::MmapWithStack,
            10 => EventKind::Munmap,
            11 => EventKind::StackSample,
            unknown => return Err(unknown),
        })
    }
}

/// Most frames the kernel records of one user stack (its PERF_MAX_STACK_DEPTH).
pub const MAX_STACK_DEPTH: usize = 127;

/// The page size (x86-64): pvalloc and mmap round sizes up to whole pages, and stack copies
/// are read a page at a time.
pub const PAGE_BYTES: u64 = 4096;

/// Most bytes of user stack a [`StackSample`] carries (`--stack-bytes` may ask for fewer). The
/// sample is put together in a per-CPU array slot, whose values the kernel caps at 32 KiB.
pub const MAX_STACK_COPY: usize = 16384;

/// The registers and top of the user stack at an allocation's return, for userspace to unwind
/// with the modules' CFI where frame pointers are missing. A frame-pointer walk stops (or goes
/// astray) in code built without them, which is most of what distributions ship.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackSample {
    /// `kind` is [`EventKind::StackSample`]; `stack_id` and `stack_hash` the stack it stands
    /// for; `address` the instruction pointer; `size` the bytes copied into `bytes`.
    pub event: AllocEvent,
    pub sp: u64,
    pub bp: u64,
    /// The stack from `sp` up. One page more than [`MAX_STACK_COPY`], so that every page read
    /// lands inside the record whatever the first, partial page's length.
    pub bytes: [u8; MAX_STACK_COPY + PAGE_BYTES as usize],
}

/// An allocation whose stack did not fit the stack map.
///
/// The stack map is a hash table without chaining: two stacks whose hashes share a bucket
/// cannot both be stored, and with a few hundred distinct stacks such a collision is likely.
/// Rather than lose the call site, the probe then sends the stack itself, at the price of a
/// larger record on this rare path.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AllocEventWithStack {
    /// `kind` is [`EventKind::AllocWithStack`] or [`EventKind::MmapWithStack`]; `stack_id` is
    /// unused; `stack_hash` the stack's key when the frames were walked through learned
    /// offsets ([`stack_key`]), 0 when walked by frame pointers.
    pub event: AllocEvent,
    /// Bytes of `frames` the kernel filled (8 per frame).
    pub stack_bytes: u64,
    /// Return addresses, innermost first.
    pub frames: [u64; MAX_STACK_DEPTH],
}

/// Slots of the per-CPU `DROPS` array: each counts events the kernel side could not deliver
/// whole, so that reports can say which way their numbers may be off instead of hiding the
/// loss.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCounter {
    /// The ring buffer had no room: the event is lost entirely.
    RingBufferFull = 0,
    /// The stack map was full, or its bucket held another stack. Not a loss: the stack was sent
    /// inline instead ([`AllocEventWithStack`]); counted to show how often that path runs.
    StackMapFull = 1,
    /// The stack could not be read (e.g. unmapped user stack): the event keeps its size only.
    StackUnreadable = 2,
    /// The per-thread pending map was full: the allocation's entry was not remembered, so the
    /// allocation is lost.
    PendingMapFull = 3,
    /// A stack copy was not sent because the ring buffer was too full for it (over half full
    /// for a key's first copy, over a 32nd for a repeat copy of a key still being learned): the
    /// allocation is counted, under the last stack copied with its key (or none, if none
    /// was). Not a loss of events.
    StackSampleSkipped = 4,
    /// Sampling only: the map of sampled live blocks was full. The allocation is not recorded
    /// (its free could not be recognised), so the estimates miss it.
    SampledMapFull = 5,
    /// An allocation not sent because the ring buffer was more than three quarters full: the
    /// last quarter is kept for frees, whose loss would leave blocks live that are not. The
    /// allocation is lost, and its free later matches nothing.
    AllocationSkipped = 6,
}

impl DropCounter {
    /// Every counter, in slot order.
    pub const ALL: [DropCounter; 7] = [
        DropCounter::RingBufferFull,
        DropCounter::StackMapFull,
        DropCounter::StackUnreadable,
        DropCounter::PendingMapFull,
        DropCounter::StackSampleSkipped,
        DropCounter::SampledMapFull,
        DropCounter::AllocationSkipped,
    ];
}

/// Size of the `DROPS` array.
pub const DROP_COUNTERS: u32 = DropCounter::ALL.len() as u32;

/// Names of the eBPF programs userspace loads and attaches by name. `#[uprobe]` and its
/// siblings name a program after its function and take no other name, so these are the
/// function names in `leaktrace-ebpf`; a unit test in `leaktrace` checks that each name it
/// attaches is a program of the right kind in the committed object.
pub mod programs {
    /// Entry of malloc, valloc and every operator new.
    pub const ALLOC_ENTER: &str = "alloc_enter";
    /// Entry of pvalloc, which rounds the size up to whole pages.
    pub const PVALLOC_ENTER: &str = "pvalloc_enter";
    /// Entry of memalign and aligned_alloc.
    pub const MEMALIGN_ENTER: &str = "memalign_enter";
    pub const CALLOC_ENTER: &str = "calloc_enter";
    /// Return of every function that returns the new block.
    pub const ALLOC_EXIT: &str = "alloc_exit";
    /// malloc's entry and return as one uprobe session, when sampling: an unsampled call
    /// skips its return. Its return run counts hits as the point numbered after the entry's.
    pub const ALLOC_SESSION: &str = "alloc_session";
    /// calloc's, as malloc's.
    pub const CALLOC_SESSION: &str = "calloc_session";
    /// The programs linked as uprobe sessions.
    pub const SESSIONS: [&str; 2] = [ALLOC_SESSION, CALLOC_SESSION];
    pub const REALLOC_ENTER: &str = "realloc_enter";
    pub const REALLOCARRAY_ENTER: &str = "reallocarray_enter";
    /// Return of realloc and reallocarray.
    pub const REALLOC_EXIT: &str = "realloc_exit";
    pub const POSIX_MEMALIGN_ENTER: &str = "posix_memalign_enter";
    pub const POSIX_MEMALIGN_EXIT: &str = "posix_memalign_exit";
    pub const FREE_ENTER: &str = "free_enter";
    /// Entry of every operator delete.
    pub const DELETE_ENTER: &str = "delete_enter";
    pub const DELETE_EXIT: &str = "delete_exit";
    pub const MMAP_ENTER: &str = "mmap_enter";
    pub const MMAP_EXIT: &str = "mmap_exit";
    pub const MUNMAP_ENTER: &str = "munmap_enter";
    pub const MREMAP_ENTER: &str = "mremap_enter";
    pub const MREMAP_EXIT: &str = "mremap_exit";
    pub const FORK_EXIT: &str = "fork_exit";
    pub const VFORK_EXIT: &str = "vfork_exit";
    pub const SPAWN_ENTER: &str = "spawn_enter";
    pub const SPAWN_EXIT: &str = "spawn_exit";
    /// Calibration only: an entry probe that returns at once, on a function of leaktrace's own,
    /// to time what a hit costs the traced thread.
    pub const CALIBRATION_ENTER: &str = "calibration_enter";
    /// Calibration only: the same, as a return probe.
    pub const CALIBRATION_EXIT: &str = "calibration_exit";
    /// On the `sched_process_exec` raw tracepoint.
    pub const PROCESS_EXEC: &str = "process_exec";
    /// On the `sched_process_exit` raw tracepoint.
    pub const THREAD_EXIT: &str = "thread_exit";
}

/// Names of the maps userspace opens by name.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const STACKS: &str = "STACKS";
    pub const DROPS: &str = "DROPS";
    pub const CONTROL: &str = "CONTROL";
    pub const TRACED: &str = "TRACED";
    pub const RETURN_OFFSETS: &str = "RETURN_OFFSETS";
    pub const SAMPLED_BLOCKS: &str = "SAMPLED_BLOCKS";
    pub const ALLOCATED_HERE: &str = "ALLOCATED_HERE";
    pub const PENDING: &str = "PENDING";
    pub const THREAD_SLOTS: &str = "THREAD_SLOTS";
    pub const SLOT_OWNERS: &str = "SLOT_OWNERS";
    pub const HITS: &str = "HITS";
}

/// Slots of the `RETURN_OFFSETS` table: where, above the stack pointer, the return address
/// lies at a given return address, learned by userspace from CFI unwinding. A table indexed
/// by a hash of the address, two ways per set, because the probe reads it for every frame of
/// every allocation's stack: an array read is inlined by the verifier, a hash map lookup is a
/// helper call several times dearer.
pub const RETURN_OFFSET_SLOTS: u32 = 1 << 16;

/// The offset kept for a return address where unwinding ends (the outermost frame, or the last
/// one CFI could explain): a walk that reaches it has followed the whole stack.
pub const OUTERMOST_FRAME: u64 = u64::MAX;

/// `stack_id` of an allocation whose stack key (`stack_hash`) is not complete: the walk
/// stopped at a frame userspace had not learned yet. The [`StackSample`] sent just before is
/// this allocation's own, and the key may stand for other stacks too: it names no site.
pub const STACK_ID_OWN_COPY: i32 = 1;

/// Slot of the one-entry `CONTROL` array: nonzero while the capture window is open.
///
/// Attaching and detaching uprobes takes tens of milliseconds per probe, so the probes come and
/// go one by one. The switch opens and closes the window for all of them at one instant, and
/// the report's numbers cover exactly that window.
pub const CONTROL_ENABLED: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_come_back_from_their_numbers_and_unknown_numbers_do_not() {
        for number in 0..=12 {
            match EventKind::try_from(number) {
                Ok(kind) => assert_eq!(kind as u32, number),
                Err(unknown) => assert_eq!(unknown, number),
            }
        }
        assert!((1..=11).all(|number| EventKind::try_from(number).is_ok()));
        assert_eq!(EventKind::try_from(0), Err(0));
        assert_eq!(EventKind::try_from(12), Err(12));
    }
}
