//! Site labels: each site named by the function that called the allocator, past the wrappers
//! it went through.
//!
//! A program rarely calls malloc itself: redis calls `zmalloc`, GCC `xcalloc`, CPython
//! `PyObject_Malloc`, glib `g_malloc`, Rust `alloc::alloc::alloc`. Named by its first frame,
//! every site of such a program reads the same. The innermost frames that are allocator
//! wrappers are therefore folded into the site's label: the label is the first frame that is
//! not one, and the view shows the wrapper it calls (`createClient ← zmalloc`). The wrappers
//! stay in the site's stack.
//!
//! A wrapper is a function that
//! - matches the built-in list ([`BUILT_IN`]), unless `--no-default-alloc-fns`;
//! - or matches an `--alloc-fn` regular expression;
//! - or is found by the automatic rule ([`AUTO_CALLERS`]), unless `--no-auto-alloc-fns`.
//!
//! Names are matched whole against the function's [`simple_name`] (`std::vector::push_back`,
//! without return type, arguments or template arguments); `--alloc-fn` expressions are also
//! tried against the whole demangled name.

use std::{borrow::Cow, collections::HashMap, sync::LazyLock};

use regex::Regex;

use super::symbolize::Frame;

/// The built-in wrappers, as regular expressions over [`simple_name`]s, each group with why
/// its functions count: each obtains memory on its caller's behalf (and at most fills it in,
/// as strdup copies), so the block belongs to whoever called it.
pub const BUILT_IN: &[&str] = &[
    // The C allocator itself (seen as frames in static binaries, interposers, and allocators
    // probed elsewhere than where a library's calls go), and glibc's aliases of it.
    r"(__libc_)?(malloc|calloc|realloc|reallocarray|posix_memalign|aligned_alloc|memalign|valloc|pvalloc)",
    // C strings copied into a new block: malloc plus memcpy.
    r"(__)?(strdup|strndup|wcsdup)",
    // C++ operator new (every variant: the arguments are not part of the simple name).
    r"operator new(\[\])?",
    // C++ allocators and the containers' allocation helpers: each only calls operator new
    // for a buffer or a node (GCC's `_M_allocate`, `_M_get_node`, `_M_create_node`,
    // `_M_allocate_node`, `_M_allocate_buckets`, `_M_allocate_map`, and std::string's
    // `_M_create`).
    r"std::(allocator|__new_allocator|allocator_traits|__allocated_ptr)::.*",
    r"__gnu_cxx::(new_allocator|__alloc_traits|malloc_allocator|__pool_alloc)::.*",
    r"std::.*::(_M_allocate|_M_get_node|_M_create_node|_M_allocate_node|_M_allocate_buckets|_M_allocate_map|_M_create)",
    // std::make_shared and friends: operator new for the object and its control block.
    r"std::(make_unique|make_shared|allocate_shared|__allocate_guarded|__make_shared)",
    r"std::(__shared_count|__shared_ptr|shared_ptr)::(__shared_count|__shared_ptr|shared_ptr)",
    // The standard containers' members (and GCC's helpers of its hash tables): they allocate
    // only their own storage, which belongs to whoever holds the container, so the block is
    // the caller's. pprof drops Go's runtime.growslice and runtime.makemap for the same
    // reason; without them a vector's growth is named `push_back`, not by who pushed.
    r"std::(__cxx11::)?(vector|basic_string|string|wstring|deque|list|forward_list|map|multimap|set|multiset|unordered_map|unordered_multimap|unordered_set|unordered_multiset|_Vector_base|_Deque_base|_List_base|_Fwd_list_base|_Rb_tree|_Hashtable)::.*",
    r"std::__detail::(_Hashtable_alloc|_Map_base|_Insert_base|_Insert|_AllocNode|_ReuseOrAllocNode)::.*",
    // Rust's alloc crate, whole: the global allocator (`alloc::alloc::*`), RawVec, and Box,
    // Rc, Arc, Vec, String, the collections and format! built on it, for the reason above.
    // Its frames are known by name, or, for inlined frames that line-tables-only debug info
    // names without their path, by their file (`…/library/alloc/src/raw_vec/mod.rs`, see
    // [`rust_path`]). Then the allocator shims, System, and the hash tables of std (hashbrown).
    r"alloc::.*",
    r"__rust_(alloc|alloc_zeroed|realloc)|__rdl_(alloc|alloc_zeroed|realloc)|__rg_(alloc|alloc_zeroed|realloc)",
    r"std::alloc::.*|std::sys::(pal::unix::)?alloc::.*",
    r"hashbrown::.*|std::collections::hash::(map|set)::.*",
    r"core::iter::traits::iterator::(Iterator::)?collect",
    // CPython's memory interfaces (the raw, mem and object domains, pymalloc and its debug
    // hooks) and its object allocation, which is operator new for Python objects.
    r"_?PyMem_(Raw)?(Malloc|Calloc|Realloc)|_PyMem_Debug(Raw)?(Malloc|Calloc|Realloc|Alloc)",
    r"_?PyObject_(Malloc|Calloc|Realloc)|pymalloc_(alloc|realloc)|allocate_from_new_pool|new_arena",
    r"PyType_GenericAlloc|_PyType_AllocNoTrack|_?PyObject_(New|NewVar)|_?PyObject_GC_(New|NewVar|Malloc|Calloc|Link)|gc_alloc",
    // GLib's allocator and its copies of memory and strings.
    r"g_(try_)?(malloc|malloc0|realloc)(_n)?|g_slice_(alloc|alloc0|copy)|g_aligned_alloc0?|g_memdup2?|g_strn?dup",
    // libiberty (GCC, binutils, GDB): malloc that aborts on failure, and its copies.
    r"x(malloc|calloc|realloc|strdup|strndup|memdup)",
    // redis's zmalloc.c.
    r"z(try)?(malloc|calloc|realloc)(_usable)?(_internal)?|zmalloc_no_tcache|zcalloc_num|zstrdup",
    // OpenSSL's allocator, behind every allocation of libssl and libcrypto.
    r"CRYPTO_(malloc|zalloc|realloc|clear_realloc|strdup|strndup|memdup)",
    // SQLite's allocator (the sqlite3 module of Python, and countless programs embed it).
    r"sqlite3_(malloc|malloc64|realloc|realloc64)|sqlite3(Malloc|MallocZero|Realloc|MemMalloc|MemRealloc|DbMallocRaw|DbMallocRawNN|DbMallocZero|DbRealloc)|mallocWithAlarm|dbMallocRawFinish",
    // tcmalloc's and jemalloc's own entry points, when they are frames of a stack.
    r"tc_(malloc|calloc|realloc|memalign|new|newarray)(_nothrow)?|(je_)?(mallocx|rallocx)",
];

/// Automatic detection: a function is a wrapper when, among the sites of the capture, it is
/// the first frame past the wrappers already known of sites called from at least this many
/// different functions, and it never appears further out in any stack (every one of its
/// sites goes straight from it to the allocator, through known wrappers at most). Applied
/// again until nothing new is found, so a wrapper of a wrapper is found too. A frame without
/// a name is known by its module and return address ([`identity`]).
pub const AUTO_CALLERS: usize = 3;

static BUILT_IN_REGEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!("^(?:{})$", BUILT_IN.join("|"))).expect("the built-in list compiles")
});

/// Which functions are allocator wrappers.
#[derive(Clone, Debug)]
pub struct AllocFns {
    built_in: bool,
    added: Vec<Regex>,
    auto: bool,
}

impl Default for AllocFns {
    /// The built-in list and automatic detection.
    fn default() -> Self {
        AllocFns::new(true, Vec::new(), true)
    }
}

impl AllocFns {
    /// `added` are `--alloc-fn` expressions as [`alloc_fn`] compiled them.
    pub fn new(built_in: bool, added: Vec<Regex>, auto: bool) -> Self {
        AllocFns {
            built_in,
            added,
            auto,
        }
    }

    /// Whether wrappers are also found automatically ([`AUTO_CALLERS`]).
    pub fn auto(&self) -> bool {
        self.auto
    }

    /// True when `frame` is in the list or named by `--alloc-fn`.
    pub fn listed(&self, frame: &Frame) -> bool {
        frame
            .function
            .as_deref()
            .is_some_and(|function| self.listed_as(frame, function, &simple_name(function)))
    }

    /// [`AllocFns::listed`] of a frame of `function`, whose simple name is `simple`.
    fn listed_as(&self, frame: &Frame, function: &str, simple: &str) -> bool {
        let path = rust_path(frame, simple);
        let names = || [Some(simple), path.as_deref()].into_iter().flatten();
        (self.built_in && names().any(|name| BUILT_IN_REGEX.is_match(name)))
            || self
                .added
                .iter()
                .any(|regex| regex.is_match(function) || names().any(|name| regex.is_match(name)))
    }
}

/// The path of a frame of Rust's standard library, from its file: debug info reduced to line
/// tables names inlined functions alone (`finish_grow`), but their file
/// (`/rustc/…/library/alloc/src/raw_vec/mod.rs`) says `alloc::raw_vec`. None for other
/// frames.
pub fn rust_path(frame: &Frame, simple: &str) -> Option<String> {
    let file = frame.file.as_deref()?;
    let (_, within) = file.rsplit_once("/library/")?;
    let (krate, module) = within.split_once("/src/")?;
    let module = module.strip_suffix(".rs")?;
    let module = module
        .strip_suffix("/mod")
        .or_else(|| module.strip_suffix("lib"))
        .unwrap_or(module)
        .trim_end_matches('/');
    let name = simple.strip_prefix(&format!("{krate}::")).unwrap_or(simple);
    let mut path = krate.to_owned();
    for part in module.split('/').filter(|p| !p.is_empty()) {
        path.push_str("::");
        path.push_str(part);
    }
    Some(format!("{path}::{name}"))
}

/// An `--alloc-fn` expression, anchored: it must match a whole name.
pub fn alloc_fn(expression: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{expression})$"))
}

/// A function's name without what tells overloads and instances apart: `void
/// std::vector<int, std::allocator<int> >::_M_realloc_insert<int>(…) const` →
/// `std::vector::_M_realloc_insert`, `<alloc::alloc::Global as core::alloc::Allocator>::allocate`
/// → `alloc::alloc::Global::allocate`, `operator new[](unsigned long)` → `operator new[]`,
/// `zmalloc.constprop.0` → `zmalloc`.
pub fn simple_name(name: &str) -> String {
    let name = name.split(" [clone ").next().unwrap_or(name);
    let name = name.replace("(anonymous namespace)", "{anonymous}");
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    // Depth inside <…> and (…); only what is at depth 0 is kept.
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if depth == 0 && starts_operator(&chars, i) {
            out.push_str("operator");
            i += "operator".len();
            // The operator's own symbol, up to its argument list: `()`, `<<`, ` new[]`, ` bool`.
            if chars[i..].starts_with(&['(', ')']) {
                out.push_str("()");
                i += 2;
            }
            while i < chars.len() && chars[i] != '(' {
                out.push(chars[i]);
                i += 1;
            }
            continue;
        }
        match c {
            // Rust's `<Type as Trait>::f`, at the start of a path segment: the type.
            '<' if depth == 0 && (out.is_empty() || out.ends_with("::")) => {
                let end = matching(&chars, i, '<', '>').unwrap_or(chars.len());
                let inner: String = chars[i + 1..end.min(chars.len())].iter().collect();
                let own = top_level_split(&inner, " as ").unwrap_or(&inner);
                let own = own.strip_prefix("impl ").unwrap_or(own);
                out.push_str(&simple_name(own));
                i = end + 1;
                continue;
            }
            // `->` in a function type is no bracket.
            '>' if i > 0 && chars[i - 1] == '-' => {}
            '<' | '(' => depth += 1,
            '>' | ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
        i += 1;
    }
    let mut out = out.trim().to_owned();
    for qualifier in [" const", " volatile", " &&", " &", " noexcept"] {
        while let Some(rest) = out.strip_suffix(qualifier) {
            out = rest.trim_end().to_owned();
        }
    }
    // A return type before the name (templates have one): the name is the last word, or
    // from the word that holds `operator`.
    let start = match out.find("operator") {
        Some(at) => out[..at].rfind(' ').map_or(0, |space| space + 1),
        None => out.rfind(' ').map_or(0, |space| space + 1),
    };
    let mut out = out[start..].to_owned();
    // GCC's local clones of a C function: `xmalloc.cold`, `zmalloc.constprop.0`.
    if !out.contains("::")
        && let Some(dot) = out.find('.')
        && dot > 0
    {
        out.truncate(dot);
    }
    out
}

fn starts_operator(chars: &[char], i: usize) -> bool {
    let word = ['o', 'p', 'e', 'r', 'a', 't', 'o', 'r'];
    chars[i..].starts_with(&word)
        && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'))
        && chars
            .get(i + word.len())
            .is_none_or(|&c| !(c.is_alphanumeric() || c == '_'))
}

/// The index of the bracket that closes the one at `open`.
fn matching(chars: &[char], open: usize, left: char, right: char) -> Option<usize> {
    let mut depth = 0usize;
    for (index, &c) in chars.iter().enumerate().skip(open) {
        if c == right && index > 0 && chars[index - 1] == '-' {
            continue;
        }
        if c == left {
            depth += 1;
        } else if c == right {
            depth -= 1;
            if depth == 0 {
                return Some(index);
            }
        }
    }
    None
}

/// The part of `text` before `separator`, where the separator is outside any brackets.
fn top_level_split<'a>(text: &'a str, separator: &str) -> Option<&'a str> {
    let mut depth = 0i32;
    for (index, c) in text.char_indices() {
        match c {
            '>' if text[..index].ends_with('-') => {}
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            _ if depth == 0 && text[index..].starts_with(separator) => {
                return Some(&text[..index]);
            }
            _ => {}
        }
    }
    None
}

/// How a site is named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteLabel {
    /// The function named past the wrappers (its frame's name).
    pub label: String,
    /// The wrappers folded into the label, innermost first (their frames' names).
    pub wrappers: Vec<String>,
    /// What the live view and the text report show: the label's and the wrapper's simple
    /// names, `createClient ← zmalloc`; where sites share that, the label's file and line
    /// (`host_leak at host.c:6`), and where they share that too, the first frame where their
    /// stacks differ (`(via main at host.c:12)`).
    pub text: String,
}

/// Strings by number: the labelling compares numbers, not names.
#[derive(Debug, Default)]
pub struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, name: String) -> u32 {
        if let Some(&id) = self.ids.get(&name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn get(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// What labelling needs of one frame, by number ([`Names`]).
#[derive(Clone, Copy, Debug)]
struct PreparedFrame {
    /// What the automatic rule knows it by ([`identity`]).
    identity: u32,
    /// Its [`shown_name`].
    shown: u32,
    /// Its [`short_describe`], its whole [`Frame::describe`], and its [`placed_describe`].
    short: u32,
    full: u32,
    placed: u32,
    /// In the list or named by `--alloc-fn`.
    listed: bool,
    /// Has a function name.
    named: bool,
    /// Its module's path ([`Names`]; "" when not known).
    module: u32,
}

/// What labelling needs of one stack, worked out once: matching names against the list
/// costs far more than the labelling itself, which is done again at every live view.
#[derive(Clone, Debug, Default)]
pub struct PreparedStack {
    frames: Vec<PreparedFrame>,
}

impl PreparedStack {
    pub fn new(stack: &[Frame], fns: &AllocFns, names: &mut Names) -> Self {
        let frames = stack
            .iter()
            .map(|frame| {
                let shown = shown_name(frame);
                let listed = frame
                    .function
                    .as_deref()
                    .is_some_and(|function| fns.listed_as(frame, function, &shown));
                PreparedFrame {
                    identity: names.id(identity(frame).into_owned()),
                    short: names.id(short_describe(frame, &shown)),
                    placed: names.id(placed_describe(frame, &shown)),
                    shown: names.id(shown),
                    full: names.id(frame.describe()),
                    listed,
                    named: frame.function.is_some(),
                    module: names.id(frame.module.clone().unwrap_or_default()),
                }
            })
            .collect();
        PreparedStack { frames }
    }
}

/// How many leading frames of each stack are wrappers: those `fns` lists, then, with `auto`,
/// those the automatic rule finds among these stacks. Frames without a name (a stripped
/// module's static functions) before a wrapper are counted with it: whatever a wrapper calls
/// is the allocator's work.
fn wrapper_counts(stacks: &[&PreparedStack], names: &Names, auto: bool) -> Vec<usize> {
    let mut detected = vec![false; names.len()];
    loop {
        let counts: Vec<usize> = stacks
            .iter()
            .map(|stack| {
                leading_wrappers(stack, |frame| {
                    frame.listed || detected[frame.identity as usize]
                })
            })
            .collect();
        if !auto {
            return counts;
        }
        let found = detect(stacks, &counts, names.len());
        if found.is_empty() {
            return counts;
        }
        for identity in found {
            detected[identity as usize] = true;
        }
    }
}

/// The length of the leading run of wrappers (and of unnamed frames before one). With no
/// wrapper, unnamed frames that call the allocator itself are passed over to the named
/// function of their module that calls them (Debian's python3: `PyByteArray_Resize ←
/// python3.11+0x4fb51c`, where the unnamed frame is CPython's static `_PyObject_Malloc`): a
/// label should name a function, and the allocator's callers in a stripped module are most
/// often its own allocator layer. Not into another module: a program stripped whole would
/// be labelled by libc's `__libc_start_call_main`.
fn leading_wrappers(stack: &PreparedStack, is_wrapper: impl Fn(&PreparedFrame) -> bool) -> usize {
    let mut count = 0;
    for (index, frame) in stack.frames.iter().enumerate() {
        if is_wrapper(frame) {
            count = index + 1;
        } else if frame.named {
            break;
        }
    }
    if count == 0 {
        let unnamed = stack.frames.iter().take_while(|f| !f.named).count();
        if let (Some(first), Some(caller)) = (stack.frames.first(), stack.frames.get(unnamed))
            && unnamed > 0
            && caller.module == first.module
        {
            count = unnamed;
        }
    }
    count
}

/// What the automatic rule knows a function by: its name, or for a frame without one (a
/// stripped module's static function), its module and return address
/// (`python3.11+0x4fb51c`), which is the same wherever that call of the allocator is made.
fn identity(frame: &Frame) -> Cow<'_, str> {
    frame.name()
}

/// The functions the automatic rule ([`AUTO_CALLERS`]) finds, given each stack's count of
/// wrappers so far.
fn detect(stacks: &[&PreparedStack], counts: &[usize], names: usize) -> Vec<u32> {
    // Up to AUTO_CALLERS different callers of each candidate.
    let mut callers: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut further_out = vec![false; names];
    for (stack, &count) in stacks.iter().zip(counts) {
        let Some(candidate) = stack.frames.get(count) else {
            continue;
        };
        let callers = callers.entry(candidate.identity).or_default();
        if let Some(caller) = stack.frames.get(count + 1)
            && callers.len() < AUTO_CALLERS
            && !callers.contains(&caller.identity)
        {
            callers.push(caller.identity);
        }
        for frame in &stack.frames[count + 1..] {
            further_out[frame.identity as usize] = true;
        }
    }
    callers
        .into_iter()
        .filter(|(function, callers)| {
            callers.len() >= AUTO_CALLERS && !further_out[*function as usize]
        })
        .map(|(function, _)| function)
        .collect()
}

/// `host.c:12`: where a frame is, short (the file's name, not its path).
fn short_location(frame: &Frame) -> Option<String> {
    let file = frame.file.as_deref()?;
    let file = file.rsplit('/').next().unwrap_or(file);
    Some(match frame.line {
        Some(line) => format!("{file}:{line}"),
        None => file.to_owned(),
    })
}

/// The name a label shows: the function's [`simple_name`], or the frame's name where it has
/// no function (`libc.so.6+0x1234`).
fn shown_name(frame: &Frame) -> String {
    match &frame.function {
        Some(function) => simple_name(function),
        None => frame.name().into_owned(),
    }
}

/// `main at host.c:12`, or the name alone where the frame has no file; `shown` is its
/// [`shown_name`].
fn short_describe(frame: &Frame, shown: &str) -> String {
    match short_location(frame) {
        Some(location) => format!("{shown} at {location}"),
        None => shown.to_owned(),
    }
}

/// `createClient at redis-server+0xd0181` where a frame has no line to tell it from another
/// call in the same function (a binary without debug info): its place in its module. Where
/// it has a line, its [`Frame::describe`].
fn placed_describe(frame: &Frame, shown: &str) -> String {
    match (&frame.line, &frame.function, &frame.module_offset) {
        (None, Some(_), Some(_)) => format!("{shown} at {}", frame.name_in_module()),
        _ => frame.describe(),
    }
}

/// The label of each of `stacks` (innermost frame first), named among each other: what tells
/// sites of one label apart is taken from the others in `stacks`.
pub fn label_sites(stacks: &[&[Frame]], fns: &AllocFns) -> Vec<SiteLabel> {
    let mut names = Names::default();
    let prepared: Vec<PreparedStack> = stacks
        .iter()
        .map(|stack| PreparedStack::new(stack, fns, &mut names))
        .collect();
    let prepared: Vec<&PreparedStack> = prepared.iter().collect();
    label_prepared(stacks, &prepared, &names, fns.auto)
}

/// [`label_sites`] of stacks prepared with `names` ([`PreparedStack::new`]).
pub fn label_prepared(
    stacks: &[&[Frame]],
    prepared: &[&PreparedStack],
    names: &Names,
    auto: bool,
) -> Vec<SiteLabel> {
    let counts = wrapper_counts(prepared, names, auto);
    // The label's frame: the first past the wrappers, or the last when all are wrappers.
    let at: Vec<Option<usize>> = stacks
        .iter()
        .zip(&counts)
        .map(|(stack, &count)| (!stack.is_empty()).then(|| count.min(stack.len() - 1)))
        .collect();
    let frame = |site: usize, index: usize| prepared[site].frames[index];
    // What each shows of its label, and of the wrapper the label calls.
    let key = |site: usize| -> (Option<u32>, Option<u32>) {
        match at[site] {
            Some(at) => (
                Some(frame(site, at).shown),
                at.checked_sub(1).map(|w| frame(site, w).shown),
            ),
            None => (None, None),
        }
    };
    let mut labels = vec![SiteLabel::default(); stacks.len()];
    // Sites named alike get the label's location; those still alike, a frame further out.
    for group in group_by(0..stacks.len(), |&site| key(site)) {
        let (shown, wrapper) = key(group[0]);
        let wrapper = wrapper.map_or_else(String::new, |w| format!(" ← {}", names.get(w)));
        let located = group.len() > 1 && {
            let first = location(stacks, &at, group[0]);
            group
                .iter()
                .any(|&site| location(stacks, &at, site) != first)
        };
        let name = |site: usize| -> u32 {
            match (at[site], shown) {
                (Some(at), Some(_)) if located => frame(site, at).short,
                (_, Some(shown)) => shown,
                _ => u32::MAX,
            }
        };
        for alike in group_by(group.into_iter(), |&site| name(site)) {
            let vias = if alike.len() > 1 {
                vias(prepared, &at, &alike, names)
            } else {
                HashMap::new()
            };
            for site in alike {
                let Some(at) = at[site] else {
                    labels[site] = SiteLabel {
                        label: "[stack not recorded]".to_owned(),
                        wrappers: Vec::new(),
                        text: "[stack not recorded]".to_owned(),
                    };
                    continue;
                };
                let via = vias
                    .get(&site)
                    .map_or_else(String::new, |frame| format!(" (via {frame})"));
                labels[site] = SiteLabel {
                    label: stacks[site][at].name().into_owned(),
                    wrappers: stacks[site][..at]
                        .iter()
                        .map(|f| f.name().into_owned())
                        .collect(),
                    text: format!("{}{wrapper}{via}", names.get(name(site))),
                };
            }
        }
    }
    labels
}

/// Members of `items` with the same key, in first-seen order.
fn group_by<T, K: Eq + std::hash::Hash>(
    items: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index: HashMap<K, usize> = HashMap::new();
    for item in items {
        let slot = *index.entry(key(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(item);
    }
    groups
}

/// The label frame's location (or address, when it has none).
fn location(stacks: &[&[Frame]], at: &[Option<usize>], site: usize) -> Option<String> {
    let frame = &stacks[site][at[site]?];
    Some(short_location(frame).unwrap_or_else(|| frame.address.clone()))
}

/// For each of `members` (sites named alike), the frame past the label that tells its stack
/// from all the others': the first where it parts from the last of them (the stacks are split
/// frame by frame, outwards, until each is alone). Frames are compared as shown, then, for
/// stacks alike that way, by their whole names, then by their places in their modules. A stack alike to another to its end, or that
/// ends where another goes on, gets none.
fn vias(
    stacks: &[&PreparedStack],
    at: &[Option<usize>],
    members: &[usize],
    names: &Names,
) -> HashMap<usize, String> {
    let outer = |site: usize| &stacks[site].frames[at[site].map_or(0, |a| a + 1)..];
    let mut found = HashMap::new();
    let mut alike = vec![members.to_vec()];
    let by_short: fn(&PreparedFrame) -> u32 = |frame| frame.short;
    let by_full: fn(&PreparedFrame) -> u32 = |frame| frame.full;
    let by_place: fn(&PreparedFrame) -> u32 = |frame| frame.placed;
    for describe in [by_short, by_full, by_place] {
        let mut work: Vec<(Vec<usize>, usize)> = alike.drain(..).map(|m| (m, 0)).collect();
        while let Some((members, depth)) = work.pop() {
            if members.iter().all(|&site| outer(site).len() <= depth) {
                alike.push(members);
                continue;
            }
            let parts = group_by(members.into_iter(), |&site| {
                outer(site).get(depth).map(describe)
            });
            for part in parts {
                match part[..] {
                    [site] => {
                        if let Some(frame) = outer(site).get(depth) {
                            found.insert(site, names.get(describe(frame)).to_owned());
                        }
                    }
                    _ => work.push((part, depth + 1)),
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            address: format!("0x{:x}", 0x1000 + line),
            file: Some(format!("/src/{file}")),
            line: Some(line),
            ..Frame::of_function(function, Some("/bin/x"))
        }
    }

    /// A stack from "function@line" entries, innermost first, all in x.c.
    fn stack(frames: &[&str]) -> Vec<Frame> {
        frames
            .iter()
            .map(|f| {
                let (function, line) = f.split_once('@').unwrap_or((f, "1"));
                frame(function, "x.c", line.parse().unwrap())
            })
            .collect()
    }

    fn labels(stacks: &[Vec<Frame>], fns: &AllocFns) -> Vec<SiteLabel> {
        let stacks: Vec<&[Frame]> = stacks.iter().map(Vec::as_slice).collect();
        label_sites(&stacks, fns)
    }

    fn texts(stacks: &[Vec<Frame>], fns: &AllocFns) -> Vec<String> {
        labels(stacks, fns).into_iter().map(|l| l.text).collect()
    }

    fn listed(name: &str) -> bool {
        AllocFns::default().listed(&frame(name, "x.c", 1))
    }

    #[test]
    fn simple_names_drop_return_types_arguments_templates_and_clones() {
        for (full, simple) in [
            ("operator new(unsigned long)", "operator new"),
            (
                "operator new[](unsigned long, std::nothrow_t const&)",
                "operator new[]",
            ),
            (
                "void std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(__gnu_cxx::__normal_iterator<int*, std::vector<int, std::allocator<int> > >, int const&)",
                "std::vector::_M_realloc_insert",
            ),
            (
                "std::__new_allocator<std::_Rb_tree_node<std::pair<int const, int> > >::allocate(unsigned long, void const*)",
                "std::__new_allocator::allocate",
            ),
            (
                "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
                "alloc::alloc::Global::allocate",
            ),
            (
                "alloc::raw_vec::RawVec<T,A>::grow_one",
                "alloc::raw_vec::RawVec::grow_one",
            ),
            (
                "<alloc::vec::Vec<u8> as core::iter::FromIterator<u8>>::from_iter<core::iter::Map<I, fn(&u8) -> u8>>",
                "alloc::vec::Vec::from_iter",
            ),
            (
                "collect<core::iter::Map<I, fn(&u8) -> u8>, alloc::vec::Vec<u8>>",
                "collect",
            ),
            ("std::ostream::operator<<(int)", "std::ostream::operator<<"),
            ("Foo::operator()(int) const", "Foo::operator()"),
            (
                "(anonymous namespace)::pool_get(int)",
                "{anonymous}::pool_get",
            ),
            ("xmalloc.cold", "xmalloc"),
            ("zmalloc.constprop.0", "zmalloc"),
            ("leak_new_here() [clone .cold]", "leak_new_here"),
            (
                "std::__shared_count<(__gnu_cxx::_Lock_policy)2>::__shared_count<Foo, std::allocator<void>>(Foo*&, std::_Sp_alloc_shared_tag<std::allocator<void> >)",
                "std::__shared_count::__shared_count",
            ),
            ("main", "main"),
        ] {
            assert_eq!(simple_name(full), simple, "{full}");
        }
    }

    #[test]
    fn the_built_in_list_names_allocators_of_each_family_and_nothing_else() {
        for wrapper in [
            "malloc",
            "__libc_calloc",
            "strdup",
            "operator new(unsigned long)",
            "operator new[](unsigned long, std::align_val_t)",
            "std::__new_allocator<int>::allocate(unsigned long, void const*)",
            "__gnu_cxx::new_allocator<int>::allocate(unsigned long, void const*)",
            "std::_Vector_base<int, std::allocator<int> >::_M_allocate(unsigned long)",
            "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::_M_create(unsigned long&, unsigned long)",
            "alloc::alloc::alloc",
            "alloc::alloc::exchange_malloc",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "alloc::raw_vec::finish_grow",
            "__rust_alloc",
            "__rdl_alloc",
            "PyMem_Malloc",
            "PyObject_Malloc",
            "_PyObject_Malloc",
            "PyType_GenericAlloc",
            "g_malloc0",
            "g_try_malloc_n",
            "xmalloc",
            "xcalloc",
            "xrealloc",
            "zmalloc",
            "zcalloc",
            "zmalloc_usable",
            "ztrymalloc_usable_internal",
            "zrealloc",
            "std::vector<int, std::allocator<int> >::push_back(int const&)",
            "void std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(__gnu_cxx::__normal_iterator<int*, std::vector<int, std::allocator<int> > >, int const&)",
            "std::map<int, int, std::less<int>, std::allocator<std::pair<int const, int> > >::operator[](int const&)",
            "alloc::vec::Vec<T,A>::push",
            "<alloc::collections::btree::map::BTreeMap<K,V>>::insert",
        ] {
            assert!(listed(wrapper), "{wrapper} is a wrapper");
        }
        for function in [
            "main",
            "createClient",
            "__cxa_allocate_exception",
            "std::thread::_State_impl<F>::_M_run()",
            "core::fmt::write",
            "zmalloc_used_memory",
            "zmalloc_get_rss",
            "g_strdup_printf",
            "xmalloc_failed",
            "my_malloc",
            "mallocx_helper",
        ] {
            assert!(!listed(function), "{function} is not a wrapper");
        }
    }

    #[test]
    fn inlined_rust_frames_named_alone_are_known_by_their_file() {
        let mut inlined = frame("finish_grow<alloc::alloc::Global>", "x.rs", 558);
        assert!(!AllocFns::default().listed(&inlined));
        inlined.file = Some("/rustc/5980/library/alloc/src/raw_vec/mod.rs".into());
        assert_eq!(
            rust_path(&inlined, "finish_grow").as_deref(),
            Some("alloc::raw_vec::finish_grow")
        );
        assert!(AllocFns::default().listed(&inlined));
        let mut own = frame("remember_session", "demo.rs", 43);
        own.file = Some("/work/leaktrace/src/demo.rs".into());
        assert_eq!(rust_path(&own, "remember_session"), None);
        assert!(!AllocFns::default().listed(&own));
    }

    #[test]
    fn added_expressions_match_whole_names_with_or_without_arguments() {
        let fns = AllocFns::new(false, vec![alloc_fn("pool_get").unwrap()], false);
        let is = |name: &str| fns.listed(&frame(name, "x.c", 1));
        assert!(is("pool_get"));
        assert!(!is("Pool<int>::pool_get(int)"));
        assert!(!is("pool_get_stats"), "anchored");
        assert!(!is("malloc"), "no built-in list");
        let fns = AllocFns::new(
            false,
            vec![alloc_fn(r"Pool::get|.*\(int\)").unwrap()],
            false,
        );
        let is = |name: &str| fns.listed(&frame(name, "x.c", 1));
        assert!(is("Pool<int>::get(unsigned long)"), "the simple name");
        assert!(is("other(int)"), "the whole name");
    }

    #[test]
    fn a_site_is_labelled_past_its_wrappers_which_stay_in_the_stack() {
        let stacks = [stack(&[
            "ztrymalloc_usable_internal",
            "zmalloc",
            "createClient",
            "main",
        ])];
        let label = &labels(&stacks, &AllocFns::default())[0];
        assert_eq!(label.label, "createClient");
        assert_eq!(label.wrappers, ["ztrymalloc_usable_internal", "zmalloc"]);
        assert_eq!(label.text, "createClient ← zmalloc", "the wrapper it calls");
        let label = &labels(&[stack(&["leak_here", "main"])], &AllocFns::default())[0];
        assert_eq!(
            (label.label.as_str(), label.text.as_str()),
            ("leak_here", "leak_here")
        );
        assert!(label.wrappers.is_empty());
    }

    #[test]
    fn a_stack_of_wrappers_alone_is_labelled_by_its_outermost_frame() {
        let label = &labels(&[stack(&["zmalloc", "xmalloc"])], &AllocFns::default())[0];
        assert_eq!(label.label, "xmalloc");
        assert_eq!(label.wrappers, ["zmalloc"]);
        let none = &labels(&[Vec::new()], &AllocFns::default())[0];
        assert_eq!(none.text, "[stack not recorded]");
    }

    #[test]
    fn sites_named_alike_get_the_labels_line_then_the_frame_that_tells_them_apart() {
        let stacks = [
            stack(&["host_leak@6", "main@12"]),
            stack(&["host_leak@6", "main@14"]),
            stack(&["host_leak@8", "main@20"]),
            stack(&["other@3", "main@30"]),
        ];
        assert_eq!(
            texts(&stacks, &AllocFns::default()),
            [
                "host_leak at x.c:6 (via main at x.c:12)",
                "host_leak at x.c:6 (via main at x.c:14)",
                "host_leak at x.c:8",
                "other",
            ]
        );
        // Alike down to the same frame: the one further out tells them apart.
        let stacks = [
            stack(&["leak@6", "helper@2", "a@1"]),
            stack(&["leak@6", "helper@2", "b@1"]),
            stack(&["leak@6", "helper@3", "a@1"]),
        ];
        assert_eq!(
            texts(&stacks, &AllocFns::default()),
            [
                "leak (via a at x.c:1)",
                "leak (via b at x.c:1)",
                "leak (via helper at x.c:3)",
            ]
        );
        // Without lines (no debug info), two calls in one function part by their addresses.
        let unlined = |function: &str, offset: u64| Frame {
            module_offset: Some(format!("0x{offset:x}")),
            ..Frame::of_function(function, Some("/usr/bin/redis-server"))
        };
        let stacks = [
            vec![unlined("dictCreate", 0x10), unlined("createClient", 0x181)],
            vec![unlined("dictCreate", 0x10), unlined("createClient", 0x1cc)],
        ];
        assert_eq!(
            texts(&stacks, &AllocFns::default()),
            [
                "dictCreate (via createClient at redis-server+0x181)",
                "dictCreate (via createClient at redis-server+0x1cc)",
            ]
        );
    }

    #[test]
    fn the_automatic_rule_takes_a_function_called_from_enough_places_that_only_allocates() {
        let no_auto = AllocFns::new(true, Vec::new(), false);
        let callers: Vec<Vec<Frame>> = ["parse", "load", "store"]
            .iter()
            .map(|caller| stack(&["make_node", caller, "main"]))
            .collect();
        let found = labels(&callers, &AllocFns::default());
        assert_eq!(
            found.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["parse ← make_node", "load ← make_node", "store ← make_node"]
        );
        assert_eq!(found[0].wrappers, ["make_node"]);
        assert!(
            labels(&callers, &no_auto)
                .iter()
                .all(|l| l.label == "make_node")
        );

        // Called from fewer places than AUTO_CALLERS: not a wrapper.
        let two = &callers[..AUTO_CALLERS - 1];
        assert!(
            labels(two, &AllocFns::default())
                .iter()
                .all(|l| l.label == "make_node")
        );

        // Also seen further out in a stack, calling something else that allocates: it is
        // the caller's code, not a wrapper.
        let mut mixed = callers.clone();
        mixed.push(stack(&["grow_index", "make_node", "parse", "main"]));
        assert!(
            labels(&mixed, &AllocFns::default())[..3]
                .iter()
                .all(|l| l.label == "make_node")
        );

        // Many sites from one caller are not many callers.
        let one: Vec<Vec<Frame>> = (1..=5)
            .map(|l| stack(&["make_node", &format!("parse@{l}")]))
            .collect();
        assert!(
            labels(&one, &AllocFns::default())
                .iter()
                .all(|l| l.label == "make_node")
        );
    }

    #[test]
    fn unnamed_frames_are_wrappers_inside_a_wrapper_and_found_by_their_address() {
        let unnamed = |offset: &str| Frame {
            function: None,
            file: None,
            line: None,
            module: Some("/usr/bin/python3.11".into()),
            module_offset: Some(offset.into()),
            ..frame("?", "x.c", 1)
        };
        // A stripped module's static function called by a listed wrapper is its work.
        let stack = vec![
            unnamed("0x10"),
            frame("PyMem_RawMalloc", "x.c", 1),
            frame("f", "x.c", 2),
        ];
        let label = &labels(&[stack], &AllocFns::default())[0];
        assert_eq!(label.label, "f");
        assert_eq!(label.wrappers, ["python3.11+0x10", "PyMem_RawMalloc"]);
        // One call of realloc in a static function, reached from three callers: a wrapper.
        let stacks: Vec<Vec<Frame>> = ["PyByteArray_Resize", "list_resize", "_PyBytes_Resize"]
            .iter()
            .map(|caller| {
                vec![
                    unnamed("0x4fb51c"),
                    frame(caller, "x.c", 1),
                    frame("main", "x.c", 2),
                ]
            })
            .collect();
        let found = labels(&stacks, &AllocFns::default());
        assert_eq!(found[0].label, "PyByteArray_Resize");
        assert_eq!(found[0].text, "PyByteArray_Resize ← python3.11+0x4fb51c");
        // From one caller alone (attached to a process that makes few sites) too: unnamed
        // frames that call the allocator are passed to the named function of their module.
        let in_python = |function: &str| Frame {
            module: Some("/usr/bin/python3.11".into()),
            ..frame(function, "x.c", 1)
        };
        let stack = vec![
            unnamed("0x4fb51c"),
            in_python("PyByteArray_Resize"),
            frame("main", "x.c", 2),
        ];
        let label = &labels(&[stack], &AllocFns::default())[0];
        assert_eq!(label.text, "PyByteArray_Resize ← python3.11+0x4fb51c");
        // But not into another module: a program stripped whole keeps its frame's address.
        let stack = vec![unnamed("0x10"), unnamed("0x20"), frame("main", "x.c", 2)];
        assert_eq!(
            labels(&[stack], &AllocFns::default())[0].label,
            "python3.11+0x10"
        );
        // Unnamed frames past the wrappers are the caller's.
        let stack = vec![
            frame("xmalloc", "x.c", 1),
            unnamed("0x20"),
            frame("main", "x.c", 2),
        ];
        assert_eq!(
            labels(&[stack], &AllocFns::default())[0].label,
            "python3.11+0x20"
        );
    }

    #[test]
    fn the_automatic_rule_sees_through_known_wrappers_and_applies_again() {
        // xmalloc is listed; make_node is found past it; then new_tree, a wrapper of it.
        let stacks: Vec<Vec<Frame>> = ["a", "b", "c"]
            .iter()
            .flat_map(|caller| {
                [
                    stack(&["xmalloc", "make_node", caller, "main"]),
                    stack(&[
                        "xmalloc",
                        "make_node",
                        "new_tree",
                        &format!("tree_{caller}"),
                        "main",
                    ]),
                ]
            })
            .collect();
        let found = labels(&stacks, &AllocFns::default());
        assert_eq!(found[0].label, "a");
        assert_eq!(found[0].wrappers, ["xmalloc", "make_node"]);
        assert_eq!(found[1].label, "tree_a");
        assert_eq!(found[1].wrappers, ["xmalloc", "make_node", "new_tree"]);
        assert_eq!(found[1].text, "tree_a ← new_tree");
    }
}
