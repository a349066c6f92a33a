//! Stage: **scan** (between ledger and report). In: the ledger's live blocks and the target
//! itself. Out: each block's leak kind, as Valgrind memcheck tells them ([`mark::Kind`]), per
//! site and in all.
//!
//! "Outstanding" is not "leaked": a block a live data structure holds is a cache or a working
//! set; a block nothing points to any more is lost. Valgrind and LeakSanitizer tell them by a
//! conservative scan of memory at exit, in-process. This does it on a running process:
//! [`freeze`] stops every thread (ptrace, no signal the target sees), [`snapshot`] copies its
//! writable memory, and the target runs on while [`mark`] works on the copy from the
//! [`roots`]. The capture drains the ring buffer between the freeze and the copy, so that the
//! ledger holds exactly the blocks live at that instant.

pub mod freeze;
pub mod mark;
pub mod roots;
pub mod snapshot;

use std::{collections::HashMap, time::Instant};

use serde::Serialize;

use self::{
    mark::{Block, Heuristic, Kind, Marker},
    roots::{Layout, Policy, RootStats},
    snapshot::Snapshot,
};
use crate::ledger::SiteId;

/// Bytes and blocks of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub bytes: u64,
    pub blocks: u64,
}

impl std::iter::Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(amounts: I) -> Amount {
        amounts.fold(Amount::default(), |sum, a| Amount {
            bytes: sum.bytes + a.bytes,
            blocks: sum.blocks + a.blocks,
        })
    }
}

/// Bytes and blocks of each kind: the JSON's `scan`, in all and per site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindAmounts {
    pub definitely_lost: Amount,
    pub indirectly_lost: Amount,
    pub possibly_lost: Amount,
    pub still_reachable: Amount,
}

impl KindAmounts {
    fn add(&mut self, kind: Kind, bytes: u64) {
        let amount = match kind {
            Kind::DefinitelyLost => &mut self.definitely_lost,
            Kind::IndirectlyLost => &mut self.indirectly_lost,
            Kind::PossiblyLost => &mut self.possibly_lost,
            Kind::StillReachable => &mut self.still_reachable,
        };
        amount.bytes += bytes;
        amount.blocks += 1;
    }

    /// Bytes nothing reaches: definitely and indirectly lost.
    pub fn lost_bytes(&self) -> u64 {
        self.definitely_lost.bytes + self.indirectly_lost.bytes
    }

    /// The kinds in valgrind's order, named as its summary names them.
    pub fn named(&self) -> [(&'static str, Amount); 4] {
        [
            ("definitely lost", self.definitely_lost),
            ("indirectly lost", self.indirectly_lost),
            ("possibly lost", self.possibly_lost),
            ("still reachable", self.still_reachable),
        ]
    }
}

/// A live block of the ledger, with its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedBlock {
    pub address: u64,
    pub size: u64,
    pub site: SiteId,
}

/// One scan's result.
#[derive(Clone, Debug, Serialize)]
pub struct LeakScan {
    #[serde(flatten)]
    pub totals: KindAmounts,
    /// How long the target was held still.
    pub pause_ms: f64,
    /// Bytes of its memory copied.
    pub scanned_bytes: u64,
    pub roots: RootStats,
    /// How long the marking took, after the target went on.
    pub mark_ms: f64,
    /// Seconds into the capture.
    pub at_s: f64,
    #[serde(skip)]
    pub per_site: HashMap<SiteId, KindAmounts>,
}

/// Classifies `blocks` from a `snapshot` and the threads' `registers`, taken while the
/// target was frozen for `pause_ms`; `main_arena` is glibc's, left out of the roots
/// ([`roots::main_arena`]).
pub fn classify(
    main_arena: Option<Block>,
    snapshot: &Snapshot,
    registers: &[libc::user_regs_struct],
    mut blocks: Vec<TrackedBlock>,
    policy: Policy,
    heuristics: &[Heuristic],
    pause_ms: f64,
) -> LeakScan {
    let started = Instant::now();
    blocks.sort_by_key(|b| b.address);
    let ranges: Vec<Block> = blocks
        .iter()
        .map(|b| Block {
            start: b.address,
            size: b.size,
        })
        .collect();
    let stack_pointers: Vec<u64> = registers.iter().map(|r| r.rsp).collect();
    let (root_ranges, roots) =
        roots::root_ranges(snapshot, &stack_pointers, &ranges, policy, main_arena);
    let layout = Layout(snapshot.maps.clone());
    let mut marker = Marker::new(&ranges, snapshot, &layout, heuristics);
    marker.mark_from(registers.iter().flat_map(register_words));
    marker.mark_from(
        root_ranges
            .iter()
            .flat_map(|&(start, end)| snapshot.words(start, end).map(|(_, word)| word)),
    );
    let kinds = marker.cliques();
    let mut totals = KindAmounts::default();
    let mut per_site: HashMap<SiteId, KindAmounts> = HashMap::new();
    for (block, kind) in blocks.iter().zip(kinds) {
        totals.add(kind, block.size);
        per_site
            .entry(block.site)
            .or_default()
            .add(kind, block.size);
    }
    LeakScan {
        totals,
        pause_ms,
        scanned_bytes: snapshot.copied_bytes,
        roots,
        mark_ms: started.elapsed().as_secs_f64() * 1e3,
        at_s: 0.0,
        per_site,
    }
}

/// The general registers that can hold a pointer.
fn register_words(r: &libc::user_regs_struct) -> [u64; 17] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.fs_base,
    ]
}
