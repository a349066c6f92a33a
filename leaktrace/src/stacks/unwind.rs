//! Full stacks from stack copies: CFI unwinding of a [`StackSample`] with framehop.
//!
//! framehop was made for this (it is samply's unwinder): it takes registers, stack bytes and
//! each module's .eh_frame/.eh_frame_hdr/.debug_frame, caches the rules it derives, and falls
//! back to frame pointers where a module has no CFI. gimli alone would mean writing that
//! evaluator, its cache and its heuristics again.
//!
//! [`StackSample`]: leaktrace_common::StackSample

use std::{fs::File, ops::Range, path::Path};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use leaktrace_common::OUTERMOST_FRAME;
use object::{Object, ObjectSection};

use crate::{
    stacks::symbolize::{FoundBy, LoadSegment, Symbolizer},
    target::maps::Mapping,
};

/// The most frames one stack is unwound to: as many as its key covers, so that what the
/// unwinding learns lets the probe walk that deep too. A site keeps fewer
/// ([`crate::stacks::cut`]).
const MAX_FRAMES: usize = leaktrace_common::stack_key::KEY_FRAMES;

/// The page size of x86-64 Linux, the only target framehop unwinds for here.
const PAGE_SIZE: u64 = 4096;

/// Registers and stack bytes at an allocation's return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackCopy {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub bytes: Vec<u8>,
}

/// An unwound stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwound {
    /// Return addresses, innermost first; the copy's ip comes first.
    pub addresses: Vec<u64>,
    /// For each of those addresses: where the next return address lay, as an offset above
    /// the stack pointer at that address; [`OUTERMOST_FRAME`] for the last one, where the
    /// unwinding ended.
    pub return_offsets: Vec<(u64, u64)>,
    /// How each address was found: through CFI, or through frame pointers where the module
    /// it was unwound from has none.
    pub found_by: Vec<FoundBy>,
}

/// Unwinds the stack copies of one program image.
pub struct DwarfUnwinder {
    unwinder: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    /// The mappings already given to framehop, and whether each has CFI.
    added: Vec<(Range<u64>, bool)>,
}

impl DwarfUnwinder {
    /// The unwinder of one program image. With `stack_copies`, it reads the CFI of every code
    /// mapping now, before recording starts: the first copies then do not wait on it while
    /// the ring buffer fills.
    pub fn new(symbolizer: &Symbolizer, stack_copies: bool) -> Self {
        let mut unwinder = DwarfUnwinder {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            added: Vec::new(),
        };
        if stack_copies {
            unwinder.add_modules(symbolizer);
        }
        unwinder
    }

    /// The unwinder of a child just forked from this unwinder's process: the same modules at
    /// the same addresses, their CFI shared, not read again.
    pub fn forked(&self) -> Self {
        DwarfUnwinder {
            unwinder: self.unwinder.clone(),
            cache: CacheX86_64::new(),
            added: self.added.clone(),
        }
    }

    /// Gives framehop the CFI of every code mapping it lacks (modules mapped since, too).
    fn add_modules(&mut self, symbolizer: &Symbolizer) {
        for (mapping, file) in symbolizer.code_mappings() {
            if self
                .added
                .iter()
                .any(|(range, _)| range.start == mapping.start)
            {
                continue;
            }
            let (module, has_cfi) = module(mapping, file).unzip();
            self.added
                .push((mapping.start..mapping.end, has_cfi.unwrap_or(false)));
            if let Some(module) = module {
                self.unwinder.add_module(module);
            }
        }
    }

    /// The return addresses of `copy`, innermost first; its `ip` (the allocation call's return
    /// address) comes first.
    pub fn unwind(&mut self, copy: &StackCopy, symbolizer: &Symbolizer) -> Unwound {
        self.add_modules(symbolizer);
        let mut read_stack = |address: u64| {
            let offset = address.checked_sub(copy.sp).ok_or(())? as usize;
            let bytes = copy.bytes.get(offset..offset + 8).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut regs = UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp);
        let mut unwound = Unwound {
            addresses: vec![copy.ip],
            return_offsets: Vec::new(),
            found_by: vec![FoundBy::Ip],
        };
        // The ip is itself a return address (the allocator has returned): look up the call.
        let mut pc = copy.ip;
        while unwound.addresses.len() < MAX_FRAMES {
            let Some(address) = FrameAddress::from_return_address(pc) else {
                break;
            };
            let sp = regs.sp();
            match self
                .unwinder
                .unwind_frame(address, &mut regs, &mut self.cache, &mut read_stack)
            {
                Ok(Some(return_address)) => {
                    // The return address sat just below the caller's stack pointer.
                    let slot = regs.sp().wrapping_sub(8);
                    let offset = slot.checked_sub(sp).unwrap_or(OUTERMOST_FRAME);
                    unwound.return_offsets.push((pc, offset));
                    let has_cfi = self
                        .added
                        .iter()
                        .any(|(range, cfi)| *cfi && range.contains(&pc.wrapping_sub(1)));
                    unwound.found_by.push(if has_cfi {
                        FoundBy::Cfi
                    } else {
                        FoundBy::FramePointers
                    });
                    unwound.addresses.push(return_address);
                    pc = return_address;
                }
                Ok(None) | Err(_) => break,
            }
        }
        unwound.return_offsets.push((pc, OUTERMOST_FRAME));
        unwound
    }
}

/// The ELF virtual address at `mapping`'s start. The loader maps each PT_LOAD from its offset
/// rounded down to a page, and a segment may start in the page where the one before it ends
/// (lld lays them out so): the mapping's offset then lies in both, and the mapping is the later
/// one's.
fn vaddr_at_start(mapping: &Mapping, segments: &[LoadSegment]) -> Option<u64> {
    let segment = segments
        .iter()
        .filter(|s| {
            s.file_offset & !(PAGE_SIZE - 1) <= mapping.offset
                && mapping.offset < s.file_offset + s.file_size
        })
        .max_by_key(|s| s.file_offset)?;
    (segment.vaddr + mapping.offset).checked_sub(segment.file_offset)
}

/// A framehop module for one executable mapping: its unwind sections, where it is loaded; and
/// whether it has any CFI at all.
fn module(mapping: &Mapping, file: &File) -> Option<(Module<Vec<u8>>, bool)> {
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let section = |name: &str| {
        let section = elf.section_by_name(name)?;
        let range = section.address()..section.address() + section.size();
        Some((range, section.uncompressed_data().ok()?.into_owned()))
    };
    // Where vaddr 0 lands: the mapping's start, less the vaddr of the file offset it maps.
    let base_avma = mapping
        .start
        .checked_sub(vaddr_at_start(mapping, &LoadSegment::all(&elf))?)?;
    let split = |found: Option<(Range<u64>, Vec<u8>)>| match found {
        Some((range, data)) => (Some(range), Some(data)),
        None => (None, None),
    };
    let (text_svma, text) = split(section(".text"));
    let (eh_frame_svma, eh_frame) = split(section(".eh_frame"));
    let debug_frame = section(".debug_frame").map(|(_, data)| data);
    let has_cfi = eh_frame.is_some() || debug_frame.is_some();
    let (eh_frame_hdr_svma, eh_frame_hdr) = split(section(".eh_frame_hdr"));
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma,
        text,
        got_svma: section(".got").map(|(range, _)| range),
        eh_frame_svma,
        eh_frame,
        eh_frame_hdr_svma,
        eh_frame_hdr,
        debug_frame,
        ..ExplicitModuleSectionInfo::default()
    };
    let name = mapping
        .path
        .as_deref()
        .and_then(Path::to_str)
        .unwrap_or("?")
        .to_owned();
    let module = Module::new(name, mapping.start..mapping.end, base_avma, info);
    Some((module, has_cfi))
}

#[cfg(test)]
mod tests;
