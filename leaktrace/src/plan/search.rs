//! Where the target's allocator functions live: which module each call binds to, and the file
//! offset to probe there.
//!
//! The dynamic linker binds a call to the first definition in its global scope: the executable,
//! then LD_PRELOAD libraries, then DT_NEEDED libraries breadth first. So a program linked with
//! jemalloc calls jemalloc's malloc although libc's is mapped too, and a static binary calls
//! its own. leaktrace follows the same rule, function by function.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    path::{Path, PathBuf},
};

use super::{
    AllocatorChoice, Delegated, ProbePlan, ProbePoint,
    elf::ModuleInfo,
    functions::{FUNCTIONS, Family},
    placement::EntryPoint,
};
use crate::target::maps::{ProcessMaps, module_file};

/// Works out the [`ProbePlan`] of a target, caching what it reads of each file so that launch
/// mode can ask after every syscall of the dynamic loader cheaply.
#[derive(Default)]
pub struct AllocatorSearch {
    choice: AllocatorChoice,
    /// Launch mode: no plan until every needed library is mapped.
    wait_for_libraries: bool,
    modules: HashMap<PathBuf, Option<ModuleInfo>>,
}

impl AllocatorSearch {
    /// For a running process: libraries that cannot be found are passed over.
    pub fn new(choice: AllocatorChoice) -> Self {
        AllocatorSearch {
            choice,
            wait_for_libraries: false,
            modules: HashMap::new(),
        }
    }

    /// For a process the dynamic loader is still setting up: [`Self::plan`] answers `None`
    /// until every needed library is mapped.
    pub fn while_loading(choice: AllocatorChoice) -> Self {
        AllocatorSearch {
            wait_for_libraries: true,
            ..Self::new(choice)
        }
    }

    /// The plan, or `None` while the loader is still mapping needed libraries. An empty plan
    /// means no module defines malloc.
    pub fn plan(&mut self, pid: u32, maps: &ProcessMaps) -> Option<ProbePlan> {
        let prefix = self.choice.symbol_prefix.clone().unwrap_or_default();
        let mapped: Vec<PathBuf> = {
            let mut seen = HashSet::new();
            maps.mappings()
                .iter()
                .filter_map(|m| m.path.clone())
                .filter(|p| seen.insert(p.clone()))
                .collect()
        };
        for path in &mapped {
            self.modules
                .entry(path.clone())
                .or_insert_with(|| ModuleInfo::read(&module_file(pid, maps, path), &prefix));
        }
        let order = self.scope_order(pid, &mapped)?;

        let mut plan = ProbePlan::default();
        for function in &FUNCTIONS {
            if function.family == Family::Mapping && !self.choice.mappings {
                continue;
            }
            let (symbol, candidates) = match function.family {
                Family::C => (
                    format!("{prefix}{}", function.symbol),
                    self.c_candidates(&order),
                ),
                Family::Cxx | Family::Process | Family::Mapping => {
                    (function.symbol.to_owned(), order.clone())
                }
            };
            let found = candidates.iter().find_map(|path| {
                let info = self.modules.get(path)?.as_ref()?;
                Some((path, info.defined.get(&symbol)?))
            });
            let Some((module, definition)) = found else {
                continue;
            };
            let entry = if self.choice.entry_probes {
                // A point moved past the entry was moved off a single-stepped instruction.
                let emulated = definition.entry.offset == 0 && definition.entry.emulated;
                EntryPoint::at_entry("at the entry, as --entry-probes asks".into(), emulated)
            } else {
                definition.entry.clone()
            };
            let offset = definition.offset + entry.offset;
            // Aliases (memalign and aligned_alloc, free and cfree) share an address: one probe.
            if plan
                .points
                .iter()
                .any(|p| &p.module == module && p.offset == offset)
            {
                continue;
            }
            plan.points.push(ProbePoint {
                function,
                symbol,
                module: module.clone(),
                host_path: module_file(pid, maps, module),
                offset,
                entry,
            });
        }
        if plan.malloc_module().is_none() {
            plan.points.clear();
        }
        plan.stripped = plan
            .modules()
            .into_iter()
            .filter(|m| {
                self.modules
                    .get(*m)
                    .and_then(Option::as_ref)
                    .is_some_and(|info| info.stripped)
            })
            .map(Path::to_path_buf)
            .collect();
        if self.choice.see_through_operators
            && self.choice.library.is_none()
            && self.choice.symbol_prefix.is_none()
        {
            self.leave_delegating_operators(&mut plan);
        }
        Some(plan)
    }

    /// Takes out of the plan the C++ operators whose every call is seen by another probe:
    /// those that call or jump to a probed function of their kind (libstdc++'s new calls
    /// malloc, its delete jumps to free). Only under the default binding: the operators' calls
    /// bind where the program's do, which is where the probes are.
    fn leave_delegating_operators(&self, plan: &mut ProbePlan) {
        let calls = |point: &ProbePoint| -> Vec<String> {
            self.modules
                .get(&point.module)
                .and_then(Option::as_ref)
                .and_then(|info| info.defined.get(&point.symbol))
                .map(|definition| definition.calls.clone())
                .unwrap_or_default()
        };
        // Delegation chains (delete[] → delete → free) resolve from their end.
        loop {
            let kept = |symbol: &str, allocates: bool| {
                plan.points
                    .iter()
                    .any(|p| p.symbol == symbol && p.function.allocates() == allocates)
            };
            let delegating = plan.points.iter().enumerate().find_map(|(index, point)| {
                let through = calls(point).into_iter().find(|callee| {
                    callee != &point.symbol && kept(callee, point.function.allocates())
                })?;
                (point.function.family == Family::Cxx
                    && !plan.points.iter().any(|p| calls(p).contains(&point.symbol)))
                .then_some((index, through))
            });
            let Some((index, through)) = delegating else {
                break;
            };
            let point = plan.points.remove(index);
            plan.delegated.push(Delegated {
                symbol: point.symbol,
                module: point.module,
                through,
            });
        }
    }

    /// Modules in the dynamic linker's lookup order; `None` while a needed library is missing.
    fn scope_order(&self, pid: u32, mapped: &[PathBuf]) -> Option<Vec<PathBuf>> {
        let executable = fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                let text = p.to_string_lossy();
                PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text))
            })
            .filter(|p| mapped.contains(p))
            .or_else(|| mapped.first().cloned())?;
        let mut order = vec![executable.clone()];
        let preload = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let mut queue: VecDeque<String> = preload_entries(&preload).into();
        let preloads = queue.len();
        queue.extend(self.needed(&executable));
        let mut taken = 0;
        while let Some(name) = queue.pop_front() {
            taken += 1;
            let found = mapped.iter().find(|path| {
                let by_path = name.contains('/') && path.as_path() == Path::new(&name);
                by_path
                    || self
                        .modules
                        .get(*path)
                        .and_then(Option::as_ref)
                        .is_some_and(|info| info.answers_to(path, &name))
            });
            match found {
                Some(path) if !order.contains(path) => {
                    order.push(path.clone());
                    queue.extend(self.needed(path));
                }
                Some(_) => {}
                // A preloaded library that is missing is skipped by the loader too.
                None if taken <= preloads || !self.wait_for_libraries => {}
                None => return None,
            }
        }
        // Libraries loaded by dlopen come after the initial scope.
        for path in mapped {
            if !order.contains(path) {
                order.push(path.clone());
            }
        }
        Some(order)
    }

    fn needed(&self, path: &Path) -> Vec<String> {
        self.modules
            .get(path)
            .and_then(Option::as_ref)
            .map(|info| info.needed.clone())
            .unwrap_or_default()
    }

    /// Where to look for the C family: `--allocator`'s module alone, or the whole scope.
    fn c_candidates(&self, order: &[PathBuf]) -> Vec<PathBuf> {
        match &self.choice.library {
            None => order.to_vec(),
            Some(wanted) => order
                .iter()
                .filter(|path| {
                    path.as_path() == wanted.as_path()
                        || (wanted.components().count() == 1
                            && path.file_name() == Some(wanted.as_os_str()))
                })
                .cloned()
                .collect(),
        }
    }
}

/// The libraries named in LD_PRELOAD (separated by spaces or colons) of an environ block.
fn preload_entries(environ: &[u8]) -> Vec<String> {
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"LD_PRELOAD="))
        .map(|value| {
            String::from_utf8_lossy(value)
                .split([' ', ':'])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_entries_split_on_spaces_and_colons() {
        let environ = b"HOME=/root\0LD_PRELOAD=/a/x.so:y.so z.so\0PATH=/bin\0";
        assert_eq!(preload_entries(environ), ["/a/x.so", "y.so", "z.so"]);
        assert!(preload_entries(b"HOME=/\0").is_empty());
    }

    #[test]
    fn our_own_malloc_binds_to_libc_and_each_alias_is_probed_once() {
        let pid = std::process::id();
        let maps = ProcessMaps::read(pid).unwrap();
        let plan = AllocatorSearch::default()
            .plan(pid, &maps)
            .expect("all libraries mapped");
        let libc = plan.malloc_module().expect("malloc found");
        let name = libc.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("libc"), "malloc in {}", libc.display());
        let offsets: Vec<_> = plan.points.iter().map(|p| (&p.module, p.offset)).collect();
        let unique: HashSet<_> = offsets.iter().collect();
        assert_eq!(unique.len(), offsets.len(), "{plan:#?}");
        for symbol in ["calloc", "realloc", "free", "posix_memalign"] {
            assert!(
                plan.points.iter().any(|p| p.symbol == symbol),
                "{symbol} missing"
            );
        }
    }

    #[test]
    fn allocator_choice_limits_the_c_family_to_one_module() {
        let pid = std::process::id();
        let maps = ProcessMaps::read(pid).unwrap();
        let choice = AllocatorChoice {
            library: Some("no-such-lib.so".into()),
            ..AllocatorChoice::default()
        };
        let plan = AllocatorSearch::new(choice).plan(pid, &maps).unwrap();
        assert!(
            plan.points.is_empty(),
            "no malloc in a library that is not mapped"
        );
    }
}
