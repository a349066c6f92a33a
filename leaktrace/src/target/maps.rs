//! `/proc/PID/maps`: which file backs which address range of the target, and how leaktrace
//! opens those files from its own mount namespace.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// `[heap]`, `[stack]`, `[vvar]` and the like: the kernel's names for mappings of no file.
    pub pseudo: Option<String>,
    /// The backing file as the target sees it; `None` for anonymous, heap, stack and the like.
    pub path: Option<PathBuf>,
    /// The file was deleted or replaced since it was mapped: only `/proc/PID/map_files`
    /// still reaches it.
    pub deleted: bool,
}

impl Mapping {
    /// This mapping's entry in `/proc/PID/map_files`: the mapped file itself, even when its
    /// path is gone or lies in another mount namespace.
    pub fn map_file(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// The target's address space at one moment.
///
/// Kept as a snapshot because a target that exits or unmaps a library still has stacks that
/// point into it.
#[derive(Clone, Debug, Default)]
pub struct ProcessMaps {
    mappings: Vec<Mapping>,
}

impl ProcessMaps {
    pub fn read(pid: u32) -> io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string(format!(
            "/proc/{pid}/maps"
        ))?))
    }

    /// Parses the text of a maps file; lines that do not parse are skipped.
    pub fn parse(text: &str) -> Self {
        let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// True when some executable mapping of `path` exists.
    pub fn has_code(&self, path: &std::path::Path) -> bool {
        self.mappings
            .iter()
            .any(|m| m.executable && m.path.as_deref() == Some(path))
    }

    /// The mapping that contains `address`.
    pub fn find(&self, address: u64) -> Option<&Mapping> {
        let index = self.mappings.partition_point(|m| m.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _device = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().map(str::trim_start).unwrap_or("");
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(path) => (path, true),
        None => (path, false),
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        readable: perms.as_bytes().first() == Some(&b'r'),
        writable: perms.as_bytes().get(1) == Some(&b'w'),
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        pseudo: path.starts_with('[').then(|| path.to_owned()),
        path: path.starts_with('/').then(|| PathBuf::from(path)),
        deleted,
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

    const MAPS: &str = "\
55d4c8a00000-55d4c8a01000 r--p 00000000 fe:01 1234     /usr/bin/fixture
55d4c8a01000-55d4c8a02000 r-xp 00001000 fe:01 1234     /usr/bin/fixture
55d4c9000000-55d4c9021000 rw-p 00000000 00:00 0        [heap]
7f0000028000-7f000019d000 r-xp 00028000 fe:01 99       /usr/lib/x86_64-linux-gnu/libc.so.6
7f00001a0000-7f00001a1000 rw-p 00000000 00:00 0 
7f00001b0000-7f00001b1000 r-xp 00000000 fe:01 77       /opt/old lib.so (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0        [stack]
";

    #[test]
    fn parses_file_backed_and_anonymous_lines() {
        let maps = ProcessMaps::parse(MAPS);
        assert_eq!(maps.mappings().len(), 7);
        let text = &maps.mappings()[1];
        assert_eq!(
            (text.start, text.end, text.offset),
            (0x55d4c8a01000, 0x55d4c8a02000, 0x1000)
        );
        assert!(text.executable);
        assert_eq!(text.path.as_deref(), Some("/usr/bin/fixture".as_ref()));
        assert_eq!(maps.mappings()[2].path, None, "[heap] is not a file");
        assert_eq!(maps.mappings()[4].path, None, "anonymous");
        let deleted = &maps.mappings()[5];
        assert_eq!(deleted.path.as_deref(), Some("/opt/old lib.so".as_ref()));
        assert!(deleted.deleted && !text.deleted);
        assert_eq!(
            deleted.map_file(9),
            PathBuf::from("/proc/9/map_files/7f00001b0000-7f00001b1000")
        );
    }

    #[test]
    fn finds_the_mapping_containing_an_address() {
        let maps = ProcessMaps::parse(MAPS);
        let libc = maps.find(0x7f0000030000).expect("inside libc's text");
        assert_eq!(libc.offset, 0x28000);
        assert!(maps.find(0x7f000019d000).is_none(), "end is exclusive");
        assert!(maps.find(0x1000).is_none(), "below every mapping");
    }
}
