//! The programs: an entry probe and a return probe per allocator function (named in
//! [`leaktrace_common::programs`]), each counting its hit first ([`count_hit`]), and the
//! tracepoints that follow a traced process's execs
//! and its threads' exits.

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_func_ip},
    macros::{raw_tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use leaktrace_common::{
    EventKind, PAGE_BYTES,
    arguments::{self, Home},
    cookie,
};

use crate::{
    config::free_size_header,
    cost::{attach_cookie, count_hit, count_hit_at},
    events::{emit, emit_free},
    maps::TRACED,
    pending::{
        PendingCall, enter_alloc, enter_call, forget_thread, inside_traced_call, outermost,
        stack_pointer, take_pending, take_recorded, window_open,
    },
    sampled::{chosen, forget_block, remember_block},
    seen::{mark_allocated, maybe_older},
    stacks::emit_with_stack,
};

const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FAILED: u64 = u64::MAX;

/// Argument `n` (from 0) of the probed function, where the probe's `cookie` (read once, by
/// [`count_hit`](crate::cost::count_hit)) says it lives: a probe placed past the entry may find it moved
/// ([`leaktrace_common::arguments`]).
#[inline(always)]
fn arg(ctx: &ProbeContext, cookie: u64, n: usize) -> u64 {
    let regs = ctx.regs;
    /// A direct load of one saved register: the verifier takes loads from the context only at
    /// a constant offset, and a volatile load keeps LLVM from folding the arms below into one
    /// load at a computed offset (which a helper call would then have to make, ~50 ns).
    macro_rules! register {
        ($field:ident) => {
            // SAFETY: `regs` is this probe's saved registers, which the kernel owns and keeps
            // for the probe's run.
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*regs).$field)) }
        };
    }
    match arguments::home(cookie, n) {
        Home::Own => ctx.arg::<u64>(n).unwrap_or(0),
        Home::Rdi => register!(rdi),
        Home::Rsi => register!(rsi),
        Home::Rdx => register!(rdx),
        Home::Rcx => register!(rcx),
        Home::R8 => register!(r8),
        Home::R9 => register!(r9),
        Home::Rax => register!(rax),
        Home::Rbx => register!(rbx),
        Home::Rbp => register!(rbp),
        Home::R10 => register!(r10),
        Home::R11 => register!(r11),
        Home::R12 => register!(r12),
        Home::R13 => register!(r13),
        Home::R14 => register!(r14),
        Home::R15 => register!(r15),
    }
}

/// `count * size`, or None on overflow (when calloc and reallocarray fail without allocating).
#[inline(always)]
fn array_bytes(count: u64, size: u64) -> Option<u64> {
    // checked_mul needs a 128-bit multiply, which BPF lacks; LLVM turns the usual division test
    // back into one unless the divisor is opaque to it.
    let total = count.wrapping_mul(size);
    // SAFETY: a volatile read of a local, to hide its value from LLVM.
    let divisor = unsafe { core::ptr::read_volatile(&size) };
    (divisor == 0 || total / divisor == count).then_some(total)
}

#[inline(always)]
fn whole_pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// A new block, if it is to be recorded (always, unless sampling).
#[inline(always)]
fn emit_alloc(ctx: &RetProbeContext, pid_tgid: u64, address: u64, size: u64) {
    if remember_block(address) {
        mark_allocated(address);
        emit_with_stack(ctx, pid_tgid, EventKind::Alloc, address, size);
    }
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
    // Only a recorded old block can be live again if realloc fails.
    let address = if freed { old_address } else { 0 };
    outer.remember(size, address, 0, chosen(size));
    if freed {
        emit(pid_tgid, EventKind::ReallocFree, old_address, 0, 0);
    }
}

/// malloc, valloc and every operator new: the size is the first argument.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    enter_alloc(&ctx, arg(&ctx, cookie, 0), 0);
    0
}

/// pvalloc allocates whole pages: the size rounded up to the page size (4 KiB on x86-64).
#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    enter_alloc(&ctx, whole_pages(arg(&ctx, cookie, 0)).max(PAGE_BYTES), 0);
    0
}

/// memalign and aligned_alloc: (alignment, size).
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    enter_alloc(&ctx, arg(&ctx, cookie, 1), 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    // An overflowing calloc returns NULL and allocates nothing: remember nothing either.
    if let Some(total) = array_bytes(arg(&ctx, cookie, 0), arg(&ctx, cookie, 1)) {
        enter_alloc(&ctx, total, 0);
    }
    0
}

/// Return probe of everything that returns the new block.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
    alloc_returned(&ctx);
    0
}

/// A call recorded at entry returned its block.
#[inline(always)]
fn alloc_returned(ctx: &RetProbeContext) {
    if let Some((pid_tgid, call)) = take_recorded(ctx) {
        let address: u64 = ctx.ret();
        if address != 0 {
            emit_alloc(ctx, pid_tgid, address, call.size);
        }
    }
}

/// An entry run of a session asks for its return run.
const RUN_RETURN: u32 = 0;
/// An entry run of a session passes on its return run: the kernel leaves the return address
/// alone, and the call costs one trap instead of two.
const SKIP_RETURN: u32 = 1;

/// malloc's entry and return in one program, attached as a uprobe session (Linux 6.13+) when
/// sampling: an unsampled call skips its return probe (~500 ns). Only for a function that
/// calls no other probed function: an unsampled call leaves no entry behind, so nothing it
/// called would know to stay silent.
///
/// Written out without `#[uprobe]`, whose wrapper returns 0 whatever the program says: here
/// the answer is what skips the return.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_session(ctx: *mut c_void) -> u32 {
    session(ctx, |ctx, cookie| Some(arg(ctx, cookie, 0)))
}

/// calloc's entry and return as one uprobe session, as malloc's.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn calloc_session(ctx: *mut c_void) -> u32 {
    // An overflowing calloc allocates nothing: its return is skipped.
    session(ctx, |ctx, cookie| {
        array_bytes(arg(ctx, cookie, 0), arg(ctx, cookie, 1))
    })
}

/// A session's run: the entry's, which asks for the return run only for a call it records,
/// of the size `size` reads from the arguments (None: nothing to record); or the return's.
/// The entry run sees the probe's own address in the instruction pointer; the return run sees
/// the caller's return address there.
#[inline(always)]
fn session(ctx: *mut c_void, size: impl FnOnce(&ProbeContext, u64) -> Option<u64>) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let cookie = attach_cookie(&ctx);
    // SAFETY: the helper reads this run's probe address; `ctx.regs` is the register snapshot
    // the kernel hands the program.
    let returning = unsafe { bpf_get_func_ip(ctx.as_ptr()) != (*ctx.regs).rip };
    if returning {
        // The return run counts as the point numbered after the entry's.
        count_hit_at(cookie::point(cookie) + 1);
        alloc_returned(&RetProbeContext::new(ctx.as_ptr()));
        return RUN_RETURN;
    }
    count_hit_at(cookie::point(cookie));
    let Some(size) = size(&ctx, cookie) else {
        return SKIP_RETURN;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(outer) = outermost(&ctx, pid_tgid) else {
        return SKIP_RETURN;
    };
    if !chosen(size) {
        return SKIP_RETURN;
    }
    if outer.remember(size, 0, 0, true) {
        RUN_RETURN
    } else {
        SKIP_RETURN
    }
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    realloc_enter_with(&ctx, arg(&ctx, cookie, 0), arg(&ctx, cookie, 1));
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    // On overflow reallocarray fails and leaves the old block alone.
    if let Some(total) = array_bytes(arg(&ctx, cookie, 1), arg(&ctx, cookie, 2)) {
        realloc_enter_with(&ctx, arg(&ctx, cookie, 0), total);
    }
    0
}

/// realloc and reallocarray. The old block was reported freed at entry.
#[uretprobe]
pub fn realloc_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
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
    let cookie = count_hit(&ctx);
    enter_alloc(&ctx, arg(&ctx, cookie, 2), arg(&ctx, cookie, 0));
    0
}

#[uretprobe]
pub fn posix_memalign_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
    if let Some((pid_tgid, call)) = take_recorded(&ctx)
        && let Some(address) = result_through::<u64>(&ctx, &call)
        && address != 0
    {
        emit_alloc(&ctx, pid_tgid, address, call.size);
    }
    0
}

/// What a call that returns 0 for success gave back through the pointer its entry remembered
/// (`call.address`, which may be NULL), when it succeeded.
#[inline(always)]
fn result_through<T>(ctx: &RetProbeContext, call: &PendingCall) -> Option<T> {
    let status: i32 = ctx.ret();
    if status != 0 || call.address == 0 {
        return None;
    }
    // SAFETY: the helper reads user memory fault-safely (it fails instead).
    unsafe { bpf_probe_read_user(call.address as *const T) }.ok()
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    let address = arg(&ctx, cookie, 0);
    if address == 0 || !window_open() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // realloc(p, 0) and operator delete free through free(): the outer call reports it (and
    // has forgotten the block already).
    if forget_block(address) && !inside_traced_call(pid_tgid, stack_pointer(ctx.regs)) {
        emit_free(pid_tgid, address, freed_size(address));
    }
    0
}

/// What the block at `address`, being freed, holds: known only where free is glibc's (see
/// `FREE_SIZE_HEADER`), else 0. The ledger needs it only for blocks allocated before the
/// attach, whose allocation it never saw: others say 0 ([`crate::seen`]).
#[inline(always)]
fn freed_size(address: u64) -> u64 {
    if free_size_header() && maybe_older(address) {
        glibc_usable_size(address)
    } else {
        0
    }
}

/// The bytes glibc's block at `address` holds, from its chunk header (the word before it:
/// the chunk's size, its low bits flags); 0 when it cannot be read.
#[inline(always)]
fn glibc_usable_size(address: u64) -> u64 {
    const IS_MMAPPED: u64 = 2;
    const FLAGS: u64 = 7;
    // SAFETY: a read of the traced process's memory, which may fail and then says so.
    let Ok(header) = (unsafe { bpf_probe_read_user((address - 8) as *const u64) }) else {
        return 0;
    };
    // A mapped chunk also spends its previous-size word; an in-use chunk lends it out.
    let overhead = if header & IS_MMAPPED != 0 { 16 } else { 8 };
    (header & !FLAGS).saturating_sub(overhead)
}

/// Every operator delete. Like free, but it calls free (or another delete) itself, so it
/// stays pending until it returns, and what it calls stays silent.
#[uprobe]
pub fn delete_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    let address = arg(&ctx, cookie, 0);
    let pid_tgid = bpf_get_current_pid_tgid();
    if address == 0 {
        return 0;
    }
    let Some(outer) = outermost(&ctx, pid_tgid) else {
        return 0;
    };
    if outer.remember(0, address, 0, false) && forget_block(address) {
        emit_free(pid_tgid, address, freed_size(address));
    }
    0
}

#[uretprobe]
pub fn delete_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
    let _ = take_pending(&ctx);
    0
}

/// mmap(addr, length, prot, flags, fd, offset) with `--mmap`: anonymous mappings only. The
/// allocator's own arena mappings are made inside malloc and so stay silent as nested calls.
#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    if arg(&ctx, cookie, 3) & MAP_ANONYMOUS != 0 {
        // Mappings are few and large: always recorded, never sampled.
        enter_call(&ctx, whole_pages(arg(&ctx, cookie, 1)), 0, 0, true);
    }
    0
}

#[uretprobe]
pub fn mmap_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
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
    let cookie = count_hit(&ctx);
    if !window_open() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !inside_traced_call(pid_tgid, stack_pointer(ctx.regs)) {
        emit(
            pid_tgid,
            EventKind::Munmap,
            arg(&ctx, cookie, 0),
            whole_pages(arg(&ctx, cookie, 1)),
            0,
        );
    }
    0
}

/// mremap(old_address, old_size, new_size, flags, new_address): a move or resize is an
/// munmap of the old range and a mapping of the new one, when it succeeds.
#[uprobe]
pub fn mremap_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    let old_size = whole_pages(arg(&ctx, cookie, 1));
    let new_size = whole_pages(arg(&ctx, cookie, 2));
    enter_call(&ctx, new_size, arg(&ctx, cookie, 0), old_size, true);
    0
}

#[uretprobe]
pub fn mremap_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
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
    count_hit(&ctx);
    forked(ctx.ret(), false);
    0
}

/// vfork's return. The child returns first, through this probe too (the kernel gives a vfork
/// child its parent's pending returns), with 0; the parent once the child has exec'd.
#[uretprobe]
pub fn vfork_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
    forked(ctx.ret(), true);
    0
}

/// posix_spawn and posix_spawnp(pid, path, …): the child's pid comes back through `pid`,
/// which may be NULL. The pointer waits for the return in the thread's pending call, as an
/// allocation's size does; meanwhile what the call allocates inside stays silent, as inside
/// an allocator's function.
#[uprobe]
pub fn spawn_enter(ctx: ProbeContext) -> u32 {
    let cookie = count_hit(&ctx);
    enter_call(&ctx, 0, arg(&ctx, cookie, 0), 0, true);
    0
}

/// posix_spawn returns 0 once its child has exec'd: glibc's clones it to share memory and
/// waits, as vfork does.
#[uretprobe]
pub fn spawn_exit(ctx: RetProbeContext) -> u32 {
    count_hit(&ctx);
    if let Some((_, call)) = take_pending(&ctx)
        && let Some(child) = result_through::<i32>(&ctx, &call)
    {
        forked(child.into(), true);
    }
    0
}

/// In the parent, a new child's pid, for userspace to follow; `execd` when the child has
/// exec'd already.
#[inline(always)]
fn forked(child: i64, execd: bool) {
    if child > 0 && window_open() {
        emit(
            bpf_get_current_pid_tgid(),
            EventKind::Fork,
            child as u64,
            u64::from(execd),
            0,
        );
    }
}

/// sched_process_exec(task, old_pid, bprm), in the context of the process that exec'd.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { TRACED.get(tgid) }.is_some() {
        emit(pid_tgid, EventKind::Exec, 0, 0, 0);
    }
    0
}

/// sched_process_exit(task), in the context of the exiting thread: its entry goes.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn thread_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { TRACED.get(tgid) }.is_some() {
        forget_thread(pid_tgid);
    }
    0
}
