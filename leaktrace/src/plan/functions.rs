//! The functions leaktrace probes, and the eBPF programs that read each one.

use super::placement::ProbeNeeds;

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
        entry: Some("alloc_enter"),
        exit: Some("alloc_exit"),
    }
}

const fn delete(symbol: &'static str) -> AllocatorFunction {
    AllocatorFunction {
        symbol,
        family: Family::Cxx,
        entry: Some("delete_enter"),
        exit: Some("delete_exit"),
    }
}

/// Every function leaktrace probes. C++ names are mangled for x86-64 (size_t is `m`).
pub const FUNCTIONS: [AllocatorFunction; 34] = [
    c("malloc", "alloc_enter", "alloc_exit"),
    c("calloc", "calloc_enter", "alloc_exit"),
    c("realloc", "realloc_enter", "realloc_exit"),
    c("reallocarray", "reallocarray_enter", "realloc_exit"),
    c(
        "posix_memalign",
        "posix_memalign_enter",
        "posix_memalign_exit",
    ),
    c("aligned_alloc", "memalign_enter", "alloc_exit"),
    c("memalign", "memalign_enter", "alloc_exit"),
    c("valloc", "alloc_enter", "alloc_exit"),
    c("pvalloc", "pvalloc_enter", "alloc_exit"),
    AllocatorFunction {
        symbol: "free",
        family: Family::C,
        entry: Some("free_enter"),
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
        exit: Some("fork_exit"),
    },
    AllocatorFunction {
        symbol: "mmap",
        family: Family::Mapping,
        entry: Some("mmap_enter"),
        exit: Some("mmap_exit"),
    },
    AllocatorFunction {
        symbol: "munmap",
        family: Family::Mapping,
        entry: Some("munmap_enter"),
        exit: None,
    },
    AllocatorFunction {
        symbol: "mremap",
        family: Family::Mapping,
        entry: Some("mremap_enter"),
        exit: Some("mremap_exit"),
    },
];

impl AllocatorFunction {
    /// What its probe point must respect ([`super::placement`]).
    pub(super) fn needs(&self) -> ProbeNeeds {
        ProbeNeeds {
            returns: self.exit.is_some(),
            ignores_null_first_argument: matches!(self.entry, Some("free_enter" | "delete_enter")),
        }
    }

    /// Whether it hands out memory (true) or takes it back (false).
    pub(super) fn allocates(&self) -> bool {
        !matches!(self.entry, Some("free_enter" | "delete_enter"))
    }
}
