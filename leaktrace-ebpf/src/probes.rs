use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_RB_RING_SIZE, pt_regs,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_stack, bpf_ktime_get_ns,
        bpf_probe_read_user, generated::bpf_probe_read_user as probe_read_user_bytes,
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, tracing::StackIdContext},
};
use leaktrace_common::{
    AllocEvent, AllocEventWithStack, CONTROL_ENABLED, DROP_COUNTERS, DropCounter, EventKind,
    MAX_STACK_COPY, MAX_STACK_DEPTH, OUTERMOST_FRAME, RETURN_OFFSET_SLOTS, STACK_ID_OWN_COPY,
    StackSample, return_offsets, sampling,
};

/// Userspace sizes it with `--ring-bytes` (8 MiB by default).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// The outermost in-flight traced call of each thread, keyed by pid_tgid. A thread's entry is
/// made by its first call and then updated in place (an idle thread's has `entry_sp` 0): a
/// lookup costs a fraction of an insert and a delete, which take the bucket's lock. The entry
/// goes when the thread exits ([`thread_exit`]).
#[map]
static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_COUNTERS, 0);

/// Userspace opens and closes the capture window here (see [`CONTROL_ENABLED`]).
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// The traced processes (tgid → 1). The uprobes are attached per process and need no filter;
/// the exec tracepoint fires for every process on the machine and keeps to these.
#[map]
static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Stack keys already sent with a [`StackSample`]: one copy stands for every later allocation
/// with the same key.
#[map]
static COPIED_STACKS: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// When sampling: the addresses of the live blocks that were recorded, so that a free of any
/// other block costs one failed map delete and sends nothing. Userspace sizes it at load (one
/// entry when not sampling).
#[map]
static SAMPLED_BLOCKS: HashMap<u64, u8> = HashMap::with_max_entries(1 << 18, 0);

/// Where, above sp, the return address lies at a given return address: learned by userspace
/// from the CFI unwinding of stack copies. With it the probe can follow a stack past where
/// frame pointers end, for a key, without unwinding anything itself.
#[map]
static RETURN_OFFSETS: Array<[u64; 2]> = Array::with_max_entries(RETURN_OFFSET_SLOTS, 0);

/// Where the return address lies above sp at `pc`, if userspace has learned it.
#[inline(always)]
fn learned_offset(pc: u64) -> Option<u64> {
    return_offsets::learned_offset(pc, |slot| RETURN_OFFSETS.get(slot).copied())
}

/// Return addresses followed through [`RETURN_OFFSETS`], at most.
const LEARNED_FRAMES: usize = 32;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The stack's key: a hash of the process, the allocation's return address and the callers'
/// return addresses reachable from it through learned offsets; never 0. And whether the walk
/// reached the outermost frame: until userspace has learned every frame's offset (from the
/// first copy of a stack through it) the walk stops early, and the key is not yet the
/// stack's own. The process is in the key because each process unwinds its own copies.
#[inline(always)]
///
/// With `frames`, the return addresses walked go there too, innermost first; their count is
/// the third value.
fn learned_stack_hash(
    ctx: &RetProbeContext,
    pid_tgid: u64,
    frames: Option<*mut [u64; MAX_STACK_DEPTH]>,
) -> (u64, bool, usize) {
    let (mut pc, mut sp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp) };
    let mut hash = (FNV_OFFSET ^ (pid_tgid >> 32)).wrapping_mul(FNV_PRIME);
    hash = (hash ^ pc).wrapping_mul(FNV_PRIME);
    let mut depth = 1;
    if let Some(frames) = frames {
        unsafe { (*frames)[0] = pc };
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return (hash | 1, false, depth);
    };
    let top = sp;
    let bytes = unsafe { core::ptr::addr_of_mut!((*scratch).bytes) }.cast::<u8>();
    // The top of the stack, in one read: most frames' return addresses lie within it.
    let mut read = WALK_BYTES;
    if unsafe { probe_read_user_bytes(bytes.cast(), WALK_BYTES as u32, top as *const _) } != 0 {
        read = 0;
    }
    // A stack deeper than the walk goes, or one that cannot be read on, is as complete as
    // the walk can make it.
    let mut complete = true;
    for frame in 1..=LEARNED_FRAMES {
        let Some(offset) = learned_offset(pc) else {
            complete = false;
            break;
        };
        if offset == OUTERMOST_FRAME {
            break;
        }
        let slot = sp + offset;
        let within = slot - top;
        let return_address = if within + 8 <= read {
            unsafe {
                bytes
                    .add((within & (WALK_BYTES - 1)) as usize)
                    .cast::<u64>()
                    .read_unaligned()
            }
        } else {
            let Ok(value) = (unsafe { bpf_probe_read_user(slot as *const u64) }) else {
                break;
            };
            value
        };
        hash = (hash ^ return_address).wrapping_mul(FNV_PRIME);
        if let Some(frames) = frames {
            unsafe { (*frames)[frame] = return_address };
        }
        depth = frame + 1;
        sp = slot + 8;
        pc = return_address;
    }
    (hash | 1, complete, depth)
}

/// Bytes of stack the walk reads at once.
const WALK_BYTES: u64 = 1024;

/// Bytes of stack each sample copies; 0 turns stack copies (DWARF unwinding) off. Set at load.
#[unsafe(no_mangle)]
static STACK_BYTES: u32 = 0;

/// Which allocations are recorded: one of [`sampling`]'s modes, and its parameter. Set at load.
#[unsafe(no_mangle)]
static SAMPLE_MODE: u32 = sampling::MODE_EXACT;
#[unsafe(no_mangle)]
static SAMPLE_PARAMETER: u64 = 0;

#[inline(always)]
fn exact() -> bool {
    unsafe { core::ptr::read_volatile(&SAMPLE_MODE) == sampling::MODE_EXACT }
}

/// Whether to record an allocation of `size` bytes: always, unless sampling.
#[inline(always)]
fn chosen(size: u64) -> bool {
    if exact() {
        return true;
    }
    let (mode, parameter) = unsafe {
        (
            core::ptr::read_volatile(&SAMPLE_MODE),
            core::ptr::read_volatile(&SAMPLE_PARAMETER),
        )
    };
    u64::from(unsafe { bpf_get_prandom_u32() }) < sampling::threshold(mode, parameter, size)
}

/// Keeps a recorded block's address, when sampling, so that its free is recognised; false
/// (and counted) when there is no room, and then the block must not be reported either.
#[inline(always)]
fn remember_block(address: u64) -> bool {
    if exact() {
        return true;
    }
    if SAMPLED_BLOCKS.insert(&address, &1, 0).is_err() {
        count_drop(DropCounter::SampledMapFull);
        return false;
    }
    true
}

/// Whether a freed block was recorded (and forgets it): always when exact; when sampling, one
/// map delete, which for the many unsampled blocks fails and ends the probe.
#[inline(always)]
fn forget_block(address: u64) -> bool {
    exact() || SAMPLED_BLOCKS.remove(&address).is_ok()
}

/// What an entry probe leaves for its return probe.
#[derive(Clone, Copy)]
#[repr(C)]
struct PendingCall {
    size: u64,
    /// realloc's old block, posix_memalign's out-pointer, or mremap's old mapping; 0 otherwise.
    address: u64,
    /// mremap's old length.
    old_size: u64,
    /// The stack pointer at entry: the thread's traced-call depth, in bytes. A traced call made
    /// from inside another one (operator new calling malloc, realloc(p, 0) calling free) runs at
    /// or below it (at it for a tail call), and stays silent: each allocation and free is
    /// counted once, at the outermost call, with that call's stack. Unlike a depth counter, an
    /// entry whose return was never seen cannot wedge the thread: it sits above no later call.
    entry_sp: u64,
    /// Nonzero when the result is to be recorded. A call sampling passed over is remembered
    /// all the same, so that what it calls stays silent (operator new must not give its
    /// malloc a second chance of being sampled).
    record: u64,
}

const EEXIST: i32 = 17;

#[inline(always)]
fn window_open() -> bool {
    CONTROL
        .get(CONTROL_ENABLED)
        .is_some_and(|enabled| *enabled != 0)
}

#[inline(always)]
fn count_drop(counter: DropCounter) {
    if let Some(slot) = DROPS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn stack_pointer(regs: *mut pt_regs) -> u64 {
    unsafe { (*regs).rsp }
}

/// True when this thread is inside a traced call that started at or above `sp`.
#[inline(always)]
fn inside_traced_call(pid_tgid: u64, sp: u64) -> bool {
    // An idle thread's entry_sp is 0, below every sp.
    match unsafe { PENDING.get(&pid_tgid) } {
        Some(outer) => outer.entry_sp >= sp,
        None => false,
    }
}

/// An outermost traced call, at its entry: where it is to be remembered.
struct Outermost {
    pid_tgid: u64,
    entry_sp: u64,
    /// The thread's [`PENDING`] entry, unless this is its first traced call.
    slot: Option<*mut PendingCall>,
}

/// The call starting now, if it is an outermost one; None when it is nested inside another
/// (or the window is closed) and must stay silent.
#[inline(always)]
fn outermost(ctx: &ProbeContext, pid_tgid: u64) -> Option<Outermost> {
    if !window_open() {
        return None;
    }
    let entry_sp = stack_pointer(ctx.regs);
    let slot = PENDING.get_ptr_mut(&pid_tgid);
    // An entry found below our sp is stale (its return was never seen): it is replaced.
    if slot.is_some_and(|outer| unsafe { (*outer).entry_sp } >= entry_sp) {
        return None;
    }
    Some(Outermost {
        pid_tgid,
        entry_sp,
        slot,
    })
}

impl Outermost {
    /// Keeps the call for its return probe; false (and counted) when there is no room.
    #[inline(always)]
    fn remember(&self, call: &PendingCall) -> bool {
        if let Some(slot) = self.slot {
            // Only this thread, and its exit, touch its entry.
            unsafe { *slot = *call };
            return true;
        }
        if PENDING.insert(&self.pid_tgid, call, 0).is_err() {
            count_drop(DropCounter::PendingMapFull);
            return false;
        }
        true
    }
}

/// Records an outermost allocation call of `size` bytes for its return probe, sampled or not.
#[inline(always)]
fn enter_alloc(ctx: &ProbeContext, size: u64, address: u64) {
    enter_call(ctx, size, address, 0, chosen(size));
}

/// Records an outermost call for its return probe; nested calls stay silent.
#[inline(always)]
fn enter_call(ctx: &ProbeContext, size: u64, address: u64, old_size: u64, record: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(outer) = outermost(ctx, pid_tgid) {
        let call = PendingCall {
            size,
            address,
            old_size,
            entry_sp: outer.entry_sp,
            record: u64::from(record),
        };
        outer.remember(&call);
    }
}

/// Takes this thread's pending call if this return belongs to it (not to a nested call).
/// A call sampling passed over is taken too, and its result left alone.
#[inline(always)]
fn take_recorded(ctx: &RetProbeContext) -> Option<(u64, PendingCall)> {
    take_pending(ctx).filter(|(_, call)| call.record != 0)
}

#[inline(always)]
fn take_pending(ctx: &RetProbeContext) -> Option<(u64, PendingCall)> {
    // A call that returns after the window closed is not the window's: leave it.
    if !window_open() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = PENDING.get_ptr_mut(&pid_tgid)?;
    let call = unsafe { *slot };
    // After `ret` the return address has been popped: sp is 8 above the entry's.
    if call.entry_sp == 0 || stack_pointer(ctx.regs) != call.entry_sp + 8 {
        return None;
    }
    unsafe { (*slot).entry_sp = 0 };
    Some((pid_tgid, call))
}

#[inline(always)]
fn event(pid_tgid: u64, kind: EventKind, address: u64, size: u64, stack_id: i32) -> AllocEvent {
    AllocEvent {
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
fn emit(pid_tgid: u64, kind: EventKind, address: u64, size: u64, stack_id: i32) {
    send(event(pid_tgid, kind, address, size, stack_id));
}

#[inline(always)]
fn send(record: AllocEvent) {
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
fn wake_flags() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if pending >= EVENTS.query(BPF_RB_RING_SIZE as u64) / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn emit_alloc(ctx: &RetProbeContext, pid_tgid: u64, address: u64, size: u64) {
    if remember_block(address) {
        emit_with_stack(ctx, pid_tgid, EventKind::Alloc, address, size);
    }
}

/// An allocation-like event ([`EventKind::Alloc`] or [`EventKind::Mmap`]) with the caller's
/// stack: by its key and, the first time, a copy for userspace to unwind; or by frame
/// pointers, when copies are off or this one could not be sent.
#[inline(always)]
fn emit_with_stack(ctx: &RetProbeContext, pid_tgid: u64, kind: EventKind, address: u64, size: u64) {
    if copies_on() {
        let (hash, complete, _) = learned_stack_hash(ctx, pid_tgid, None);
        // An incomplete key may stand for several stacks: each allocation gets its own copy
        // until userspace has learned the frames (milliseconds). Those copies give way early
        // (at a 32nd full), for the first copy of each key to get in. An allocation
        // whose copy cannot go is sent under its key alone, for userspace to match with the
        // last copy under it; or, if none was ever sent, with the return addresses walked
        // when the key is complete, and with its stack by frame pointers when not.
        let ever_copied = unsafe { COPIED_STACKS.get(&hash) }.is_some();
        let stack_id = if complete && ever_copied {
            Some(0)
        } else if emit_stack_sample(ctx, pid_tgid, hash, if ever_copied { 32 } else { 2 }) {
            if !ever_copied {
                let _ = COPIED_STACKS.insert(&hash, &1, 0);
            }
            Some(if complete { 0 } else { STACK_ID_OWN_COPY })
        } else {
            ever_copied.then_some(0)
        };
        if let Some(stack_id) = stack_id {
            send(AllocEvent {
                stack_hash: hash,
                ..event(pid_tgid, kind, address, size, stack_id)
            });
            return;
        }
        if complete {
            emit_walked_stack(ctx, pid_tgid, inline_kind(kind), address, size);
            return;
        }
    }
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => emit(pid_tgid, kind, address, size, id as i32),
        Err(errno) if errno == -EEXIST => {
            count_drop(DropCounter::StackMapFull);
            emit_inline_stack(ctx, pid_tgid, inline_kind(kind), address, size);
        }
        Err(errno) => {
            count_drop(DropCounter::StackUnreadable);
            emit(pid_tgid, kind, address, size, errno);
        }
    }
}

#[inline(always)]
fn inline_kind(kind: EventKind) -> EventKind {
    if kind == EventKind::Mmap {
        EventKind::MmapWithStack
    } else {
        EventKind::AllocWithStack
    }
}

/// A complete key whose copy could not be sent: the return addresses its walk followed go in
/// the record instead.
#[inline(always)]
fn emit_walked_stack(
    ctx: &RetProbeContext,
    pid_tgid: u64,
    kind: EventKind,
    address: u64,
    size: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<AllocEventWithStack>(0) else {
        count_drop(DropCounter::RingBufferFull);
        return;
    };
    let record = entry.as_mut_ptr();
    let frames = unsafe { core::ptr::addr_of_mut!((*record).frames) };
    let (_, _, depth) = learned_stack_hash(ctx, pid_tgid, Some(frames));
    unsafe {
        let header = event(pid_tgid, kind, address, size, 0);
        core::ptr::addr_of_mut!((*record).event).write(header);
        core::ptr::addr_of_mut!((*record).stack_bytes).write(depth as u64 * 8);
    }
    entry.submit(wake_flags());
}

/// The stack map had no room for this stack: send it in the record.
#[inline(always)]
fn emit_inline_stack(
    ctx: &RetProbeContext,
    pid_tgid: u64,
    kind: EventKind,
    address: u64,
    size: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<AllocEventWithStack>(0) else {
        count_drop(DropCounter::RingBufferFull);
        return;
    };
    let record = entry.as_mut_ptr();
    let filled = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            core::ptr::addr_of_mut!((*record).frames).cast(),
            size_of::<[u64; leaktrace_common::MAX_STACK_DEPTH]>() as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    let (stack_id, stack_bytes) = if filled < 0 {
        count_drop(DropCounter::StackUnreadable);
        (filled as i32, 0)
    } else {
        (0, filled as u64)
    };
    unsafe {
        let header = event(pid_tgid, kind, address, size, stack_id);
        core::ptr::addr_of_mut!((*record).event).write(header);
        core::ptr::addr_of_mut!((*record).stack_bytes).write(stack_bytes);
    }
    entry.submit(wake_flags());
}

const PAGE_BYTES: u64 = 4096;

#[inline(always)]
fn stack_bytes() -> u64 {
    unsafe { core::ptr::read_volatile(&STACK_BYTES) as u64 }
}

#[inline(always)]
fn copies_on() -> bool {
    stack_bytes() != 0
}

/// Where a [`StackSample`] is put together before it goes out, trimmed to what was copied.
#[map]
static SCRATCH: PerCpuArray<StackSample> = PerCpuArray::with_max_entries(1, 0);

/// Sends the registers and the top of the user stack, for userspace to unwind with CFI; false
/// when it was not sent (and the stack should be sampled again next time).
///
/// The stack is read a page at a time, the first read ending at a page boundary, so that the
/// read that runs past the top of the stack mapping (and fails) loses nothing below it. Only
/// the bytes copied go into the ring buffer, and only while it is less than `1/share` full:
/// the allocation events matter more than their stacks.
#[inline(always)]
fn emit_stack_sample(ctx: &RetProbeContext, pid_tgid: u64, stack_hash: u64, share: u64) -> bool {
    let limit = stack_bytes();
    let header = core::mem::offset_of!(StackSample, bytes) as u64;
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let ring = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if pending + header + limit + PAGE_BYTES > ring / share {
        count_drop(DropCounter::StackSampleSkipped);
        return false;
    }
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let regs = ctx.regs;
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    let bytes = unsafe { core::ptr::addr_of_mut!((*record).bytes) }.cast::<u8>();
    // The first, partial page: 1 to 4096 bytes, up to the next page boundary.
    let first = ((PAGE_BYTES - (sp & (PAGE_BYTES - 1)) - 1) & (PAGE_BYTES - 1)) + 1;
    let mut copied = 0u64;
    if unsafe { probe_read_user_bytes(bytes.cast(), first as u32, sp as *const _) } == 0 {
        copied = first;
        for _ in 0..MAX_STACK_COPY as u64 / PAGE_BYTES {
            if copied >= limit {
                break;
            }
            let offset = copied & (MAX_STACK_COPY as u64 - 1);
            let dst = unsafe { bytes.add(offset as usize) };
            let src = (sp + copied) as *const _;
            if unsafe { probe_read_user_bytes(dst.cast(), PAGE_BYTES as u32, src) } != 0 {
                break;
            }
            copied += PAGE_BYTES;
        }
    }
    unsafe {
        let mut head = event(pid_tgid, EventKind::StackSample, ip, copied, 0);
        head.stack_hash = stack_hash;
        core::ptr::addr_of_mut!((*record).event).write(head);
        core::ptr::addr_of_mut!((*record).sp).write(sp);
        core::ptr::addr_of_mut!((*record).bp).write(bp);
    }
    let mut length = header + copied;
    if length > size_of::<StackSample>() as u64 {
        length = size_of::<StackSample>() as u64;
    }
    let sample = unsafe { core::slice::from_raw_parts(record.cast::<u8>(), length as usize) };
    // A copy wakes the reader at once: until it is unwound, the stack's allocations each need
    // a copy of their own. New stacks are rare once a program runs, so this costs little.
    if EVENTS
        .output::<[u8]>(sample, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        count_drop(DropCounter::RingBufferFull);
        return false;
    }
    true
}

/// `count * size`, or None on overflow (when calloc and reallocarray fail without allocating).
#[inline(always)]
fn array_bytes(count: u64, size: u64) -> Option<u64> {
    // checked_mul needs a 128-bit multiply, which BPF lacks; LLVM turns the usual division test
    // back into one unless the divisor is opaque to it.
    let total = count.wrapping_mul(size);
    let divisor = unsafe { core::ptr::read_volatile(&size) };
    (divisor == 0 || total / divisor == count).then_some(total)
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// malloc, valloc and every operator new: the size is the first argument.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    enter_alloc(&ctx, arg(&ctx, 0), 0);
    0
}

/// pvalloc allocates whole pages: the size rounded up to the page size (4 KiB on x86-64).
#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    enter_alloc(&ctx, whole_pages(arg(&ctx, 0)).max(PAGE), 0);
    0
}

/// memalign and aligned_alloc: (alignment, size).
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    enter_alloc(&ctx, arg(&ctx, 1), 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    // An overflowing calloc returns NULL and allocates nothing: remember nothing either.
    if let Some(total) = array_bytes(arg(&ctx, 0), arg(&ctx, 1)) {
        enter_alloc(&ctx, total, 0);
    }
    0
}

/// Return probe of everything that returns the new block.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    if let Some((pid_tgid, call)) = take_recorded(&ctx) {
        let address: u64 = ctx.ret();
        if address != 0 {
            emit_alloc(&ctx, pid_tgid, address, call.size);
        }
    }
    0
}

/// realloc's old block is reported freed at entry, before the allocator can hand it to
/// another thread. The call is remembered for the return probe even when neither block is
/// recorded, so that the free realloc may call stays silent.
#[inline(always)]
fn realloc_enter_with(ctx: &ProbeContext, old_address: u64, size: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(outer) = outermost(ctx, pid_tgid) else {
        return;
    };
    let freed = old_address != 0 && forget_block(old_address);
    let call = PendingCall {
        size,
        // Only a recorded old block can be live again if realloc fails.
        address: if freed { old_address } else { 0 },
        old_size: 0,
        entry_sp: outer.entry_sp,
        record: u64::from(chosen(size)),
    };
    outer.remember(&call);
    if freed {
        emit(pid_tgid, EventKind::ReallocFree, old_address, 0, 0);
    }
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    realloc_enter_with(&ctx, arg(&ctx, 0), arg(&ctx, 1));
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    // On overflow reallocarray fails and leaves the old block alone.
    if let Some(total) = array_bytes(arg(&ctx, 1), arg(&ctx, 2)) {
        realloc_enter_with(&ctx, arg(&ctx, 0), total);
    }
    0
}

/// realloc and reallocarray. The old block was reported freed at entry.
#[uretprobe]
pub fn realloc_exit(ctx: RetProbeContext) -> u32 {
    let Some((pid_tgid, call)) = take_pending(&ctx) else {
        return 0;
    };
    let address: u64 = ctx.ret();
    if address != 0 {
        if call.record != 0 {
            emit_alloc(&ctx, pid_tgid, address, call.size);
        }
    } else if call.size != 0 && call.address != 0 && remember_block(call.address) {
        // NULL for a nonzero size is a failure: the old block lives on. (NULL for size 0 is
        // glibc's realloc(p, 0), which freed p.)
        emit(pid_tgid, EventKind::ReallocFailed, 0, 0, 0);
    }
    0
}

/// posix_memalign(memptr, alignment, size): the block comes back through *memptr.
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    enter_alloc(&ctx, arg(&ctx, 2), arg(&ctx, 0));
    0
}

#[uretprobe]
pub fn posix_memalign_exit(ctx: RetProbeContext) -> u32 {
    let Some((pid_tgid, call)) = take_recorded(&ctx) else {
        return 0;
    };
    let status: i32 = ctx.ret();
    if status == 0
        && let Ok(address) = unsafe { bpf_probe_read_user(call.address as *const u64) }
        && address != 0
    {
        emit_alloc(&ctx, pid_tgid, address, call.size);
    }
    0
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let address = arg(&ctx, 0);
    if address == 0 || !window_open() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // realloc(p, 0) and operator delete free through free(): the outer call reports it (and
    // has forgotten the block already).
    if forget_block(address) && !inside_traced_call(pid_tgid, stack_pointer(ctx.regs)) {
        emit(pid_tgid, EventKind::Free, address, 0, 0);
    }
    0
}

/// Every operator delete. Like free, but it calls free (or another delete) itself, so it
/// stays pending until it returns, and what it calls stays silent.
#[uprobe]
pub fn delete_enter(ctx: ProbeContext) -> u32 {
    let address = arg(&ctx, 0);
    let pid_tgid = bpf_get_current_pid_tgid();
    if address == 0 {
        return 0;
    }
    let Some(outer) = outermost(&ctx, pid_tgid) else {
        return 0;
    };
    let call = PendingCall {
        size: 0,
        address,
        old_size: 0,
        entry_sp: outer.entry_sp,
        record: 0,
    };
    if outer.remember(&call) && forget_block(address) {
        emit(pid_tgid, EventKind::Free, address, 0, 0);
    }
    0
}

#[uretprobe]
pub fn delete_exit(ctx: RetProbeContext) -> u32 {
    let _ = take_pending(&ctx);
    0
}

const PAGE: u64 = 4096;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FAILED: u64 = u64::MAX;

#[inline(always)]
fn whole_pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE) * PAGE
}

/// mmap(addr, length, prot, flags, fd, offset) with `--mmap`: anonymous mappings only. The
/// allocator's own arena mappings are made inside malloc and so stay silent as nested calls.
#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    if arg(&ctx, 3) & MAP_ANONYMOUS != 0 {
        // Mappings are few and large: always recorded, never sampled.
        enter_call(&ctx, whole_pages(arg(&ctx, 1)), 0, 0, true);
    }
    0
}

#[uretprobe]
pub fn mmap_exit(ctx: RetProbeContext) -> u32 {
    if let Some((pid_tgid, call)) = take_pending(&ctx) {
        let address: u64 = ctx.ret();
        if address != MAP_FAILED {
            emit_with_stack(&ctx, pid_tgid, EventKind::Mmap, address, call.size);
        }
    }
    0
}

/// munmap(addr, length): reported at entry, before the range can be mapped again.
#[uprobe]
pub fn munmap_enter(ctx: ProbeContext) -> u32 {
    if !window_open() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !inside_traced_call(pid_tgid, stack_pointer(ctx.regs)) {
        emit(
            pid_tgid,
            EventKind::Munmap,
            arg(&ctx, 0),
            whole_pages(arg(&ctx, 1)),
            0,
        );
    }
    0
}

/// mremap(old_address, old_size, new_size, flags, new_address): a move or resize is an
/// munmap of the old range and a mapping of the new one, when it succeeds.
#[uprobe]
pub fn mremap_enter(ctx: ProbeContext) -> u32 {
    let old_size = whole_pages(arg(&ctx, 1));
    let new_size = whole_pages(arg(&ctx, 2));
    enter_call(&ctx, new_size, arg(&ctx, 0), old_size, true);
    0
}

#[uretprobe]
pub fn mremap_exit(ctx: RetProbeContext) -> u32 {
    if let Some((pid_tgid, call)) = take_pending(&ctx) {
        let address: u64 = ctx.ret();
        if address != MAP_FAILED {
            emit(pid_tgid, EventKind::Munmap, call.address, call.old_size, 0);
            emit_with_stack(&ctx, pid_tgid, EventKind::Mmap, address, call.size);
        }
    }
    0
}

/// fork's return: in the parent it returns the child's pid (the child is not a traced process
/// until userspace attaches to it, so its own return does not reach here).
#[uretprobe]
pub fn fork_exit(ctx: RetProbeContext) -> u32 {
    let child: i64 = ctx.ret();
    if child > 0 && window_open() {
        emit(
            bpf_get_current_pid_tgid(),
            EventKind::Fork,
            child as u64,
            0,
            0,
        );
    }
    0
}

/// sched_process_exec(task, old_pid, bprm), in the context of the process that exec'd.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if unsafe { TRACED.get(&tgid) }.is_some() {
        emit(pid_tgid, EventKind::Exec, 0, 0, 0);
    }
    0
}

/// sched_process_exit(task), in the context of the exiting thread: its [`PENDING`] entry goes.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn thread_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if unsafe { TRACED.get(&tgid) }.is_some() {
        let _ = PENDING.remove(&pid_tgid);
    }
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
