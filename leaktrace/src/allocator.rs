//! Which library in the target holds its allocator.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol, SymbolKind};

use crate::proc_maps::ProcessMaps;

/// The functions leaktrace probes; a module must define all of them to be the allocator.
pub const ALLOCATOR_FUNCTIONS: [&str; 4] = ["malloc", "calloc", "realloc", "free"];

/// The allocator library of one target process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    /// The path as the target sees it (inside its mount namespace).
    pub path: PathBuf,
    /// The same file as leaktrace can open it, through `/proc/PID/root`, so containers work.
    pub host_path: PathBuf,
}

/// Looks for the allocator among the target's mapped files, remembering files already ruled out
/// so that launch mode can ask again after every syscall of the dynamic loader cheaply.
#[derive(Default)]
pub struct AllocatorSearch {
    ruled_out: HashSet<PathBuf>,
}

impl AllocatorSearch {
    /// The first mapped file, in address order (the executable comes first), that defines the
    /// allocator functions. The dynamic loader is skipped: its private malloc serves only
    /// itself before libc is relocated.
    pub fn find(&mut self, pid: u32, maps: &ProcessMaps) -> Option<Allocator> {
        for path in maps.mappings().iter().filter_map(|m| m.path.as_ref()) {
            if self.ruled_out.contains(path) {
                continue;
            }
            let host_path = host_path(pid, path);
            if !is_dynamic_loader(path) && defines_allocator(&host_path) {
                return Some(Allocator {
                    path: path.clone(),
                    host_path,
                });
            }
            self.ruled_out.insert(path.clone());
        }
        None
    }
}

/// `path` inside the target's mount namespace, seen from ours.
pub fn host_path(pid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

fn is_dynamic_loader(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("ld-linux") || name.starts_with("ld-musl"))
}

fn defines_allocator(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    ALLOCATOR_FUNCTIONS.iter().all(|function| {
        file.dynamic_symbols().chain(file.symbols()).any(|symbol| {
            symbol.kind() == SymbolKind::Text
                && !symbol.is_undefined()
                && symbol.name() == Ok(function)
        })
    })
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
    fn finds_libc_in_our_own_process_and_not_the_loader() {
        let pid = std::process::id();
        let maps = ProcessMaps::read(pid).unwrap();
        let allocator = AllocatorSearch::default().find(pid, &maps).expect("libc");
        let name = allocator.path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("libc"),
            "found {}",
            allocator.path.display()
        );
    }
}
