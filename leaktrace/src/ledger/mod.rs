//! Ledger: the outstanding blocks and what each call site holds.
//!
//! In: decoded allocations and frees, each with a stack key from [`crate::stacks`]. Out: per
//! call site its live bytes and blocks, allocations and frees, the least and most it held in
//! each interval, and over the capture its growth ([`trends`]) and its verdict ([`verdict`]);
//! with sampling on, every figure scaled back up ([`sampling`]).
//!
//! The [`Ledger`] itself lives here: address → outstanding block, and per site its totals.

pub mod sampling;
pub mod trends;
pub mod verdict;

pub use sampling::Sampling;
pub use trends::Trends;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::scan::TrackedBlock;

/// Index of a call site in the [`Ledger`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId(pub(crate) u32);

impl SiteId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A block the target allocated and has not freed.
///
/// Kept to 16 bytes so that the outstanding map costs 24 bytes per slot (the u64 address key
/// included) plus hashbrown's one control byte: with its load factor between 7/16 and 7/8,
/// 28 to 57 bytes per live allocation. leaktrace's memory grows with the target's live blocks,
/// not with its allocation rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outstanding {
    size: u64,
    site: SiteId,
    /// Milliseconds since the capture started (49 days fit).
    allocated_ms: u32,
}

/// What one call site allocated and still holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SiteStats {
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    /// Blocks freed within [`Ledger::TEMPORARY_MS`] of their allocation: churn, not leaks
    /// (heaptrack's "temporary allocations").
    pub temporary: u64,
}

/// One outstanding block, as `-a` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LiveBlock {
    pub address: u64,
    pub size: u64,
    /// Milliseconds since its allocation, at the report.
    pub age_ms: u32,
}

/// The least and the most live bytes a site held since the interval began
/// ([`Ledger::take_watermarks`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub low: u64,
    pub high: u64,
}

/// One interval of the target's own time, closed: every site's watermarks in it (by site
/// index), and when it ended (ms since the capture started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedInterval {
    pub end_ms: u64,
    pub watermarks: Vec<Watermarks>,
}

/// Totals over all sites, plus the events that matched no site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    /// Frees of addresses never seen allocated: blocks from before the attach, mostly.
    pub unmatched_frees: u64,
    /// What those frees released, where the allocator keeps the size by the block (glibc,
    /// attached with `-p`); 0 elsewhere.
    pub unmatched_free_bytes: u64,
    /// Allocations returned at an address we still held as live: its free was not seen
    /// (a lost event), so the old block is taken as freed.
    pub missed_frees: u64,
}

/// Which live blocks a report counts (`-o`, `-z`, `-Z`): old enough to matter, of a size of
/// interest. The allocation and free counts are not filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockFilter {
    pub min_age_ms: u32,
    pub min_size: u64,
    pub max_size: u64,
}

impl Default for BlockFilter {
    fn default() -> Self {
        BlockFilter {
            min_age_ms: 0,
            min_size: 0,
            max_size: u64::MAX,
        }
    }
}

impl BlockFilter {
    pub fn is_active(&self) -> bool {
        *self != BlockFilter::default()
    }

    fn keeps(&self, block: &Outstanding, now_ms: u32) -> bool {
        (self.min_size..=self.max_size).contains(&block.size)
            && now_ms.saturating_sub(block.allocated_ms) >= self.min_age_ms
    }
}

/// Identifies a distinct stack of return addresses: the index
/// [`CallSites::intern`](crate::stacks::CallSites::intern) gave those addresses, however the
/// kernel sent them (a stack id, a stack copy, an inline stack), or [`Ledger::LOST_STACK`].
pub type StackKey = i64;

/// Address → outstanding block, and per call site (a distinct stack) its aggregates.
///
/// Every allocation whose stack was lost shares one site keyed by [`Ledger::LOST_STACK`].
#[derive(Default)]
pub struct Ledger {
    outstanding: HashMap<u64, Outstanding>,
    sites: Vec<SiteStats>,
    /// Per site, its low and high-water marks in the current interval: kept on each of its
    /// allocations and frees, so that a burst between two samples is seen.
    watermarks: Vec<Watermarks>,
    /// With intervals by event time ([`Ledger::with_intervals`]): their length in ms (0:
    /// none, the caller ends intervals with [`Ledger::take_watermarks`]), the index of the
    /// one under way, and those closed since [`Ledger::close_intervals`] last took them.
    interval_ms: u32,
    interval: u64,
    closed: Vec<ClosedInterval>,
    stack_keys: Vec<StackKey>,
    site_of_stack: HashMap<StackKey, SiteId>,
    unmatched_frees: u64,
    unmatched_free_bytes: u64,
    missed_frees: u64,
    /// Per thread, the block its realloc in flight freed, kept until the thread's next realloc
    /// in case this one fails: then the block is live again.
    realloc_freed: HashMap<u32, Released>,
    /// Anonymous mappings (`--mmap`) by start address. Unlike a block, a mapping can be
    /// unmapped in part, which leaves up to two pieces, each counted as a live allocation.
    mappings: BTreeMap<u64, Mapped>,
    /// How heap blocks were sampled: each stands for its [`Sampling::weight`] in the figures.
    /// Mappings are never sampled.
    sampling: Sampling,
}

/// A block realloc freed, kept in case the realloc fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Released {
    address: u64,
    block: Outstanding,
    temporary: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapped {
    end: u64,
    site: SiteId,
}

impl Ledger {
    /// Site key of allocations whose stack the kernel could not record.
    pub const LOST_STACK: StackKey = -1;

    /// A block freed this soon after its allocation counts as temporary.
    pub const TEMPORARY_MS: u32 = 100;

    /// A ledger of blocks recorded under `sampling`.
    pub fn new(sampling: Sampling) -> Self {
        Ledger {
            sampling,
            ..Ledger::default()
        }
    }

    /// A ledger whose watermarks are kept per interval of `interval_ms` of the target's own
    /// time: interval k is [k × interval_ms, (k + 1) × interval_ms) of the events'
    /// timestamps, closed by the first allocation or free stamped after it (or by
    /// [`Ledger::close_intervals`]). So the intervals are the target's, however late
    /// leaktrace takes the events in: a leaktrace starved for seconds still sees each second
    /// of a cache filling in its own interval. (Events whose timestamps come slightly out of
    /// order, from two CPUs, count in the interval under way.)
    pub fn with_intervals(sampling: Sampling, interval_ms: u32) -> Self {
        Ledger {
            interval_ms,
            ..Ledger::new(sampling)
        }
    }

    /// Closes every interval that ended by `ms`.
    fn advance(&mut self, ms: u32) {
        if self.interval_ms == 0 {
            return;
        }
        let now = u64::from(ms / self.interval_ms);
        while self.interval < now {
            self.interval += 1;
            let watermarks = self.take_watermarks();
            self.closed.push(ClosedInterval {
                end_ms: self.interval * u64::from(self.interval_ms),
                watermarks,
            });
        }
    }

    /// With intervals by event time: closes every interval that ended by `now_ms` (all the
    /// events stamped before it taken in), and hands over all those closed since the last
    /// call, oldest first. None without.
    pub fn close_intervals(&mut self, now_ms: u32) -> Vec<ClosedInterval> {
        self.advance(now_ms);
        std::mem::take(&mut self.closed)
    }

    /// When the interval under way began (ms since the capture started).
    pub fn interval_start_ms(&self) -> u64 {
        self.interval * u64::from(self.interval_ms)
    }

    /// Records an allocation; returns the site and whether the site is new, so the caller can
    /// fetch the stack once.
    pub fn record_alloc(
        &mut self,
        address: u64,
        size: u64,
        stack: StackKey,
        allocated_ms: u32,
    ) -> (SiteId, bool) {
        self.advance(allocated_ms);
        let (site, is_new) = self.site_for(stack.max(Self::LOST_STACK));
        let block = Outstanding {
            size,
            site,
            allocated_ms,
        };
        // The block whose free was missed went first.
        if let Some(stale) = self.outstanding.insert(address, block) {
            self.missed_frees += 1;
            self.release(stale, allocated_ms, true);
        }
        let weight = self.sampling.weight(size);
        let stats = &mut self.sites[site.index()];
        stats.allocs += weight.blocks;
        stats.alloc_bytes += weight.bytes;
        stats.live_bytes += weight.bytes;
        stats.live_allocations += weight.blocks;
        self.rose(site);
        (site, is_new)
    }

    /// An anonymous mapping of `size` bytes at `address`; a mapping made over older ones
    /// (MAP_FIXED) replaces them.
    pub fn record_mmap(&mut self, address: u64, size: u64, stack: StackKey) -> (SiteId, bool) {
        self.record_munmap(address, size);
        let (site, is_new) = self.site_for(stack.max(Self::LOST_STACK));
        let stats = &mut self.sites[site.index()];
        stats.allocs += 1;
        stats.alloc_bytes += size;
        stats.live_bytes += size;
        stats.live_allocations += 1;
        self.rose(site);
        let end = address.saturating_add(size);
        self.mappings.insert(address, Mapped { end, site });
        (site, is_new)
    }

    /// munmap of `[address, address + size)`: whatever of known mappings lies inside goes;
    /// ranges never seen mapped (files, mappings older than the attach) are ignored.
    pub fn record_munmap(&mut self, address: u64, size: u64) {
        let end = address.saturating_add(size);
        let overlapping: Vec<(u64, Mapped)> = self
            .mappings
            .range(..end)
            .rev()
            .take_while(|(_, m)| m.end > address)
            .map(|(&start, &m)| (start, m))
            .collect();
        for (start, mapped) in overlapping {
            self.mappings.remove(&start);
            let pieces = [(start, address), (end, mapped.end)]
                .into_iter()
                .filter(|(from, to)| from < to)
                .collect::<Vec<_>>();
            let removed = mapped.end.min(end) - start.max(address);
            for &(from, to) in &pieces {
                self.mappings.insert(
                    from,
                    Mapped {
                        end: to,
                        site: mapped.site,
                    },
                );
            }
            let stats = &mut self.sites[mapped.site.index()];
            stats.live_bytes -= removed;
            stats.live_allocations = stats.live_allocations + pieces.len() as u64 - 1;
            if pieces.is_empty() {
                stats.frees += 1;
            }
            self.fell(mapped.site);
        }
    }

    /// A free at `freed_ms` (milliseconds since the capture started).
    /// A free; false when its block was never seen allocated (allocated before the attach).
    pub fn record_free(&mut self, address: u64, freed_ms: u32) -> bool {
        self.advance(freed_ms);
        self.free(address, freed_ms, true).is_some()
    }

    /// A free of a block never seen allocated released `bytes`, as the allocator told
    /// ([`Totals::unmatched_free_bytes`]).
    pub fn record_release_before_attach(&mut self, bytes: u64) {
        self.unmatched_free_bytes += bytes;
    }

    /// Frees the block at `address`; `lowers_floor` unless the free is a realloc's.
    fn free(&mut self, address: u64, freed_ms: u32, lowers_floor: bool) -> Option<Released> {
        let Some(block) = self.outstanding.remove(&address) else {
            self.unmatched_frees += 1;
            return None;
        };
        let temporary = self.release(block, freed_ms, lowers_floor);
        Some(Released {
            address,
            block,
            temporary,
        })
    }

    /// realloc on thread `tid` started on `address`: freed now, restorable until the thread's
    /// next realloc.
    ///
    /// The free does not lower its site's low-water mark: the block moves rather than goes,
    /// and its new copy follows in a moment. Else a buffer that grows by realloc would show a
    /// floor without it in every interval it grew in. (The next interval's floor starts from
    /// the live bytes as they are then, so a block realloc moved to another site leaves this
    /// one's floor at the next interval.)
    pub fn record_realloc_free(&mut self, tid: u32, address: u64, freed_ms: u32) {
        self.advance(freed_ms);
        match self.free(address, freed_ms, false) {
            Some(released) => self.realloc_freed.insert(tid, released),
            None => self.realloc_freed.remove(&tid),
        };
    }

    /// The realloc in flight on `tid` failed: its block is live again, as before.
    pub fn record_realloc_failed(&mut self, tid: u32) {
        let Some(Released {
            address,
            block,
            temporary,
        }) = self.realloc_freed.remove(&tid)
        else {
            return;
        };
        let weight = self.sampling.weight(block.size);
        let stats = &mut self.sites[block.site.index()];
        stats.frees -= weight.blocks;
        stats.temporary -= if temporary { weight.blocks } else { 0 };
        stats.live_bytes += weight.bytes;
        stats.live_allocations += weight.blocks;
        self.rose(block.site);
        self.outstanding.insert(address, block);
    }

    /// Takes a freed block off its site; true when it counted as temporary. `lowers_floor`:
    /// the site's low-water mark follows (see [`Ledger::record_realloc_free`] for when not).
    fn release(&mut self, block: Outstanding, freed_ms: u32, lowers_floor: bool) -> bool {
        let temporary = freed_ms.saturating_sub(block.allocated_ms) < Self::TEMPORARY_MS;
        let weight = self.sampling.weight(block.size);
        let stats = &mut self.sites[block.site.index()];
        stats.frees += weight.blocks;
        stats.temporary += if temporary { weight.blocks } else { 0 };
        stats.live_bytes -= weight.bytes;
        stats.live_allocations -= weight.blocks;
        if lowers_floor {
            self.fell(block.site);
        }
        temporary
    }

    /// `site`'s live bytes went up: its high-water mark follows.
    fn rose(&mut self, site: SiteId) {
        let live = self.sites[site.index()].live_bytes;
        let marks = &mut self.watermarks[site.index()];
        marks.high = marks.high.max(live);
    }

    /// `site`'s live bytes went down: its low-water mark follows.
    fn fell(&mut self, site: SiteId) {
        let live = self.sites[site.index()].live_bytes;
        let marks = &mut self.watermarks[site.index()];
        marks.low = marks.low.min(live);
    }

    /// Every site's low and high-water marks since the last call (by site index; a site new
    /// since then starts from 0, which it held before its first block); each then starts
    /// again from the site's live bytes now. Without intervals by event time the caller
    /// calls this at each interval's end; with them, at the capture's end, for the interval
    /// under way.
    pub fn take_watermarks(&mut self) -> Vec<Watermarks> {
        let now = self.sites.iter().map(|stats| Watermarks {
            low: stats.live_bytes,
            high: stats.live_bytes,
        });
        let now: Vec<Watermarks> = now.collect();
        std::mem::replace(&mut self.watermarks, now)
    }

    fn site_for(&mut self, stack: StackKey) -> (SiteId, bool) {
        if let Some(&site) = self.site_of_stack.get(&stack) {
            return (site, false);
        }
        let site = SiteId(self.sites.len() as u32);
        self.sites.push(SiteStats::default());
        self.watermarks.push(Watermarks::default());
        self.stack_keys.push(stack);
        self.site_of_stack.insert(stack, site);
        (site, true)
    }

    /// Every site with its stack key and stats, in creation order.
    pub fn sites(&self) -> impl Iterator<Item = (SiteId, StackKey, &SiteStats)> {
        self.sites
            .iter()
            .zip(&self.stack_keys)
            .enumerate()
            .map(|(index, (stats, &stack))| (SiteId(index as u32), stack, stats))
    }

    /// Every site's stats, its live bytes and blocks counting only the blocks `filter` keeps
    /// at `now_ms` (one pass over the outstanding blocks when a filter is in force).
    pub fn site_stats(&self, filter: &BlockFilter, now_ms: u32) -> Vec<(SiteId, SiteStats)> {
        let mut sites: Vec<(SiteId, SiteStats)> = self
            .sites()
            .map(|(site, _, stats)| (site, *stats))
            .collect();
        if filter.is_active() {
            for (_, stats) in &mut sites {
                (stats.live_bytes, stats.live_allocations) = (0, 0);
            }
            for block in self.outstanding.values() {
                if filter.keeps(block, now_ms) {
                    let weight = self.sampling.weight(block.size);
                    let stats = &mut sites[block.site.index()].1;
                    stats.live_bytes += weight.bytes;
                    stats.live_allocations += weight.blocks;
                }
            }
        }
        sites
    }

    /// Every live heap block (not the `--mmap` mappings): what a reachability scan
    /// classifies.
    pub fn live_blocks(&self) -> Vec<TrackedBlock> {
        self.outstanding
            .iter()
            .map(|(&address, block)| TrackedBlock {
                address,
                size: block.size,
                site: block.site,
            })
            .collect()
    }

    /// Per site, its `most` oldest live blocks that `filter` keeps (bcc memleak's -a).
    pub fn oldest_blocks(
        &self,
        filter: &BlockFilter,
        now_ms: u32,
        most: usize,
    ) -> HashMap<SiteId, Vec<LiveBlock>> {
        let mut by_site: HashMap<SiteId, Vec<LiveBlock>> = HashMap::new();
        for (&address, block) in &self.outstanding {
            if !filter.keeps(block, now_ms) {
                continue;
            }
            by_site.entry(block.site).or_default().push(LiveBlock {
                address,
                size: block.size,
                age_ms: now_ms.saturating_sub(block.allocated_ms),
            });
        }
        for blocks in by_site.values_mut() {
            blocks.sort_by_key(|b| (std::cmp::Reverse(b.age_ms), b.address));
            blocks.truncate(most);
        }
        by_site
    }

    /// For windows of `window_ms` from the start: per window, per site (by index), the live
    /// bytes and blocks allocated in it. Blocks past the last window go into the last.
    pub fn live_by_window(&self, window_ms: u32, windows: usize) -> Vec<Vec<(u64, u64)>> {
        let mut live = vec![vec![(0, 0); self.sites.len()]; windows];
        for block in self.outstanding.values() {
            let window = (block.allocated_ms / window_ms.max(1)) as usize;
            let weight = self.sampling.weight(block.size);
            let entry = &mut live[window.min(windows - 1)][block.site.index()];
            entry.0 += weight.bytes;
            entry.1 += weight.blocks;
        }
        live
    }

    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals {
            unmatched_frees: self.unmatched_frees,
            unmatched_free_bytes: self.unmatched_free_bytes,
            missed_frees: self.missed_frees,
            ..Totals::default()
        };
        for stats in &self.sites {
            totals.live_bytes += stats.live_bytes;
            totals.live_allocations += stats.live_allocations;
            totals.allocs += stats.allocs;
            totals.frees += stats.frees;
            totals.alloc_bytes += stats.alloc_bytes;
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests read one site's figures; the capture reads them all through `site_stats`.
    impl Ledger {
        pub(crate) fn site(&self, site: SiteId) -> &SiteStats {
            &self.sites[site.index()]
        }
    }

    #[test]
    fn an_outstanding_slot_is_24_bytes() {
        assert_eq!(size_of::<(u64, Outstanding)>(), 24);
    }

    #[test]
    fn live_bytes_follow_allocs_and_frees_per_site() {
        let mut ledger = Ledger::default();
        let (leaky, new) = ledger.record_alloc(0x10, 100, 5, 0);
        assert!(new);
        let (same, new) = ledger.record_alloc(0x20, 50, 5, 1);
        assert_eq!((same, new), (leaky, false));
        let (balanced, _) = ledger.record_alloc(0x30, 8, 6, 2);
        ledger.record_free(0x30, 0);
        ledger.record_free(0x10, 0);

        assert_eq!(
            *ledger.site(leaky),
            SiteStats {
                live_bytes: 50,
                live_allocations: 1,
                allocs: 2,
                frees: 1,
                alloc_bytes: 150,
                temporary: 1,
            }
        );
        assert_eq!(ledger.site(balanced).live_bytes, 0);
        assert_eq!(ledger.site(balanced).frees, 1);
        let totals = ledger.totals();
        assert_eq!((totals.live_bytes, totals.live_allocations), (50, 1));
        assert_eq!(
            (totals.allocs, totals.frees, totals.alloc_bytes),
            (3, 2, 158)
        );
    }

    #[test]
    fn unknown_frees_are_counted_not_applied() {
        let mut ledger = Ledger::default();
        ledger.record_alloc(0x10, 100, 5, 0);
        ledger.record_free(0x999, 0);
        assert_eq!(ledger.totals().unmatched_frees, 1);
        assert_eq!(ledger.totals().live_bytes, 100);
    }

    #[test]
    fn a_reused_address_releases_the_block_whose_free_was_missed() {
        let mut ledger = Ledger::default();
        let (first, _) = ledger.record_alloc(0x10, 100, 5, 0);
        let (second, _) = ledger.record_alloc(0x10, 30, 6, 1);
        assert_eq!(ledger.site(first).live_bytes, 0);
        assert_eq!(ledger.site(second).live_bytes, 30);
        assert_eq!(ledger.totals().missed_frees, 1);
    }

    #[test]
    fn a_failed_realloc_leaves_the_old_block_live() {
        let mut ledger = Ledger::default();
        let (site, _) = ledger.record_alloc(0x10, 100, 5, 0);
        ledger.record_realloc_free(7, 0x10, 0);
        assert_eq!(ledger.site(site).live_bytes, 0);
        ledger.record_realloc_failed(7);
        assert_eq!(
            *ledger.site(site),
            SiteStats {
                live_bytes: 100,
                live_allocations: 1,
                allocs: 1,
                frees: 0,
                alloc_bytes: 100,
                temporary: 0,
            }
        );
        ledger.record_free(0x10, 0);
        assert_eq!(
            ledger.totals().unmatched_frees,
            0,
            "the block is back at its address"
        );
    }

    #[test]
    fn a_successful_realloc_frees_the_old_block_for_good() {
        let mut ledger = Ledger::default();
        let (old, _) = ledger.record_alloc(0x10, 100, 5, 0);
        ledger.record_realloc_free(7, 0x10, 0);
        let (new, _) = ledger.record_alloc(0x20, 200, 6, 1);
        ledger.record_realloc_free(7, 0x20, 0);
        ledger.record_realloc_failed(7);
        assert_eq!(ledger.site(old).live_bytes, 0);
        assert_eq!(
            ledger.site(new).live_bytes,
            200,
            "only the last realloc is undone"
        );
    }

    const PAGE: u64 = 4096;

    #[test]
    fn unmapping_the_middle_of_a_mapping_leaves_two_pieces() {
        let mut ledger = Ledger::default();
        let (site, _) = ledger.record_mmap(0x10000, 5 * PAGE, 1);
        ledger.record_munmap(0x10000 + 2 * PAGE, PAGE);
        let stats = ledger.site(site);
        assert_eq!((stats.live_bytes, stats.live_allocations), (4 * PAGE, 2));
        assert_eq!(stats.frees, 0, "nothing was unmapped whole");
        ledger.record_munmap(0x10000, 5 * PAGE);
        let stats = ledger.site(site);
        assert_eq!(
            (stats.live_bytes, stats.live_allocations, stats.frees),
            (0, 0, 2)
        );
    }

    #[test]
    fn one_munmap_can_span_several_mappings_and_unknown_ranges() {
        let mut ledger = Ledger::default();
        let (a, _) = ledger.record_mmap(0x10000, 2 * PAGE, 1);
        let (b, _) = ledger.record_mmap(0x20000, 2 * PAGE, 2);
        ledger.record_munmap(0x10000 + PAGE, 0x20000 + PAGE - (0x10000 + PAGE));
        assert_eq!(ledger.site(a).live_bytes, PAGE);
        assert_eq!(ledger.site(b).live_bytes, PAGE);
        ledger.record_munmap(0x90000, PAGE);
        assert_eq!(
            ledger.totals().live_bytes,
            2 * PAGE,
            "an unknown range changes nothing"
        );
    }

    #[test]
    fn a_fixed_mapping_over_an_old_one_replaces_it() {
        let mut ledger = Ledger::default();
        let (old, _) = ledger.record_mmap(0x10000, 4 * PAGE, 1);
        let (new, _) = ledger.record_mmap(0x10000 + PAGE, PAGE, 2);
        assert_eq!(ledger.site(old).live_bytes, 3 * PAGE);
        assert_eq!(ledger.site(new).live_bytes, PAGE);
        assert_eq!(ledger.totals().live_bytes, 4 * PAGE);
    }

    #[test]
    fn a_filter_counts_only_old_enough_blocks_of_the_sizes_asked() {
        let mut ledger = Ledger::default();
        let (site, _) = ledger.record_alloc(0x10, 100, 1, 0);
        ledger.record_alloc(0x20, 5000, 1, 0);
        ledger.record_alloc(0x30, 100, 1, 9_000);
        let old = BlockFilter {
            min_age_ms: 5_000,
            ..BlockFilter::default()
        };
        let live = |filter: &BlockFilter| {
            let stats = ledger.site_stats(filter, 10_000)[site.index()].1;
            (stats.live_bytes, stats.live_allocations)
        };
        assert_eq!(live(&old), (5100, 2));
        let small = BlockFilter {
            max_size: 1000,
            ..BlockFilter::default()
        };
        assert_eq!(live(&small), (200, 2));
        assert_eq!(live(&BlockFilter::default()), (5200, 3));
        assert!(!BlockFilter::default().is_active() && small.is_active());
    }

    #[test]
    fn live_blocks_are_attributed_to_the_window_they_were_allocated_in() {
        let mut ledger = Ledger::default();
        let (site, _) = ledger.record_alloc(0x10, 100, 1, 500);
        ledger.record_alloc(0x20, 30, 1, 1500);
        ledger.record_alloc(0x30, 7, 1, 1700);
        ledger.record_alloc(0x40, 1, 1, 9000);
        ledger.record_free(0x30, 1800);
        let windows = ledger.live_by_window(1000, 3);
        let i = site.index();
        assert_eq!(
            (windows[0][i], windows[1][i], windows[2][i]),
            ((100, 1), (30, 1), (1, 1))
        );
    }

    #[test]
    fn blocks_freed_soon_after_allocation_are_temporary() {
        let mut ledger = Ledger::default();
        let (site, _) = ledger.record_alloc(0x10, 8, 1, 1000);
        ledger.record_alloc(0x20, 8, 1, 1000);
        ledger.record_free(0x10, 1000 + Ledger::TEMPORARY_MS - 1);
        ledger.record_free(0x20, 1000 + Ledger::TEMPORARY_MS);
        assert_eq!(
            (ledger.site(site).frees, ledger.site(site).temporary),
            (2, 1)
        );
    }

    #[test]
    fn watermarks_catch_what_happened_between_two_ticks() {
        let mut ledger = Ledger::default();
        let (held, _) = ledger.record_alloc(0x10, 1000, 1, 0);
        assert_eq!(
            ledger.take_watermarks()[held.index()],
            Watermarks { low: 0, high: 1000 },
            "a new site held nothing before its first block"
        );
        // A burst on top, gone by the tick; and a dip below, refilled by the tick.
        ledger.record_alloc(0x20, 5000, 1, 0);
        ledger.record_free(0x20, 0);
        ledger.record_free(0x10, 0);
        ledger.record_alloc(0x30, 1000, 1, 0);
        assert_eq!(
            ledger.take_watermarks()[held.index()],
            Watermarks { low: 0, high: 6000 }
        );
        assert_eq!(
            ledger.take_watermarks()[held.index()],
            Watermarks {
                low: 1000,
                high: 1000
            },
            "a quiet interval: the live bytes throughout"
        );
    }

    #[test]
    fn intervals_follow_the_events_own_time_however_late_they_are_taken_in() {
        let mut ledger = Ledger::with_intervals(Sampling::Exact, 1000);
        // Four seconds of a cache filling, taken in all at once.
        let mut site = None;
        for second in 0..4u32 {
            for i in 0..10 {
                let address = u64::from(second * 10 + i + 1) * 0x100;
                site = Some(
                    ledger
                        .record_alloc(address, 100, 1, second * 1000 + i * 50)
                        .0,
                );
            }
        }
        let site = site.unwrap().index();
        let closed = ledger.close_intervals(4500);
        let marks: Vec<(u64, Watermarks)> = closed
            .iter()
            .map(|c| (c.end_ms, c.watermarks[site]))
            .collect();
        assert_eq!(
            marks,
            [
                (1000, Watermarks { low: 0, high: 1000 }),
                (
                    2000,
                    Watermarks {
                        low: 1000,
                        high: 2000
                    }
                ),
                (
                    3000,
                    Watermarks {
                        low: 2000,
                        high: 3000
                    }
                ),
                (
                    4000,
                    Watermarks {
                        low: 3000,
                        high: 4000
                    }
                ),
            ]
        );
        assert_eq!(ledger.interval_start_ms(), 4000);
        assert!(ledger.close_intervals(4900).is_empty(), "taken once");
        // A quiet stretch: its intervals close at the next call, each with the live bytes.
        let quiet = ledger.close_intervals(7000);
        assert_eq!(quiet.len(), 3);
        assert!(quiet.iter().all(|c| c.watermarks[site]
            == Watermarks {
                low: 4000,
                high: 4000
            }));
    }

    #[test]
    fn a_realloc_moving_a_block_does_not_lower_the_floor() {
        let mut ledger = Ledger::default();
        let (site, _) = ledger.record_alloc(0x10, 1000, 1, 0);
        ledger.take_watermarks();
        ledger.record_realloc_free(7, 0x10, 0);
        ledger.record_alloc(0x20, 2000, 1, 0);
        assert_eq!(
            ledger.take_watermarks()[site.index()],
            Watermarks {
                low: 1000,
                high: 2000
            }
        );
    }

    #[test]
    fn lost_stacks_share_one_site() {
        let mut ledger = Ledger::default();
        let (a, _) = ledger.record_alloc(0x10, 1, -17, 0);
        let (b, _) = ledger.record_alloc(0x20, 1, -14, 0);
        assert_eq!(a, b);
        assert_eq!(ledger.sites().next().unwrap().1, Ledger::LOST_STACK);
    }
}
