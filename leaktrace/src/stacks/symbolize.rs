//! Runtime addresses → function, file:line and inline frames.

use std::{
    borrow::Cow,
    cell::RefCell,
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    rc::Rc,
};

use object::{Object, ObjectSegment};
use serde::Serialize;

use super::{
    debuginfo::{DebugDirs, hex},
    demangle::demangle,
};
use crate::target::maps::{Mapping, ProcessMaps, host_path};

/// How a frame's address was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// The instruction pointer at the allocator's return: exact.
    #[default]
    Ip,
    /// Unwound with the calling module's CFI.
    Cfi,
    /// Read through frame pointers (where no CFI was at hand): trustworthy only in code built
    /// with them.
    FramePointers,
}

/// One source-level frame of a stack. An address inside inlined code gives several, innermost
/// first, all but the last marked `inlined`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The runtime address, as "0x…" (JSON numbers lose precision past 2^53).
    pub address: String,
    pub module: Option<String>,
    /// The module's GNU build-id, in hex: which build of it this frame is in.
    pub build_id: Option<String>,
    /// The address inside the module's ELF image ("0x…"), stable across runs and ASLR.
    pub module_offset: Option<String>,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
    pub found_by: FoundBy,
}

impl Frame {
    /// `function`, or `module+0xoffset` when nothing better is known: never blank.
    pub fn name(&self) -> Cow<'_, str> {
        match &self.function {
            Some(function) => Cow::Borrowed(function),
            None => self.name_in_module(),
        }
    }

    /// `module+0xoffset` (the module's file name), or the runtime address where the module is
    /// not known.
    pub fn name_in_module(&self) -> Cow<'_, str> {
        match (&self.module, &self.module_offset) {
            (Some(module), Some(offset)) => {
                let file = module.rsplit('/').next().unwrap_or(module);
                Cow::Owned(format!("{file}+{offset}"))
            }
            _ => Cow::Borrowed(&self.address),
        }
    }

    /// `function at file:line`, or as much of it as is known.
    pub fn describe(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{} at {file}:{line}", self.name()),
            _ => self.name().into_owned(),
        }
    }
}

#[cfg(test)]
impl Frame {
    /// A frame of `function` in `module`, at 0x1, with no file or line: for tests of what is
    /// done with names.
    pub fn of_function(function: &str, module: Option<&str>) -> Frame {
        Frame {
            address: "0x1".into(),
            module: module.map(Into::into),
            build_id: None,
            module_offset: None,
            function: Some(function.into()),
            file: None,
            line: None,
            inlined: false,
            found_by: FoundBy::Ip,
        }
    }
}

/// `/src/app/../lib/x.c` → `/src/lib/x.c`: DWARF joins the compile directory and the file name
/// as they were given to the compiler. Lexical, for display: the build tree may not exist here.
fn tidy_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." => {}
            ".." if parts.last().is_some_and(|p| !p.is_empty() && *p != "..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// A PT_LOAD segment: where a file range lands in the ELF's virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub file_offset: u64,
    pub file_size: u64,
    pub vaddr: u64,
}

impl LoadSegment {
    /// Every PT_LOAD segment of `file`.
    pub fn all<'data, R: object::ReadRef<'data>>(file: &object::File<'data, R>) -> Vec<Self> {
        file.segments()
            .map(|segment| {
                let (file_offset, file_size) = segment.file_range();
                LoadSegment {
                    file_offset,
                    file_size,
                    vaddr: segment.address(),
                }
            })
            .collect()
    }
}

/// The ELF virtual address of a runtime address inside `mapping`: runtime → file offset through
/// the maps line, file offset → vaddr through the PT_LOAD that holds it. This works the same for
/// PIE executables, shared libraries and fixed-address executables.
pub fn elf_address(mapping: &Mapping, segments: &[LoadSegment], address: u64) -> Option<u64> {
    let file_offset = address.checked_sub(mapping.start)? + mapping.offset;
    segments
        .iter()
        .find(|s| (s.file_offset..s.file_offset + s.file_size).contains(&file_offset))
        .map(|s| file_offset - s.file_offset + s.vaddr)
}

/// A source frame as debug info names it: function, file, line.
pub type SourceFrame = (Option<String>, Option<String>, Option<u32>);

/// A parsed module: its load segments and its debug info.
struct Module {
    segments: Vec<LoadSegment>,
    debug: addr2line::Loader,
    build_id: Option<String>,
}

impl Module {
    /// `path` is where we read the module; `target_path` where the target has it.
    fn load(path: &Path, target_path: &Path, debug_dirs: &DebugDirs) -> Option<Module> {
        // Only the headers are needed here: read them lazily, not the whole file.
        let cache = object::ReadCache::new(File::open(path).ok()?);
        let file = object::File::parse(&cache).ok()?;
        let build_id = file.build_id().ok().flatten().map(hex);
        let segments = LoadSegment::all(&file);
        let files = debug_dirs.find(path, target_path);
        let debug = addr2line::Loader::new_with_sup(&files.main, files.supplementary.as_ref())
            .or_else(|_| addr2line::Loader::new(path))
            .ok()?;
        Some(Module {
            segments,
            debug,
            build_id,
        })
    }

    fn frames(&self, elf_address: u64) -> Vec<SourceFrame> {
        let mut frames = Vec::new();
        if let Ok(mut iter) = self.debug.find_frames(elf_address) {
            while let Ok(Some(frame)) = iter.next() {
                let function = frame.function.as_ref().and_then(|f| {
                    let name = f.raw_name().ok()?;
                    Some(demangle(&name, f.language))
                });
                let (file, line) = frame
                    .location
                    .map_or((None, None), |l| (l.file.map(tidy_path), l.line));
                frames.push((function, file, line));
            }
        }
        if frames.is_empty() || frames.iter().all(|f| f.0.is_none()) {
            let symbol = self
                .debug
                .find_symbol(elf_address)
                .map(|name| demangle(name, None));
            let (file, line) = frames.pop().map_or((None, None), |f| (f.1, f.2));
            frames = vec![(symbol, file, line)];
        }
        frames
    }
}

/// The source frames (function, file, line) at `elf_address` of the module at `path`, by its
/// own or the system's debug info, innermost first: what symbolizing does for one frame, for
/// a file alone. None when the file is no module leaktrace can read.
pub fn frames_in_file(path: &Path, elf_address: u64) -> Option<Vec<SourceFrame>> {
    let module = Module::load(path, path, &DebugDirs::default())?;
    Some(module.frames(elf_address))
}

/// Parsed modules by the file they were read from (device, inode): shared by a process and
/// the children it forks, so that a thousand children cost one parse of each library.
type Modules = Rc<RefCell<HashMap<(u64, u64), Option<Rc<Module>>>>>;

/// Symbolizes addresses of one target process.
///
/// It keeps the target's maps and an open handle on every file they name, taken while the
/// target lives, so that stacks can still be symbolized after the target has exited or
/// unmapped a library. Modules are parsed once, on first use.
pub struct Symbolizer {
    pid: u32,
    debug_dirs: DebugDirs,
    maps: ProcessMaps,
    files: HashMap<PathBuf, Rc<File>>,
    modules: Modules,
}

impl Symbolizer {
    /// `debug_dirs` are `--debug-dir` roots, searched before the system's.
    pub fn new(pid: u32, debug_dirs: &[PathBuf]) -> std::io::Result<Self> {
        let mut symbolizer = Symbolizer {
            pid,
            debug_dirs: DebugDirs {
                extra: debug_dirs.to_vec(),
                target_root: Some(PathBuf::from(format!("/proc/{pid}/root"))),
            },
            maps: ProcessMaps::default(),
            files: HashMap::new(),
            modules: Modules::default(),
        };
        symbolizer.refresh()?;
        Ok(symbolizer)
    }

    /// The symbolizer of `child`, just forked from this symbolizer's process: it maps what its
    /// parent mapped, so it starts from its parent's maps and open files, and shares its
    /// parsed modules. Only what the child mapped since is opened.
    pub fn forked(&self, child: u32) -> std::io::Result<Self> {
        let mut symbolizer = Symbolizer {
            pid: child,
            debug_dirs: DebugDirs {
                extra: self.debug_dirs.extra.clone(),
                target_root: Some(PathBuf::from(format!("/proc/{child}/root"))),
            },
            maps: self.maps.clone(),
            files: self.files.clone(),
            modules: Rc::clone(&self.modules),
        };
        symbolizer.refresh()?;
        Ok(symbolizer)
    }

    /// Makes sure every address can be resolved later: when one lies outside the known code
    /// mappings (a library loaded since), the maps are read again and new files opened.
    ///
    /// The innermost address is always code: when it lies in a known mapping that is not, the
    /// snapshot is stale too. A launched program is first read while its loader still has
    /// /etc/ld.so.cache mapped, and a library dlopen'ed later may be mapped where that file
    /// was. (Deeper addresses of a frame-pointer walk may be data, and are not held to that.)
    pub fn observe(&mut self, addresses: &[u64]) {
        let stale_innermost = addresses.first().is_some_and(|&a| !self.is_code(a));
        if stale_innermost || addresses.iter().any(|&a| self.maps.find(a).is_none()) {
            // The target may be gone; then the snapshot is all there is.
            let _ = self.refresh();
        }
    }

    /// A symbolizer over a fixed address space that opens no files: for tests of what is
    /// done with frames, not of symbol lookup.
    #[cfg(test)]
    pub fn from_maps(maps: ProcessMaps) -> Self {
        Symbolizer {
            pid: 0,
            debug_dirs: DebugDirs::default(),
            maps,
            files: HashMap::new(),
            modules: Modules::default(),
        }
    }

    fn refresh(&mut self) -> std::io::Result<()> {
        let maps = ProcessMaps::read(self.pid)?;
        // An exited target (a zombie) reads as no mappings, and one that exec'd as another
        // program (its first mapping moved): either way keep the last snapshot of this image.
        let same_image = match self.maps.mappings().first() {
            Some(first) => maps.mappings().contains(first),
            None => true,
        };
        if maps.mappings().is_empty() || !same_image {
            return Ok(());
        }
        self.maps = maps;
        log::debug!(
            "pid {}: {} mappings, {} files open for symbols",
            self.pid,
            self.maps.mappings().len(),
            self.files.len()
        );
        for mapping in self.maps.mappings() {
            let Some(path) = &mapping.path else { continue };
            if self.files.contains_key(path) {
                continue;
            }
            // map_files reaches deleted and replaced files; the path through the target's
            // root is the fallback where map_files is not readable.
            let file = File::open(mapping.map_file(self.pid))
                .or_else(|_| File::open(host_path(self.pid, path)));
            if let Ok(file) = file {
                self.files.insert(path.clone(), Rc::new(file));
            }
        }
        Ok(())
    }

    /// Every executable file mapping with its open file: what an unwinder needs.
    pub fn code_mappings(&self) -> impl Iterator<Item = (&Mapping, &File)> {
        self.maps
            .mappings()
            .iter()
            .filter(|m| m.executable)
            .filter_map(|m| {
                let file = self.files.get(m.path.as_ref()?)?;
                Some((m, &**file))
            })
    }

    /// True when `address` lies in executable memory of the target: a return address that
    /// does not is garbage from a broken frame-pointer chain.
    pub fn is_code(&self, address: u64) -> bool {
        self.maps.find(address).is_some_and(|m| m.executable)
    }

    /// The path of the module that holds `address`, as the target sees it.
    pub fn module_of(&self, address: u64) -> Option<&Path> {
        self.maps.find(address)?.path.as_deref()
    }

    /// Source frames for a return address, innermost first.
    pub fn symbolize(&mut self, address: u64) -> Vec<Frame> {
        let mapping = self.maps.find(address).cloned();
        let module_name = mapping
            .as_ref()
            .and_then(|m| m.path.as_ref())
            .map(|p| p.display().to_string());
        let unknown = Frame {
            address: format!("{address:#x}"),
            module: module_name,
            build_id: None,
            module_offset: None,
            function: None,
            file: None,
            line: None,
            inlined: false,
            found_by: FoundBy::default(),
        };
        let Some((mapping, path)) = mapping.and_then(|m| m.path.clone().map(|p| (m, p))) else {
            return vec![unknown];
        };
        let Some(module) = self.module(&path) else {
            return vec![unknown];
        };
        // A return address points after the call; the call itself is one byte earlier.
        let Some(elf) = elf_address(&mapping, &module.segments, address.saturating_sub(1)) else {
            return vec![unknown];
        };
        let frame = |function, file, line, inlined| Frame {
            build_id: module.build_id.clone(),
            module_offset: Some(format!("{:#x}", elf + 1)),
            function,
            file,
            line,
            inlined,
            ..unknown.clone()
        };
        let found = module.frames(elf);
        let last = found.len() - 1;
        found
            .into_iter()
            .enumerate()
            .map(|(i, (function, file, line))| frame(function, file, line, i < last))
            .collect()
    }

    fn module(&mut self, path: &Path) -> Option<Rc<Module>> {
        let file = self.files.get(path)?;
        let metadata = file.metadata().ok()?;
        let key = (metadata.dev(), metadata.ino());
        let mut modules = self.modules.borrow_mut();
        modules
            .entry(key)
            .or_insert_with(|| {
                // Read through our open handle: the file may be gone from the target's view.
                let open = format!("/proc/self/fd/{}", file.as_raw_fd());
                Module::load(Path::new(&open), path, &self.debug_dirs).map(Rc::new)
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, offset: u64) -> Mapping {
        Mapping {
            start,
            end: start + 0x10000,
            offset,
            readable: true,
            writable: false,
            executable: true,
            pseudo: None,
            path: Some("/lib/x.so".into()),
            deleted: false,
        }
    }

    #[test]
    fn pie_text_maps_through_its_load_segment() {
        // A typical PIE: text at file offset 0x1000, linked at vaddr 0x1000.
        let segments = [
            LoadSegment {
                file_offset: 0,
                file_size: 0x800,
                vaddr: 0,
            },
            LoadSegment {
                file_offset: 0x1000,
                file_size: 0x2000,
                vaddr: 0x1000,
            },
        ];
        let text = mapping(0x5555_5555_5000, 0x1000);
        assert_eq!(
            elf_address(&text, &segments, 0x5555_5555_5123),
            Some(0x1123)
        );
    }

    #[test]
    fn segment_vaddr_may_differ_from_file_offset() {
        // Shared libraries often place a segment at vaddr = offset + a page-aligned gap.
        let segments = [LoadSegment {
            file_offset: 0x28000,
            file_size: 0x175000,
            vaddr: 0x29000,
        }];
        let text = mapping(0x7f00_0002_8000, 0x28000);
        assert_eq!(
            elf_address(&text, &segments, 0x7f00_0003_0010),
            Some(0x31010)
        );
    }

    #[test]
    fn address_outside_every_segment_has_no_elf_address() {
        let segments = [LoadSegment {
            file_offset: 0x1000,
            file_size: 0x100,
            vaddr: 0x1000,
        }];
        let text = mapping(0x1000, 0x1000);
        assert_eq!(elf_address(&text, &segments, 0x1200), None);
        assert_eq!(elf_address(&text, &segments, 0x0fff), None);
    }

    #[test]
    fn tidy_path_folds_dot_dot_and_dot() {
        assert_eq!(tidy_path("/work/app/../tests/./f.c"), "/work/tests/f.c");
        assert_eq!(
            tidy_path("../x/f.c"),
            "../x/f.c",
            "nothing to fold above a relative start"
        );
        assert_eq!(tidy_path("/a/b/f.c"), "/a/b/f.c");
    }

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        a_function_to_find as *const () as u64
    }

    #[test]
    fn symbolizes_a_function_of_this_test_binary() {
        let address = a_function_to_find();
        let mut symbolizer = Symbolizer::new(std::process::id(), &[]).unwrap();
        // Symbolize the function's first byte (+1, as for a return address).
        let frames = symbolizer.symbolize(address + 1);
        let innermost = frames.last().unwrap();
        assert!(
            innermost
                .function
                .as_deref()
                .unwrap()
                .ends_with("a_function_to_find"),
            "{frames:?}"
        );
        assert!(innermost.file.as_deref().unwrap().ends_with("symbolize.rs"));
        assert!(innermost.line.is_some());
    }

    #[test]
    fn a_frame_without_function_is_named_by_module_and_offset() {
        let frame = Frame {
            address: "0x7f0000001234".into(),
            module: Some("/usr/lib/libc.so.6".into()),
            build_id: None,
            module_offset: Some("0x1234".into()),
            function: None,
            file: None,
            line: None,
            inlined: false,
            found_by: FoundBy::Ip,
        };
        assert_eq!(frame.name(), "libc.so.6+0x1234");
        assert_eq!(frame.describe(), "libc.so.6+0x1234");
    }

    #[test]
    fn unknown_addresses_still_get_a_name() {
        let mut symbolizer = Symbolizer::new(std::process::id(), &[]).unwrap();
        let frames = symbolizer.symbolize(0x10);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].name(), "0x10");
    }
}
