//! Plan: where to probe.
//!
//! In: the target's pid and its `/proc/PID/maps` ([`crate::target`]), and the user's
//! [`AllocatorChoice`]. Out: a [`ProbePlan`], each allocator function to probe with the module
//! the target's calls bind to and the file offset of its probe point, for [`crate::kernel`] to
//! attach.
//!
//! - [`functions`]: the allocator family and the programs that read each function;
//! - [`elf`]: what one mapped file defines (symbols, PLT stubs, needed libraries);
//! - [`search`]: the dynamic linker's lookup order, which decides where each call binds;
//! - [`placement`]: where in a function its probe sits, from its first instructions.

mod elf;
mod functions;
pub mod placement;
mod search;

use std::{
    fmt::Write,
    path::{Path, PathBuf},
};

pub use functions::{AllocatorFunction, FUNCTIONS, Family};
pub use placement::EntryPoint;
pub use search::AllocatorSearch;

/// The user's overrides of the binding rule.
#[derive(Clone, Debug, Default)]
pub struct AllocatorChoice {
    /// Probe the C family in this module (a path or a file name as mapped).
    pub library: Option<PathBuf>,
    /// The C family's names carry this prefix (`je_` for a prefixed jemalloc).
    pub symbol_prefix: Option<String>,
    /// Probe mmap, munmap and mremap too (`--mmap`).
    pub mappings: bool,
    /// Probe every function at its first instruction (`--entry-probes`): slower, for
    /// comparison with the chosen points.
    pub entry_probes: bool,
    /// Leave unprobed the C++ operators that only pass their work to a probed malloc or free.
    /// Their callers are then found by CFI unwinding: a frame-pointer walk from inside
    /// libstdc++, which keeps no frame pointers, misses them.
    pub see_through_operators: bool,
}

/// One function to probe, where the target's calls go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub function: &'static AllocatorFunction,
    /// The symbol as found (with any prefix).
    pub symbol: String,
    /// The module as the target sees it.
    pub module: PathBuf,
    /// The same file as leaktrace can open it ([`crate::target::maps::module_file`]).
    pub host_path: PathBuf,
    /// File offset of the probe: the function's first instruction, or a cheaper one after it.
    pub offset: u64,
    /// Where in the function the probe sits, and why (`--verbose`).
    pub entry: EntryPoint,
}

/// Everything to probe in one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbePlan {
    pub points: Vec<ProbePoint>,
    /// C++ operators left unprobed, each with the probed function it passes its work to.
    pub delegated: Vec<Delegated>,
    /// Probed modules without a symbol table (stripped): their functions were found in the
    /// dynamic symbols, which is all a stripped library keeps.
    pub stripped: Vec<PathBuf>,
}

/// A function not probed because its every call is seen through another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegated {
    pub symbol: String,
    pub module: PathBuf,
    pub through: String,
}

impl ProbePlan {
    /// The module malloc binds to: the one whose frames are cut from the top of stacks.
    pub fn malloc_module(&self) -> Option<&Path> {
        self.points
            .iter()
            .find(|p| p.function.symbol == "malloc")
            .map(|p| p.module.as_path())
    }

    /// Whether free binds to glibc, which keeps each block's size in the word before it.
    pub fn free_is_glibc(&self) -> bool {
        self.points.iter().any(|p| {
            p.function.symbol == "free"
                && p.module
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("libc.so"))
        })
    }

    /// The modules whose frames are the allocator's, not its caller's: the probed ones, and
    /// those of operators seen through them.
    pub fn allocator_modules(&self) -> Vec<&Path> {
        let mut modules = self.modules();
        for delegated in &self.delegated {
            if !modules.contains(&delegated.module.as_path()) {
                modules.push(&delegated.module);
            }
        }
        modules
    }

    /// Where each function's probe sits and why, and which functions are not probed: for
    /// `--verbose`.
    pub fn decisions(&self) -> Vec<String> {
        let probed = self.points.iter().map(|p| {
            let how = p.entry.to_string();
            (&p.symbol, &p.module, how)
        });
        let delegated = self.delegated.iter().map(|d| {
            let how = format!("not probed, its calls are seen through {}", d.through);
            (&d.symbol, &d.module, how)
        });
        probed
            .chain(delegated)
            .map(|(symbol, module, how)| format!("{symbol} in {}: {how}", module.display()))
            .collect()
    }

    /// Every probed module, each once, in plan order.
    pub fn modules(&self) -> Vec<&Path> {
        let mut modules: Vec<&Path> = Vec::new();
        for point in &self.points {
            if !modules.contains(&point.module.as_path()) {
                modules.push(&point.module);
            }
        }
        modules
    }

    /// "malloc, calloc, … in /usr/lib/libjemalloc.so.2; _Znwm, … in …": for the report header.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for module in self.modules() {
            let symbols: Vec<&str> = self
                .points
                .iter()
                .filter(|p| p.module == module)
                .map(|p| p.symbol.as_str())
                .collect();
            if !out.is_empty() {
                out.push_str("; ");
            }
            let _ = write!(out, "{} in {}", symbols.join(", "), module.display());
            if self.stripped.iter().any(|m| m == module) {
                out.push_str(" (stripped: found in .dynsym)");
            }
        }
        out
    }
}
