//! Where a module's debug info lives: in the module, or in a separate file found the way gdb
//! finds it (by build-id, then by .gnu_debuglink with its CRC), plus the dwz supplementary
//! file a .gnu_debugaltlink names.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use object::Object;

/// The system's debug root, as Debian's -dbg and -dbgsym packages fill it.
const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// Where to look for separate debug files.
#[derive(Clone, Debug, Default)]
pub struct DebugDirs {
    /// `--debug-dir` roots, searched before the system's.
    pub extra: Vec<PathBuf>,
    /// The target's root (`/proc/PID/root`): a containerized target's debug files live there.
    pub target_root: Option<PathBuf>,
}

/// The files to read a module's symbols and lines from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugFiles {
    /// The module itself, or its separate debug file.
    pub main: PathBuf,
    /// The dwz supplementary file, when the main file refers to one.
    pub supplementary: Option<PathBuf>,
}

impl DebugDirs {
    /// Roots to search, in order: `--debug-dir`s, the target's /usr/lib/debug, ours.
    fn roots(&self) -> Vec<PathBuf> {
        let mut roots = self.extra.clone();
        if let Some(root) = &self.target_root {
            roots.push(root.join(SYSTEM_DEBUG_DIR.trim_start_matches('/')));
        }
        roots.push(PathBuf::from(SYSTEM_DEBUG_DIR));
        roots
    }

    /// The debug files of the module at `path` (readable by us) that the target knows as
    /// `target_path`.
    pub fn find(&self, path: &Path, target_path: &Path) -> DebugFiles {
        let main = self
            .separate_file(path, target_path)
            .unwrap_or_else(|| path.to_path_buf());
        let supplementary = self.supplementary_file(&main);
        DebugFiles {
            main,
            supplementary,
        }
    }

    fn separate_file(&self, path: &Path, target_path: &Path) -> Option<PathBuf> {
        let cache = object::ReadCache::new(File::open(path).ok()?);
        let file = object::File::parse(&cache).ok()?;
        if file.section_by_name(".debug_info").is_some() {
            return None;
        }
        if let Ok(Some(build_id)) = file.build_id() {
            let found = self
                .roots()
                .into_iter()
                .map(|root| root.join(build_id_path(build_id)))
                .find(|candidate| candidate.is_file());
            if found.is_some() {
                return found;
            }
        }
        let (name, crc) = file.gnu_debuglink().ok()??;
        let name = Path::new(std::str::from_utf8(name).ok()?);
        let target_dir = target_path.parent()?;
        let relative_dir = target_dir.strip_prefix("/").unwrap_or(target_dir);
        // Beside the module, as the target sees it and as we do.
        let mut module_dirs = vec![target_dir.to_path_buf()];
        if let Some(root) = &self.target_root {
            module_dirs.insert(0, root.join(relative_dir));
        }
        let mut candidates = Vec::new();
        for dir in module_dirs {
            candidates.push(dir.join(name));
            candidates.push(dir.join(".debug").join(name));
        }
        for root in self.roots() {
            candidates.push(root.join(relative_dir).join(name));
            candidates.push(root.join(name));
        }
        candidates
            .into_iter()
            .find(|candidate| candidate.is_file() && crc32_of(candidate) == Some(crc))
    }

    /// The dwz file that `.gnu_debugaltlink` names: a path (relative to the debug file) or,
    /// failing that, its build-id.
    fn supplementary_file(&self, main: &Path) -> Option<PathBuf> {
        let cache = object::ReadCache::new(File::open(main).ok()?);
        let file = object::File::parse(&cache).ok()?;
        let (name, build_id) = file.gnu_debugaltlink().ok()??;
        let named = main
            .parent()?
            .join(Path::new(std::str::from_utf8(name).ok()?));
        if named.is_file() {
            return Some(named);
        }
        self.roots()
            .into_iter()
            .map(|root| root.join(build_id_path(build_id)))
            .find(|candidate| candidate.is_file())
    }
}

/// `.build-id/ab/cdef….debug` for build-id `abcdef…`.
pub fn build_id_path(build_id: &[u8]) -> PathBuf {
    let hex = hex(build_id);
    let (first, rest) = hex.split_at(2.min(hex.len()));
    PathBuf::from(".build-id")
        .join(first)
        .join(format!("{rest}.debug"))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn crc32_of(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let read = file.read(&mut buffer).ok()?;
        if read == 0 {
            return Some(hasher.finalize());
        }
        hasher.update(&buffer[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_paths_split_the_first_byte_off() {
        assert_eq!(
            build_id_path(&[0xab, 0xcd, 0xef]),
            PathBuf::from(".build-id/ab/cdef.debug")
        );
    }

    #[test]
    fn a_module_with_its_own_debug_info_is_its_own_debug_file() {
        let me = std::env::current_exe().unwrap();
        let found = DebugDirs::default().find(&me, &me);
        assert_eq!(found.main, me);
    }
}
