//! Every map the programs use. Userspace opens some of them by name
//! ([`leaktrace_common::maps`]) and sizes some at load; aya-log adds its own, `AYA_LOGS`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
};
use leaktrace_common::{
    DROP_COUNTERS, MAX_STACK_DEPTH, RETURN_OFFSET_SLOTS, StackSample, allocated_here,
    cookie::HIT_POINTS,
};

use crate::{
    events::{RingLook, Tick},
    pending::{PendingCall, ThreadSlot},
    stacks::RECENTLY_COPIED_SLOTS,
};

/// Every record for userspace. Userspace sizes it with `--ring-bytes` (8 MiB by default).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// User stacks walked by frame pointers, by id (`AllocEvent::stack_id`).
#[map]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// The outermost in-flight traced call of each thread, in the thread's slot: the one its thread
/// id picks ([`crate::pending`]), which the thread takes at its first call unless another
/// thread of the same slot holds it. A slot is read by an array index, which the verifier
/// inlines; a hash map lookup costs each probe ~40 ns here. Updated in place (an idle
/// thread's has `entry_sp` 0); the slot is given up when the thread exits (`thread_exit`).
/// Userspace sizes it with `--max-threads`.
#[map]
pub(crate) static THREAD_SLOTS: Array<ThreadSlot> = Array::with_max_entries(16384, 0);

/// Which thread took each slot of `THREAD_SLOTS`, by slot: an insert succeeds for one thread
/// only, so two threads cannot both take a slot. Only taking and giving up a slot touch it.
#[map]
pub(crate) static SLOT_OWNERS: HashMap<u32, u64> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// The outermost in-flight traced call of each thread that found its slot taken, keyed by
/// pid_tgid: made by its first call and then updated in place, like a slot. The entry goes
/// when the thread exits. Userspace sizes it with `--max-threads`.
#[map]
pub(crate) static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// Per CPU, how often each [`DropCounter`](leaktrace_common::DropCounter) happened.
#[map]
pub(crate) static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_COUNTERS, 0);

/// Per CPU, the hits of each probe point, by the point index in its cookie
/// ([`leaktrace_common::cookie`]).
#[map]
pub(crate) static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIT_POINTS, 0);

/// Nonzero for each kind of drop the probes have logged (only when `LOG_DROPS` is set).
#[map]
pub(crate) static DROPS_LOGGED: Array<u32> = Array::with_max_entries(DROP_COUNTERS, 0);

/// Userspace opens and closes the capture window here
/// ([`CONTROL_ENABLED`](leaktrace_common::CONTROL_ENABLED)).
#[map]
pub(crate) static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// The traced processes (tgid → 1). The uprobes are attached per process and need no filter;
/// the exec and exit tracepoints fire for every process on the machine and keep to these.
#[map]
pub(crate) static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Stack keys already sent with a [`StackSample`]: one copy stands for every later allocation
/// with the same key.
#[map]
pub(crate) static COPIED_STACKS: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// When sampling: the addresses of the live blocks that were recorded, so that a free of any
/// other block costs one failed map delete and sends nothing. Userspace sizes it at load (one
/// entry when not sampling).
#[map]
pub(crate) static SAMPLED_BLOCKS: HashMap<u64, u8> = HashMap::with_max_entries(1 << 18, 0);

/// Blocks allocated since the attach ([`crate::seen`]); one word unless frees read sizes.
#[map]
pub(crate) static ALLOCATED_HERE: Array<u64> = Array::with_max_entries(allocated_here::WORDS, 0);

/// Where, above sp, the return address lies at a given return address: learned by userspace
/// from the CFI unwinding of stack copies, in the slots
/// [`return_offsets`](leaktrace_common::return_offsets) picks. With it the probe can follow a
/// stack past where frame pointers end, for a key, without unwinding anything itself.
#[map]
pub(crate) static RETURN_OFFSETS: Array<[u64; 2]> = Array::with_max_entries(RETURN_OFFSET_SLOTS, 0);

/// Per CPU, the clock tick (jiffies) and CLOCK_MONOTONIC at this CPU's first record in it:
/// records are stamped with the time their tick started here ([`crate::events::now`]).
#[map]
pub(crate) static CLOCK: PerCpuArray<Tick> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, records sent and what the last look at the ring buffer's fill found: it is looked
/// at every [`FILL_CHECK_EVERY`](crate::events::FILL_CHECK_EVERY)th record, to wake the reader
/// and to hold allocations back when it is nearly full ([`crate::events::room_for_allocation`]).
#[map]
pub(crate) static RING_LOOK: PerCpuArray<RingLook> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, stack keys lately found in (or put into) `COPIED_STACKS`, each in the slot its top
/// bits pick: a key found here skips that map's lookup. `COPIED_STACKS` never loses a key, so
/// a key here is always there too.
#[map]
pub(crate) static RECENTLY_COPIED: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(RECENTLY_COPIED_SLOTS, 0);

/// The return addresses a walk of the stack kept, for a record that carries them.
#[map]
pub(crate) static WALKED_FRAMES: PerCpuArray<[u64; MAX_STACK_DEPTH]> =
    PerCpuArray::with_max_entries(1, 0);

/// Where a [`StackSample`] is put together before it goes out, trimmed to what was copied;
/// and where the stack walk reads the top of the stack at once.
#[map]
pub(crate) static SCRATCH: PerCpuArray<StackSample> = PerCpuArray::with_max_entries(1, 0);
