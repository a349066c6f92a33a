//! The target's writable memory, copied while it is frozen: each readable and writable
//! mapping, its pages that are in memory or swapped out. A page never touched holds no
//! pointer, so it is neither read nor copied: reading it would make the kernel map it in the
//! target, and a thread's 8 MiB stack is mostly such pages.

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

/// A run of copied pages.
struct Run {
    start: u64,
    bytes: Vec<u8>,
}

/// Copies of the target's writable memory, and the mappings they came from.
pub struct Snapshot {
    /// Sorted by address, not overlapping.
    runs: Vec<Run>,
    /// The mappings copied (readable, writable, and not the kernel's own pages).
    pub mappings: Vec<Mapping>,
    /// Every mapping, as it was.
    pub maps: ProcessMaps,
    pub copied_bytes: u64,
}

impl Snapshot {
    /// Copies `pid`'s writable memory; the target must be frozen.
    pub fn take(pid: u32) -> Result<Snapshot> {
        let maps = ProcessMaps::read(pid).with_context(|| format!("read /proc/{pid}/maps"))?;
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .with_context(|| format!("open /proc/{pid}/pagemap"))?;
        let mappings: Vec<Mapping> = maps
            .mappings()
            .iter()
            .filter(|m| m.readable && m.writable && !is_kernel_page(m))
            .cloned()
            .collect();
        let mut runs = Vec::new();
        for mapping in &mappings {
            for (start, end) in touched_runs(&pagemap, mapping.start, mapping.end)? {
                runs.push(Run {
                    start,
                    bytes: read_memory(pid, start, end),
                });
            }
        }
        let copied_bytes = runs.iter().map(|r| r.bytes.len() as u64).sum();
        Ok(Snapshot {
            runs,
            mappings,
            maps,
            copied_bytes,
        })
    }

    /// The aligned words in `start..end` that were copied, with their addresses; pages not
    /// copied held none but zeros.
    pub fn words(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self
            .runs
            .partition_point(|r| r.start + r.bytes.len() as u64 <= start);
        self.runs[first..]
            .iter()
            .take_while(move |run| run.start < end)
            .flat_map(move |run| {
                let from = start.max(run.start).next_multiple_of(8);
                let to = end.min(run.start + run.bytes.len() as u64);
                (from..to.saturating_sub(7)).step_by(8).map(move |address| {
                    let at = (address - run.start) as usize;
                    let word = u64::from_ne_bytes(run.bytes[at..at + 8].try_into().unwrap());
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

/// `start..end` of the target's memory; a page that cannot be read reads as zeros.
fn read_memory(pid: u32, start: u64, end: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; (end - start) as usize];
    let whole = [RemoteIoVec {
        base: start as usize,
        len: bytes.len(),
    }];
    let read = process_vm_readv(
        Pid::from_raw(pid as i32),
        &mut [IoSliceMut::new(&mut bytes)],
        &whole,
    );
    if read.is_ok_and(|n| n == bytes.len()) {
        return bytes;
    }
    // Some page failed (unmapped meanwhile, or a guard page): page by page, then.
    for (index, page) in bytes.chunks_mut(PAGE as usize).enumerate() {
        let remote = [RemoteIoVec {
            base: start as usize + index * PAGE as usize,
            len: page.len(),
        }];
        if process_vm_readv(
            Pid::from_raw(pid as i32),
            &mut [IoSliceMut::new(page)],
            &remote,
        )
        .is_err()
        {
            page.fill(0);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_come_from_the_runs_copied_and_are_aligned() {
        let run = |start: u64, words: &[u64]| Run {
            start,
            bytes: words.iter().flat_map(|w| w.to_ne_bytes()).collect(),
        };
        let snapshot = Snapshot {
            runs: vec![run(0x1000, &[1, 2, 3]), run(0x2000, &[4, 5])],
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
