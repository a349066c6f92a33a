//! Where the target's allocator functions live: which module each call binds to, and the file
//! offset to probe there.
//!
//! The dynamic linker binds a call to the first definition in its global scope: the executable,
//! then LD_PRELOAD libraries, then DT_NEEDED libraries breadth first. So a program linked with
//! jemalloc calls jemalloc's malloc although libc's is mapped too, and a static binary calls
//! its own. leaktrace follows the same rule, function by function.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt::Write,
    fs::{self, File},
    path::{Path, PathBuf},
};

use leaktrace_common::programs;
use object::{
    Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable, RelocationTarget,
    SymbolKind,
};

use crate::{
    placement::{self, EntryPoint, FunctionCode, ProbeNeeds},
    proc_maps::ProcessMaps,
};

/// Which functions of a family the user asked for or the probes know how to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// The C allocator: `--allocator` and `--symbol-prefix` apply to these.
    C,
    /// C++ operator new and delete.
    Cxx,
    /// Process lifecycle: fork, whose return tells of a new child.
    Process,
    /// Anonymous memory mappings, probed with `--mmap` only.
    Mapping,
}

/// An allocator function and the eBPF programs that read it.
#[derive(Debug, PartialEq, Eq)]
pub struct AllocatorFunction {
    pub symbol: &'static str,
    pub family: Family,
    pub entry: Option<&'static str>,
    pub exit: Option<&'static str>,
}

const fn c(symbol: &'static str, entry: &'static str, exit: &'static str) -> AllocatorFunction {
    AllocatorFunction {
        symbol,
        family: Family::C,
        entry: Some(entry),
        exit: Some(exit),
    }
}

const fn new(symbol: &'static str) -> AllocatorFunction {
    AllocatorFunction {
        symbol,
        family: Family::Cxx,
        entry: Some(programs::ALLOC_ENTER),
        exit: Some(programs::ALLOC_EXIT),
    }
}

const fn delete(symbol: &'static str) -> AllocatorFunction {
    AllocatorFunction {
        symbol,
        family: Family::Cxx,
        entry: Some(programs::DELETE_ENTER),
        exit: Some(programs::DELETE_EXIT),
    }
}

/// Every function leaktrace probes. C++ names are mangled for x86-64 (size_t is `m`).
pub const FUNCTIONS: [AllocatorFunction; 34] = [
    c("malloc", programs::ALLOC_ENTER, programs::ALLOC_EXIT),
    c("calloc", programs::CALLOC_ENTER, programs::ALLOC_EXIT),
    c("realloc", programs::REALLOC_ENTER, programs::REALLOC_EXIT),
    c(
        "reallocarray",
        programs::REALLOCARRAY_ENTER,
        programs::REALLOC_EXIT,
    ),
    c(
        "posix_memalign",
        programs::POSIX_MEMALIGN_ENTER,
        programs::POSIX_MEMALIGN_EXIT,
    ),
    c(
        "aligned_alloc",
        programs::MEMALIGN_ENTER,
        programs::ALLOC_EXIT,
    ),
    c("memalign", programs::MEMALIGN_ENTER, programs::ALLOC_EXIT),
    c("valloc", programs::ALLOC_ENTER, programs::ALLOC_EXIT),
    c("pvalloc", programs::PVALLOC_ENTER, programs::ALLOC_EXIT),
    AllocatorFunction {
        symbol: "free",
        family: Family::C,
        entry: Some(programs::FREE_ENTER),
        exit: None,
    },
    new("_Znwm"),
    new("_Znam"),
    new("_ZnwmRKSt9nothrow_t"),
    new("_ZnamRKSt9nothrow_t"),
    new("_ZnwmSt11align_val_t"),
    new("_ZnamSt11align_val_t"),
    new("_ZnwmSt11align_val_tRKSt9nothrow_t"),
    new("_ZnamSt11align_val_tRKSt9nothrow_t"),
    delete("_ZdlPv"),
    delete("_ZdaPv"),
    delete("_ZdlPvm"),
    delete("_ZdaPvm"),
    delete("_ZdlPvSt11align_val_t"),
    delete("_ZdaPvSt11align_val_t"),
    delete("_ZdlPvmSt11align_val_t"),
    delete("_ZdaPvmSt11align_val_t"),
    delete("_ZdlPvRKSt9nothrow_t"),
    delete("_ZdaPvRKSt9nothrow_t"),
    delete("_ZdlPvSt11align_val_tRKSt9nothrow_t"),
    delete("_ZdaPvSt11align_val_tRKSt9nothrow_t"),
    AllocatorFunction {
        symbol: "fork",
        family: Family::Process,
        entry: None,
        exit: Some(programs::FORK_EXIT),
    },
    AllocatorFunction {
        symbol: "mmap",
        family: Family::Mapping,
        entry: Some(programs::MMAP_ENTER),
        exit: Some(programs::MMAP_EXIT),
    },
    AllocatorFunction {
        symbol: "munmap",
        family: Family::Mapping,
        entry: Some(programs::MUNMAP_ENTER),
        exit: None,
    },
    AllocatorFunction {
        symbol: "mremap",
        family: Family::Mapping,
        entry: Some(programs::MREMAP_ENTER),
        exit: Some(programs::MREMAP_EXIT),
    },
];

impl AllocatorFunction {
    /// What its probe point must respect ([`placement`]).
    fn needs(&self) -> ProbeNeeds {
        ProbeNeeds {
            returns: self.exit.is_some(),
            ignores_null_first_argument: matches!(
                self.entry,
                Some(programs::FREE_ENTER | programs::DELETE_ENTER)
            ),
        }
    }

    /// Whether it hands out memory (true) or takes it back (false).
    fn allocates(&self) -> bool {
        !matches!(
            self.entry,
            Some(programs::FREE_ENTER | programs::DELETE_ENTER)
        )
    }
}

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
    /// The same file as leaktrace can open it ([`module_file`]).
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

/// What leaktrace needs to know of one mapped file.
struct ModuleInfo {
    soname: Option<String>,
    /// No symbol table, only dynamic symbols.
    stripped: bool,
    needed: Vec<String>,
    /// Our functions it defines (with prefix where asked), by name.
    defined: HashMap<String, Definition>,
}

/// One of our functions in a module.
struct Definition {
    /// File offset of its first instruction.
    offset: u64,
    /// Where its entry probe sits.
    entry: EntryPoint,
    /// The functions it calls or jumps to directly (through the PLT or not).
    calls: Vec<String>,
}

/// The largest function body decoded: far more than any allocator entry point.
const MAX_FUNCTION_BYTES: u64 = 1 << 16;

impl ModuleInfo {
    fn read(path: &Path, prefix: &str) -> Option<ModuleInfo> {
        let cache = object::ReadCache::new(File::open(path).ok()?);
        let file = object::File::parse(&cache).ok()?;
        let wanted: HashMap<String, &'static AllocatorFunction> = FUNCTIONS
            .iter()
            .map(|f| match f.family {
                Family::C => (format!("{prefix}{}", f.symbol), f),
                Family::Cxx | Family::Process | Family::Mapping => (f.symbol.to_owned(), f),
            })
            .collect();
        let mut found: Vec<(String, &'static AllocatorFunction, u64, u64)> = Vec::new();
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            let Ok(name) = symbol.name() else { continue };
            let Some(&function) = wanted.get(name) else {
                continue;
            };
            if symbol.kind() != SymbolKind::Text
                || symbol.is_undefined()
                || !(symbol.is_global() || symbol.is_weak())
                || found.iter().any(|(n, ..)| n == name)
            {
                continue;
            }
            found.push((name.to_owned(), function, symbol.address(), symbol.size()));
        }
        let mut names = plt_stub_names(&file);
        names.extend(
            found
                .iter()
                .map(|(name, _, address, _)| (*address, name.clone())),
        );
        let mut defined = HashMap::new();
        for (name, function, address, size) in found {
            let Some(offset) = file_offset(&file, address) else {
                continue;
            };
            let bytes = function_bytes(&file, address, size).unwrap_or_default();
            let code = FunctionCode {
                address,
                bytes: &bytes,
            };
            let definition = Definition {
                offset,
                entry: placement::entry_point(code, function.needs()),
                calls: placement::callees(code, &names),
            };
            defined.insert(name, definition);
        }
        let needed = file
            .import_libraries()
            .map(|libraries| {
                libraries
                    .filter_map(Result::ok)
                    .map(|l| String::from_utf8_lossy(l.name()).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Some(ModuleInfo {
            stripped: file.symbols().next().is_none(),
            soname: soname(&file),
            needed,
            defined,
        })
    }

    fn answers_to(&self, path: &Path, name: &str) -> bool {
        self.soname.as_deref() == Some(name)
            || path.file_name().and_then(|n| n.to_str()) == Some(name)
    }
}

fn soname<'data, R: object::ReadRef<'data>>(file: &object::File<'data, R>) -> Option<String> {
    let object::File::Elf64(elf) = file else {
        return None;
    };
    let table = elf
        .elf_section_table()
        .dynamic_table(elf.endian(), elf.data())
        .ok()?;
    let entry = table.iter().find(|d| d.tag == object::elf::DT_SONAME)?;
    let name = table.string(entry).ok()?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// The code of the function at `address`, `size` bytes long (or a prologue's worth when the
/// symbol has no size).
fn function_bytes<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    address: u64,
    size: u64,
) -> Option<Vec<u8>> {
    let size = if size == 0 {
        32
    } else {
        size.min(MAX_FUNCTION_BYTES)
    };
    let section = file
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&address))?;
    let available = section.address() + section.size() - address;
    let bytes = section.data_range(address, size.min(available)).ok()??;
    Some(bytes.to_vec())
}

/// Each PLT stub's address and the function it jumps to, named by its GOT slot's relocation.
fn plt_stub_names<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
) -> HashMap<u64, String> {
    let (Some(relocations), Some(symbols)) =
        (file.dynamic_relocations(), file.dynamic_symbol_table())
    else {
        return HashMap::new();
    };
    let slots: HashMap<u64, String> = relocations
        .filter_map(|(slot, relocation)| match relocation.target() {
            RelocationTarget::Symbol(index) => {
                let name = symbols.symbol_by_index(index).ok()?.name().ok()?;
                Some((slot, name.to_owned()))
            }
            _ => None,
        })
        .collect();
    let mut stubs = HashMap::new();
    for section in file.sections() {
        // .plt.got holds the stubs of functions whose address is also taken: 8 bytes each.
        let stub_bytes = match section.name() {
            Ok(".plt" | ".plt.sec") => 16,
            Ok(".plt.got") => 8,
            _ => continue,
        };
        let Ok(data) = section.data() else { continue };
        for (index, stub) in data.chunks(stub_bytes).enumerate() {
            let address = section.address() + (index * stub_bytes) as u64;
            let code = FunctionCode {
                address,
                bytes: stub,
            };
            if let Some(name) = placement::plt_slot(code).and_then(|slot| slots.get(&slot)) {
                stubs.insert(address, name.clone());
            }
        }
    }
    stubs
}

/// The file offset of a virtual address, through the PT_LOAD that maps it.
fn file_offset<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    vaddr: u64,
) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (start..start + size)
            .contains(&vaddr)
            .then(|| vaddr - start + offset)
    })
}

/// The file the target has mapped at `path`, as leaktrace can open it: its
/// `/proc/PID/map_files` entry, which is the mapped inode itself even when the path is gone,
/// replaced or in another mount namespace; failing that, the path through `/proc/PID/root`.
pub fn module_file(pid: u32, maps: &ProcessMaps, path: &Path) -> PathBuf {
    maps.mappings()
        .iter()
        .find(|m| m.path.as_deref() == Some(path))
        .map(|m| m.map_file(pid))
        .filter(|file| std::fs::File::open(file).is_ok())
        .unwrap_or_else(|| host_path(pid, path))
}

/// `path` inside the target's mount namespace, seen from ours.
pub fn host_path(pid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

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
                EntryPoint {
                    offset: 0,
                    reason: "at the entry, as --entry-probes asks".into(),
                }
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
    fn host_path_goes_through_the_targets_root() {
        assert_eq!(
            host_path(42, Path::new("/usr/lib/libc.so.6")),
            PathBuf::from("/proc/42/root/usr/lib/libc.so.6")
        );
    }

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
