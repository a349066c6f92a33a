//! What the probes could not deliver whole, counted per CPU in the kernel.

use serde::Serialize;

/// What the kernel side could not deliver whole, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// Events lost: the ring buffer was full.
    pub ring_buffer_full: u64,
    /// Stacks that did not fit the stack map. Nothing is lost: they came inline instead.
    pub stack_map_full: u64,
    /// Allocations whose stack could not be read: counted, under an unknown call site.
    pub stack_unreadable: u64,
    /// Allocations lost: no room to remember the call between entry and return.
    pub pending_map_full: u64,
    /// Stack copies not sent because the ring buffer was too full for them: over half full for
    /// the first copy of a stack key, over a 32nd for a repeat copy of a key whose frames are
    /// still being learned. No event is lost: those allocations count under the last stack
    /// copied with their key, if any.
    pub stack_samples_skipped: u64,
    /// Sampled allocations not recorded: no room to keep their address for their free.
    pub sampled_map_full: u64,
    /// Allocations not sent because the ring buffer was nearly full: its last quarter is
    /// kept for frees. Their frees match nothing later.
    pub allocations_skipped: u64,
}

impl DropCounts {
    /// Records lost that may have been frees (or realloc's free of its old block): each may
    /// have left a block live in the ledger that the target has freed, and the live figures
    /// too high by it. A block whose address is allocated again, and seen, is taken as freed
    /// then ([`Totals::missed_frees`](crate::ledger::Totals::missed_frees)).
    pub fn frees_maybe_lost(&self) -> u64 {
        self.ring_buffer_full + self.pending_map_full
    }

    /// Allocations that may have been lost: each may be a block the target holds that the
    /// ledger never saw, and the live figures too low by it.
    pub fn allocations_maybe_lost(&self) -> u64 {
        self.ring_buffer_full
            + self.pending_map_full
            + self.allocations_skipped
            + self.sampled_map_full
    }

    /// Events or stacks actually lost; [`DropCounts::stack_map_full`] and
    /// [`DropCounts::stack_samples_skipped`] are not among them.
    pub fn lost(&self) -> u64 {
        self.lost_by_kind().iter().map(|(_, count)| count).sum()
    }

    /// What [`DropCounts::lost`] counts, kind by kind, named as in the JSON.
    pub fn lost_by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("ring_buffer_full", self.ring_buffer_full),
            ("stack_unreadable", self.stack_unreadable),
            ("pending_map_full", self.pending_map_full),
            ("sampled_map_full", self.sampled_map_full),
            ("allocations_skipped", self.allocations_skipped),
        ]
    }
}
