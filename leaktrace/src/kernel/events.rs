//! Decoding the ring buffer's records.

use leaktrace_common::{
    AllocEvent, AllocEventWithStack, EventKind, FreeEvent, STACK_ID_OWN_COPY, StackSample,
};

use crate::stacks::unwind::StackCopy;

/// Where an allocation's stack is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stack {
    /// In the kernel's stack map, under `id`: walked by frame pointers.
    Id(u32),
    /// Copied for CFI unwinding, under this key ([`AllocEvent::stack_hash`]): the
    /// [`Event::StackSample`] of the first allocation with the key came just before it.
    Copied(u64),
    /// Copied for this allocation alone, under a key that is not yet the stack's own
    /// ([`STACK_ID_OWN_COPY`]): the sample just before it, and only that, is its stack.
    OwnCopy(u64),
    /// In the record itself: return addresses, innermost first (at most
    /// [`MAX_STACK_DEPTH`](leaktrace_common::MAX_STACK_DEPTH)), and the key the probe hashed
    /// them into with any deeper ones ([`leaktrace_common::stack_key`]); 0 when the kernel
    /// walked them by frame pointers (the stack map had no room).
    Inline(Vec<u64>, u64),
    /// Not recorded (the kernel could not read it).
    Lost,
}

/// What the target's allocator did, as userspace works with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Alloc {
        pid: u32,
        address: u64,
        size: u64,
        stack: Stack,
        timestamp_ns: u64,
        /// An anonymous mapping (`--mmap`), not a heap block.
        mapping: bool,
    },
    Free {
        pid: u32,
        address: u64,
        /// What the allocator says the block held, where the probe reads it (glibc, `-p`);
        /// else 0.
        size: u64,
        timestamp_ns: u64,
    },
    /// realloc started: its old block is freed, unless the same thread's realloc then fails.
    ReallocFree {
        pid: u32,
        tid: u32,
        address: u64,
        timestamp_ns: u64,
    },
    /// The thread's last realloc failed: its old block is live again.
    ReallocFailed { pid: u32, tid: u32 },
    /// The process forked `child`; `execd` when it was vforked, and so runs another image
    /// already.
    Fork {
        pid: u32,
        child: u32,
        execd: bool,
        timestamp_ns: u64,
    },
    /// munmap of `[address, address + size)`.
    Unmap { pid: u32, address: u64, size: u64 },
    /// The stack of the allocation that follows, whose key is `stack_hash`, for CFI
    /// unwinding.
    StackSample {
        pid: u32,
        stack_hash: u64,
        copy: StackCopy,
    },
    /// The process exec'd: a new program, in a new address space.
    Exec { pid: u32, timestamp_ns: u64 },
}

impl Event {
    /// Decodes one ring buffer record; `None` for a record of the wrong size or kind, which
    /// would mean the object and this binary disagree on the format.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        if bytes.len() == size_of::<FreeEvent>() {
            // SAFETY: the length was checked; the read is unaligned, as below.
            let free = unsafe { bytes.as_ptr().cast::<FreeEvent>().read_unaligned() };
            return (EventKind::try_from(free.kind) == Ok(EventKind::Free)).then_some(
                Event::Free {
                    pid: free.tgid,
                    address: free.address,
                    size: free.size,
                    timestamp_ns: free.timestamp_ns,
                },
            );
        }
        if bytes.len() < size_of::<AllocEvent>() {
            return None;
        }
        // The ring buffer aligns records to 8 bytes, but do not rely on it.
        let raw = unsafe { bytes.as_ptr().cast::<AllocEvent>().read_unaligned() };
        let kind = EventKind::try_from(raw.kind).ok()?;
        let mapping = matches!(kind, EventKind::Mmap | EventKind::MmapWithStack);
        let alloc = |stack| Event::Alloc {
            pid: raw.tgid,
            address: raw.address,
            size: raw.size,
            stack,
            timestamp_ns: raw.timestamp_ns,
            mapping,
        };
        match kind {
            EventKind::Alloc | EventKind::Mmap => Some(alloc(match u32::try_from(raw.stack_id) {
                _ if raw.stack_hash != 0 && raw.stack_id == STACK_ID_OWN_COPY => {
                    Stack::OwnCopy(raw.stack_hash)
                }
                _ if raw.stack_hash != 0 => Stack::Copied(raw.stack_hash),
                Ok(id) => Stack::Id(id),
                Err(_) => Stack::Lost,
            })),
            EventKind::AllocWithStack | EventKind::MmapWithStack => {
                if bytes.len() < size_of::<AllocEventWithStack>() {
                    return None;
                }
                let full = unsafe {
                    bytes
                        .as_ptr()
                        .cast::<AllocEventWithStack>()
                        .read_unaligned()
                };
                let depth = (full.stack_bytes as usize / 8).min(full.frames.len());
                Some(alloc(if depth == 0 {
                    Stack::Lost
                } else {
                    Stack::Inline(full.frames[..depth].to_vec(), raw.stack_hash)
                }))
            }
            // A free comes only in its own short record.
            EventKind::Free => None,
            EventKind::ReallocFree => Some(Event::ReallocFree {
                pid: raw.tgid,
                tid: raw.tid,
                address: raw.address,
                timestamp_ns: raw.timestamp_ns,
            }),
            EventKind::ReallocFailed => Some(Event::ReallocFailed {
                pid: raw.tgid,
                tid: raw.tid,
            }),
            EventKind::StackSample => {
                // Trimmed to the bytes copied: only the header is sure to be there.
                let start = std::mem::offset_of!(StackSample, bytes);
                if bytes.len() < start {
                    return None;
                }
                let sample = bytes.as_ptr().cast::<StackSample>();
                // SAFETY: the header's length was checked; its fields are read unaligned, one
                // at a time, and the array not at all: it may be shorter than declared.
                let (sp, bp) = unsafe {
                    (
                        std::ptr::addr_of!((*sample).sp).read_unaligned(),
                        std::ptr::addr_of!((*sample).bp).read_unaligned(),
                    )
                };
                let copied = (raw.size as usize).min(bytes.len() - start);
                Some(Event::StackSample {
                    pid: raw.tgid,
                    stack_hash: raw.stack_hash,
                    copy: StackCopy {
                        ip: raw.address,
                        sp,
                        bp,
                        bytes: bytes[start..start + copied].to_vec(),
                    },
                })
            }
            EventKind::Munmap => Some(Event::Unmap {
                pid: raw.tgid,
                address: raw.address,
                size: raw.size,
            }),
            EventKind::Fork => Some(Event::Fork {
                pid: raw.tgid,
                child: u32::try_from(raw.address).ok()?,
                execd: raw.size != 0,
                timestamp_ns: raw.timestamp_ns,
            }),
            EventKind::Exec => Some(Event::Exec {
                pid: raw.tgid,
                timestamp_ns: raw.timestamp_ns,
            }),
        }
    }

    pub fn pid(&self) -> u32 {
        match *self {
            Event::Alloc { pid, .. }
            | Event::Free { pid, .. }
            | Event::ReallocFree { pid, .. }
            | Event::ReallocFailed { pid, .. }
            | Event::Unmap { pid, .. }
            | Event::StackSample { pid, .. }
            | Event::Fork { pid, .. }
            | Event::Exec { pid, .. } => pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(record: &T) -> Vec<u8> {
        let ptr = (record as *const T).cast::<u8>();
        unsafe { std::slice::from_raw_parts(ptr, size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_an_allocation_and_a_free() {
        let mut raw = AllocEvent {
            timestamp_ns: 5,
            address: 0x1000,
            size: 24,
            stack_hash: 9,
            tgid: 7,
            tid: 8,
            stack_id: 3,
            kind: EventKind::Alloc as u32,
        };
        assert_eq!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::Alloc {
                pid: 7,
                address: 0x1000,
                size: 24,
                stack: Stack::Copied(9),
                timestamp_ns: 5,
                mapping: false,
            })
        );
        raw.stack_hash = 0;
        assert!(matches!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::Alloc {
                stack: Stack::Id(3),
                ..
            })
        ));
        raw.stack_id = -14;
        assert!(matches!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::Alloc {
                stack: Stack::Lost,
                ..
            })
        ));
        raw.kind = EventKind::Free as u32;
        assert_eq!(
            Event::decode(&bytes_of(&raw)),
            None,
            "a free is a FreeEvent"
        );
        raw.kind = EventKind::ReallocFree as u32;
        assert_eq!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::ReallocFree {
                pid: 7,
                tid: 8,
                address: 0x1000,
                timestamp_ns: 5
            })
        );
        raw.kind = EventKind::ReallocFailed as u32;
        assert_eq!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::ReallocFailed { pid: 7, tid: 8 })
        );
        raw.kind = EventKind::Munmap as u32;
        assert_eq!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::Unmap {
                pid: 7,
                address: 0x1000,
                size: 24
            })
        );
        raw.kind = EventKind::Mmap as u32;
        assert!(matches!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::Alloc { mapping: true, .. })
        ));
        raw.kind = EventKind::Fork as u32;
        assert_eq!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::Fork {
                pid: 7,
                child: 0x1000,
                execd: true,
                timestamp_ns: 5
            })
        );
        raw.kind = EventKind::Exec as u32;
        assert_eq!(
            Event::decode(&bytes_of(&raw)),
            Some(Event::Exec {
                pid: 7,
                timestamp_ns: 5
            })
        );
    }

    #[test]
    fn decodes_a_free_from_its_short_record() {
        let free = FreeEvent {
            timestamp_ns: 5,
            address: 0x1000,
            size: 24,
            tgid: 7,
            kind: EventKind::Free as u32,
        };
        let bytes = bytes_of(&free);
        assert_eq!(bytes.len(), 32, "shorter than an AllocEvent");
        assert_eq!(
            Event::decode(&bytes),
            Some(Event::Free {
                pid: 7,
                address: 0x1000,
                size: 24,
                timestamp_ns: 5
            })
        );
        // A short record of another kind, or cut short, is not one this binary knows.
        for kind in [EventKind::Alloc as u32, 0, 99] {
            let other = bytes_of(&FreeEvent { kind, ..free });
            assert_eq!(Event::decode(&other), None, "kind {kind}");
        }
        assert_eq!(Event::decode(&bytes[..16]), None);
        assert_eq!(Event::decode(&[bytes.clone(), vec![0; 8]].concat()), None);
    }

    #[test]
    fn decodes_an_inline_stack() {
        let mut frames = [0u64; leaktrace_common::MAX_STACK_DEPTH];
        frames[..3].copy_from_slice(&[0xa, 0xb, 0xc]);
        let record = AllocEventWithStack {
            event: AllocEvent {
                timestamp_ns: 1,
                address: 0x2000,
                size: 8,
                stack_hash: 0x77,
                tgid: 7,
                tid: 7,
                stack_id: 0,
                kind: EventKind::AllocWithStack as u32,
            },
            stack_bytes: 24,
            frames,
        };
        let bytes = bytes_of(&record);
        assert!(matches!(
            Event::decode(&bytes),
            Some(Event::Alloc { stack: Stack::Inline(f, 0x77), .. }) if f == [0xa, 0xb, 0xc]
        ));
        assert_eq!(Event::decode(&bytes[..size_of::<AllocEvent>()]), None);
    }

    #[test]
    fn rejects_short_records_and_unknown_kinds() {
        let raw = AllocEvent {
            timestamp_ns: 0,
            address: 0,
            size: 0,
            stack_hash: 0,
            tgid: 0,
            tid: 0,
            stack_id: 0,
            kind: 99,
        };
        assert_eq!(Event::decode(&bytes_of(&raw)), None);
        assert_eq!(Event::decode(&bytes_of(&raw)[..8]), None);
    }
}
