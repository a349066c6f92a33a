//! The functions leaktrace probes, and the eBPF programs that read each one.

use leaktrace_common::programs;

use super::placement::ProbeNeeds;

/// Which functions of a family the user asked for or the probes know how to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// The C allocator: `--allocator` and `--symbol-prefix` apply to these.
    C,
    /// C++ operator new and delete.
    Cxx,
    /// Process lifecycle: fork, vfork and posix_spawn, whose return tells of a new child.
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

impl AllocatorFunction {
    /// The program that takes this function's entry and return as one uprobe session, when
    /// sampling. Only malloc and calloc: in the allocators leaktrace knows (glibc, jemalloc,
    /// tcmalloc, mimalloc) they call no other function it probes, so an unsampled call, which
    /// leaves no entry behind, leaves nothing inside it unaware that it is nested (operator new
    /// calls malloc, and keeps its entry and return probes).
    pub fn session(&self) -> Option<&'static str> {
        match self.symbol {
            "malloc" => Some(programs::ALLOC_SESSION),
            "calloc" => Some(programs::CALLOC_SESSION),
            _ => None,
        }
    }
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

/// posix_spawn and posix_spawnp, which start a child running another program.
const fn spawn(symbol: &'static str) -> AllocatorFunction {
    AllocatorFunction {
        symbol,
        family: Family::Process,
        entry: Some(programs::SPAWN_ENTER),
        exit: Some(programs::SPAWN_EXIT),
    }
}

/// Every function leaktrace probes. C++ names are mangled for x86-64 (size_t is `m`).
pub const FUNCTIONS: [AllocatorFunction; 37] = [
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
    // The g++ driver starts cc1plus and as with vfork and exec, as Python's subprocess does.
    AllocatorFunction {
        symbol: "vfork",
        family: Family::Process,
        entry: None,
        exit: Some(programs::VFORK_EXIT),
    },
    spawn("posix_spawn"),
    spawn("posix_spawnp"),
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
    /// What its probe point must respect ([`super::placement`]).
    pub(super) fn needs(&self) -> ProbeNeeds {
        ProbeNeeds {
            returns: self.exit.is_some(),
            ignores_null_first_argument: matches!(
                self.entry,
                Some(programs::FREE_ENTER | programs::DELETE_ENTER)
            ),
            arguments: self.arguments(),
        }
    }

    /// How many arguments its entry program reads (leaktrace-ebpf's probes.rs): those must
    /// still be in registers where the probe sits.
    fn arguments(&self) -> usize {
        use programs::*;
        match self.entry {
            None => 0,
            Some(ALLOC_ENTER | PVALLOC_ENTER | FREE_ENTER | DELETE_ENTER | SPAWN_ENTER) => 1,
            Some(CALLOC_ENTER | REALLOC_ENTER | MEMALIGN_ENTER | MUNMAP_ENTER) => 2,
            Some(REALLOCARRAY_ENTER | POSIX_MEMALIGN_ENTER | MREMAP_ENTER) => 3,
            Some(_) => 4,
        }
    }

    /// Whether it hands out memory (true) or takes it back (false).
    pub(super) fn allocates(&self) -> bool {
        !matches!(
            self.entry,
            Some(programs::FREE_ENTER | programs::DELETE_ENTER)
        )
    }
}
