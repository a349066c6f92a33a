//! Valgrind memcheck's leak check, on a [`Snapshot`]: which tracked blocks the program can
//! still reach, and how.
//!
//! 1. **Roots.** Every aligned word of the roots ([`super::roots`]) and of every thread's
//!    registers that points into a block marks it: a pointer to its start makes it
//!    *reachable*, one inside it *possibly* reachable, unless a heuristic (below) recognizes
//!    the inner pointer, which then counts as a start pointer.
//! 2. **Propagation.** A marked block's words mark the blocks they point to, alike, except
//!    that a block reached from a possibly reachable one is at best possibly reachable. A
//!    block whose state rises (unmarked → possible → reachable) is scanned again.
//! 3. **Cliques.** Each block still unmarked, in address order, leads a clique: the unmarked
//!    blocks it reaches, through any pointer into them, are *indirectly lost* in its clique,
//!    and a leader of an earlier clique reached this way stops leading. The leaders left are
//!    *definitely lost*.
//!
//! The heuristics are valgrind's, all of them by default as there (`--leak-check-heuristics`
//! chooses), for inner pointers that C++ keeps instead of the block's start:
//! - **stdstring**: the characters of a std::string of the old (copy-on-write) ABI, at 24
//!   bytes, after length ≤ capacity and a reference count, the block 24 + capacity + 1;
//! - **length64**: 8 bytes in, after a 64-bit length of the rest of the block;
//! - **newarray**: 8 bytes in, after a count of elements that divides the rest: `new[]` of a
//!   type with a destructor;
//! - **multipleinheritance**: a pointer to a word holding a vtable address, in a block whose
//!   first word holds one too (a base class other than the first).

use super::snapshot::Snapshot;

/// Valgrind's leak-check heuristics (`--leak-check-heuristics`, all by default as in
/// valgrind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Heuristic {
    Stdstring,
    Length64,
    Newarray,
    Multipleinheritance,
    /// Every heuristic.
    All,
    /// No heuristic: every inner pointer is an inner pointer.
    None,
}

/// Valgrind's four kinds of live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    DefinitelyLost,
    IndirectlyLost,
    PossiblyLost,
    StillReachable,
}

/// A tracked block: `size` bytes from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: u64,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unreached,
    Possible,
    Reachable,
    /// In the clique this block leads ([`Marker::cliques`]).
    Indirect,
}

/// Tells whether an address lies in a vtable: a read-only, non-executable part of a mapped
/// object ([`super::roots::Layout::in_read_only_data`]).
pub trait VtableTest {
    fn may_be_vtable(&self, address: u64) -> bool;
}

/// The marking of one scan.
pub struct Marker<'a> {
    /// Sorted by start.
    blocks: &'a [Block],
    states: Vec<State>,
    memory: &'a Snapshot,
    vtables: &'a dyn VtableTest,
    heuristics: &'a [Heuristic],
    /// Blocks to scan, with whether the pointer that reached them came from a definite place
    /// (a root or a reachable block).
    stack: Vec<(usize, bool)>,
}

impl<'a> Marker<'a> {
    /// `blocks` must be sorted by start and not overlap; `heuristics` are those in use.
    pub fn new(
        blocks: &'a [Block],
        memory: &'a Snapshot,
        vtables: &'a dyn VtableTest,
        heuristics: &'a [Heuristic],
    ) -> Self {
        Marker {
            blocks,
            states: vec![State::Unreached; blocks.len()],
            memory,
            vtables,
            heuristics,
            stack: Vec::new(),
        }
    }

    /// The block `pointer` points into, and whether at its start.
    fn block_of(&self, pointer: u64) -> Option<(usize, bool)> {
        let index = self.blocks.partition_point(|b| b.start <= pointer);
        let candidate = index.checked_sub(1)?;
        let block = self.blocks[candidate];
        // A block of 0 bytes is reached by its start alone, as in valgrind.
        let inside = pointer < block.start + block.size || pointer == block.start;
        inside.then_some((candidate, pointer == block.start))
    }

    /// Marks from one word found in a root (definite) or in a block.
    fn push_pointer(&mut self, pointer: u64, definite: bool) {
        let Some((index, at_start)) = self.block_of(pointer) else {
            return;
        };
        let as_start = at_start || self.inner_pointer_recognized(pointer, self.blocks[index]);
        let state = self.states[index];
        if as_start && definite && state != State::Reachable {
            self.states[index] = State::Reachable;
            self.stack.push((index, true));
        } else if state == State::Unreached {
            self.states[index] = State::Possible;
            self.stack.push((index, false));
        }
    }

    /// Marks what the roots reach: every word of `roots`, then of the blocks they reach.
    pub fn mark_from(&mut self, roots: impl IntoIterator<Item = u64>) {
        for word in roots {
            self.push_pointer(word, true);
            self.propagate();
        }
    }

    fn propagate(&mut self) {
        while let Some((index, _)) = self.stack.pop() {
            let definite = self.states[index] == State::Reachable;
            let block = self.blocks[index];
            // The snapshot is borrowed apart from the marker, which the pushes change.
            let memory = self.memory;
            for (_, word) in memory.words(block.start, block.start + block.size) {
                self.push_pointer(word, definite);
            }
        }
    }

    /// Groups the blocks nothing reaches into cliques; then each block's kind, in `blocks`'
    /// order.
    pub fn cliques(mut self) -> Vec<Kind> {
        for leader in 0..self.blocks.len() {
            if self.states[leader] != State::Unreached {
                continue;
            }
            let mut stack = vec![leader];
            while let Some(index) = stack.pop() {
                let block = self.blocks[index];
                for (_, word) in self.memory.words(block.start, block.start + block.size) {
                    let Some((reached, _)) = self.block_of(word) else {
                        continue;
                    };
                    // Unreached: unmarked, or the leader of an earlier clique.
                    if reached != leader && self.states[reached] == State::Unreached {
                        self.states[reached] = State::Indirect;
                        stack.push(reached);
                    }
                }
            }
        }
        self.states
            .iter()
            .map(|state| match state {
                State::Unreached => Kind::DefinitelyLost,
                State::Indirect => Kind::IndirectlyLost,
                State::Possible => Kind::PossiblyLost,
                State::Reachable => Kind::StillReachable,
            })
            .collect()
    }

    fn uses(&self, heuristic: Heuristic) -> bool {
        !self.heuristics.contains(&Heuristic::None)
            && (self.heuristics.contains(&Heuristic::All) || self.heuristics.contains(&heuristic))
    }

    /// Whether an inner `pointer` into `block` is one of the heuristics' in use (module doc).
    fn inner_pointer_recognized(&self, pointer: u64, block: Block) -> bool {
        let word = |offset: u64| self.memory.word(block.start + offset);
        let offset = pointer - block.start;
        let std_string = self.uses(Heuristic::Stdstring)
            && offset == 24
            && word(8).is_some_and(|capacity| 24u64.saturating_add(capacity) + 1 == block.size)
            && word(0)
                .zip(word(8))
                .is_some_and(|(length, capacity)| length <= capacity);
        let length64 = self.uses(Heuristic::Length64)
            && offset == 8
            && word(0).is_some_and(|length| length > 0 && block.size - 8 == length);
        let new_array = self.uses(Heuristic::Newarray)
            && offset == 8
            && word(0).is_some_and(|count| count > 0 && (block.size - 8).is_multiple_of(count));
        let vtable = |address: Option<u64>| {
            address
                .is_some_and(|a| a.is_multiple_of(8) && a >= 4096 && self.vtables.may_be_vtable(a))
        };
        let multiple_inheritance = self.uses(Heuristic::Multipleinheritance)
            && offset.is_multiple_of(8)
            && vtable(self.memory.word(pointer))
            && vtable(word(0));
        std_string || length64 || new_array || multiple_inheritance
    }
}
