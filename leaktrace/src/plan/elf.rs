//! What leaktrace reads of one mapped ELF file: the allocator functions it defines, where
//! their probes go, the functions they call (through PLT stubs too), and the libraries it
//! needs.

use std::{collections::HashMap, fs::File, path::Path};

use object::{
    Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable, RelocationTarget,
    SymbolKind,
};

use super::{
    functions::{AllocatorFunction, FUNCTIONS, Family},
    placement::{self, EntryPoint, FunctionCode},
};

/// What leaktrace needs to know of one mapped file.
pub(super) struct ModuleInfo {
    pub(super) soname: Option<String>,
    /// No symbol table, only dynamic symbols.
    pub(super) stripped: bool,
    pub(super) needed: Vec<String>,
    /// Our functions it defines (with prefix where asked), by name.
    pub(super) defined: HashMap<String, Definition>,
}

/// One of our functions in a module.
pub(super) struct Definition {
    /// File offset of its first instruction.
    pub(super) offset: u64,
    /// Where its entry probe sits.
    pub(super) entry: EntryPoint,
    /// The functions it calls or jumps to directly (through the PLT or not).
    pub(super) calls: Vec<String>,
}

/// The largest function body decoded: far more than any allocator entry point.
const MAX_FUNCTION_BYTES: u64 = 1 << 16;

impl ModuleInfo {
    pub(super) fn read(path: &Path, prefix: &str) -> Option<ModuleInfo> {
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

    pub(super) fn answers_to(&self, path: &Path, name: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use iced_x86::Register::{self, RAX, RDI, RDX, RSI};

    use super::*;

    /// A library of Debian's, as the test setup (`cargo xtask test`) installs it. Off CI a
    /// missing one skips its rows with a note; in CI it fails.
    fn library(name: &str) -> Option<ModuleInfo> {
        let path = Path::new("/usr/lib/x86_64-linux-gnu").join(name);
        if !path.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} is missing: `cargo xtask test` installs it",
                path.display()
            );
            eprintln!("skipped: {} is not installed", path.display());
            return None;
        }
        Some(ModuleInfo::read(&path, "").expect("an ELF library"))
    }

    /// Each row: library, function, where its probe sits, and where its arguments are read.
    /// The offsets are those of Debian 12's builds, read with objdump; each lands on a `jcc`,
    /// `jmp` or `push`, which the kernel emulates.
    #[test]
    fn probe_points_of_the_allocators_debian_ships() {
        let rows: [(&str, &str, u64, &[Register]); 14] = [
            // glibc: free past its NULL check, onto `push %rbp`.
            ("libc.so.6", "free", 9, &[RDI]),
            // jemalloc: `cmp $0x1000,%rdi; ja`, and free's straight line up to its `jne`.
            ("libjemalloc.so.2", "malloc", 7, &[RDI]),
            ("libjemalloc.so.2", "_Znwm", 7, &[RDI]),
            ("libjemalloc.so.2", "free", 0x30, &[RDI]),
            ("libjemalloc.so.2", "_ZdlPvm", 3, &[RDI]),
            // tcmalloc: `mov; test; jne` and the like.
            ("libtcmalloc_minimal.so.4", "malloc", 10, &[RDI]),
            ("libtcmalloc_minimal.so.4", "free", 10, &[RDI]),
            (
                "libtcmalloc_minimal.so.4",
                "posix_memalign",
                11,
                &[RDI, RSI, RDX],
            ),
            ("libtcmalloc_minimal.so.4", "memalign", 10, &[RDI, RSI]),
            // mimalloc moves its arguments before the first jump.
            ("libmimalloc.so.2", "malloc", 0x15, &[RSI]),
            ("libmimalloc.so.2", "calloc", 0x12, &[RAX, RSI]),
            ("libmimalloc.so.2", "realloc", 0x14, &[RSI, RDX]),
            ("libmimalloc.so.2", "free", 6, &[RDI]),
            // Emulated at the entry already.
            ("libmimalloc.so.2", "posix_memalign", 0, &[RDI, RSI, RDX]),
        ];
        let mut libraries: HashMap<&str, Option<ModuleInfo>> = HashMap::new();
        for (name, symbol, offset, homes) in rows {
            let Some(info) = libraries.entry(name).or_insert_with(|| library(name)) else {
                continue;
            };
            let definition = &info.defined[symbol];
            let entry = &definition.entry;
            assert_eq!(entry.offset, offset, "{symbol} in {name}: {entry}");
            assert_eq!(
                &entry.arguments.0[..homes.len()],
                homes,
                "{symbol} in {name}: {entry}"
            );
        }
    }
}
