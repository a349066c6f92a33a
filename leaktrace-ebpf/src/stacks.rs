//! An allocation's stack: by a key the probe hashes from return addresses it finds through
//! offsets userspace learned (with a copy of the stack the first time, for userspace to unwind
//! with CFI), or by frame pointers in the kernel's stack map, or inline in the record.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_RING_SIZE},
    cty::c_void,
    helpers::{
        bpf_get_stack, bpf_probe_read_user,
        generated::{
            bpf_loop, bpf_probe_read_kernel as bpf_probe_read_kernel_bytes,
            bpf_probe_read_user as probe_read_user_bytes,
        },
    },
    programs::{RetProbeContext, tracing::StackIdContext},
};
use leaktrace_common::{
    AllocEvent, AllocEventWithStack, DropCounter, EventKind, MAX_STACK_COPY, MAX_STACK_DEPTH,
    OUTERMOST_FRAME, PAGE_BYTES, STACK_ID_OWN_COPY, StackSample, return_offsets,
    stack_key::{self, KEY_FRAMES},
};

use crate::{
    config,
    drops::count_drop,
    events::{emit, event, room_for_allocation, send, wake_flags},
    maps::{
        COPIED_STACKS, EVENTS, RECENTLY_COPIED, RETURN_OFFSETS, SCRATCH, STACKS, WALKED_FRAMES,
    },
};

/// Bytes of stack the walk reads at once.
const WALK_BYTES: u64 = 1024;

const EEXIST: i32 = 17;

/// An allocation-like event ([`EventKind::Alloc`] or [`EventKind::Mmap`]) with the caller's
/// stack: by its key and, the first time, a copy for userspace to unwind; or by frame
/// pointers, when copies are off or this one could not be sent. Nothing, while the ring
/// buffer's last quarter is kept for frees.
#[inline(always)]
pub(crate) fn emit_with_stack(
    ctx: &RetProbeContext,
    pid_tgid: u64,
    kind: EventKind,
    address: u64,
    size: u64,
) {
    if !room_for_allocation() {
        return;
    }
    if config::copies_on() {
        let WalkedStack { hash, complete, .. } = walk_stack(ctx, pid_tgid, false);
        // An incomplete key may stand for several stacks: each allocation gets its own copy
        // until userspace has learned the frames (milliseconds). Those copies give way early
        // (at a 32nd full), for the first copy of each key to get in. An allocation
        // whose copy cannot go is sent under its key alone, for userspace to match with the
        // last copy under it; or, if none was ever sent, with the return addresses walked
        // when the key is complete, and with its stack by frame pointers when not.
        let ever_copied = copied_before(hash);
        let stack_id = if complete && ever_copied {
            Some(0)
        } else if emit_stack_sample(ctx, pid_tgid, hash, if ever_copied { 32 } else { 2 }) {
            if !ever_copied && COPIED_STACKS.insert(hash, 1, 0).is_ok() {
                copied_lately(hash);
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
            // The return addresses the walk follows go in the record, with the key, which
            // covers deeper frames than the record holds.
            emit_with_frames(pid_tgid, with_stack(kind), address, size, hash, |frames| {
                let kept = walk_stack(ctx, pid_tgid, true).kept;
                let Some(walked) = WALKED_FRAMES.get_ptr_mut(0) else {
                    return (0, 0);
                };
                let bytes = (kept * 8).min(size_of::<[u64; MAX_STACK_DEPTH]>() as u64);
                // SAFETY: both are arrays of MAX_STACK_DEPTH frames, and `bytes` is at most
                // that; the helper copies kernel memory fault-safely.
                let copied = unsafe {
                    bpf_probe_read_kernel_bytes(frames.cast(), bytes as u32, walked.cast())
                };
                (0, if copied == 0 { bytes } else { 0 })
            });
            return;
        }
    }
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => emit(pid_tgid, kind, address, size, id as i32),
        Err(errno) if errno == -EEXIST => {
            count_drop(DropCounter::StackMapFull);
            // The stack map had no room for this stack: the kernel walks it into the record.
            emit_with_frames(pid_tgid, with_stack(kind), address, size, 0, |frames| {
                // SAFETY: `frames` points at the record's array of MAX_STACK_DEPTH frames,
                // and the helper writes at most the size given.
                let filled = unsafe {
                    bpf_get_stack(
                        ctx.as_ptr(),
                        frames.cast(),
                        size_of::<[u64; MAX_STACK_DEPTH]>() as u32,
                        BPF_F_USER_STACK as u64,
                    )
                };
                if filled < 0 {
                    count_drop(DropCounter::StackUnreadable);
                    (filled as i32, 0)
                } else {
                    (0, filled as u64)
                }
            });
        }
        Err(errno) => {
            count_drop(DropCounter::StackUnreadable);
            emit(pid_tgid, kind, address, size, errno);
        }
    }
}

/// Slots of the per-CPU `RECENTLY_COPIED` cache.
pub(crate) const RECENTLY_COPIED_SLOTS: u32 = 256;

/// This CPU's `RECENTLY_COPIED` slot for `hash`: picked by its top bits, which the hash's
/// multiplications mix best.
#[inline(always)]
fn recently_copied_slot(hash: u64) -> Option<*mut u64> {
    RECENTLY_COPIED.get_ptr_mut((hash >> (64 - RECENTLY_COPIED_SLOTS.trailing_zeros())) as u32)
}

/// Whether a stack copy was ever sent under `hash`: from this CPU's cache of keys lately seen,
/// or else from `COPIED_STACKS` (a hash map lookup, several times dearer), then cached.
#[inline(always)]
fn copied_before(hash: u64) -> bool {
    let slot = recently_copied_slot(hash);
    // SAFETY: the pointer is this CPU's slot of a map value, valid while the program runs.
    if slot.is_some_and(|slot| unsafe { *slot } == hash) {
        return true;
    }
    // SAFETY: the value is only tested for presence, never read.
    let copied = unsafe { COPIED_STACKS.get(hash) }.is_some();
    if copied && let Some(slot) = slot {
        // SAFETY: as above.
        unsafe { *slot = hash };
    }
    copied
}

/// Notes in this CPU's cache that `hash` is in `COPIED_STACKS` now.
#[inline(always)]
fn copied_lately(hash: u64) {
    if let Some(slot) = recently_copied_slot(hash) {
        // SAFETY: the pointer is this CPU's slot of a map value, valid while the program runs.
        unsafe { *slot = hash };
    }
}

/// The kind of `kind`'s record with its stack inline ([`AllocEventWithStack`]).
#[inline(always)]
fn with_stack(kind: EventKind) -> EventKind {
    if kind == EventKind::Mmap {
        EventKind::MmapWithStack
    } else {
        EventKind::AllocWithStack
    }
}

/// Sends an [`AllocEventWithStack`], whose frames `fill` writes in place in the ring buffer,
/// returning the record's `stack_id` and how many bytes of frames it wrote; `stack_hash` is
/// the stack's key, or 0 for a frame-pointer walk.
#[inline(always)]
fn emit_with_frames(
    pid_tgid: u64,
    kind: EventKind,
    address: u64,
    size: u64,
    stack_hash: u64,
    fill: impl FnOnce(*mut [u64; MAX_STACK_DEPTH]) -> (i32, u64),
) {
    let Some(mut entry) = EVENTS.reserve::<AllocEventWithStack>(0) else {
        count_drop(DropCounter::RingBufferFull);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at the reserved entry, ours to write until it is submitted; its
    // fields are written through raw pointers, never read.
    let frames = unsafe { core::ptr::addr_of_mut!((*record).frames) };
    let (stack_id, stack_bytes) = fill(frames);
    let header = AllocEvent {
        stack_hash,
        ..event(pid_tgid, kind, address, size, stack_id)
    };
    // SAFETY: as above.
    unsafe {
        core::ptr::addr_of_mut!((*record).event).write(header);
        core::ptr::addr_of_mut!((*record).stack_bytes).write(stack_bytes);
    }
    entry.submit(wake_flags());
}

/// A walk up the stack through learned offsets, which [`walk_frame`] advances one frame a call,
/// from `bpf_loop`: the verifier checks one frame's code once, where a loop of [`KEY_FRAMES`]
/// frames inlined in each return probe cost it ~2 ms a frame at every attach.
#[repr(C)]
struct Walk {
    /// The frame's return address (the allocation's own, at first) and stack pointer.
    pc: u64,
    sp: u64,
    /// Where the one read of the stack's top started, and the bytes it got (0 or
    /// [`WALK_BYTES`]).
    top: u64,
    read: u64,
    hash: u64,
    /// Return addresses walked, the allocation's own included.
    depth: u64,
    /// Nonzero when the walk stopped at a return address whose offset is not learned yet.
    incomplete: u64,
    /// Nonzero to keep the first [`MAX_STACK_DEPTH`] return addresses in `WALKED_FRAMES`.
    keep_frames: u64,
}

/// What [`walk_stack`] found.
struct WalkedStack {
    /// The stack's key ([`stack_key`]); never 0.
    hash: u64,
    /// Whether the walk reached the outermost frame (or the key's depth, or unreadable
    /// memory): until userspace has learned every frame's offset (from the first copy of a
    /// stack through it) the walk stops early, and the key is not yet the stack's own.
    complete: bool,
    /// Return addresses kept in `WALKED_FRAMES`, with `keep_frames`.
    kept: u64,
}

/// Frames a walk takes inline, before it goes on in `bpf_loop`: the verifier checks each
/// inline frame again, in each return probe.
const INLINE_FRAMES: u64 = 8;

/// `bpf_loop`'s answers to go on, or to stop.
const GO_ON: i64 = 0;
const STOP: i64 = 1;

/// The stack's key ([`stack_key`]): a hash of the process, the allocation's return address
/// and the callers' return addresses reachable from it through learned offsets, up to
/// [`KEY_FRAMES`] in all.
///
/// With `keep_frames`, the first [`MAX_STACK_DEPTH`] return addresses walked go to this CPU's
/// `WALKED_FRAMES` too, innermost first. The key covers the deeper ones too: stacks that share
/// those frames and differ below them keep keys of their own.
#[inline(always)]
fn walk_stack(ctx: &RetProbeContext, pid_tgid: u64, keep_frames: bool) -> WalkedStack {
    // SAFETY: `ctx.regs` is the register snapshot the kernel hands the program, valid while it
    // runs.
    let (pc, sp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp) };
    let mut walk = Walk {
        pc,
        sp,
        top: sp,
        read: 0,
        hash: stack_key::add(stack_key::start(pid_tgid >> 32), pc),
        depth: 1,
        incomplete: 0,
        keep_frames: u64::from(keep_frames),
    };
    if keep_frames && let Some(frames) = WALKED_FRAMES.get_ptr_mut(0) {
        // SAFETY: `frames` is this CPU's slot of a map value, valid while the program runs.
        unsafe { (*frames)[0] = pc };
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return walk.finish(false);
    };
    // SAFETY: `scratch` is this CPU's slot of a map value, valid while the program runs.
    let bytes = unsafe { core::ptr::addr_of_mut!((*scratch).bytes) }.cast::<u8>();
    // The top of the stack, in one read: most frames' return addresses lie within it.
    // SAFETY: the helper writes WALK_BYTES into `bytes`, which holds more than that, and
    // reads user memory fault-safely (it fails instead).
    if unsafe { probe_read_user_bytes(bytes.cast(), WALK_BYTES as u32, sp as *const _) } == 0 {
        walk.read = WALK_BYTES;
    }
    // Most stacks end within the first frames, walked inline; deeper ones go on in
    // `bpf_loop`, which costs a call a frame.
    for depth in 1..INLINE_FRAMES {
        if !walk.step(depth) {
            return walk.finish(walk.incomplete == 0);
        }
    }
    // SAFETY: `walk_frame` takes a `Walk`, and `walk` outlives the loop.
    unsafe {
        bpf_loop(
            (KEY_FRAMES as u64 - INLINE_FRAMES) as u32,
            walk_frame as *mut c_void,
            core::ptr::addr_of_mut!(walk).cast(),
            0,
        );
    }
    // A stack deeper than the walk goes, or one that cannot be read on, is as complete as
    // the walk can make it.
    walk.finish(walk.incomplete == 0)
}

/// One frame of a [`Walk`] past the first [`INLINE_FRAMES`], for `bpf_loop`.
#[inline(never)]
extern "C" fn walk_frame(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: `walk_stack` passes its `Walk`, which lives on its stack while the loop runs.
    let walk = unsafe { &mut *walk.cast::<Walk>() };
    // The frame's number comes from the loop's index, which the verifier takes for any value,
    // not from a count kept in `walk`: a count it knew exactly would make each frame a new
    // state to check, as many as the loop's length.
    if walk.step(index + INLINE_FRAMES) {
        GO_ON
    } else {
        STOP
    }
}

impl Walk {
    /// Frame `depth` (the allocation's own return address is frame 0): from the last return
    /// address's learned offset, the caller's, read from the stack's top already read or else
    /// from the stack. False when the walk ends here.
    #[inline(always)]
    fn step(&mut self, depth: u64) -> bool {
        let learned =
            return_offsets::learned_offset(self.pc, |slot| RETURN_OFFSETS.get(slot).copied());
        let Some(offset) = learned else {
            self.incomplete = 1;
            return false;
        };
        if offset == OUTERMOST_FRAME {
            return false;
        }
        let slot = self.sp + offset;
        let within = slot - self.top;
        let return_address = if within + 8 <= self.read {
            let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
                return false;
            };
            // SAFETY: `scratch` is this CPU's slot of a map value, valid while the program
            // runs, and the index is masked below WALK_BYTES, so the 8 bytes read lie inside
            // its bytes; they were read from the stack by `walk_stack`.
            unsafe {
                core::ptr::addr_of!((*scratch).bytes)
                    .cast::<u8>()
                    .add((within & (WALK_BYTES - 1)) as usize)
                    .cast::<u64>()
                    .read_unaligned()
            }
        } else {
            // SAFETY: the helper reads user memory fault-safely (it fails instead).
            let Ok(value) = (unsafe { bpf_probe_read_user(slot as *const u64) }) else {
                return false;
            };
            value
        };
        self.hash = stack_key::add(self.hash, return_address);
        if self.keep_frames != 0
            && depth < MAX_STACK_DEPTH as u64
            && let Some(frames) = WALKED_FRAMES.get_ptr_mut(0)
        {
            // SAFETY: `frames` is this CPU's slot of a map value, and `depth` is below its
            // length.
            unsafe {
                frames
                    .cast::<u64>()
                    .add(depth as usize)
                    .write(return_address)
            };
        }
        self.depth = depth + 1;
        self.sp = slot + 8;
        self.pc = return_address;
        true
    }

    #[inline(always)]
    fn finish(&self, complete: bool) -> WalkedStack {
        WalkedStack {
            hash: stack_key::finish(self.hash),
            complete,
            kept: self.depth.min(MAX_STACK_DEPTH as u64),
        }
    }
}

/// Sends the registers and the top of the user stack, for userspace to unwind with CFI; false
/// when it was not sent (and the stack should be sampled again next time).
///
/// The stack is read a page at a time, the first read ending at a page boundary, so that the
/// read that runs past the top of the stack mapping (and fails) loses nothing below it. Only
/// the bytes copied go into the ring buffer, and only while it is less than `1/share` full:
/// the allocation events matter more than their stacks.
#[inline(always)]
fn emit_stack_sample(ctx: &RetProbeContext, pid_tgid: u64, stack_hash: u64, share: u64) -> bool {
    let limit = config::stack_bytes();
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
    // SAFETY: `ctx.regs` is the register snapshot the kernel hands the program, valid while it
    // runs.
    let (ip, sp, bp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    // SAFETY: `record` is this CPU's slot of a map value, valid while the program runs.
    let bytes = unsafe { core::ptr::addr_of_mut!((*record).bytes) }.cast::<u8>();
    // The first, partial page: 1 to 4096 bytes, up to the next page boundary.
    let first = ((PAGE_BYTES - (sp & (PAGE_BYTES - 1)) - 1) & (PAGE_BYTES - 1)) + 1;
    let mut copied = 0u64;
    // SAFETY: at most a page goes to the start of `bytes`; the helper reads user memory
    // fault-safely (it fails instead).
    if unsafe { probe_read_user_bytes(bytes.cast(), first as u32, sp as *const _) } == 0 {
        copied = first;
        for _ in 0..MAX_STACK_COPY as u64 / PAGE_BYTES {
            if copied >= limit {
                break;
            }
            let offset = copied & (MAX_STACK_COPY as u64 - 1);
            // SAFETY: `offset` is masked below MAX_STACK_COPY, and `bytes` holds a page more
            // than that, so the page read next lands inside it.
            let dst = unsafe { bytes.add(offset as usize) };
            let src = (sp + copied) as *const _;
            // SAFETY: as above; the helper reads user memory fault-safely.
            if unsafe { probe_read_user_bytes(dst.cast(), PAGE_BYTES as u32, src) } != 0 {
                break;
            }
            copied += PAGE_BYTES;
        }
    }
    let head = AllocEvent {
        stack_hash,
        ..event(pid_tgid, EventKind::StackSample, ip, copied, 0)
    };
    // SAFETY: `record` is this CPU's slot, as above; its fields are written through raw
    // pointers.
    unsafe {
        core::ptr::addr_of_mut!((*record).event).write(head);
        core::ptr::addr_of_mut!((*record).sp).write(sp);
        core::ptr::addr_of_mut!((*record).bp).write(bp);
    }
    let length = (header + copied).min(size_of::<StackSample>() as u64);
    // SAFETY: `length` is at most the slot's size, and every byte up to it was written above
    // (the header) or by the helper (the stack).
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
