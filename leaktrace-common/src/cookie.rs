//! The attach cookie of every uprobe: what the probe is told about the point it sits on.
//!
//! Userspace gives each attached point a 64-bit cookie, and the probe reads it with
//! `bpf_get_attach_cookie`. Its layout, the only place it is written down:
//!
//! | bits | what | read by |
//! |---|---|---|
//! | 0–23 | where the entry probe reads each of the 6 integer arguments, [`arguments::BITS`] bits each, the first lowest | entry probes ([`arguments`]) |
//! | 24–31 | 0 | — |
//! | 32–63 | the point's index in the `HITS` array, where each hit is counted | every probe ([`point`]) |
//!
//! A probe at a function's entry with point index 0 has cookie 0.
//!
//! [`arguments`]: crate::arguments
//! [`arguments::BITS`]: crate::arguments::BITS

/// The lowest bit of the point index.
pub const POINT_SHIFT: u32 = 32;

// The six argument homes stay below bit 24, clear of the point index.
const _: () = assert!(crate::arguments::BITS * 6 <= 24);

/// Slots of the per-CPU `HITS` array: at most this many points are counted apart. Userspace
/// numbers each (module, offset, program) it attaches; points past the last slot share it.
pub const HIT_POINTS: u32 = 1024;

/// The point index in `cookie`: the `HITS` slot its probe counts in.
#[inline(always)]
pub const fn point(cookie: u64) -> u32 {
    (cookie >> POINT_SHIFT) as u32
}

/// `cookie` (its argument homes) with point index `index`, capped at the last slot.
pub const fn with_point(cookie: u64, index: u32) -> u64 {
    let index = if index < HIT_POINTS {
        index
    } else {
        HIT_POINTS - 1
    };
    (cookie & ((1 << POINT_SHIFT) - 1)) | ((index as u64) << POINT_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arguments::{self, Home};

    #[test]
    fn the_point_index_and_the_argument_homes_keep_apart() {
        let homes = arguments::with_home(arguments::with_home(0, 0, Home::Rsi), 5, Home::R15);
        let cookie = with_point(homes, 37);
        assert_eq!(point(cookie), 37);
        assert_eq!(arguments::home(cookie, 0), Home::Rsi);
        assert_eq!(
            arguments::home(cookie, 5),
            Home::R15,
            "the last home is below bit 32"
        );
        assert_eq!(cookie & 0xffff_ffff, homes, "the homes are unchanged");
        // A new index replaces the old one.
        assert_eq!(point(with_point(cookie, 2)), 2);
        assert_eq!(with_point(cookie, 2) & 0xffff_ffff, homes);
    }

    #[test]
    fn six_argument_homes_fit_below_bit_24() {
        let all = (0..6).fold(0, |cookie, index| {
            arguments::with_home(cookie, index, Home::R15)
        });
        assert_eq!(all >> 24, 0);
    }

    #[test]
    fn points_past_the_last_slot_share_it() {
        assert_eq!(point(with_point(0, 0)), 0);
        assert_eq!(
            with_point(0, 0),
            0,
            "an entry probe of point 0 has cookie 0"
        );
        assert_eq!(point(with_point(0, HIT_POINTS - 1)), HIT_POINTS - 1);
        assert_eq!(point(with_point(0, HIT_POINTS)), HIT_POINTS - 1);
        assert_eq!(point(with_point(0, u32::MAX)), HIT_POINTS - 1);
    }
}
