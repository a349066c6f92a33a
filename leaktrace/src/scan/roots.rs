//! Where the scan starts: the memory the program reaches without going through a block.
//!
//! - Every thread's registers.
//! - Every thread's stack, from its stack pointer less the 128-byte red zone the x86-64 ABI
//!   lets a function use below it, to the end of the stack's mapping (glibc puts a thread's
//!   TLS at that end). Below that, the stack is dead.
//! - Every other readable and writable mapping: the modules' data and bss, TLS, anonymous
//!   memory, shared memory.
//!
//! Never the tracked blocks themselves: a block counts only if something reaches it. Never
//! glibc's `main_arena` either (in libc's data, found by its symbol in libc's separate debug
//! info, libc6-dbg on Debian): its bins and its top pointer hold the addresses of free chunks,
//! whose headers lie inside the last bytes of the live blocks before them, and would make a
//! lost block possibly lost. Without libc's symbols it cannot be found, and is scanned. And
//! the allocator's own mappings (those holding tracked blocks) differ by [`Policy`]:
//! - [`Policy::EveryBlockTracked`] (a command traced from its first instruction): their bytes
//!   outside the blocks are the allocator's, free chunks and chunk headers, whose stale
//!   pointers would anchor leaked blocks falsely: not roots. glibc's own state (main_arena,
//!   in libc's data) points to free chunks and the top chunk, never into a live block.
//! - [`Policy::SomeBlocksUnknown`] (attached to a running process): blocks allocated before
//!   the attach live there too, and may hold the only pointer to a tracked block. Every byte
//!   outside a tracked block is a root: that can hide a leak (a stale pointer in a free chunk)
//!   but never invent one.

use serde::Serialize;

use object::{Object, ObjectSegment, ObjectSymbol};

use super::{mark::Block, snapshot::Snapshot};
use crate::{
    stacks::debuginfo::DebugDirs,
    target::maps::{Mapping, ProcessMaps, module_file},
};

/// How much of the allocator's memory is known (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    EveryBlockTracked,
    SomeBlocksUnknown,
}

/// What the roots were, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RootStats {
    pub threads: usize,
    /// Bytes of the live parts of the threads' stacks.
    pub stack_bytes: u64,
    /// Bytes of the other writable mappings, blocks left out.
    pub other_bytes: u64,
    /// Bytes of allocator mappings left out ([`Policy::EveryBlockTracked`]).
    pub allocator_bytes_excluded: u64,
    /// Whether glibc's `main_arena` was found, and left out.
    pub main_arena_excluded: bool,
}

/// The ranges to scan as roots, sorted, with what they were.
pub fn root_ranges(
    snapshot: &Snapshot,
    stack_pointers: &[u64],
    blocks: &[Block],
    policy: Policy,
    main_arena: Option<Block>,
) -> (Vec<(u64, u64)>, RootStats) {
    const RED_ZONE: u64 = 128;
    let mut stats = RootStats {
        threads: stack_pointers.len(),
        main_arena_excluded: main_arena.is_some(),
        ..RootStats::default()
    };
    // What is never a root, sorted: the blocks, and glibc's arena.
    let mut left_out = blocks.to_vec();
    if let Some(arena) = main_arena {
        let at = left_out.partition_point(|b| b.start < arena.start);
        left_out.insert(at, arena);
    }
    let mut ranges = Vec::new();
    for mapping in &snapshot.mappings {
        let stack_from = stack_pointers
            .iter()
            .filter(|&&sp| (mapping.start..mapping.end).contains(&sp))
            .min()
            .map(|sp| sp.saturating_sub(RED_ZONE).max(mapping.start));
        let range = match stack_from {
            Some(from) => {
                stats.stack_bytes += mapping.end - from;
                (from, mapping.end)
            }
            None if policy == Policy::EveryBlockTracked && holds_a_block(mapping, blocks) => {
                stats.allocator_bytes_excluded += mapping.end - mapping.start;
                continue;
            }
            None => (mapping.start, mapping.end),
        };
        for piece in outside_blocks(range, &left_out) {
            if stack_from.is_none() {
                stats.other_bytes += piece.1 - piece.0;
            }
            ranges.push(piece);
        }
    }
    (ranges, stats)
}

fn holds_a_block(mapping: &Mapping, blocks: &[Block]) -> bool {
    let first = blocks.partition_point(|b| b.start < mapping.start);
    blocks.get(first).is_some_and(|b| b.start < mapping.end)
}

/// `range` less the blocks (sorted by start) that lie in it.
fn outside_blocks((start, end): (u64, u64), blocks: &[Block]) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    let mut from = start;
    // A block that starts before the range may still cover its beginning.
    let first = blocks.partition_point(|b| b.start + b.size <= start);
    for block in blocks[first..].iter().take_while(|b| b.start < end) {
        if block.start > from {
            pieces.push((from, block.start));
        }
        from = from.max(block.start + block.size);
    }
    if from < end {
        pieces.push((from, end));
    }
    pieces
}

/// glibc's `main_arena` in the target, from the symbol table of libc's debug info (module
/// doc); `None` where libc or its symbols are not found.
pub fn main_arena(pid: u32, maps: &ProcessMaps) -> Option<Block> {
    let libc = maps.mappings().iter().find(|m| {
        m.offset == 0
            && m.path
                .as_deref()
                .and_then(|p| p.file_name())
                .is_some_and(|name| name == "libc.so.6")
    })?;
    let path = libc.path.as_deref()?;
    let readable = module_file(pid, maps, path);
    let module = std::fs::read(&readable).ok()?;
    let module = object::File::parse(&*module).ok()?;
    // Shared objects are linked at 0 or at their first segment's address: the bias is
    // where that segment landed less where it was linked.
    let linked = module.segments().map(|s| s.address()).min()? & !0xfff;
    let bias = libc.start.checked_sub(linked)?;
    let dirs = DebugDirs {
        extra: Vec::new(),
        target_root: Some(format!("/proc/{pid}/root").into()),
    };
    let debug = std::fs::read(dirs.find(&readable, path).main).ok()?;
    let debug = object::File::parse(&*debug).ok()?;
    let symbol = debug
        .symbols()
        .find(|s| s.name() == Ok("main_arena") && s.size() > 0)?;
    Some(Block {
        start: bias + symbol.address(),
        size: symbol.size(),
    })
}

/// What the multipleinheritance heuristic asks of an address: does it lie in read-only data
/// of a mapped file, where vtables are.
pub struct Layout(pub ProcessMaps);

impl super::mark::VtableTest for Layout {
    fn may_be_vtable(&self, address: u64) -> bool {
        self.0
            .find(address)
            .is_some_and(|m| m.path.is_some() && m.readable && !m.writable && !m.executable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_cut_out_of_a_range() {
        let blocks = [
            Block {
                start: 0x0f0,
                size: 0x20,
            },
            Block {
                start: 0x140,
                size: 0x10,
            },
            Block {
                start: 0x400,
                size: 0x10,
            },
        ];
        assert_eq!(
            outside_blocks((0x100, 0x200), &blocks),
            [(0x110, 0x140), (0x150, 0x200)]
        );
        assert_eq!(outside_blocks((0x200, 0x300), &blocks), [(0x200, 0x300)]);
    }
}
