//! Hits per probe point, counted by the probes themselves.
//!
//! Each (module, offset, program) attached gets a number, carried in its probes' cookies
//! ([`leaktrace_common::cookie`]); each hit adds one to that slot of the per-CPU `HITS` array.
//! A point attached in several processes (a child followed with `-f`, a program exec'd with
//! the same libc) keeps its number: its hits are the sum over all of them. Past
//! [`HIT_POINTS`] points the last slot is shared, and its count is given to the first point
//! numbered there.

use std::{collections::HashMap, fmt, path::PathBuf};

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use leaktrace_common::cookie::{self, HIT_POINTS};

use crate::plan::ProbePoint;

/// What a hit costs the target, by the traps it takes: the kernel's part of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitKind {
    /// An entry probe on an instruction the kernel emulates: one trap.
    Emulated,
    /// An entry probe on an instruction the kernel single-steps: a second trap.
    SingleStepped,
    /// A return probe: the trap of the return trampoline, on top of its entry's. A return probe
    /// alone (`lone`: no entry program counts its entry) pays for the entry's trap as well, of
    /// the kind `entry_emulated` says.
    Return { lone: bool, entry_emulated: bool },
}

impl fmt::Display for HitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HitKind::Emulated => "emulated",
            HitKind::SingleStepped => "single_stepped",
            HitKind::Return { .. } => "return",
        })
    }
}

/// One numbered point: a program on an offset of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HitPoint {
    /// The probed function, as found (with any prefix).
    pub symbol: String,
    /// The module as the target sees it.
    pub module: PathBuf,
    /// File offset of the probe.
    pub offset: u64,
    pub program: &'static str,
    pub kind: HitKind,
}

/// The `HITS` array and the points numbered into it.
pub struct HitCounter {
    hits: PerCpuArray<MapData, u64>,
    points: Vec<HitPoint>,
    /// By module, offset, program, and whether it is a session's return run.
    numbers: HashMap<(PathBuf, u64, &'static str, bool), u32>,
}

impl HitCounter {
    pub fn new(hits: PerCpuArray<MapData, u64>) -> HitCounter {
        HitCounter {
            hits,
            points: Vec::new(),
            numbers: HashMap::new(),
        }
    }

    /// The cookie of `program` on `point`: its argument homes and its number, numbering it if
    /// it is new.
    pub fn cookie(&mut self, point: &ProbePoint, program: &'static str) -> u64 {
        let number = self.number(point, program, false);
        cookie::with_point(point.entry.arguments.cookie(), number)
    }

    /// The cookie of a uprobe session's `program` on `point`: the entry run's number, whose
    /// next number is the return run's (the program counts its return there). None where the
    /// two numbers are not consecutive (past [`HIT_POINTS`]): the point is then not to be
    /// probed by a session.
    pub fn session_cookie(&mut self, point: &ProbePoint, program: &'static str) -> Option<u64> {
        let entry = self.number(point, program, false);
        let exit = self.number(point, program, true);
        (exit == entry + 1 && exit < HIT_POINTS)
            .then(|| cookie::with_point(point.entry.arguments.cookie(), entry))
    }

    fn number(&mut self, point: &ProbePoint, program: &'static str, returning: bool) -> u32 {
        let key = (point.module.clone(), point.offset, program, returning);
        let next = self.points.len() as u32;
        let number = *self.numbers.entry(key).or_insert(next);
        if number == next {
            self.points.push(hit_point(point, program, returning));
        }
        number
    }

    /// Every numbered point, in number order.
    pub fn points(&self) -> &[HitPoint] {
        &self.points
    }

    /// The hits of each point so far (of [`HitCounter::points`], in order), summed over CPUs.
    pub fn read(&self) -> Result<Vec<u64>> {
        (0..self.points.len() as u32)
            .map(|number| {
                if number >= HIT_POINTS {
                    return Ok(0);
                }
                let per_cpu = self.hits.get(&number, 0)?;
                Ok(per_cpu.iter().sum())
            })
            .collect()
    }
}

/// The point `program` makes of `point`; `returning` for a session's return run.
fn hit_point(point: &ProbePoint, program: &'static str, returning: bool) -> HitPoint {
    let emulated = point.entry.emulated;
    let kind = if returning || point.function.exit == Some(program) {
        HitKind::Return {
            lone: point.function.entry.is_none(),
            entry_emulated: emulated,
        }
    } else if emulated {
        HitKind::Emulated
    } else {
        HitKind::SingleStepped
    };
    HitPoint {
        symbol: point.symbol.clone(),
        module: point.module.clone(),
        offset: point.offset,
        program,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use leaktrace_common::programs;

    use super::*;
    use crate::plan::{EntryPoint, FUNCTIONS};

    fn point(symbol: &str, emulated: bool) -> ProbePoint {
        let function = FUNCTIONS.iter().find(|f| f.symbol == symbol).unwrap();
        ProbePoint {
            function,
            symbol: symbol.to_owned(),
            module: PathBuf::from("/lib/libc.so.6"),
            host_path: PathBuf::from("/lib/libc.so.6"),
            offset: 0x1000,
            entry: EntryPoint::at_entry(String::new(), emulated),
        }
    }

    #[test]
    fn each_program_of_a_point_is_of_its_kind() {
        let kind =
            |symbol, emulated, program| hit_point(&point(symbol, emulated), program, false).kind;
        assert_eq!(
            kind("malloc", true, programs::ALLOC_ENTER),
            HitKind::Emulated
        );
        assert_eq!(
            kind("malloc", true, programs::ALLOC_EXIT),
            HitKind::Return {
                lone: false,
                entry_emulated: true
            }
        );
        assert_eq!(
            kind("free", false, programs::FREE_ENTER),
            HitKind::SingleStepped
        );
        // fork has a return probe alone: its hits take the entry's trap too.
        assert_eq!(
            kind("fork", false, programs::FORK_EXIT),
            HitKind::Return {
                lone: true,
                entry_emulated: false
            }
        );
    }

    #[test]
    fn a_sessions_entry_run_is_its_entry_and_its_return_run_a_return() {
        let malloc = point("malloc", true);
        assert_eq!(
            hit_point(&malloc, programs::ALLOC_SESSION, false).kind,
            HitKind::Emulated
        );
        assert_eq!(
            hit_point(&malloc, programs::ALLOC_SESSION, true).kind,
            HitKind::Return {
                lone: false,
                entry_emulated: true
            }
        );
    }
}
