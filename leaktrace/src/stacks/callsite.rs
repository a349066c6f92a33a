//! Call sites: the stack of each ledger site, its symbolized frames, and its label.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    kernel::Stack,
    ledger::{Ledger, SiteId, StackKey},
    stacks::{
        cut::{Cut, CutSites, StackCut},
        labels::{AllocFns, Names, PreparedStack, SiteLabel, label_prepared, simple_name},
        symbolize::{FoundBy, Frame, Symbolizer},
    },
};

/// The frames that are the allocator's own, cut from the top of every stack so that the first
/// frame shown is the code that called it.
#[derive(Clone, Debug, Default)]
pub struct AllocatorFrames {
    /// Modules of the C allocator (where malloc and its family are probed): every leading
    /// frame inside them is cut (libc's strdup or fopen calling malloc).
    pub modules: Vec<PathBuf>,
    /// C++ operators left unprobed because their calls are seen in malloc or free (the plan's
    /// delegated operators), by module and [`simple_name`]: their frames are cut, and only
    /// theirs, as if they had been probed. Other frames of their module (libstdc++'s
    /// `__cxa_allocate_exception`) stay.
    pub operators: Vec<(PathBuf, String)>,
}

/// The raw stacks of the ledger's sites, and their frames once symbolized.
///
/// A site is a distinct stack of return addresses: however the kernel named it (a stack id,
/// the key of a copied stack, or the addresses themselves when sent inline),
/// the same addresses make the same site. Frames are computed on first use and kept.
pub struct CallSites {
    allocator: AllocatorFrames,
    alloc_fns: AllocFns,
    stacks: Vec<Vec<u64>>,
    found_by: Vec<Vec<FoundBy>>,
    frames: Vec<Option<Vec<Frame>>>,
    /// Each symbolized site's frames as labelling needs them, by numbers of `names`.
    prepared: Vec<Option<PreparedStack>>,
    names: Names,
    /// The last labels, with how many sites were prepared then: labels change only when
    /// sites are added, which a steady program stops doing.
    labelled: Option<(usize, Vec<SiteLabel>)>,
    /// The frames of each return address symbolized so far: sites share most of theirs.
    symbolized: HashMap<u64, Vec<Frame>>,
    by_addresses: HashMap<Vec<u64>, StackKey>,
    /// Stacks the kernel named (a stack id, or a copied stack's key).
    by_name: HashMap<Stack, StackKey>,
    /// The sites whose stacks were cut, and what each merged.
    cut: CutSites,
}

impl CallSites {
    /// `allocator` says which leading frames are cut; `alloc_fns` which of the rest are
    /// wrappers, folded into each site's label.
    pub fn new(allocator: AllocatorFrames, alloc_fns: AllocFns) -> Self {
        CallSites {
            allocator,
            alloc_fns,
            stacks: Vec::new(),
            found_by: Vec::new(),
            frames: Vec::new(),
            prepared: Vec::new(),
            names: Names::default(),
            labelled: None,
            symbolized: HashMap::new(),
            by_addresses: HashMap::new(),
            by_name: HashMap::new(),
            cut: CutSites::default(),
        }
    }

    /// The ledger key of a stack seen before, if it was.
    pub fn known_key(&self, stack: &Stack) -> Option<StackKey> {
        match stack {
            Stack::Id(_) | Stack::Copied(_) => self.by_name.get(stack).copied(),
            Stack::OwnCopy(_) => None,
            Stack::Inline(addresses, _) => self.by_addresses.get(addresses).copied(),
            Stack::Lost => Some(Ledger::LOST_STACK),
        }
    }

    /// The ledger key of a stack seen for the first time, whose return addresses are
    /// `addresses`: the key of those addresses, new or not.
    pub fn intern(&mut self, stack: &Stack, addresses: &[u64]) -> StackKey {
        if matches!(stack, Stack::Lost) {
            return Ledger::LOST_STACK;
        }
        let next = self.by_addresses.len() as StackKey;
        let key = *self.by_addresses.entry(addresses.to_vec()).or_insert(next);
        // A copied stack with no copy yet is not named: a later copy under the name may come.
        let named = match stack {
            Stack::Id(_) => true,
            Stack::Copied(_) => !addresses.is_empty(),
            _ => false,
        };
        if named {
            self.by_name.insert(stack.clone(), key);
        }
        key
    }

    /// Stores the return addresses (innermost first) of a new site.
    /// `found_by` says, address by address, how each was found.
    pub fn add(&mut self, site: SiteId, addresses: Vec<u64>, found_by: Vec<FoundBy>) {
        let index = site.index();
        if self.stacks.len() <= index {
            self.stacks.resize_with(index + 1, Vec::new);
            self.found_by.resize_with(index + 1, Vec::new);
            self.frames.resize_with(index + 1, || None);
            self.prepared.resize_with(index + 1, || None);
        }
        self.stacks[index] = addresses;
        self.found_by[index] = found_by;
    }

    /// An allocation of `site` whose stack was cut ([`Cut::apply`]).
    pub fn note_cut(&mut self, site: SiteId, cut: Cut) {
        self.cut.note(site, cut);
    }

    /// Where the site's stack was cut and how many stacks it merged, if it was.
    pub fn cut(&self, site: SiteId) -> Option<StackCut> {
        self.cut.of(site)
    }

    /// The label of every site, by [`SiteId::index`], each named among all the others
    /// symbolized ([`label_prepared`]): which wrappers the automatic rule finds, and what
    /// tells sites of one label apart, depend on them. The live view, the windows and the
    /// final report name each site alike, its freed sites included.
    ///
    /// `first` are symbolized in any case. With a `budget`, the other sites not symbolized
    /// yet are symbolized until it is spent (the rest wait for the next call, with an empty
    /// label meanwhile): the live view must not hold up the events for long.
    pub fn labels(
        &mut self,
        first: &[SiteId],
        budget: Option<Duration>,
        symbolizer: &mut Symbolizer,
    ) -> &[SiteLabel] {
        for &site in first {
            self.frames(site, symbolizer);
        }
        let deadline = budget.map(|budget| Instant::now() + budget);
        for index in 0..self.stacks.len() {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            self.frames(SiteId(index as u32), symbolizer);
        }
        let known: Vec<usize> = (0..self.stacks.len())
            .filter(|&index| self.prepared[index].is_some())
            .collect();
        let fresh = self.labelled.as_ref().is_some_and(|(count, labels)| {
            *count == known.len() && labels.len() == self.stacks.len()
        });
        if fresh {
            return self.labelled.as_ref().map_or(&[], |(_, labels)| labels);
        }
        let stacks: Vec<&[Frame]> = known
            .iter()
            .map(|&index| self.frames[index].as_deref().unwrap_or_default())
            .collect();
        let prepared: Vec<&PreparedStack> = known
            .iter()
            .filter_map(|&index| self.prepared[index].as_ref())
            .collect();
        let computed = label_prepared(&stacks, &prepared, &self.names, self.alloc_fns.auto());
        let mut labels = vec![SiteLabel::default(); self.stacks.len()];
        let count = known.len();
        for (index, label) in known.into_iter().zip(computed) {
            labels[index] = label;
        }
        self.labelled = Some((count, labels));
        self.labelled.as_ref().map_or(&[], |(_, labels)| labels)
    }

    /// 12 hex digits that stay the same while the site's stack does: a hash of each frame's
    /// module name and offset in it, not of addresses, which differ from run to run.
    pub fn stable_id(&mut self, site: SiteId, symbolizer: &mut Symbolizer) -> String {
        // FNV-1a: tiny, and stable across builds of leaktrace (std's hasher is not).
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for frame in self.frames(site, symbolizer) {
            let module = frame
                .module
                .as_deref()
                .map(|m| m.rsplit('/').next().unwrap_or(m));
            let place = frame
                .module_offset
                .as_deref()
                .or(frame.function.as_deref())
                .unwrap_or(&frame.address);
            for byte in [module.unwrap_or(""), "+", place, ";"].concat().bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{:012x}", hash & 0xffff_ffff_ffff)
    }

    /// The site's frames, innermost first, starting at the allocator's caller: past the
    /// leading frames in the C allocator's modules, and past seen-through C++ operators
    /// ([`AllocatorFrames`]). When the stack never leaves the allocator (a frame-pointer walk
    /// that stopped inside a libc function such as strdup), its frames are kept: a libc
    /// frame beats no frame. The stack ends at the first address outside executable memory:
    /// past it, a frame-pointer walk through code without frame pointers reads data, not
    /// return addresses.
    pub fn frames(&mut self, site: SiteId, symbolizer: &mut Symbolizer) -> &[Frame] {
        let index = site.index();
        if self.frames.len() <= index {
            self.add(site, Vec::new(), Vec::new());
        }
        if self.frames[index].is_none() {
            let stack = &self.stacks[index];
            // With no map of the image at all (it was gone before it could be read), the raw
            // addresses are all there is; otherwise the stack ends where code does.
            let code = if stack.iter().any(|&a| symbolizer.is_code(a)) {
                stack.iter().take_while(|&&a| symbolizer.is_code(a)).count()
            } else {
                stack.len()
            };
            let addresses = &stack[..code];
            let first_caller = addresses
                .iter()
                .position(|&a| {
                    symbolizer
                        .module_of(a)
                        .is_none_or(|m| !self.allocator.modules.iter().any(|x| x == m))
                })
                .unwrap_or(0);
            let found_by = &self.found_by[index];
            let symbolized = &mut self.symbolized;
            let mut by_address: Vec<Vec<Frame>> = (first_caller..addresses.len())
                .map(|i| {
                    let how = found_by.get(i).copied().unwrap_or(FoundBy::FramePointers);
                    let mut frames = symbolized
                        .entry(addresses[i])
                        .or_insert_with(|| symbolizer.symbolize(addresses[i]))
                        .clone();
                    frames.iter_mut().for_each(|f| f.found_by = how);
                    frames
                })
                .collect();
            let operators = by_address
                .iter()
                .take_while(|frames| self.is_operator(frames))
                .count();
            if operators < by_address.len() {
                by_address.drain(..operators);
            }
            let frames: Vec<Frame> = by_address.into_iter().flatten().collect();
            self.prepared[index] = Some(PreparedStack::new(
                &frames,
                &self.alloc_fns,
                &mut self.names,
            ));
            self.frames[index] = Some(frames);
        }
        self.frames[index].as_deref().unwrap_or_default()
    }

    /// True when the frames of one address are a seen-through operator's: the function the
    /// address is in (the last, not inlined, frame) is one of them, in its module.
    fn is_operator(&self, frames: &[Frame]) -> bool {
        let Some(frame) = frames.last() else {
            return false;
        };
        let (Some(module), Some(function)) = (&frame.module, &frame.function) else {
            return false;
        };
        let simple = simple_name(function);
        self.allocator
            .operators
            .iter()
            .any(|(m, operator)| m.as_os_str() == module.as_str() && *operator == simple)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::maps::ProcessMaps;

    const LIBC: u64 = 0x7f00_0000_1000;
    const APP: u64 = 0x5500_0000_1000;
    const HEAP: u64 = 0x5600_0000_1000;

    fn call_sites_and_symbolizer() -> (CallSites, Symbolizer) {
        let maps = ProcessMaps::parse(
            "550000001000-550000002000 r-xp 00001000 fe:01 1 /usr/bin/app
560000001000-560000002000 rw-p 00000000 00:00 0 [heap]
7f0000001000-7f0000002000 r-xp 00001000 fe:01 2 /usr/lib/libc.so.6
",
        );
        (
            CallSites::new(
                AllocatorFrames {
                    modules: vec!["/usr/lib/libc.so.6".into()],
                    operators: Vec::new(),
                },
                AllocFns::default(),
            ),
            Symbolizer::from_maps(maps),
        )
    }

    fn addresses(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| f.address.clone()).collect()
    }

    #[test]
    fn allocator_frames_are_cut_from_the_top_and_garbage_ends_the_stack() {
        let (mut sites, mut symbolizer) = call_sites_and_symbolizer();
        let site = SiteId(0);
        sites.add(
            site,
            vec![LIBC + 5, APP + 1, APP + 2, HEAP + 8, APP + 3],
            Vec::new(),
        );
        assert_eq!(
            addresses(sites.frames(site, &mut symbolizer)),
            [format!("{:#x}", APP + 1), format!("{:#x}", APP + 2)]
        );
    }

    #[test]
    fn a_stack_of_an_image_never_mapped_keeps_its_raw_addresses() {
        let (mut sites, _) = call_sites_and_symbolizer();
        let mut blind = Symbolizer::from_maps(ProcessMaps::default());
        let site = SiteId(0);
        sites.add(site, vec![HEAP + 1, HEAP + 2], Vec::new());
        assert_eq!(
            addresses(sites.frames(site, &mut blind)),
            [format!("{:#x}", HEAP + 1), format!("{:#x}", HEAP + 2)]
        );
    }

    #[test]
    fn a_stack_entirely_inside_the_allocator_keeps_its_frames() {
        let (mut sites, mut symbolizer) = call_sites_and_symbolizer();
        let site = SiteId(0);
        sites.add(site, vec![LIBC + 5, HEAP], Vec::new());
        assert_eq!(
            addresses(sites.frames(site, &mut symbolizer)),
            [format!("{:#x}", LIBC + 5)]
        );
    }

    #[test]
    fn only_the_seen_through_operators_of_a_module_are_its_allocator_frames() {
        let libstdcxx = "/usr/lib/libstdc++.so.6";
        let sites = CallSites::new(
            AllocatorFrames {
                modules: Vec::new(),
                operators: vec![(libstdcxx.into(), "operator new".into())],
            },
            AllocFns::default(),
        );
        let frame = |function: &str, module: &str| Frame::of_function(function, Some(module));
        assert!(sites.is_operator(&[frame("operator new(unsigned long)", libstdcxx)]));
        assert!(!sites.is_operator(&[frame("__cxa_allocate_exception", libstdcxx)]));
        assert!(!sites.is_operator(&[frame("operator new(unsigned long)", "/usr/bin/app")]));
    }

    #[test]
    fn the_same_addresses_make_the_same_site_however_they_came() {
        let (mut sites, _) = call_sites_and_symbolizer();
        let by_id = Stack::Id(7);
        assert_eq!(sites.known_key(&by_id), None);
        let key = sites.intern(&by_id, &[1, 2]);
        assert_eq!(sites.known_key(&by_id), Some(key));
        // A copied stack that unwound to the same addresses, and an inline copy of them.
        let copied = Stack::Copied(5);
        assert_eq!(sites.intern(&copied, &[1, 2]), key);
        assert_eq!(sites.known_key(&Stack::Inline(vec![1, 2], 9)), Some(key));
        assert_ne!(sites.intern(&Stack::Inline(vec![1, 3], 9), &[1, 3]), key);
        assert_eq!(sites.known_key(&Stack::Lost), Some(Ledger::LOST_STACK));
    }
}
