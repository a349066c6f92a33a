//! Stacks deeper than a site keeps: each site shows at most [`MAX_STACK_DEPTH`] return
//! addresses, and stacks that share those and differ only deeper become one site. Such a site
//! says where its stack was cut and how many distinct stacks it stands for, told apart by
//! their keys ([`stack_key`]), which cover [`stack_key::KEY_FRAMES`] frames.

use std::collections::{HashMap, HashSet};

use leaktrace_common::{MAX_STACK_DEPTH, stack_key};
use serde::Serialize;

use crate::{kernel::Stack, ledger::SiteId};

/// One allocation's stack, cut to the frames a site keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The key of the whole stack, when known: frame-pointer stacks come cut by the kernel,
    /// whose stack map merged the deeper ones already.
    pub key: Option<u64>,
}

impl Cut {
    /// Cuts `addresses` (innermost first, as unwound or sent) of process `tgid`'s stack
    /// `stack` to [`MAX_STACK_DEPTH`], with their `found_by` alongside; the cut, if the
    /// stack went deeper.
    pub fn apply<T>(
        tgid: u32,
        stack: &Stack,
        addresses: &mut Vec<u64>,
        found_by: &mut Vec<T>,
    ) -> Option<Cut> {
        found_by.truncate(MAX_STACK_DEPTH);
        match stack {
            // Unwound from a copy as deep as a key goes.
            Stack::Copied(_) | Stack::OwnCopy(_) if addresses.len() > MAX_STACK_DEPTH => {
                let key = stack_key::of(tgid.into(), addresses);
                addresses.truncate(MAX_STACK_DEPTH);
                Some(Cut { key: Some(key) })
            }
            Stack::Inline(_, key) => Cut::of_inline(tgid, addresses, *key),
            Stack::Id(_) => (addresses.len() >= MAX_STACK_DEPTH).then_some(Cut { key: None }),
            _ => None,
        }
    }

    /// The cut of a stack sent in its record, `addresses` with its `key` (0 after a
    /// frame-pointer walk): one the key covers more of than the record holds.
    pub fn of_inline(tgid: u32, addresses: &[u64], key: u64) -> Option<Cut> {
        if key == 0 {
            (addresses.len() >= MAX_STACK_DEPTH).then_some(Cut { key: None })
        } else {
            (key != stack_key::of(tgid.into(), addresses)).then_some(Cut { key: Some(key) })
        }
    }
}

/// Where a site's stack was cut, and how many distinct stacks it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StackCut {
    /// Return addresses kept.
    pub frames: usize,
    /// Distinct stacks merged, 1 or more; at least this many: stacks walked by frame pointers
    /// come merged by the kernel.
    pub stacks: usize,
}

impl std::fmt::Display for StackCut {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "stack cut at {} frames", self.frames)?;
        if self.stacks > 1 {
            write!(f, ": {} distinct deeper stacks merged", self.stacks)?;
        }
        Ok(())
    }
}

/// The cut sites of one image, and the keys of the stacks each merged.
#[derive(Debug, Default)]
pub struct CutSites {
    keys: HashMap<SiteId, HashSet<u64>>,
}

impl CutSites {
    /// An allocation of `site` whose stack was cut.
    pub fn note(&mut self, site: SiteId, cut: Cut) {
        let keys = self.keys.entry(site).or_default();
        keys.extend(cut.key);
    }

    /// The site's cut, if its stack was.
    pub fn of(&self, site: SiteId) -> Option<StackCut> {
        self.keys.get(&site).map(|keys| StackCut {
            frames: MAX_STACK_DEPTH,
            stacks: keys.len().max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TGID: u32 = 42;

    fn deep(last: u64) -> Vec<u64> {
        let mut stack: Vec<u64> = (1..=200).collect();
        stack.push(last);
        stack
    }

    #[test]
    fn unwound_stacks_deeper_than_a_site_keeps_are_cut_and_keyed_whole() {
        let mut addresses = deep(7);
        let mut found_by = vec![(); addresses.len()];
        let cut = Cut::apply(TGID, &Stack::OwnCopy(3), &mut addresses, &mut found_by);
        assert_eq!(
            cut,
            Some(Cut {
                key: Some(stack_key::of(TGID.into(), &deep(7)))
            })
        );
        assert_eq!(
            (addresses.len(), found_by.len()),
            (MAX_STACK_DEPTH, MAX_STACK_DEPTH)
        );
        let mut shallow = vec![1, 2, 3];
        assert_eq!(
            Cut::apply(TGID, &Stack::Copied(3), &mut shallow, &mut vec![(); 3]),
            None
        );
        assert_eq!(shallow, [1, 2, 3]);
    }

    #[test]
    fn a_sent_stack_is_cut_when_its_key_covers_more_than_its_frames() {
        let whole = deep(7);
        let sent = &whole[..MAX_STACK_DEPTH];
        let key = stack_key::of(TGID.into(), &whole);
        assert_eq!(
            Cut::of_inline(TGID, sent, key),
            Some(Cut { key: Some(key) })
        );
        let shallow = [1, 2, 3];
        let own_key = stack_key::of(TGID.into(), &shallow);
        assert_eq!(Cut::of_inline(TGID, &shallow, own_key), None);
        // Walked by frame pointers: as deep as the kernel goes, with no key to count by.
        assert_eq!(Cut::of_inline(TGID, sent, 0), Some(Cut { key: None }));
        assert_eq!(Cut::of_inline(TGID, &shallow, 0), None);
    }

    #[test]
    fn a_cut_site_counts_each_distinct_deeper_stack_once() {
        let mut sites = CutSites::default();
        let site = SiteId(4);
        assert_eq!(sites.of(site), None);
        for key in [11, 12, 11, 13] {
            sites.note(site, Cut { key: Some(key) });
        }
        let cut = sites.of(site).unwrap();
        assert_eq!(cut.stacks, 3);
        assert_eq!(
            cut.to_string(),
            "stack cut at 127 frames: 3 distinct deeper stacks merged"
        );
        let walked = SiteId(5);
        sites.note(walked, Cut { key: None });
        assert_eq!(
            sites.of(walked).unwrap().to_string(),
            "stack cut at 127 frames"
        );
    }
}
