//! The process's own view of its memory: /proc/PID/status, smaps_rollup and smaps.
//!
//! The first step of leak hunting is seeing RSS grow; this module reads what the kernel says,
//! needing no probes and no privilege beyond reading the target's /proc.

use std::{fs, io};

use serde::Serialize;

use crate::ledger::trends::{Growth, MAX_SAMPLES, TREND_INTERVALS, fit, thin};

/// One reading of a process's memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MemorySample {
    /// Seconds since the first sample.
    pub t: f64,
    pub vm_rss: u64,
    pub vm_hwm: u64,
    pub vm_data: u64,
    pub rss_anon: u64,
    pub pss: u64,
    pub private_dirty: u64,
    /// Live bytes of the traced heap at the same moment (0 in `watch`, which traces nothing).
    pub traced_heap: u64,
    /// Resident bytes by kind of mapping, from smaps.
    pub heap: u64,
    pub anonymous: u64,
    pub file_backed: u64,
    pub stacks: u64,
}

impl MemorySample {
    pub fn read(pid: u32, t: f64) -> io::Result<MemorySample> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        Ok(MemorySample::parse(&status, &rollup, &smaps, t))
    }

    /// A sample from the texts of /proc/PID/status, smaps_rollup and smaps; what they lack
    /// counts as 0.
    pub fn parse(status: &str, rollup: &str, smaps: &str, t: f64) -> MemorySample {
        let mut sample = MemorySample {
            t,
            vm_rss: field_kib(status, "VmRSS"),
            vm_hwm: field_kib(status, "VmHWM"),
            vm_data: field_kib(status, "VmData"),
            rss_anon: field_kib(status, "RssAnon"),
            pss: field_kib(rollup, "Pss"),
            private_dirty: field_kib(rollup, "Private_Dirty"),
            ..MemorySample::default()
        };
        sample.add_smaps(smaps);
        sample
    }

    /// Sums each mapping's Rss into its kind.
    fn add_smaps(&mut self, smaps: &str) {
        let mut kind = Kind::Anonymous;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                let bytes = kib(rss);
                let total = match kind {
                    Kind::Heap => &mut self.heap,
                    Kind::Anonymous => &mut self.anonymous,
                    Kind::File => &mut self.file_backed,
                    Kind::Stack => &mut self.stacks,
                    Kind::Other => continue,
                };
                *total = total.saturating_add(bytes);
            } else if let Some(header_kind) = mapping_kind(line) {
                kind = header_kind;
            }
        }
    }
}

/// The target's memory beside the traced heap, interval by interval, to tell whether the
/// traced heap explains RSS growth. Bounded as a site's series is: a service runs for days.
#[derive(Default)]
pub struct MemoryTrend {
    pub samples: Vec<MemorySample>,
    heap: Vec<(f64, u64)>,
}

/// RSS growth at least this fast, with the traced heap growing at under a quarter of it, is
/// growth somewhere leaktrace does not see.
const DIVERGENCE_MIN_BYTES_PER_S: f64 = 64.0 * 1024.0;

impl MemoryTrend {
    /// Reads the process's memory at `t` (seconds) beside the traced heap's live bytes.
    pub fn record(&mut self, pid: u32, t: f64, heap_live_bytes: u64) {
        if let Ok(mut sample) = MemorySample::read(pid, t) {
            if self.samples.len() == MAX_SAMPLES {
                thin(&mut self.samples);
                thin(&mut self.heap);
            }
            sample.traced_heap = heap_live_bytes;
            self.samples.push(sample);
            self.heap.push((t, heap_live_bytes));
        }
    }

    /// RSS and its growth over the last intervals.
    pub fn rss(&self) -> Option<(u64, Growth)> {
        let last = self.samples.last()?;
        let rss: Vec<(f64, u64)> = self.samples.iter().map(|s| (s.t, s.vm_rss)).collect();
        Some((last.vm_rss, recent_growth(&rss)))
    }

    /// The traced heap's growth over the last intervals.
    pub fn heap_growth(&self) -> Growth {
        recent_growth(&self.heap)
    }

    /// A warning when RSS grows and the traced heap does not keep up with it.
    pub fn divergence(&self) -> Option<String> {
        if self.samples.len() <= TREND_INTERVALS {
            return None;
        }
        let (_, rss) = self.rss()?;
        let heap = self.heap_growth();
        (rss.bytes_per_s >= DIVERGENCE_MIN_BYTES_PER_S && heap.bytes_per_s < rss.bytes_per_s / 4.0)
            .then(|| {
                format!(
                    "warning: RSS grows {:.0} B/s but the traced heap {:.0} B/s: the growth is \
                     elsewhere (mmap, fragmentation, another allocator)",
                    rss.bytes_per_s, heap.bytes_per_s
                )
            })
    }
}

fn recent_growth(points: &[(f64, u64)]) -> Growth {
    fit(&points[points.len().saturating_sub(TREND_INTERVALS + 1)..])
}

#[derive(Clone, Copy)]
enum Kind {
    Heap,
    Anonymous,
    File,
    Stack,
    Other,
}

/// The kind of the mapping a smaps header line starts, or None for a field line.
fn mapping_kind(line: &str) -> Option<Kind> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    if !range.contains('-') || !range.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    let path = fields.nth(4).unwrap_or("");
    Some(match path {
        "" => Kind::Anonymous,
        "[heap]" => Kind::Heap,
        p if p.starts_with("[stack") => Kind::Stack,
        p if p.starts_with('/') => Kind::File,
        _ => Kind::Other,
    })
}

/// "VmRSS:\t  1234 kB" → 1234 * 1024.
fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map_or(0, kib)
}

/// Saturating: /proc may be another kernel's, or not /proc at all (fuzzing found this).
fn kib(value: &str) -> u64 {
    value
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
        .saturating_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs the fuzzer (`cargo xtask fuzz`) found to crash the parser, replayed.
    #[test]
    fn fuzzed_inputs_that_crashed_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/regressions/smaps");
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let mut parts = text.splitn(3, '\0');
            let mut part = || parts.next().unwrap_or_default();
            let (status, rollup, smaps) = (part(), part(), part());
            MemorySample::parse(status, rollup, smaps, 0.0);
            replayed += 1;
        }
        assert!(replayed > 0, "no inputs in {dir}");
    }

    #[test]
    fn sizes_past_u64_saturate() {
        let status = "VmRSS:\t18014398509481984 kB\n";
        let smaps = "00400000-00401000 rw-p 00000000 00:00 0 [heap]\nRss: 18014398509481984 kB\n\
                     00401000-00402000 rw-p 00000000 00:00 0 [heap]\nRss: 4 kB\n";
        let sample = MemorySample::parse(status, "", smaps, 0.0);
        assert_eq!((sample.vm_rss, sample.heap), (u64::MAX, u64::MAX));
    }

    const SMAPS: &str = "\
55d4c9000000-55d4c9021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  40 kB
7f0000028000-7f000019d000 r-xp 00028000 fe:01 99                         /usr/lib/libc.so.6
Rss:                 900 kB
7f00001a0000-7f00001a1000 rw-p 00000000 00:00 0 
Rss:                   4 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
7ffc00100000-7ffc00101000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
";

    #[test]
    fn smaps_rss_is_grouped_by_kind() {
        let mut sample = MemorySample::default();
        sample.add_smaps(SMAPS);
        assert_eq!(
            (
                sample.heap,
                sample.file_backed,
                sample.anonymous,
                sample.stacks
            ),
            (40 * 1024, 900 * 1024, 4 * 1024, 16 * 1024)
        );
    }

    #[test]
    fn status_fields_are_read_in_bytes() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t 12 kB\n";
        assert_eq!(field_kib(status, "VmRSS"), 1024 * 1024);
        assert_eq!(field_kib(status, "VmHWM"), 2048 * 1024);
        assert_eq!(field_kib(status, "RssAnon"), 12 * 1024);
        assert_eq!(field_kib(status, "VmData"), 0, "absent");
    }

    #[test]
    fn rss_growing_without_the_heap_is_a_divergence() {
        let mut trend = MemoryTrend::default();
        for i in 0..8 {
            let t = i as f64;
            trend.samples.push(MemorySample {
                t,
                vm_rss: 10_000_000 + i * 1_000_000,
                ..MemorySample::default()
            });
            trend.heap.push((t, 5_000));
        }
        assert!(trend.divergence().is_some());
        // The heap growing as fast as RSS explains it.
        for (i, point) in trend.heap.iter_mut().enumerate() {
            point.1 = 5_000 + i as u64 * 1_000_000;
        }
        assert!(trend.divergence().is_none());
    }

    #[test]
    fn reads_our_own_process() {
        let sample = MemorySample::read(std::process::id(), 0.0).unwrap();
        assert!(sample.vm_rss > 0 && sample.pss > 0);
        assert!(sample.vm_hwm >= sample.vm_rss);
        assert!(sample.file_backed > 0, "our own binary is mapped");
    }
}
