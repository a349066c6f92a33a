//! The target's writable memory, copied while it is frozen: each readable and writable
//! mapping, its pages that are in memory or swapped out. A page never touched holds no
//! pointer, so it is neither read nor copied: reading it would make the kernel map it in the
//! target, and a thread's 8 MiB stack is mostly such pages.
//!
//! The pause is the copy, so what can be done before it is: [`Buffer::ready_for`] sizes and
//! touches the memory the copy goes to while the target still runs (a page fault per 4 KiB
//! written would otherwise be paid in the pause), and the copy reads up to 1,024 runs of pages
//! per process_vm_readv.

use std::{fs::File, io::IoSliceMut, os::unix::fs::FileExt};

use anyhow::{Context, Result};
use nix::{
    sys::uio::{RemoteIoVec, process_vm_readv},
    unistd::Pid,
};

use crate::target::maps::{Mapping, ProcessMaps};

const PAGE: u64 = 4096;
/// /proc/PID/pagemap: bit 63 says the page is in memory, bit 62 that it is swapped out.
const PRESENT_OR_SWAPPED: u64 = 3 << 62;

/// A run of copied pages: `len` bytes from `start` in the target, at `at` in the copy.
struct Run {
    start: u64,
    at: usize,
    len: usize,
}

/// Where a snapshot's bytes go, made ready before the target is frozen.
#[derive(Default)]
pub struct Buffer(Vec<u8>);

impl Buffer {
    /// Sized for `pid`'s touched writable pages as they are now, with room to spare, and
    /// written once so that its pages are in memory.
    pub fn ready_for(pid: u32) -> Buffer {
        let bytes = touched(pid).map_or(0, |runs| runs.iter().map(|(s, e)| e - s).sum::<u64>());
        // A running target may touch more before the freeze.
        Buffer(vec![1u8; (bytes + bytes / 8) as usize])
    }
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
    /// Copies `pid`'s writable memory into `buffer`; the target must be frozen.
    pub fn take(pid: u32, buffer: Buffer) -> Result<Snapshot> {
        let maps = ProcessMaps::read(pid).with_context(|| format!("read /proc/{pid}/maps"))?;
        let mappings = copied_mappings(&maps);
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .with_context(|| format!("open /proc/{pid}/pagemap"))?;
        let mut runs = Vec::new();
        let mut at = 0;
        for mapping in &mappings {
            for (start, end) in touched_runs(&pagemap, mapping.start, mapping.end)? {
                let len = (end - start) as usize;
                runs.push(Run { start, at, len });
                at += len;
            }
        }
        let mut bytes = buffer.0;
        bytes.resize(at, 0);
        read_runs(pid, &runs, &mut bytes);
        Ok(Snapshot {
            runs,
            bytes,
            mappings,
            maps,
            copied_bytes: at as u64,
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

/// The runs of pages of `start..end` that are in memory or swapped out.
fn touched_runs(pagemap: &File, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
    let pages = ((end - start) / PAGE) as usize;
    let mut entries = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut entries, start / PAGE * 8)
        .context("read /proc/PID/pagemap")?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (index, entry) in entries.chunks_exact(8).enumerate() {
        let entry = u64::from_ne_bytes(entry.try_into().unwrap());
        if entry & PRESENT_OR_SWAPPED == 0 {
            continue;
        }
        let page = start + index as u64 * PAGE;
        match runs.last_mut() {
            Some((_, run_end)) if *run_end == page => *run_end += PAGE,
            _ => runs.push((page, page + PAGE)),
        }
    }
    Ok(runs)
}

/// Copies `runs` of the target's memory into `bytes`, up to 1,024 runs a call (IOV_MAX); a
/// batch that cannot be read whole is read page by page, and a page that cannot be read
/// reads as zeros.
fn read_runs(pid: u32, runs: &[Run], bytes: &mut [u8]) {
    let pid = Pid::from_raw(pid as i32);
    for batch in runs.chunks(1024) {
        let Some(first) = batch.first() else { continue };
        let total: usize = batch.iter().map(|r| r.len).sum();
        let remote: Vec<RemoteIoVec> = batch
            .iter()
            .map(|r| RemoteIoVec {
                base: r.start as usize,
                len: r.len,
            })
            .collect();
        let local = &mut bytes[first.at..first.at + total];
        if process_vm_readv(pid, &mut [IoSliceMut::new(local)], &remote).is_ok_and(|n| n == total) {
            continue;
        }
        // Some page failed (unmapped meanwhile, or a guard page): page by page, then.
        for run in batch {
            let pages = bytes[run.at..run.at + run.len].chunks_mut(PAGE as usize);
            for (index, page) in pages.enumerate() {
                let remote = [RemoteIoVec {
                    base: run.start as usize + index * PAGE as usize,
                    len: page.len(),
                }];
                if process_vm_readv(pid, &mut [IoSliceMut::new(page)], &remote).is_err() {
                    page.fill(0);
                }
            }
        }
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
