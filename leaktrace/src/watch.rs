//! `leaktrace watch`: the target's memory over time, and a verdict on its trend.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    ledger::trends::{Growth, fit},
    report::{human_bytes, signed_bytes},
    target::memory::MemorySample,
    target::{Access, Target},
};

/// Growth this steady (R²) and this large over the watch counts as "growing": less is noise,
/// allocator caching or a warm-up.
const MIN_STEADINESS: f64 = 0.6;
const MIN_GROWTH_BYTES: f64 = 256.0 * 1024.0;

/// Whether RSS grew over the samples, with the fitted slope.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    pub growing: bool,
    pub growth: Growth,
    pub seconds: f64,
}

impl Verdict {
    pub fn of(samples: &[MemorySample]) -> Verdict {
        let points: Vec<(f64, u64)> = samples.iter().map(|s| (s.t, s.vm_rss)).collect();
        let growth = fit(&points);
        let seconds = samples.last().map_or(0.0, |s| s.t) - samples.first().map_or(0.0, |s| s.t);
        let growing = growth.steadiness >= MIN_STEADINESS
            && growth.bytes_per_s > 0.0
            && growth.bytes_per_s * seconds >= MIN_GROWTH_BYTES;
        Verdict {
            growing,
            growth,
            seconds,
        }
    }
}

/// Reads the target's memory every `interval` until `duration`, Ctrl-C or its exit.
pub fn run(pid: u32, interval: Duration, duration: Option<Duration>) -> Result<()> {
    let target = Target::existing(pid, Access::ReadMemory)?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let interrupted = interrupt_flag()?;
    loop {
        let t = started.elapsed().as_secs_f64();
        // Checked before and after the read: a sample of whatever took the pid over is none.
        let sample = target
            .still_running()
            .then(|| MemorySample::read(pid, t).ok())
            .flatten()
            .filter(|_| target.still_running());
        let Some(sample) = sample else {
            println!("pid {pid} is gone");
            break;
        };
        let size = |bytes: u64| human_bytes(bytes as f64);
        println!(
            "[{t:7.1}s] RSS {}  HWM {}  PSS {}  anon {}  heap {}  mapped-anon {}",
            size(sample.vm_rss),
            size(sample.vm_hwm),
            size(sample.pss),
            size(sample.rss_anon),
            size(sample.heap),
            size(sample.anonymous)
        );
        samples.push(sample);
        let done = duration.is_some_and(|d| started.elapsed() + interval > d);
        if done || interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        thread::sleep(interval);
    }
    let verdict = Verdict::of(&samples);
    println!(
        "pid {} ({}): RSS {} at {}/s (R² {:.2}) over {:.1} s",
        pid,
        target.command,
        if verdict.growing { "growing" } else { "stable" },
        signed_bytes(verdict.growth.bytes_per_s),
        verdict.growth.steadiness,
        verdict.seconds
    );
    Ok(())
}

/// Set by Ctrl-C or SIGTERM, so that the verdict is still printed.
fn interrupt_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone()).context("install a signal handler")?;
    }
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: impl Fn(f64) -> u64) -> Vec<MemorySample> {
        (0..10)
            .map(|i| {
                let t = i as f64;
                MemorySample {
                    t,
                    vm_rss: rss(t),
                    ..MemorySample::default()
                }
            })
            .collect()
    }

    #[test]
    fn a_steady_rise_is_growing_and_a_flat_line_is_stable() {
        assert!(Verdict::of(&samples(|t| 10_000_000 + (t * 1_000_000.0) as u64)).growing);
        assert!(!Verdict::of(&samples(|_| 10_000_000)).growing);
    }

    #[test]
    fn a_few_pages_of_noise_are_stable() {
        let noisy = samples(|t| {
            10_000_000
                + if (t as u64).is_multiple_of(2) {
                    8192
                } else {
                    0
                }
        });
        assert!(!Verdict::of(&noisy).growing);
    }
}
