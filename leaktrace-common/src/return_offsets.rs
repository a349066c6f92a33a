//! Where a return address's learned offset sits in the `RETURN_OFFSETS` table.
//!
//! The table is [`RETURN_OFFSET_SLOTS`] slots of `[pc, offset]`, an empty one `[0, 0]`, two
//! ways per set: each address may sit in one of two slots. Userspace writes it
//! ([`slot_to_write`]) and the probe reads it ([`learned_offset`]) for every frame of every
//! allocation's stack; both ask [`slots`] where an address may sit, so they cannot disagree.

use crate::{OUTERMOST_FRAME, RETURN_OFFSET_SLOTS};

/// The two slots where `pc`'s offset may be kept: an even slot and the one after it.
#[inline(always)]
pub fn slots(pc: u64) -> [u32; 2] {
    // Fibonacci hashing: the top bits of a multiplication by 2^64 / φ pick the set.
    let set_bits = RETURN_OFFSET_SLOTS.trailing_zeros() - 1;
    let first = ((pc.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - set_bits)) << 1) as u32;
    [first, first + 1]
}

/// The offset learned for `pc`, with `slot` reading what a slot of the table holds.
#[inline(always)]
pub fn learned_offset(pc: u64, slot: impl Fn(u32) -> Option<[u64; 2]>) -> Option<u64> {
    for index in slots(pc) {
        if let Some([learned_pc, offset]) = slot(index)
            && learned_pc == pc
        {
            return Some(offset);
        }
    }
    None
}

/// Where to write `[pc, offset]`, with `slot` reading what a slot holds now; None when the
/// table knows it already.
///
/// The slot already holding `pc` is rewritten, or else an empty one is taken. When both are
/// taken by other addresses, the second is evicted: the probe then stops its walk at the
/// evicted address, and stacks through it are copied each time. An end ([`OUTERMOST_FRAME`])
/// never replaces an offset: a stack copy too short for a deep stack ends it early.
pub fn slot_to_write(pc: u64, offset: u64, slot: impl Fn(u32) -> Option<[u64; 2]>) -> Option<u32> {
    if learned_offset(pc, &slot).is_some_and(|known| known == offset || offset == OUTERMOST_FRAME) {
        return None;
    }
    let [first, second] = slots(pc);
    let free = |index| slot(index).is_none_or(|[learned, _]| learned == pc || learned == 0);
    Some(if free(first) { first } else { second })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A userspace copy of the table, as `ProbeSet` keeps one.
    struct Table(Vec<[u64; 2]>);

    impl Table {
        fn new() -> Table {
            Table(vec![[0, 0]; RETURN_OFFSET_SLOTS as usize])
        }

        fn read(&self) -> impl Fn(u32) -> Option<[u64; 2]> + '_ {
            |index| self.0.get(index as usize).copied()
        }

        fn learn(&mut self, pc: u64, offset: u64) -> Option<u32> {
            let written = slot_to_write(pc, offset, self.read())?;
            self.0[written as usize] = [pc, offset];
            Some(written)
        }

        fn lookup(&self, pc: u64) -> Option<u64> {
            learned_offset(pc, self.read())
        }
    }

    /// `count` return addresses that share one set.
    fn same_set(count: usize) -> Vec<u64> {
        let wanted = slots(0x7f00_0000_1000);
        (0x7f00_0000_1000u64..)
            .filter(|&pc| slots(pc) == wanted)
            .take(count)
            .collect()
    }

    #[test]
    fn both_slots_are_in_range_distinct_and_the_same_each_time() {
        for pc in [0, 1, 0x40_1000, 0x7fff_ffff_f000, u64::MAX - 1, u64::MAX]
            .into_iter()
            .chain((0..10_000u64).map(|i| i.wrapping_mul(0x1234_5678_9abc_def1)))
        {
            let [first, second] = slots(pc);
            assert!(second < RETURN_OFFSET_SLOTS, "{pc:#x}");
            assert_eq!(first % 2, 0, "{pc:#x}");
            assert_eq!(second, first + 1, "{pc:#x}");
            assert_eq!(slots(pc), [first, second], "{pc:#x}");
        }
    }

    #[test]
    fn what_userspace_writes_the_probe_finds() {
        let mut table = Table::new();
        assert_eq!(table.lookup(0x40_1234), None);
        table.learn(0x40_1234, 24);
        assert_eq!(table.lookup(0x40_1234), Some(24));
        // Learned again: nothing to write. A new offset replaces the old one in place.
        assert_eq!(table.learn(0x40_1234, 24), None);
        let [first, _] = slots(0x40_1234);
        assert_eq!(table.learn(0x40_1234, 40), Some(first));
        assert_eq!(table.lookup(0x40_1234), Some(40));
    }

    #[test]
    fn an_end_never_replaces_an_offset() {
        let mut table = Table::new();
        table.learn(0x40_1234, 24);
        assert_eq!(table.learn(0x40_1234, OUTERMOST_FRAME), None);
        assert_eq!(table.lookup(0x40_1234), Some(24));
        // An end learned first is replaced by an offset found later.
        table.learn(0x40_5678, OUTERMOST_FRAME);
        table.learn(0x40_5678, 8);
        assert_eq!(table.lookup(0x40_5678), Some(8));
    }

    #[test]
    fn a_full_set_evicts_its_second_way() {
        let pcs = same_set(3);
        let mut table = Table::new();
        let [first, second] = slots(pcs[0]);
        assert_eq!(table.learn(pcs[0], 8), Some(first));
        assert_eq!(table.learn(pcs[1], 16), Some(second));
        assert_eq!(
            (table.lookup(pcs[0]), table.lookup(pcs[1])),
            (Some(8), Some(16))
        );
        assert_eq!(table.learn(pcs[2], 32), Some(second));
        assert_eq!(table.lookup(pcs[0]), Some(8));
        assert_eq!(table.lookup(pcs[1]), None);
        assert_eq!(table.lookup(pcs[2]), Some(32));
        // The first way's address keeps its slot when it learns again.
        assert_eq!(table.learn(pcs[0], 48), Some(first));
        assert_eq!(table.lookup(pcs[2]), Some(32));
    }
}
