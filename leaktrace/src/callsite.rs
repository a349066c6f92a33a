//! Call sites: the stack of each ledger site, and its symbolized frames.

use std::{collections::HashMap, path::PathBuf};

use crate::{
    events::Stack,
    ledger::{Ledger, SiteId, StackKey},
    symbolize::{Frame, Symbolizer},
};

/// Inline stacks get keys above every kernel stack id (a u32).
const FIRST_INLINE_KEY: StackKey = 1 << 32;

/// The raw stacks of the ledger's sites, and their frames once symbolized.
///
/// Frames are computed on first use and kept: a stack id always names the same stack, so each
/// is symbolized once however many reports show it.
pub struct CallSites {
    allocator: PathBuf,
    stacks: Vec<Vec<u64>>,
    frames: Vec<Option<Vec<Frame>>>,
    inline_keys: HashMap<Vec<u64>, StackKey>,
}

impl CallSites {
    /// `allocator` is the probed library (as the target sees it): its frames are cut from the
    /// top of every stack, so the first frame shown is the code that called it.
    pub fn new(allocator: PathBuf) -> Self {
        CallSites {
            allocator,
            stacks: Vec::new(),
            frames: Vec::new(),
            inline_keys: HashMap::new(),
        }
    }

    /// The ledger key of a stack. Inline stacks with the same frames get the same key, so they
    /// make one site however many times they arrive.
    pub fn key(&mut self, stack: &Stack) -> StackKey {
        match stack {
            Stack::Id(id) => StackKey::from(*id),
            Stack::Lost => Ledger::LOST_STACK,
            Stack::Inline(frames) => {
                let next = FIRST_INLINE_KEY + self.inline_keys.len() as StackKey;
                *self.inline_keys.entry(frames.clone()).or_insert(next)
            }
        }
    }

    /// Stores the return addresses (innermost first) of a new site.
    pub fn add(&mut self, site: SiteId, addresses: Vec<u64>) {
        let index = site.index();
        if self.stacks.len() <= index {
            self.stacks.resize_with(index + 1, Vec::new);
            self.frames.resize_with(index + 1, || None);
        }
        self.stacks[index] = addresses;
    }

    /// The site's frames, innermost first, starting at the allocator's caller. When the stack
    /// never leaves the allocator library (a frame-pointer walk that stopped inside a libc
    /// function such as strdup), its frames are kept: a libc frame beats no frame.
    pub fn frames(&mut self, site: SiteId, symbolizer: &mut Symbolizer) -> &[Frame] {
        let index = site.index();
        if self.frames.len() <= index {
            self.add(site, Vec::new());
        }
        if self.frames[index].is_none() {
            let addresses = &self.stacks[index];
            let first_caller = addresses
                .iter()
                .position(|&a| symbolizer.module_of(a) != Some(self.allocator.as_path()))
                .unwrap_or(0);
            let frames = addresses[first_caller..]
                .iter()
                .flat_map(|&address| symbolizer.symbolize(address))
                .collect();
            self.frames[index] = Some(frames);
        }
        self.frames[index].as_deref().unwrap_or_default()
    }
}
