//! Unwinding without a probe. Nothing here needs root.

use super::vaddr_at_start;
use crate::{stacks::symbolize::LoadSegment, target::maps::Mapping};

/// The ELF vaddr at the start of a code mapping at `offset` in its file.
fn vaddr_at(offset: u64, segments: &[LoadSegment]) -> Option<u64> {
    let mapping = Mapping {
        start: 0x5555_5555_0000 + offset,
        end: 0x5555_5560_0000 + offset,
        offset,
        executable: true,
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
