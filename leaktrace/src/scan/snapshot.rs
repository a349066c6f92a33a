//! The target's writable memory, copied while it is frozen: each readable and writable
//! mapping, its pages that are in memory or swapped out. A page never touched holds no
//! pointer, so it is neither read nor copied: reading it would make the kernel map it in the
//! target, and a thread's 8 MiB stack is mostly such pages.
//!
//! The pause is the copy, so most of it is done before: [`Precopy::take`] clears the
//! target's soft-dirty bits (`/proc/PID/clear_refs`, as CRIU's pre-dump does) and copies its
//! memory while it runs. In the pause, [`Snapshot::take`] copies again only the pages the
//! pagemap says were written since (soft-dirty) or are new, up to 1,024 runs of pages per
//! process_vm_readv. Clearing the bits costs the target a minor fault at its first write to
//! each page afterwards. Where the bits cannot be cleared (a kernel without soft-dirty
//! tracking), every page is copied again in the pause.

use std::{fs::File, os::unix::fs::FileExt};

use anyhow::{Context, Result};

use crate::target::maps::{Mapping, ProcessMaps};

const PAGE: u64 = 4096;
/// /proc/PID/pagemap: bit 63 says the page is in memory, bit 62 that it is swapped out.
const PRESENT_OR_SWAPPED: u64 = 3 << 62;

/// /proc/PID/pagemap: bit 55, the page was written since the soft-dirty bits were cleared.
const SOFT_DIRTY: u64 = 1 << 55;

/// A run of copied pages: `len` bytes from `start` in the target, at `at` in the copy.
#[derive(Clone, Copy)]
struct Run {
    start: u64,
    at: usize,
    len: usize,
}

/// The target's writable memory, copied while it still runs (module doc).
pub struct Precopy {
    runs: Vec<Run>,
    bytes: Vec<u8>,
    /// Whether the soft-dirty bits were cleared before the copy: else no page is known clean.
    tracked: bool,
}

impl Precopy {
    /// Clears `pid`'s soft-dirty bits, then copies its touched writable pages.
    pub fn take(pid: u32) -> Precopy {
        // A kernel built without CONFIG_MEM_SOFT_DIRTY takes the clearing and never sets a
        // bit: every page would look clean.
        let tracked =
            soft_dirty_works() && std::fs::write(format!("/proc/{pid}/clear_refs"), "4").is_ok();
        let mut runs = Vec::new();
        let mut at = 0;
        for (start, end) in touched(pid).unwrap_or_default() {
            let len = (end - start) as usize;
            runs.push(Run { start, at, len });
            at += len;
        }
        let mut bytes = vec![0u8; at];
        read_runs(pid, &runs, &mut bytes);
        Precopy {
            runs,
            bytes,
            tracked,
        }
    }
}

/// Whether the kernel keeps soft-dirty bits: a page leaktrace has just written shows one.
fn soft_dirty_works() -> bool {
    let mut page = vec![0u8; 2 * PAGE as usize];
    let address = (page.as_mut_ptr() as u64).next_multiple_of(PAGE);
    // SAFETY: the address is inside `page`, one page from its start at most.
    unsafe { std::ptr::write_volatile(address as *mut u8, 1) };
    let Ok(pagemap) = File::open("/proc/self/pagemap") else {
        return false;
    };
    let entry = pagemap_entries(&pagemap, address, address + PAGE);
    drop(page);
    entry.is_ok_and(|entries| entries.first().is_some_and(|(_, e)| e & SOFT_DIRTY != 0))
}

/// Where, among `runs`, the copy of the page at `page` is, if it was copied.
fn offset_of(runs: &[Run], page: u64) -> Option<usize> {
    let index = runs.partition_point(|r| r.start <= page).checked_sub(1)?;
    let run = runs[index];
    (page < run.start + run.len as u64).then(|| run.at + (page - run.start) as usize)
}

/// Copies of the target's writable memory, and the mappings they came from.
pub struct Snapshot {
    /// Sorted by address, not overlapping.
    runs: Vec<Run>,
    bytes: Vec<u8>,
    /// The mappings copied (readable, writable, and not the kernel's own pages).
    pub mappings: Vec<Mapping>,
    /// Every mapping, as it was.
    pub maps: ProcessMaps,
    pub copied_bytes: u64,
}

impl Snapshot {
    /// `pid`'s writable memory as it is now: the `precopy`, with the pages written since
    /// and the new ones copied again. The target must be frozen.
    pub fn take(pid: u32, precopy: Precopy) -> Result<Snapshot> {
        let maps = ProcessMaps::read(pid).with_context(|| format!("read /proc/{pid}/maps"))?;
        let mappings = copied_mappings(&maps);
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .with_context(|| format!("open /proc/{pid}/pagemap"))?;
        let Precopy {
            runs: copied,
            mut bytes,
            tracked,
        } = precopy;
        // Every page as it is now (target address, offset in the copy), and those to copy.
        let mut pages: Vec<(u64, usize)> = Vec::new();
        let mut stale: Vec<Run> = Vec::new();
        for mapping in &mappings {
            for (page, entry) in pagemap_entries(&pagemap, mapping.start, mapping.end)? {
                if entry & PRESENT_OR_SWAPPED == 0 {
                    continue;
                }
                let clean = tracked && entry & SOFT_DIRTY == 0;
                let at = match offset_of(&copied, page) {
                    Some(at) if clean => {
                        pages.push((page, at));
                        continue;
                    }
                    Some(at) => at,
                    None => {
                        bytes.resize(bytes.len() + PAGE as usize, 0);
                        bytes.len() - PAGE as usize
                    }
                };
                pages.push((page, at));
                stale.push(Run {
                    start: page,
                    at,
                    len: PAGE as usize,
                });
            }
        }
        read_runs(pid, &coalesce(stale), &mut bytes);
        let runs = coalesce(
            pages
                .into_iter()
                .map(|(start, at)| Run {
                    start,
                    at,
                    len: PAGE as usize,
                })
                .collect(),
        );
        Ok(Snapshot {
            copied_bytes: runs.iter().map(|r| r.len as u64).sum(),
            runs,
            bytes,
            mappings,
            maps,
        })
    }

    /// The aligned words in `start..end` that were copied, with their addresses; pages not
    /// copied held none but zeros.
    pub fn words(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self
            .runs
            .partition_point(|r| r.start + r.len as u64 <= start);
        self.runs[first..]
            .iter()
            .take_while(move |run| run.start < end)
            .flat_map(move |run| {
                let from = start.max(run.start).next_multiple_of(8);
                let to = end.min(run.start + run.len as u64);
                (from..to.saturating_sub(7)).step_by(8).map(move |address| {
                    let at = run.at + (address - run.start) as usize;
                    let word = u64::from_ne_bytes(self.bytes[at..at + 8].try_into().unwrap());
                    (address, word)
                })
            })
    }

    /// The word at `address` (aligned), if it was copied.
    pub fn word(&self, address: u64) -> Option<u64> {
        self.words(address, address + 8)
            .next()
            .map(|(_, word)| word)
    }
}

/// The mappings a snapshot copies: readable, writable, and not the kernel's own pages.
fn copied_mappings(maps: &ProcessMaps) -> Vec<Mapping> {
    maps.mappings()
        .iter()
        .filter(|m| m.readable && m.writable && !is_kernel_page(m))
        .cloned()
        .collect()
}

/// The runs of touched pages of `pid`'s copied mappings, as they are now.
fn touched(pid: u32) -> Result<Vec<(u64, u64)>> {
    let maps = ProcessMaps::read(pid)?;
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut runs = Vec::new();
    for mapping in copied_mappings(&maps) {
        runs.extend(touched_runs(&pagemap, mapping.start, mapping.end)?);
    }
    Ok(runs)
}

/// Pages the kernel maps for itself into every process: no pointer of the program's.
fn is_kernel_page(mapping: &Mapping) -> bool {
    matches!(
        mapping.pseudo.as_deref(),
        Some("[vvar]" | "[vvar_vclock]" | "[vsyscall]" | "[vdso]" | "[uprobes]")
    )
}

/// Each page of `start..end` with its pagemap entry.
fn pagemap_entries(pagemap: &File, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
    let pages = ((end - start) / PAGE) as usize;
    let mut entries = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut entries, start / PAGE * 8)
        .context("read /proc/PID/pagemap")?;
    Ok(entries
        .chunks_exact(8)
        .enumerate()
        .map(|(index, entry)| {
            let entry = u64::from_ne_bytes(entry.try_into().unwrap());
            (start + index as u64 * PAGE, entry)
        })
        .collect())
}

/// The runs of pages of `start..end` that are in memory or swapped out.
fn touched_runs(pagemap: &File, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (page, entry) in pagemap_entries(pagemap, start, end)? {
        if entry & PRESENT_OR_SWAPPED == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((_, run_end)) if *run_end == page => *run_end += PAGE,
            _ => runs.push((page, page + PAGE)),
        }
    }
    Ok(runs)
}

/// `runs` sorted by address, neighbours merged where their copies are neighbours too.
fn coalesce(runs: Vec<Run>) -> Vec<Run> {
    let mut merged: Vec<Run> = Vec::new();
    for run in runs {
        match merged.last_mut() {
            Some(last)
                if last.start + last.len as u64 == run.start && last.at + last.len == run.at =>
            {
                last.len += run.len
            }
            _ => merged.push(run),
        }
    }
    merged
}

/// Copies `runs` of the target's memory into `bytes`, up to 1,024 runs a call (IOV_MAX); a
/// batch that cannot be read whole is read page by page, and a page that cannot be read
/// reads as zeros.
fn read_runs(pid: u32, runs: &[Run], bytes: &mut [u8]) {
    for batch in runs.chunks(1024) {
        let total: usize = batch.iter().map(|r| r.len).sum();
        if read_into(pid, batch, bytes) == total as isize {
            continue;
        }
        // Some page failed (unmapped meanwhile, or a guard page): page by page, then.
        for run in batch {
            for offset in (0..run.len).step_by(PAGE as usize) {
                let page = Run {
                    start: run.start + offset as u64,
                    at: run.at + offset,
                    len: PAGE as usize,
                };
                if read_into(pid, &[page], bytes) != PAGE as isize {
                    bytes[page.at..page.at + page.len].fill(0);
                }
            }
        }
    }
}

/// One process_vm_readv of `runs` (at most IOV_MAX) into their places in `bytes`.
fn read_into(pid: u32, runs: &[Run], bytes: &mut [u8]) -> isize {
    let base = bytes.as_mut_ptr();
    let (local, remote): (Vec<libc::iovec>, Vec<libc::iovec>) = runs
        .iter()
        .map(|r| {
            assert!(r.at + r.len <= bytes.len());
            (
                libc::iovec {
                    // SAFETY: the run lies inside `bytes` (checked above).
                    iov_base: unsafe { base.add(r.at) }.cast(),
                    iov_len: r.len,
                },
                libc::iovec {
                    iov_base: r.start as *mut libc::c_void,
                    iov_len: r.len,
                },
            )
        })
        .unzip();
    // SAFETY: the local iovecs are disjoint pieces of `bytes`, which is borrowed mutably for
    // the call; the remote ones name the target's memory, which the kernel reads or refuses.
    unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            local.as_ptr(),
            local.len() as libc::c_ulong,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_come_from_the_runs_copied_and_are_aligned() {
        let words: [u64; 5] = [1, 2, 3, 4, 5];
        let snapshot = Snapshot {
            runs: vec![
                Run {
                    start: 0x1000,
                    at: 0,
                    len: 24,
                },
                Run {
                    start: 0x2000,
                    at: 24,
                    len: 16,
                },
            ],
            bytes: words.iter().flat_map(|w| w.to_ne_bytes()).collect(),
            mappings: Vec::new(),
            maps: ProcessMaps::default(),
            copied_bytes: 40,
        };
        let all: Vec<(u64, u64)> = snapshot.words(0, 0x3000).collect();
        assert_eq!(
            all,
            [
                (0x1000, 1),
                (0x1008, 2),
                (0x1010, 3),
                (0x2000, 4),
                (0x2008, 5)
            ]
        );
        // Unaligned starts round up; the range's end is exclusive.
        let some: Vec<u64> = snapshot.words(0x1001, 0x1010).map(|(_, w)| w).collect();
        assert_eq!(some, [2]);
        assert_eq!(snapshot.word(0x2008), Some(5));
        assert_eq!(snapshot.word(0x1800), None);
    }
}
