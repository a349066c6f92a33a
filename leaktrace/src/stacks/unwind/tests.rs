//! Unwinding without a probe: registers and stack bytes built by hand over functions whose
//! CFI is written out below, and a copy of this test's own stack. Nothing here needs root.

use std::hint::black_box;

use leaktrace_common::OUTERMOST_FRAME;

use super::{DwarfUnwinder, MAX_FRAMES, StackCopy, Unwound, vaddr_at_start};
use crate::{
    stacks::symbolize::{FoundBy, LoadSegment, Symbolizer},
    target::maps::{Mapping, ProcessMaps},
};

// The fixture: four functions whose CFI is spelled out here, so that the expected frames do not
// depend on what the compiler makes of Rust code. They are never run: the tests only take their
// addresses, and the linker puts their CFI in this test binary's .eh_frame and .eh_frame_hdr.
// Outermost first, each calls the next; `*_ret` marks the return address of that call.
core::arch::global_asm!(
    ".pushsection .text.leaktrace_unwind_fixture, \"ax\", @progbits",
    // The root: its return address is undefined, as _start's is. The stack ends here.
    ".globl leaktrace_unwind_fixture_root",
    ".type leaktrace_unwind_fixture_root, @function",
    "leaktrace_unwind_fixture_root:",
    ".cfi_startproc",
    ".cfi_undefined rip",
    "xor ebp, ebp",
    "call leaktrace_unwind_fixture_outer",
    ".globl leaktrace_unwind_fixture_root_ret",
    "leaktrace_unwind_fixture_root_ret:",
    "ud2",
    ".cfi_endproc",
    ".size leaktrace_unwind_fixture_root, . - leaktrace_unwind_fixture_root",
    // Outer: a frame-pointer prologue. At its call, CFA = rbp + 16 and rbp is saved at CFA - 16.
    ".globl leaktrace_unwind_fixture_outer",
    ".type leaktrace_unwind_fixture_outer, @function",
    "leaktrace_unwind_fixture_outer:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "call leaktrace_unwind_fixture_middle",
    ".globl leaktrace_unwind_fixture_outer_ret",
    "leaktrace_unwind_fixture_outer_ret:",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size leaktrace_unwind_fixture_outer, . - leaktrace_unwind_fixture_outer",
    // Middle: no frame pointer, 24 bytes of locals. At its call, CFA = rsp + 32.
    ".globl leaktrace_unwind_fixture_middle",
    ".type leaktrace_unwind_fixture_middle, @function",
    "leaktrace_unwind_fixture_middle:",
    ".cfi_startproc",
    "sub rsp, 24",
    ".cfi_def_cfa_offset 32",
    "call leaktrace_unwind_fixture_leaf",
    ".globl leaktrace_unwind_fixture_middle_ret",
    "leaktrace_unwind_fixture_middle_ret:",
    "add rsp, 24",
    ".cfi_def_cfa_offset 8",
    "ret",
    ".cfi_endproc",
    ".size leaktrace_unwind_fixture_middle, . - leaktrace_unwind_fixture_middle",
    // Leaf: saves rbp and uses it as a general register, then calls the "allocator". At that
    // call, CFA = rsp + 16 and the caller's rbp is at CFA - 16: a frame-pointer walk from here
    // goes astray, CFI restores rbp for the callers.
    ".globl leaktrace_unwind_fixture_leaf",
    ".type leaktrace_unwind_fixture_leaf, @function",
    "leaktrace_unwind_fixture_leaf:",
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov ebp, 1",
    "call leaktrace_unwind_fixture_alloc",
    ".globl leaktrace_unwind_fixture_leaf_ret",
    "leaktrace_unwind_fixture_leaf_ret:",
    "pop rbp",
    ".cfi_restore rbp",
    ".cfi_def_cfa_offset 8",
    "ret",
    ".cfi_endproc",
    ".size leaktrace_unwind_fixture_leaf, . - leaktrace_unwind_fixture_leaf",
    ".type leaktrace_unwind_fixture_alloc, @function",
    "leaktrace_unwind_fixture_alloc:",
    ".cfi_startproc",
    "xor eax, eax",
    "ret",
    ".cfi_endproc",
    ".size leaktrace_unwind_fixture_alloc, . - leaktrace_unwind_fixture_alloc",
    ".popsection",
);

unsafe extern "C" {
    fn leaktrace_unwind_fixture_root_ret();
    fn leaktrace_unwind_fixture_outer_ret();
    fn leaktrace_unwind_fixture_middle_ret();
    fn leaktrace_unwind_fixture_leaf_ret();
}

/// The fixture's return addresses in this process, innermost first: leaf, middle, outer, root.
fn fixture_returns() -> [u64; 4] {
    [
        leaktrace_unwind_fixture_leaf_ret as *const () as u64,
        leaktrace_unwind_fixture_middle_ret as *const () as u64,
        leaktrace_unwind_fixture_outer_ret as *const () as u64,
        leaktrace_unwind_fixture_root_ret as *const () as u64,
    ]
}

/// Where the hand-built stacks say they lie: any address will do, nothing reads it.
const SP: u64 = 0x7ffe_0000_1000;

/// Little-endian stack words, lowest address first.
fn stack_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|word| word.to_le_bytes()).collect()
}

/// A copy at [`SP`] of `words`, with registers `ip` and `bp`.
fn hand_built(ip: u64, bp: u64, words: &[u64]) -> StackCopy {
    StackCopy {
        ip,
        sp: SP,
        bp,
        bytes: stack_bytes(words),
    }
}

/// The stack at the fixture's allocator return, with `sp` at the leaf's saved rbp:
///
/// ```text
/// sp+0   outer's rbp (sp+48)   leaf's push rbp
/// sp+8   middle_ret            middle's call        CFA(leaf) = sp+16
/// sp+16  decoys                middle's 24 bytes of locals
/// sp+40  outer_ret             outer's call         CFA(middle) = sp+48
/// sp+48  0                     outer's push rbp: root's rbp
/// sp+56  root_ret              root's call          CFA(outer) = rbp+16 = sp+64
/// ```
///
/// rbp holds 1, the leaf's own use of it. The locals hold code addresses: a scan for
/// anything that looks like a return address would take them.
fn fixture_copy(sp: u64) -> StackCopy {
    let [leaf_ret, middle_ret, outer_ret, root_ret] = fixture_returns();
    StackCopy {
        ip: leaf_ret,
        sp,
        bp: 1,
        bytes: stack_bytes(&[
            sp + 48,
            middle_ret,
            root_ret,
            leaf_ret,
            outer_ret,
            outer_ret,
            0,
            root_ret,
        ]),
    }
}

/// What the fixture's copy unwinds to.
fn fixture_unwound() -> Unwound {
    let [leaf_ret, middle_ret, outer_ret, root_ret] = fixture_returns();
    Unwound {
        addresses: vec![leaf_ret, middle_ret, outer_ret, root_ret],
        return_offsets: vec![
            (leaf_ret, 8),
            (middle_ret, 24),
            (outer_ret, 8),
            (root_ret, OUTERMOST_FRAME),
        ],
        found_by: vec![FoundBy::Ip, FoundBy::Cfi, FoundBy::Cfi, FoundBy::Cfi],
    }
}

/// A symbolizer over this test process, with its modules' CFI read up front.
fn own_process() -> (Symbolizer, DwarfUnwinder) {
    let symbolizer = Symbolizer::new(std::process::id(), &[]).unwrap();
    let unwinder = DwarfUnwinder::new(&symbolizer, true);
    (symbolizer, unwinder)
}

/// A symbolizer that knows no module: every frame unwinds through frame pointers.
fn no_modules() -> (Symbolizer, DwarfUnwinder) {
    let symbolizer = Symbolizer::from_maps(ProcessMaps::default());
    let unwinder = DwarfUnwinder::new(&symbolizer, true);
    (symbolizer, unwinder)
}

/// What holds for every unwound stack: one offset and one `found_by` per address, in order;
/// the ip first; the walk's end marked, and only there; and every other offset pointing at the
/// next address in the copied bytes. Each frame's stack pointer lies just above the slot of
/// the return address that led to it, as the probe's own walk assumes.
fn assert_consistent(copy: &StackCopy, unwound: &Unwound) {
    let Unwound {
        addresses,
        return_offsets,
        found_by,
    } = unwound;
    assert_eq!(addresses.first(), Some(&copy.ip), "{unwound:x?}");
    assert_eq!(found_by.first(), Some(&FoundBy::Ip), "{unwound:x?}");
    assert_eq!(return_offsets.len(), addresses.len(), "{unwound:x?}");
    assert_eq!(found_by.len(), addresses.len(), "{unwound:x?}");
    assert!(addresses.len() <= MAX_FRAMES, "{unwound:x?}");
    let pcs: Vec<u64> = return_offsets.iter().map(|&(pc, _)| pc).collect();
    assert_eq!(&pcs, addresses, "{unwound:x?}");
    let (last, inner) = return_offsets.split_last().unwrap();
    assert_eq!(last.1, OUTERMOST_FRAME, "{unwound:x?}");
    // Where the current frame's stack pointer lies in the copy.
    let mut frame_sp = 0usize;
    for (i, &(pc, offset)) in inner.iter().enumerate() {
        assert_ne!(offset, OUTERMOST_FRAME, "frame {i} ({pc:#x}): {unwound:x?}");
        let slot = frame_sp + usize::try_from(offset).unwrap();
        let word = copy.bytes[slot..slot + 8].try_into().unwrap();
        assert_eq!(
            u64::from_le_bytes(word),
            addresses[i + 1],
            "frame {i} ({pc:#x}): offset {offset} is not the next return address: {unwound:x?}"
        );
        frame_sp = slot + 8;
    }
}

#[test]
fn the_fixture_unwinds_through_its_cfi() {
    let (symbolizer, mut unwinder) = own_process();
    let copy = fixture_copy(SP);
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(unwound, fixture_unwound());
    assert_consistent(&copy, &unwound);
}

#[test]
fn modules_read_on_first_unwind_unwind_the_same() {
    let symbolizer = Symbolizer::new(std::process::id(), &[]).unwrap();
    let mut unwinder = DwarfUnwinder::new(&symbolizer, false);
    assert!(unwinder.added.is_empty(), "no module is read up front");
    let unwound = unwinder.unwind(&fixture_copy(SP), &symbolizer);
    assert_eq!(unwound, fixture_unwound());
}

#[test]
fn a_stack_pointer_off_eight_byte_alignment_unwinds_the_same() {
    let (symbolizer, mut unwinder) = own_process();
    for misalign in 1..8 {
        let copy = fixture_copy(SP + misalign);
        let unwound = unwinder.unwind(&copy, &symbolizer);
        assert_eq!(unwound, fixture_unwound(), "sp misaligned by {misalign}");
        assert_consistent(&copy, &unwound);
    }
}

#[test]
fn a_copy_too_short_ends_the_walk_at_the_last_frame_it_holds() {
    let (symbolizer, mut unwinder) = own_process();
    let full = fixture_unwound();
    let whole = fixture_copy(SP);
    for len in 0..=whole.bytes.len() {
        let copy = StackCopy {
            bytes: whole.bytes[..len].to_vec(),
            ..whole.clone()
        };
        // The leaf reads sp+0 and sp+8, the middle sp+40, the outer sp+48 and sp+56.
        let frames = match len {
            0..16 => 1,
            16..48 => 2,
            48..64 => 3,
            _ => 4,
        };
        let unwound = unwinder.unwind(&copy, &symbolizer);
        assert_eq!(unwound.addresses, full.addresses[..frames], "{len} bytes");
        assert_eq!(unwound.found_by, full.found_by[..frames], "{len} bytes");
        let mut offsets = full.return_offsets[..frames].to_vec();
        offsets[frames - 1].1 = OUTERMOST_FRAME;
        assert_eq!(unwound.return_offsets, offsets, "{len} bytes");
        assert_consistent(&copy, &unwound);
    }
}

#[test]
fn an_empty_copy_gives_the_ip_alone() {
    let (symbolizer, mut unwinder) = own_process();
    let copy = StackCopy {
        bytes: Vec::new(),
        ..fixture_copy(SP)
    };
    let ip = copy.ip;
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(
        unwound,
        Unwound {
            addresses: vec![ip],
            return_offsets: vec![(ip, OUTERMOST_FRAME)],
            found_by: vec![FoundBy::Ip],
        }
    );
}

#[test]
fn an_ip_of_zero_gives_itself_alone() {
    let (symbolizer, mut unwinder) = no_modules();
    let copy = hand_built(0, SP, &[SP + 16, 0x40_1000, 0, 0x40_2000]);
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(
        unwound,
        Unwound {
            addresses: vec![0],
            return_offsets: vec![(0, OUTERMOST_FRAME)],
            found_by: vec![FoundBy::Ip],
        }
    );
}

#[test]
fn an_ip_outside_every_module_unwinds_by_frame_pointers_into_cfi() {
    let (symbolizer, mut unwinder) = own_process();
    let [_, _, outer_ret, root_ret] = fixture_returns();
    // Nothing is mapped at 0x10. Its caller is the fixture's outer function: rbp at sp+16 is
    // the frame it chained, and outer's own frame follows from sp+32.
    let ip = 0x10;
    let copy = hand_built(
        ip,
        SP + 16,
        &[0xdead, 0xbeef, SP + 32, outer_ret, 0, root_ret],
    );
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(
        unwound,
        Unwound {
            addresses: vec![ip, outer_ret, root_ret],
            return_offsets: vec![(ip, 24), (outer_ret, 8), (root_ret, OUTERMOST_FRAME)],
            found_by: vec![FoundBy::Ip, FoundBy::FramePointers, FoundBy::Cfi],
        }
    );
    assert_consistent(&copy, &unwound);
}

#[test]
fn an_ip_outside_every_module_with_rbp_outside_the_copy_gives_the_ip_alone() {
    let (symbolizer, mut unwinder) = own_process();
    let copy = hand_built(0x10, SP + 0x1000, &[SP + 16, 0x40_1000]);
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(unwound.addresses, [0x10]);
    assert_eq!(unwound.return_offsets, [(0x10, OUTERMOST_FRAME)]);
}

#[test]
fn without_modules_frame_pointers_are_followed_to_a_zero_rbp() {
    let (symbolizer, mut unwinder) = no_modules();
    // Three frames of 32, 16 and 48 bytes; the last saved rbp is 0.
    let copy = hand_built(
        0x40_1000,
        SP + 16,
        &[
            1,
            2,
            SP + 32,
            0x40_2000,
            SP + 80,
            0x40_3000,
            3,
            4,
            5,
            6,
            0,
            0x40_4000,
        ],
    );
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(
        unwound,
        Unwound {
            addresses: vec![0x40_1000, 0x40_2000, 0x40_3000, 0x40_4000],
            return_offsets: vec![
                (0x40_1000, 24),
                (0x40_2000, 8),
                (0x40_3000, 40),
                (0x40_4000, OUTERMOST_FRAME),
            ],
            found_by: vec![
                FoundBy::Ip,
                FoundBy::FramePointers,
                FoundBy::FramePointers,
                FoundBy::FramePointers,
            ],
        }
    );
    assert_consistent(&copy, &unwound);
}

#[test]
fn a_frame_pointer_chain_that_loops_ends() {
    let (symbolizer, mut unwinder) = no_modules();
    // The saved rbp at sp+16 points at itself.
    let copy = hand_built(0x40_1000, SP + 16, &[1, 2, SP + 16, 0x40_2000, 3, 4]);
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(unwound.addresses, [0x40_1000, 0x40_2000]);
    assert_consistent(&copy, &unwound);
}

#[test]
fn a_zero_return_address_ends_the_walk() {
    let (symbolizer, mut unwinder) = no_modules();
    let copy = hand_built(
        0x40_1000,
        SP,
        &[SP + 16, 0x40_2000, SP + 32, 0, 0, 0x40_3000],
    );
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(unwound.addresses, [0x40_1000, 0x40_2000]);
    assert_consistent(&copy, &unwound);
}

#[test]
fn a_deeper_stack_stops_at_the_frame_limit() {
    let (symbolizer, mut unwinder) = no_modules();
    // More frames of 16 bytes than a stack's key covers, each chained to the next.
    let mut words = Vec::new();
    for frame in 0..MAX_FRAMES as u64 + 100 {
        words.extend([SP + 16 * (frame + 1), 0x40_0000 + 16 * frame]);
    }
    let copy = hand_built(0x3f_fff0, SP, &words);
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_eq!(unwound.addresses.len(), MAX_FRAMES);
    assert_eq!(
        unwound.addresses[MAX_FRAMES - 1],
        0x40_0000 + 16 * (MAX_FRAMES as u64 - 2)
    );
    assert_consistent(&copy, &unwound);
}

// A real stack: the test calls a, a calls b, b calls c, and c copies its registers and the
// stack above them as the probe would at an allocator's return.

#[inline(never)]
fn unwind_chain_a(limit: u64) -> StackCopy {
    // Used after the call, so that the call is no tail call: each function keeps its frame.
    black_box(unwind_chain_b(black_box(limit)))
}

#[inline(never)]
fn unwind_chain_b(limit: u64) -> StackCopy {
    black_box(unwind_chain_c(black_box(limit)))
}

/// The registers here, and the stack from sp up to `limit`.
#[inline(never)]
fn unwind_chain_c(limit: u64) -> StackCopy {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers; touches no memory.
    unsafe {
        core::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let len = usize::try_from(limit - sp).unwrap();
    // SAFETY: [sp, limit) lies in this thread's stack, mapped and readable: this function's
    // frame and its callers' up to a local of the test, which called them.
    let bytes = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
    StackCopy { ip, sp, bp, bytes }
}

#[test]
fn unwinds_a_stack_of_this_process() {
    let (mut symbolizer, mut unwinder) = own_process();
    // A local of this function lies above the frames of the calls it makes.
    let anchor = 0u64;
    let limit = black_box(&raw const anchor) as u64 + 8;
    let copy = unwind_chain_a(limit);
    let unwound = unwinder.unwind(&copy, &symbolizer);
    assert_consistent(&copy, &unwound);
    assert!(unwound.addresses.len() >= 4, "{unwound:x?}");
    let expected = [
        "unwind_chain_c",
        "unwind_chain_b",
        "unwind_chain_a",
        "unwinds_a_stack_of_this_process",
    ];
    for (address, function) in unwound.addresses.iter().zip(expected) {
        let frames = symbolizer.symbolize(*address);
        // With line tables only (the release profile), DWARF names a function without its path.
        let name = frames.last().unwrap().function.as_deref();
        assert_eq!(
            name.and_then(|name| name.rsplit("::").next()),
            Some(function),
            "{address:#x}: {frames:?}"
        );
    }
    // This test binary has CFI: every frame up to the test's came from it.
    assert_eq!(
        unwound.found_by[..4],
        [FoundBy::Ip, FoundBy::Cfi, FoundBy::Cfi, FoundBy::Cfi]
    );
}

/// The ELF vaddr at the start of a code mapping at `offset` in its file.
fn vaddr_at(offset: u64, segments: &[LoadSegment]) -> Option<u64> {
    let mapping = Mapping {
        start: 0x5555_5555_0000 + offset,
        end: 0x5555_5560_0000 + offset,
        offset,
        readable: true,
        writable: false,
        executable: true,
        pseudo: None,
        path: None,
        deleted: false,
    };
    vaddr_at_start(&mapping, segments)
}

/// A PT_LOAD: file offset, file size, vaddr.
fn load(file_offset: u64, file_size: u64, vaddr: u64) -> LoadSegment {
    LoadSegment {
        file_offset,
        file_size,
        vaddr,
    }
}

#[test]
fn a_mapping_belongs_to_the_segment_that_starts_in_its_first_page() {
    // lld's layout: the code starts in the page where the read-only data ends, one page higher
    // in memory than in the file. Its mapping starts at that shared page.
    let segments = [
        load(0, 0x2b_8e00, 0),
        load(0x2b_8e00, 0x62_e920, 0x2b_9e00),
        load(0x8e_7720, 0x8_2dd8, 0x8e_9720),
    ];
    assert_eq!(vaddr_at(0x2b_8000, &segments), Some(0x2b_9000));
    // Further in, where only the code segment lies (a mapping split by mprotect).
    assert_eq!(vaddr_at(0x2c_0000, &segments), Some(0x2c_1000));
}

#[test]
fn page_aligned_segments_map_as_they_lie() {
    // GNU ld's -z separate-code: each segment starts a page of its own.
    let segments = [load(0, 0x5f0, 0), load(0x1000, 0x1d5, 0x1000)];
    assert_eq!(vaddr_at(0x1000, &segments), Some(0x1000));
    // A shared library whose code lies a page higher in memory than in the file.
    let segments = [load(0, 0x2_7000, 0), load(0x2_8000, 0x17_5000, 0x2_9000)];
    assert_eq!(vaddr_at(0x2_8000, &segments), Some(0x2_9000));
    assert_eq!(vaddr_at(0x20_0000, &segments), None);
}
