//! The bitmap of blocks allocated since the attach (`ALLOCATED_HERE`): which bit stands for a
//! block's address. A free of glibc's block reads the block's size (a read of the target's
//! memory, ~100 ns) only where its bit is clear: for a block allocated before the attach,
//! whose size the ledger never saw.
//!
//! An address's bit is its 16-byte granule within a 256 MiB window, mixed with a hash of the
//! window: the blocks of one window never share a bit, those of two windows may. A shared bit
//! can only hide an old block's size (the bytes freed from before the attach are then a lower
//! bound), never add one.

/// Words of the bitmap (2 MiB): a bit per 16 bytes of a 256 MiB window.
pub const WORDS: u32 = 1 << 18;

const GRANULE_BITS: u32 = 4;
const WINDOW_BITS: u32 = 28;

/// The word of the bitmap and the bit in it that stand for `address`.
#[inline(always)]
pub fn bit(address: u64) -> (u32, u64) {
    let window = (address >> WINDOW_BITS).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    let bit = ((address >> GRANULE_BITS) ^ window) % (u64::from(WORDS) * 64);
    ((bit / 64) as u32, 1 << (bit % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_one_window_never_share_a_bit() {
        let window = 0x5555_5000_0000u64;
        let mut seen = std::collections::HashSet::new();
        for granule in (0..1u64 << (WINDOW_BITS - GRANULE_BITS)).step_by(97) {
            let (word, bit) = bit(window + (granule << GRANULE_BITS));
            assert!(word < WORDS);
            assert_eq!(bit.count_ones(), 1);
            assert!(seen.insert((word, bit)), "granule {granule:#x}");
        }
    }

    #[test]
    fn the_same_offset_in_two_windows_has_two_bits() {
        let offset = 0x12_3450;
        let windows = [0x5555_5000_0000u64, 0x7f12_3000_0000, 0x7f12_4000_0000];
        let bits: std::collections::HashSet<_> =
            windows.iter().map(|window| bit(window + offset)).collect();
        assert_eq!(bits.len(), windows.len());
    }
}
