//! A stack's key: the FNV-1a hash of its process and return addresses, as the probe computes it
//! while it walks a stack through learned offsets, and as userspace computes it again over a
//! stack it unwound. Both sides use these functions, so the two cannot disagree: a stack
//! userspace unwound and the same stack the probe walked have one key.

/// Most frames a key covers: deeper frames than this do not tell stacks apart. Far more than
/// the [`MAX_STACK_DEPTH`](crate::MAX_STACK_DEPTH) frames a stack is shown with, so that
/// stacks cut there still have keys of their own and a site can say how many it merged.
pub const KEY_FRAMES: usize = 160;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// The hash of the process `tgid`'s stacks before any address: each process unwinds its own
/// copies, so the process is in the key.
#[inline(always)]
pub fn start(tgid: u64) -> u64 {
    (FNV_OFFSET ^ tgid).wrapping_mul(FNV_PRIME)
}

/// The hash with the next address (the innermost first) added.
#[inline(always)]
pub fn add(hash: u64, address: u64) -> u64 {
    (hash ^ address).wrapping_mul(FNV_PRIME)
}

/// The key of a hash: never 0, which means "no key" on the wire.
#[inline(always)]
pub fn finish(hash: u64) -> u64 {
    hash | 1
}

/// The key of `addresses` (innermost first, at most [`KEY_FRAMES`] of them counted) in the
/// process `tgid`.
pub fn of(tgid: u64, addresses: &[u64]) -> u64 {
    finish(
        addresses
            .iter()
            .take(KEY_FRAMES)
            .fold(start(tgid), |hash, &address| add(hash, address)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_that_differ_anywhere_or_in_another_process_have_other_keys() {
        let deep: Vec<u64> = (0..KEY_FRAMES as u64).collect();
        let mut deeper_change = deep.clone();
        deeper_change[KEY_FRAMES - 1] = 7;
        assert_ne!(of(1, &deep), of(1, &deeper_change));
        assert_ne!(of(1, &deep), of(2, &deep));
        assert_eq!(of(1, &deep), of(1, &deep.clone()));
        assert_eq!(of(1, &[]) & 1, 1);
    }

    #[test]
    fn frames_past_the_keys_depth_do_not_count() {
        let deep: Vec<u64> = (0..KEY_FRAMES as u64 + 1).collect();
        assert_eq!(of(1, &deep), of(1, &deep[..KEY_FRAMES]));
    }
}
