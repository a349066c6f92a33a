//! Calls in flight: what an entry probe leaves for its return probe, one entry per thread, and
//! which calls count at all. Only a thread's outermost traced call does, and only while the
//! capture window is open.
//!
//! A thread's entry is its slot of `THREAD_SLOTS`, the one its thread id picks (the id modulo
//! the number of slots), taken at the thread's first call: every probe after that finds it by
//! an array index. A thread whose slot another thread holds (their ids are equal modulo the
//! number of slots) keeps its entry in the `PENDING` hash map instead, for as long as it lives.
//! A slot is taken through `SLOT_OWNERS`, whose insert only one thread can win, and given up
//! when its thread exits.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::bpf_get_current_pid_tgid,
    programs::{ProbeContext, RetProbeContext},
};
use leaktrace_common::{CONTROL_ENABLED, DropCounter};

use crate::{
    config,
    drops::count_drop,
    maps::{CONTROL, PENDING, SLOT_OWNERS, THREAD_SLOTS},
    sampled::chosen,
};

/// What an entry probe leaves for its return probe.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct PendingCall {
    pub(crate) size: u64,
    /// realloc's old block, posix_memalign's out-pointer, or mremap's old mapping; 0 otherwise.
    pub(crate) address: u64,
    /// mremap's old length.
    pub(crate) old_size: u64,
    /// The stack pointer at entry: the thread's traced-call depth, in bytes. A traced call made
    /// from inside another one (operator new calling malloc, realloc(p, 0) calling free) runs at
    /// or below it (at it for a tail call), and stays silent: each allocation and free is
    /// counted once, at the outermost call, with that call's stack. Unlike a depth counter, an
    /// entry whose return was never seen cannot wedge the thread: it sits above no later call.
    pub(crate) entry_sp: u64,
    /// Nonzero when the result is to be recorded. A call sampling passed over is remembered
    /// all the same, so that what it calls stays silent (operator new must not give its
    /// malloc a second chance of being sampled).
    pub(crate) record: u64,
}

/// A slot of `THREAD_SLOTS`.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct ThreadSlot {
    /// The pid_tgid of the thread that holds the slot; 0 while none does.
    owner: u64,
    call: PendingCall,
}

#[inline(always)]
fn slot_index(pid_tgid: u64) -> u32 {
    // At least 1, so that the compiler leaves out the panic of a division by zero.
    (pid_tgid as u32) % config::thread_slots().max(1)
}

/// The thread's slot, if the thread holds it.
#[inline(always)]
fn own_slot(pid_tgid: u64) -> Option<*mut ThreadSlot> {
    let slot = THREAD_SLOTS.get_ptr_mut(slot_index(pid_tgid))?;
    // SAFETY: the pointer is a slot of an array map value, valid while the program runs. The
    // owner is written by the thread taking or giving up the slot, in one aligned store.
    (unsafe { (*slot).owner } == pid_tgid).then_some(slot)
}

/// The thread's entry: its slot, or else its `PENDING` entry; None before its first call.
#[inline(always)]
fn entry(pid_tgid: u64) -> Option<*mut PendingCall> {
    match own_slot(pid_tgid) {
        // SAFETY: the pointer is this thread's slot, as above.
        Some(slot) => Some(unsafe { core::ptr::addr_of_mut!((*slot).call) }),
        None => PENDING.get_ptr_mut(pid_tgid),
    }
}

/// Takes the thread's slot for its first call, unless another thread holds it.
#[inline(always)]
fn take_slot(pid_tgid: u64) -> Option<*mut PendingCall> {
    let index = slot_index(pid_tgid);
    let slot = THREAD_SLOTS.get_ptr_mut(index)?;
    // SAFETY: the pointer is a slot of an array map value, valid while the program runs.
    if unsafe { (*slot).owner } != 0 {
        return None;
    }
    // Two threads that found the slot free may both get here: one insert wins.
    SLOT_OWNERS
        .insert(index, pid_tgid, u64::from(BPF_NOEXIST))
        .ok()?;
    // SAFETY: as above; the slot is this thread's now, and only it writes the slot.
    unsafe {
        (*slot).owner = pid_tgid;
        Some(core::ptr::addr_of_mut!((*slot).call))
    }
}

/// The thread is exiting: its slot or its `PENDING` entry goes.
#[inline(always)]
pub(crate) fn forget_thread(pid_tgid: u64) {
    let Some(slot) = own_slot(pid_tgid) else {
        let _ = PENDING.remove(pid_tgid);
        return;
    };
    // SAFETY: the pointer is this thread's slot, as in `own_slot`. The slot is marked free
    // before its owner entry goes: a thread that takes it after that owns it for good.
    unsafe { (*slot).owner = 0 };
    let _ = SLOT_OWNERS.remove(slot_index(pid_tgid));
}

/// Whether the capture window is open. Attaching and detaching uprobes takes tens of
/// milliseconds per probe; the switch makes them all start and stop at one instant.
#[inline(always)]
pub(crate) fn window_open() -> bool {
    CONTROL
        .get(CONTROL_ENABLED)
        .is_some_and(|enabled| *enabled != 0)
}

#[inline(always)]
pub(crate) fn stack_pointer(regs: *mut pt_regs) -> u64 {
    // SAFETY: `regs` is the probe context's register snapshot, which the kernel hands the
    // program and keeps valid while it runs.
    unsafe { (*regs).rsp }
}

/// True when this thread is inside a traced call that started at or above `sp`.
#[inline(always)]
pub(crate) fn inside_traced_call(pid_tgid: u64, sp: u64) -> bool {
    // An idle thread's entry_sp is 0, below every sp.
    // SAFETY: the pointer is this thread's entry: only this thread and its exit write it, so
    // it does not change or go while it is read here.
    entry(pid_tgid).is_some_and(|outer| unsafe { (*outer).entry_sp } >= sp)
}

/// An outermost traced call, at its entry: where it is to be remembered.
pub(crate) struct Outermost {
    pid_tgid: u64,
    pub(crate) entry_sp: u64,
    /// The thread's entry, unless this is its first traced call.
    slot: Option<*mut PendingCall>,
}

/// The call starting now, if it is an outermost one; None when it is nested inside another
/// (or the window is closed) and must stay silent.
#[inline(always)]
pub(crate) fn outermost(ctx: &ProbeContext, pid_tgid: u64) -> Option<Outermost> {
    if !window_open() {
        return None;
    }
    let entry_sp = stack_pointer(ctx.regs);
    let slot = entry(pid_tgid);
    // An entry found below our sp is stale (its return was never seen): it is replaced.
    // SAFETY: the pointer is this thread's entry, which only this thread and its exit touch.
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
    /// Keeps the call (its [`PendingCall`] fields, `record` among them) for its return probe;
    /// false (and counted) when there is no room.
    #[inline(always)]
    pub(crate) fn remember(&self, size: u64, address: u64, old_size: u64, record: bool) -> bool {
        let call = PendingCall {
            size,
            address,
            old_size,
            entry_sp: self.entry_sp,
            record: u64::from(record),
        };
        if let Some(slot) = self.slot.or_else(|| take_slot(self.pid_tgid)) {
            // SAFETY: the pointer is this thread's entry, which only this thread and its exit
            // touch, and the thread is here.
            unsafe { *slot = call };
            return true;
        }
        if PENDING.insert(self.pid_tgid, &call, 0).is_err() {
            count_drop(DropCounter::PendingMapFull);
            return false;
        }
        true
    }
}

/// Records an outermost allocation call of `size` bytes for its return probe, sampled or not.
#[inline(always)]
pub(crate) fn enter_alloc(ctx: &ProbeContext, size: u64, address: u64) {
    enter_call(ctx, size, address, 0, chosen(size));
}

/// Records an outermost call for its return probe; nested calls stay silent.
#[inline(always)]
pub(crate) fn enter_call(ctx: &ProbeContext, size: u64, address: u64, old_size: u64, record: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(outer) = outermost(ctx, pid_tgid) {
        outer.remember(size, address, old_size, record);
    }
}

/// Takes this thread's pending call if this return belongs to it (not to a nested call).
/// A call sampling passed over is taken too, and its result left alone.
#[inline(always)]
pub(crate) fn take_recorded(ctx: &RetProbeContext) -> Option<(u64, PendingCall)> {
    take_pending(ctx).filter(|(_, call)| call.record != 0)
}

#[inline(always)]
pub(crate) fn take_pending(ctx: &RetProbeContext) -> Option<(u64, PendingCall)> {
    // A call that returns after the window closed is not the window's: leave it.
    if !window_open() {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = entry(pid_tgid)?;
    // SAFETY: the pointer is this thread's entry, which only this thread and its exit touch,
    // and the thread is here.
    let call = unsafe { *slot };
    // After `ret` the return address has been popped: sp is 8 above the entry's.
    if call.entry_sp == 0 || stack_pointer(ctx.regs) != call.entry_sp + 8 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).entry_sp = 0 };
    Some((pid_tgid, call))
}
