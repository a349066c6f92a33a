//! The estimate, interval by interval: each point's hits since the last interval, weighed by
//! what a hit there costs, against the CPU time the traced processes used meanwhile.

use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::calibration::Calibration;
use crate::{
    kernel::{HitKind, HitPoint, ProbeSet},
    report::thousands,
    target::cpu::CpuClock,
};

/// A single-stepped point that costs more than this share of a CPU gets a warning.
const HOT_SHARE_OF_A_CPU: f64 = 0.01;

/// The BPF run-time statistics stay on until the programs have run this many times in all:
/// timing costs each run two clock reads (~200 ns a malloc/free pair under KVM, a tenth of
/// what the traps cost), so it is not kept on for good, and a target idle at the start (a
/// server before its clients come) gives too few runs to go by.
const TIMED_RUNS: u64 = 100_000;

/// How often, while the statistics are on, the capture looks whether they timed enough runs:
/// a busy target gets there within a fraction of a second, long before the first interval.
const TIMING_CHECK: Duration = Duration::from_millis(100);

/// A program's mean run time counts once it was timed over this many runs. Its first runs
/// meet cold caches and first faults: on redis, idle in the first interval, a handful of
/// runs averaged 18 µs, and the estimate, applied to 670,000 hits/s, said 12 CPUs.
const MIN_PROGRAM_RUNS: u64 = 1_000;

/// The estimate's inputs and their running totals, from the window's opening.
pub struct CostMeter {
    /// What a hit's traps cost; None when they could not be timed.
    calibration: Option<Calibration>,
    /// The kernel's BPF run-time statistics, turned on by leaktrace until [`TIMED_RUNS`].
    statistics: Option<OwnedFd>,
    /// Each program's mean run time in ns, from what the statistics counted.
    program_ns: HashMap<String, f64>,
    /// When [`CostMeter::end_timing_when_done`] last read the statistics.
    timing_checked: Instant,
    /// Hits per point at the window's opening, and at the last reading.
    first_hits: Vec<u64>,
    last_hits: Vec<u64>,
    /// Each traced process's CPU clock: its first and last readings.
    clocks: HashMap<u32, ProcessCpu>,
    last_at: Instant,
    /// Points warned about: each is, once.
    warned: HashSet<usize>,
}

struct ProcessCpu {
    clock: CpuClock,
    first_ns: u64,
    last_ns: u64,
}

/// One interval's estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntervalCost {
    pub seconds: f64,
    pub hits: u64,
    /// The probes' cost to the traced processes, in CPU-ns; None without a calibration.
    pub cost_ns: Option<f64>,
    /// The traced processes' CPU time, in ns.
    pub cpu_ns: u64,
    /// How many processes that is.
    pub processes: usize,
}

impl IntervalCost {
    /// The probes' share of the traced processes' CPU time, 0 to 1. The probes' time is the
    /// probed threads' own, so it is part of that time: an estimate above it (a calibration
    /// that ran faster than the target's hits do) counts as all of it.
    pub fn share(&self) -> Option<f64> {
        share(self.cost_ns?, self.cpu_ns)
    }

    /// "tracing cost ≈ 12% of the target's CPU (41 ms CPU/s, 3,400 hits/s)", for the live
    /// view's header.
    pub fn describe(&self) -> String {
        let per_s = |value: f64| {
            if self.seconds > 0.0 {
                value / self.seconds
            } else {
                0.0
            }
        };
        let hits = thousands(per_s(self.hits as f64).round() as u64);
        let Some(cost_ns) = self.cost_ns else {
            return format!("tracing cost not measured ({hits} hits/s)");
        };
        let cpu = cpu_per_s(per_s(cost_ns));
        match self.share() {
            Some(share) => format!(
                "tracing cost ≈ {} of {} CPU ({cpu}, {hits} hits/s)",
                percent(share * 100.0),
                whose(self.processes)
            ),
            None => format!("tracing cost ≈ {cpu} ({hits} hits/s)"),
        }
    }
}

/// The capture's cost, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct CostReport {
    /// What one hit's traps cost, by kind, timed once at the start; absent when they could not
    /// be timed, and then there is no estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// What each hit's cost holds: `traps`, or `traps_and_programs` when the programs' own
    /// run time could be measured too.
    pub covers: &'static str,
    /// Hits of every probe point while the window was open.
    pub hits: u64,
    /// The probes' estimated cost to the traced processes, in ms of CPU time.
    pub cost_ms: Option<f64>,
    /// The traced processes' CPU time while the window was open, in ms.
    pub target_cpu_ms: f64,
    /// `cost_ms` over `target_cpu_ms`, in percent (at most 100).
    pub percent_of_target_cpu: Option<f64>,
    /// Every probe point, in the order they were attached.
    pub points: Vec<PointCost>,
}

/// One probe point's hits and what each cost.
#[derive(Clone, Debug, Serialize)]
pub struct PointCost {
    pub symbol: String,
    pub module: PathBuf,
    /// File offset of the probe in the module, in hex.
    pub offset: String,
    pub program: &'static str,
    /// `emulated`, `single_stepped` (entry probes) or `return`.
    pub kind: String,
    pub hits: u64,
    /// The traps and the program's mean run time, in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_per_hit: Option<f64>,
    /// The program's mean run time, in ns, when it could be measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_ns: Option<f64>,
}

impl CostMeter {
    /// Starts metering at the window's opening, for the target `pid` first.
    pub fn new(
        calibration: Option<Calibration>,
        statistics: Option<OwnedFd>,
        probes: &ProbeSet,
        pid: u32,
    ) -> CostMeter {
        let hits = probes.hits().unwrap_or_default();
        let mut meter = CostMeter {
            calibration,
            statistics,
            program_ns: HashMap::new(),
            timing_checked: Instant::now(),
            first_hits: hits.clone(),
            last_hits: hits,
            clocks: HashMap::new(),
            last_at: Instant::now(),
            warned: HashSet::new(),
        };
        meter.cpu_since_last(&[pid]);
        meter
    }

    /// Turns the BPF statistics leaktrace turned on off, once they have timed [`TIMED_RUNS`];
    /// looks at most every [`TIMING_CHECK`], for the capture to call as often as it likes.
    pub fn end_timing_when_done(&mut self, probes: &ProbeSet) {
        if self.statistics.is_some() && self.timing_checked.elapsed() >= TIMING_CHECK {
            self.timing_checked = Instant::now();
            self.read_program_times(probes);
        }
    }

    /// The interval since the last sample, for the processes `pids`.
    pub fn sample(&mut self, probes: &ProbeSet, pids: &[u32]) -> IntervalCost {
        let seconds = self.last_at.elapsed().as_secs_f64();
        self.last_at = Instant::now();
        self.read_program_times(probes);
        let hits = probes.hits().unwrap_or_else(|_| self.last_hits.clone());
        let deltas = since(&hits, &self.last_hits);
        self.last_hits = hits;
        let cpu_ns = self.cpu_since_last(pids);
        let points = probes.hit_points();
        for warning in self.hot_points(points, &deltas, seconds) {
            eprintln!("{warning}");
        }
        IntervalCost {
            seconds,
            hits: deltas.iter().sum(),
            cost_ns: self.cost_ns(points, &deltas),
            cpu_ns,
            processes: self.clocks.len(),
        }
    }

    /// Warnings not given yet: each single-stepped point whose hits in the last interval
    /// cost more than [`HOT_SHARE_OF_A_CPU`].
    fn hot_points(&mut self, points: &[HitPoint], deltas: &[u64], seconds: f64) -> Vec<String> {
        let Some(calibration) = self.calibration else {
            return Vec::new();
        };
        let mut warnings = Vec::new();
        for (number, (point, &hits)) in points.iter().zip(deltas).enumerate() {
            if point.kind != HitKind::SingleStepped || seconds <= 0.0 {
                continue;
            }
            let per_hit = self.per_hit_ns(&calibration, point);
            let rate = hits as f64 / seconds;
            let share = rate * per_hit / 1e9;
            if share > HOT_SHARE_OF_A_CPU && self.warned.insert(number) {
                warnings.push(hot_warning(point, per_hit, rate, share));
            }
        }
        warnings
    }

    /// The report's figures, from the window's opening to now; taken after the window closed,
    /// before the probes go and before a launched target is reaped.
    pub fn report(&mut self, probes: &ProbeSet, pids: &[u32]) -> CostReport {
        self.read_program_times(probes);
        if let Ok(hits) = probes.hits() {
            self.last_hits = hits;
        }
        self.cpu_since_last(pids);
        let totals = since(&self.last_hits, &self.first_hits);
        let points = probes.hit_points();
        let cost_ns = self.cost_ns(points, &totals);
        let cpu_ns: u64 = self.clocks.values().map(|c| c.last_ns - c.first_ns).sum();
        let point_costs = points
            .iter()
            .zip(&totals)
            .map(|(point, &hits)| PointCost {
                symbol: point.symbol.clone(),
                module: point.module.clone(),
                offset: format!("{:#x}", point.offset),
                program: point.program,
                kind: point.kind.to_string(),
                hits,
                ns_per_hit: self.calibration.map(|c| self.per_hit_ns(&c, point)),
                program_ns: self.program_ns.get(point.program).copied(),
            })
            .collect();
        CostReport {
            calibration: self.calibration,
            covers: if self.program_ns.is_empty() {
                "traps"
            } else {
                "traps_and_programs"
            },
            hits: totals.iter().sum(),
            cost_ms: cost_ns.map(|ns| ns / 1e6),
            target_cpu_ms: cpu_ns as f64 / 1e6,
            percent_of_target_cpu: cost_ns.and_then(|ns| share(ns, cpu_ns)).map(|s| s * 100.0),
            points: point_costs,
        }
    }

    /// What `hits` (by point) cost, in CPU-ns.
    fn cost_ns(&self, points: &[HitPoint], hits: &[u64]) -> Option<f64> {
        let calibration = self.calibration?;
        Some(
            points
                .iter()
                .zip(hits)
                .map(|(point, &hits)| hits as f64 * self.per_hit_ns(&calibration, point))
                .sum(),
        )
    }

    /// One hit of `point`: its traps, and its program's mean run time where it is known.
    fn per_hit_ns(&self, calibration: &Calibration, point: &HitPoint) -> f64 {
        calibration.per_hit_ns(point.kind) + self.program_ns.get(point.program).unwrap_or(&0.0)
    }

    /// Reads each program's mean run time while the statistics leaktrace turned on count,
    /// and turns them off once they have timed [`TIMED_RUNS`].
    fn read_program_times(&mut self, probes: &ProbeSet) {
        if self.statistics.is_none() {
            return;
        }
        let (means, runs) = program_means(probes.program_runs());
        self.program_ns.extend(means);
        if runs >= TIMED_RUNS {
            self.statistics = None;
            log::debug!("BPF run-time statistics off: {runs} program runs timed");
        }
    }

    /// The CPU time `pids` used since the last reading (since their first, for a process new
    /// here). A process gone meanwhile is left out.
    fn cpu_since_last(&mut self, pids: &[u32]) -> u64 {
        let mut used = 0;
        for &pid in pids {
            if let Some(process) = self.clocks.get_mut(&pid) {
                if let Some(now) = process.clock.read() {
                    used += now.saturating_sub(process.last_ns);
                    process.last_ns = now;
                }
            } else if let Ok(clock) = CpuClock::of(pid)
                && let Some(now) = clock.read()
            {
                let process = ProcessCpu {
                    clock,
                    first_ns: now,
                    last_ns: now,
                };
                self.clocks.insert(pid, process);
            }
        }
        used
    }
}

/// Each program's mean run time in ns, of those timed over [`MIN_PROGRAM_RUNS`] or more, from
/// each one's (runs, ns); and the runs of all.
fn program_means(runs: HashMap<String, (u64, u64)>) -> (HashMap<String, f64>, u64) {
    let total = runs.values().map(|(count, _)| count).sum();
    let means = runs
        .into_iter()
        .filter(|(_, (count, ns))| *count >= MIN_PROGRAM_RUNS && *ns > 0)
        .map(|(program, (count, ns))| (program, ns as f64 / count as f64))
        .collect();
    (means, total)
}

/// `now - before`, point by point; a point new since `before` counts from 0.
fn since(now: &[u64], before: &[u64]) -> Vec<u64> {
    now.iter()
        .enumerate()
        .map(|(i, hits)| hits.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect()
}

/// `cost_ns` over `cpu_ns`, at most 1; None when no CPU time was seen.
fn share(cost_ns: f64, cpu_ns: u64) -> Option<f64> {
    (cpu_ns > 0).then(|| (cost_ns / cpu_ns as f64).min(1.0))
}

/// "the target's", or "the traced processes'" with children followed.
fn whose(processes: usize) -> &'static str {
    if processes > 1 {
        "the traced processes'"
    } else {
        "the target's"
    }
}

/// "12%", "3.4%", "0.05%", "<0.01%".
pub fn percent(value: f64) -> String {
    match value {
        v if v >= 10.0 => format!("{v:.0}%"),
        v if v >= 1.0 => format!("{v:.1}%"),
        v if v >= 0.01 => format!("{v:.2}%"),
        _ => "<0.01%".to_owned(),
    }
}

/// CPU time per second of wall time: "41 ms CPU/s", "320 µs CPU/s".
fn cpu_per_s(ns_per_s: f64) -> String {
    if ns_per_s >= 1e6 {
        format!("{:.0} ms CPU/s", ns_per_s / 1e6)
    } else {
        format!("{:.0} µs CPU/s", ns_per_s / 1e3)
    }
}

/// "warning: free in /lib/libfoo.so is single-stepped (9.8 µs a hit) and called 50,000
/// times/s: ~49% of a CPU".
fn hot_warning(point: &HitPoint, per_hit_ns: f64, rate: f64, share: f64) -> String {
    format!(
        "warning: {} in {} is single-stepped ({:.1} µs a hit) and called {} times/s: ~{} of a CPU",
        point.symbol,
        point.module.display(),
        per_hit_ns / 1e3,
        thousands(rate.round() as u64),
        percent(share * 100.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALIBRATION: Calibration = Calibration {
        emulated_ns: 600.0,
        single_stepped_ns: 9800.0,
        return_ns: 300.0,
        took_ms: 20.0,
    };

    fn point(symbol: &str, program: &'static str, kind: HitKind) -> HitPoint {
        HitPoint {
            symbol: symbol.to_owned(),
            module: PathBuf::from("/lib/libc.so.6"),
            offset: 0x1000,
            program,
            kind,
        }
    }

    fn new_meter(calibration: Option<Calibration>) -> CostMeter {
        CostMeter {
            calibration,
            statistics: None,
            program_ns: HashMap::new(),
            timing_checked: Instant::now(),
            first_hits: Vec::new(),
            last_hits: Vec::new(),
            clocks: HashMap::new(),
            last_at: Instant::now(),
            warned: HashSet::new(),
        }
    }

    fn malloc_and_free() -> Vec<HitPoint> {
        let returns = HitKind::Return {
            lone: false,
            entry_emulated: true,
        };
        vec![
            point("malloc", "alloc_enter", HitKind::Emulated),
            point("malloc", "alloc_exit", returns),
            point("free", "free_enter", HitKind::SingleStepped),
        ]
    }

    #[test]
    fn hits_are_weighed_by_their_kind_and_their_programs_time() {
        let points = malloc_and_free();
        let mut meter = new_meter(Some(CALIBRATION));
        // 1,000 mallocs (an entry and a return each) and 1,000 frees.
        let cost = meter.cost_ns(&points, &[1000, 1000, 1000]).unwrap();
        assert_eq!(cost, 1000.0 * (600.0 + 300.0 + 9800.0));
        meter.program_ns.insert("alloc_exit".into(), 150.0);
        let cost = meter.cost_ns(&points, &[1000, 1000, 1000]).unwrap();
        assert_eq!(cost, 1000.0 * (600.0 + 300.0 + 150.0 + 9800.0));
        assert_eq!(new_meter(None).cost_ns(&points, &[1, 1, 1]), None);
    }

    #[test]
    fn a_programs_time_counts_once_timed_over_enough_runs() {
        let runs = HashMap::from([
            ("alloc_exit".to_owned(), (3, 54_000)),
            (
                "free_enter".to_owned(),
                (MIN_PROGRAM_RUNS, MIN_PROGRAM_RUNS * 90),
            ),
            ("calloc_enter".to_owned(), (0, 0)),
        ]);
        let (means, total) = program_means(runs);
        assert_eq!(means, HashMap::from([("free_enter".to_owned(), 90.0)]));
        assert_eq!(total, MIN_PROGRAM_RUNS + 3);
    }

    #[test]
    fn the_share_is_of_the_cpu_time_and_never_above_all_of_it() {
        let interval = |cost_ns, cpu_ns| IntervalCost {
            seconds: 2.0,
            hits: 6800,
            cost_ns,
            cpu_ns,
            processes: 1,
        };
        assert_eq!(interval(Some(1e6), 8_000_000).share(), Some(0.125));
        assert_eq!(interval(Some(9e6), 8_000_000).share(), Some(1.0));
        assert_eq!(interval(Some(1e6), 0).share(), None, "no CPU time seen");
        assert_eq!(interval(None, 8_000_000).share(), None, "no calibration");
        assert_eq!(
            interval(Some(82e6), 656_000_000).describe(),
            "tracing cost ≈ 12% of the target's CPU (41 ms CPU/s, 3,400 hits/s)"
        );
        assert_eq!(
            interval(Some(640e3), 0).describe(),
            "tracing cost ≈ 320 µs CPU/s (3,400 hits/s)"
        );
        assert_eq!(
            interval(None, 1).describe(),
            "tracing cost not measured (3,400 hits/s)"
        );
        let two = IntervalCost {
            processes: 2,
            ..interval(Some(82e6), 656_000_000)
        };
        assert!(two.describe().contains("of the traced processes' CPU"));
    }

    #[test]
    fn a_hot_single_stepped_point_is_warned_about_once() {
        let points = malloc_and_free();
        let mut meter = new_meter(Some(CALIBRATION));
        // 50,000 frees a second at 9.8 µs: 49% of a CPU.
        let warnings = meter.hot_points(&points, &[50_000, 50_000, 50_000], 1.0);
        assert_eq!(
            warnings,
            [
                "warning: free in /lib/libc.so.6 is single-stepped (9.8 µs a hit) and called \
              50,000 times/s: ~49% of a CPU"
            ]
        );
        assert!(
            meter
                .hot_points(&points, &[50_000, 50_000, 50_000], 1.0)
                .is_empty(),
            "once"
        );
        // 500 a second is 0.5% of a CPU: not hot.
        let mut cool = new_meter(Some(CALIBRATION));
        assert!(cool.hot_points(&points, &[0, 0, 500], 1.0).is_empty());
    }

    #[test]
    fn hits_count_from_the_first_reading_and_new_points_from_zero() {
        assert_eq!(since(&[10, 20, 5], &[4, 20]), [6, 0, 5]);
    }

    #[test]
    fn percents_keep_two_significant_digits() {
        assert_eq!(percent(49.4), "49%");
        assert_eq!(percent(3.44), "3.4%");
        assert_eq!(percent(0.052), "0.05%");
        assert_eq!(percent(0.001), "<0.01%");
    }
}
