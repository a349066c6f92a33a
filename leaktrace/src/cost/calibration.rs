//! What one hit of each kind of probe costs the thread that hits it, timed once per run on
//! this machine.
//!
//! leaktrace puts probes that return at once (the calibration programs) on functions of its
//! own, through the same kind of attachment as the target's, and times calls to them against
//! calls to an unprobed twin: the difference is the trap. Four functions, written out in
//! assembly so that their first instruction is known:
//!
//! - `plain` (`push %rbp; pop %rbp; ret`), never probed: the call itself;
//! - `emulated`, the same, probed at its `push`, which the kernel emulates;
//! - `returning`, the same, probed at its `push` and at its return;
//! - `stepped` (`mov %rdi,%rax; push %rbp; pop %rbp; ret`), probed at its `mov`, which the
//!   kernel single-steps.
//!
//! Each is timed in a few short rounds and its fastest round kept: on a busy machine a round
//! may be preempted, never sped up. The rounds take ~7 ms of CPU time, and stop early past
//! [`DEADLINE`] of wall time on a machine too busy to give it that.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    kernel::{HitKind, ProbeSet},
    target::maps::ProcessMaps,
};

std::arch::global_asm!(
    ".pushsection .text.leaktrace_calibration,\"ax\",@progbits",
    ".p2align 4",
    ".globl leaktrace_calibration_plain",
    ".hidden leaktrace_calibration_plain",
    ".type leaktrace_calibration_plain,@function",
    "leaktrace_calibration_plain:",
    "push rbp",
    "pop rbp",
    "ret",
    ".size leaktrace_calibration_plain, . - leaktrace_calibration_plain",
    ".p2align 4",
    ".globl leaktrace_calibration_emulated",
    ".hidden leaktrace_calibration_emulated",
    ".type leaktrace_calibration_emulated,@function",
    "leaktrace_calibration_emulated:",
    "push rbp",
    "pop rbp",
    "ret",
    ".size leaktrace_calibration_emulated, . - leaktrace_calibration_emulated",
    ".p2align 4",
    ".globl leaktrace_calibration_returning",
    ".hidden leaktrace_calibration_returning",
    ".type leaktrace_calibration_returning,@function",
    "leaktrace_calibration_returning:",
    "push rbp",
    "pop rbp",
    "ret",
    ".size leaktrace_calibration_returning, . - leaktrace_calibration_returning",
    ".p2align 4",
    ".globl leaktrace_calibration_stepped",
    ".hidden leaktrace_calibration_stepped",
    ".type leaktrace_calibration_stepped,@function",
    "leaktrace_calibration_stepped:",
    "mov rax, rdi",
    "push rbp",
    "pop rbp",
    "ret",
    ".size leaktrace_calibration_stepped, . - leaktrace_calibration_stepped",
    ".popsection",
);

unsafe extern "C" {
    safe fn leaktrace_calibration_plain(value: u64) -> u64;
    safe fn leaktrace_calibration_emulated(value: u64) -> u64;
    safe fn leaktrace_calibration_returning(value: u64) -> u64;
    safe fn leaktrace_calibration_stepped(value: u64) -> u64;
}

type Timed = extern "C" fn(u64) -> u64;

/// Rounds each function is timed in; the fastest counts.
const ROUNDS: usize = 5;
/// Rounds always timed, whatever the deadline.
const MIN_ROUNDS: usize = 2;
/// No round starts after this much wall time.
const DEADLINE: Duration = Duration::from_millis(30);
/// Calls per round to a function whose hit the kernel emulates (~0.7 µs each under KVM).
const FAST_CALLS: u32 = 400;
/// Calls per round to the single-stepped function (~9 µs each under KVM).
const STEPPED_CALLS: u32 = 60;

/// What a hit costs the thread that takes it, by kind, in ns: the kernel's traps and the
/// dispatch of a program that does nothing. What the programs themselves run is not in it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Calibration {
    /// An entry probe on an instruction the kernel emulates.
    pub emulated_ns: f64,
    /// An entry probe on an instruction the kernel single-steps.
    pub single_stepped_ns: f64,
    /// A return probe, on top of its entry probe.
    pub return_ns: f64,
    /// How long the calibration took, probes attached included.
    pub took_ms: f64,
}

impl Calibration {
    /// Attaches the calibration probes through `probes` and times them. The probes stay on
    /// leaktrace's own functions, never called again, until the rest are detached.
    pub fn measure(probes: &mut ProbeSet) -> Result<Calibration> {
        let started = Instant::now();
        let pid = std::process::id();
        let maps = ProcessMaps::read(pid).context("read leaktrace's own maps")?;
        let place = |function: Timed| -> Result<(std::path::PathBuf, u64)> {
            let address = function as usize as u64;
            let mapping = maps
                .find(address)
                .context("leaktrace's own code is not in its maps")?;
            Ok((
                mapping.map_file(pid),
                address - mapping.start + mapping.offset,
            ))
        };
        let (binary, emulated) = place(leaktrace_calibration_emulated)?;
        let (_, returning) = place(leaktrace_calibration_returning)?;
        let (_, stepped) = place(leaktrace_calibration_stepped)?;
        probes
            .attach_calibration(&binary, &[emulated, returning, stepped], &[returning])
            .context("attach the calibration probes")?;
        let mut fastest = [f64::INFINITY; 4];
        let functions: [(Timed, u32); 4] = [
            (leaktrace_calibration_plain, FAST_CALLS),
            (leaktrace_calibration_emulated, FAST_CALLS),
            (leaktrace_calibration_returning, FAST_CALLS),
            (leaktrace_calibration_stepped, STEPPED_CALLS),
        ];
        // A first hit sets up what later ones reuse (the kernel's page for stepped
        // instructions, the return trampoline).
        for (function, _) in functions {
            black_box(function(0));
        }
        let timing = Instant::now();
        for round in 0..ROUNDS {
            if round >= MIN_ROUNDS && timing.elapsed() > DEADLINE {
                break;
            }
            for (slot, (function, calls)) in fastest.iter_mut().zip(functions) {
                *slot = slot.min(time_calls(function, calls));
            }
        }
        let [plain, emulated, returning, stepped] = fastest;
        Ok(Calibration {
            emulated_ns: (emulated - plain).max(0.0),
            single_stepped_ns: (stepped - plain).max(0.0),
            return_ns: (returning - emulated).max(0.0),
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The traps of one hit of a point of `kind`.
    pub fn per_hit_ns(&self, kind: HitKind) -> f64 {
        let entry = |emulated: bool| {
            if emulated {
                self.emulated_ns
            } else {
                self.single_stepped_ns
            }
        };
        match kind {
            HitKind::Emulated => self.emulated_ns,
            HitKind::SingleStepped => self.single_stepped_ns,
            HitKind::Return {
                lone,
                entry_emulated,
            } => self.return_ns + if lone { entry(entry_emulated) } else { 0.0 },
        }
    }
}

/// ns per call of `calls` calls to `function`.
fn time_calls(function: Timed, calls: u32) -> f64 {
    let started = Instant::now();
    for call in 0..calls {
        black_box(function(black_box(u64::from(call))));
    }
    duration_ns(started.elapsed()) / f64::from(calls)
}

fn duration_ns(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::placement::{FunctionCode, ProbeNeeds, entry_point};

    /// The first instruction of each timed function is of the kind it stands for, as the
    /// placement of the target's probes reads instructions.
    #[test]
    fn each_function_starts_with_the_instruction_it_times() {
        let needs = ProbeNeeds {
            returns: true,
            ignores_null_first_argument: false,
            arguments: 0,
        };
        let first = |function: Timed| {
            let address = function as usize;
            // SAFETY: each function is at least 4 bytes of code, mapped and readable.
            let bytes = unsafe { std::slice::from_raw_parts(address as *const u8, 4) };
            let point = entry_point(
                FunctionCode {
                    address: address as u64,
                    bytes,
                },
                needs,
            );
            point.offset == 0 && point.emulated
        };
        assert!(first(leaktrace_calibration_plain));
        assert!(first(leaktrace_calibration_emulated));
        assert!(first(leaktrace_calibration_returning));
        assert!(
            !first(leaktrace_calibration_stepped),
            "mov is single-stepped"
        );
        assert_eq!(leaktrace_calibration_stepped(7), 7);
    }

    #[test]
    fn a_lone_return_probe_pays_for_its_entry_trap() {
        let calibration = Calibration {
            emulated_ns: 600.0,
            single_stepped_ns: 9800.0,
            return_ns: 270.0,
            took_ms: 20.0,
        };
        let hit = |kind| calibration.per_hit_ns(kind);
        assert_eq!(hit(HitKind::Emulated), 600.0);
        assert_eq!(hit(HitKind::SingleStepped), 9800.0);
        let shared = HitKind::Return {
            lone: false,
            entry_emulated: false,
        };
        assert_eq!(
            hit(shared),
            270.0,
            "its entry program counts the entry's trap"
        );
        let lone = |entry_emulated| HitKind::Return {
            lone: true,
            entry_emulated,
        };
        assert_eq!(hit(lone(true)), 870.0);
        assert_eq!(hit(lone(false)), 10070.0);
    }
}
