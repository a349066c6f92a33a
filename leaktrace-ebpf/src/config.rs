//! What userspace sets at load (`EbpfLoader::override_global`).
//!
//! These statics land in `.rodata`, which aya freezes before the programs load: the verifier
//! then knows each value, and a branch it rules out (stack copies while `STACK_BYTES` is 0,
//! logging while `LOG_DROPS` is 0) is never explored, and is dropped from the program.

use aya_ebpf::Global;
use leaktrace_common::sampling;

/// Bytes of stack each sample copies; 0 turns stack copies (DWARF unwinding) off.
#[unsafe(no_mangle)]
static STACK_BYTES: Global<u32> = Global::new(0);

/// Which allocations are recorded: one of [`sampling`]'s modes, and its parameter.
#[unsafe(no_mangle)]
static SAMPLE_MODE: Global<u32> = Global::new(sampling::MODE_EXACT);
#[unsafe(no_mangle)]
static SAMPLE_PARAMETER: Global<u64> = Global::new(0);

/// Slots of the `THREAD_SLOTS` table (`--max-threads`): a thread's slot is its id modulo this.
#[unsafe(no_mangle)]
static THREAD_SLOT_COUNT: Global<u32> = Global::new(16384);

/// Nonzero when free's probe reads the size glibc keeps in the word before each block (its
/// chunk header), so that a free of a block allocated before the attach says what it
/// releases. Set only when attaching to a process whose free is glibc's.
#[unsafe(no_mangle)]
static FREE_SIZE_HEADER: Global<u32> = Global::new(0);

/// Nonzero when the probes log the first drop of each kind (`--verbose`).
#[unsafe(no_mangle)]
static LOG_DROPS: Global<u32> = Global::new(0);

#[inline(always)]
pub(crate) fn stack_bytes() -> u64 {
    u64::from(STACK_BYTES.load())
}

/// Whether allocations send stack copies, for DWARF unwinding in userspace.
#[inline(always)]
pub(crate) fn copies_on() -> bool {
    stack_bytes() != 0
}

/// The sampling mode and its parameter, for [`sampling::threshold`].
#[inline(always)]
pub(crate) fn sampling() -> (u32, u64) {
    (SAMPLE_MODE.load(), SAMPLE_PARAMETER.load())
}

/// Whether every allocation is recorded: not sampling.
#[inline(always)]
pub(crate) fn exact() -> bool {
    SAMPLE_MODE.load() == sampling::MODE_EXACT
}

#[inline(always)]
pub(crate) fn thread_slots() -> u32 {
    THREAD_SLOT_COUNT.load()
}

#[inline(always)]
pub(crate) fn log_drops() -> bool {
    LOG_DROPS.load() != 0
}

#[inline(always)]
pub(crate) fn free_size_header() -> bool {
    FREE_SIZE_HEADER.load() != 0
}
