//! Shared helpers of the integration tests: fixtures built with the system gcc, leaktrace
//! started as a child, output read line by line with deadlines.
#![allow(dead_code)] // each test binary uses its own subset

pub mod prometheus;

use std::{
    env, fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex,
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const LEAKTRACE: &str = env!("CARGO_BIN_EXE_leaktrace");

/// Where the fixtures' sources are.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The fixture's source path: NAME.c, or NAME.cc for C++.
pub fn fixture_source(name: &str) -> PathBuf {
    let c = fixtures_dir().join(format!("{name}.c"));
    if c.exists() {
        c
    } else {
        fixtures_dir().join(format!("{name}.cc"))
    }
}

/// Builds `tests/fixtures/NAME.c` with debug info and frame pointers, once per test binary: a
/// rebuild must never replace a binary that another test is running.
pub fn build_fixture(name: &str) -> PathBuf {
    build_fixture_with(name, &[])
}

/// [`build_fixture`] with extra compiler flags; each flag set is its own binary.
pub fn build_fixture_with(name: &str, flags: &[&str]) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let variant: String = flags
        .concat()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let key = format!("{name}{variant}");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    let test_binary = env::current_exe().unwrap();
    let stem = test_binary.file_stem().unwrap().to_string_lossy();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    fs::create_dir_all(&out_dir).unwrap();
    let binary = out_dir.join(format!("{key}-{stem}"));
    let temporary = out_dir.join(format!("{key}-{stem}.tmp"));
    let source = fixture_source(name);
    let compiler = if source.extension().is_some_and(|e| e == "cc") {
        "g++"
    } else {
        "gcc"
    };
    let status = Command::new(compiler)
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&temporary)
        .arg(&source)
        .args(flags)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler} (`cargo xtask test` installs it): {e}"));
    assert!(status.success(), "gcc failed on {name}.c");
    fs::rename(&temporary, &binary).unwrap();
    built.push((key, binary.clone()));
    binary
}

/// A numeric `#define NAME VALUE` of the fixture: the tests take the expected numbers from the
/// source, so they are stated once.
pub fn fixture_define(name: &str, define: &str) -> u64 {
    let value = fixture_define_text(name, define);
    value
        .parse()
        .unwrap_or_else(|_| panic!("#define {define} {value} is not a number"))
}

/// The text of a `#define NAME VALUE` of the fixture, without a trailing comment.
pub fn fixture_define_text(name: &str, define: &str) -> String {
    let source = fs::read_to_string(fixture_source(name)).unwrap();
    source
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("#define ")?.strip_prefix(define)?;
            let value = rest.split("/*").next()?.split("//").next()?;
            rest.starts_with(' ').then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{name}.c has no #define {define}"))
}

/// The line of the fixture that contains `marker`.
pub fn fixture_line(name: &str, marker: &str) -> u64 {
    let source = fs::read_to_string(fixture_source(name)).unwrap();
    let index = source
        .lines()
        .position(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("{name}.c has no line with {marker:?}"));
    index as u64 + 1
}

/// Proof that this test runs as root; see [`require_bpf`].
#[must_use]
pub struct Root(());

/// `Some` when this test may load BPF programs; `None` means skip it. Every BPF test starts
/// `let Some(_bpf) = require_bpf() else { return };`.
pub fn require_bpf() -> Option<Root> {
    require_root("BPF tests need root")
}

/// `Some` when this test runs as root. Off CI, a non-root run skips with a note saying `why`;
/// with CI=true a skip would hide a broken setup, so it fails instead.
pub fn require_root(why: &str) -> Option<Root> {
    if unsafe { libc::geteuid() } == 0 {
        return Some(Root(()));
    }
    assert!(
        env::var("CI").as_deref() != Ok("true"),
        "{why}, and CI must run them: run the tests as root"
    );
    eprintln!("skipped: {why}");
    None
}

/// Lines of a child's output, readable with a deadline.
pub struct Lines {
    receiver: Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(stream: impl Read + Send + 'static) -> Lines {
        let (sender, receiver) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            receiver,
            seen: Vec::new(),
        }
    }

    /// Waits for the first line matching `wanted`; panics with what was seen on timeout.
    pub fn wait_for(&mut self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("timed out; saw {:#?}", self.seen),
                Err(RecvTimeoutError::Disconnected) => panic!("stream ended; saw {:#?}", self.seen),
            }
        }
    }

    /// Every line received so far, without waiting.
    pub fn received(&mut self) -> &[String] {
        while let Ok(line) = self.receiver.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Every remaining line, until the stream closes.
    pub fn rest(&mut self) -> Vec<String> {
        while let Ok(line) = self.receiver.recv() {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

/// A child process killed when the test ends, pass or fail.
pub struct Running {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Running {
    pub fn start(command: &mut Command) -> Running {
        Running::spawn(command.stdin(Stdio::null()))
    }

    /// [`Running::start`] with a pipe to its standard input, for a fixture driven by
    /// commands ([`Running::tell`]).
    pub fn start_with_input(command: &mut Command) -> Running {
        Running::spawn(command.stdin(Stdio::piped()))
    }

    fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` to the standard input of a child started [`Running::start_with_input`].
    pub fn tell(&mut self, line: &str) {
        let input = self.child.stdin.as_mut().expect("started with input");
        writeln!(input, "{line}").unwrap_or_else(|e| panic!("tell {line:?}: {e}"));
    }

    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// Waits for exit (with a deadline) and returns the exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_status(timeout);
        status
            .code()
            .unwrap_or_else(|| panic!("{status}; stderr: {:?}", self.stderr.received()))
    }

    /// Waits for exit (with a deadline) and returns how it ended.
    pub fn wait_status(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {timeout:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Running {
    /// Waits for exit (with a deadline): the exit code, the process's peak RSS in KiB (wait4's
    /// rusage) and its stdout. The process is reaped here, so it is not dropped: the pid is
    /// no longer its own to kill.
    pub fn wait_with_peak_rss(self, timeout: Duration) -> (i32, u64, Vec<String>) {
        let mut this = std::mem::ManuallyDrop::new(self);
        let pid = this.pid() as i32;
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: plain data; wait4 fills it in.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                return (code, usage.ru_maxrss as u64, this.stdout.rest());
            }
            if Instant::now() >= deadline {
                let _ = this.child.kill();
                panic!("still running after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// leaktrace's stderr line that says the probes are in.
pub fn is_attached_line(line: &str) -> bool {
    line.starts_with("leaktrace: attached to pid")
}

/// The target's pid in leaktrace's attached line.
pub fn attached_pid(line: &str) -> i32 {
    line.trim_start_matches("leaktrace: attached to pid ")
        .split(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// A temporary output path for this test.
pub fn output_path(test: &str, extension: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reports");
    fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{test}.{extension}"))
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// Per-site numbers summed over the sites whose first frame is `function`. A compiler may
/// unroll a loop into several call instructions, each its own stack, so one source-level site
/// can be several report sites.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SiteSum {
    pub sites: u64,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub allocs: u64,
    pub frees: u64,
}

pub fn sites_of(report: &Value, function: &str) -> SiteSum {
    sites_where(report, |name| name == function)
}

/// [`sites_of`] for the sites whose first frame's function passes `wanted`.
pub fn sites_where(report: &Value, wanted: impl Fn(&str) -> bool) -> SiteSum {
    sites_matching(report, |site| {
        site["frames"][0]["function"].as_str().is_some_and(&wanted)
    })
}

/// [`sites_of`] for the sites whose `label` (the function named past the allocator
/// wrappers) is `label`.
pub fn sites_labelled(report: &Value, label: &str) -> SiteSum {
    sites_matching(report, |site| site["label"] == label)
}

/// [`sites_of`] for the sites that pass `wanted`.
pub fn sites_matching(report: &Value, wanted: impl Fn(&Value) -> bool) -> SiteSum {
    let mut sum = SiteSum::default();
    for site in report["sites"].as_array().unwrap() {
        if wanted(site) {
            sum.sites += 1;
            sum.live_bytes += site["live_bytes"].as_u64().unwrap();
            sum.live_allocations += site["live_allocations"].as_u64().unwrap();
            sum.allocs += site["allocs"].as_u64().unwrap();
            sum.frees += site["frees"].as_u64().unwrap();
        }
    }
    sum
}

/// "in use at exit: 45,000 bytes in 44 blocks" → (45000, 44), from any line that has it.
fn in_use_at_exit(lines: &[String]) -> Option<(u64, u64)> {
    lines.iter().find_map(|line| {
        let rest = &line[line.find("in use at exit: ")? + "in use at exit: ".len()..];
        bytes_in_blocks(rest.strip_suffix(" blocks")?)
    })
}

/// "45,000 bytes in 44 blocks" (without " blocks") → (45000, 44).
fn bytes_in_blocks(text: &str) -> Option<(u64, u64)> {
    let (bytes, blocks) = text.split_once(" bytes in ")?;
    Some((number(bytes)?, number(blocks)?))
}

/// "45,000" → 45000.
fn number(text: &str) -> Option<u64> {
    text.replace(',', "").parse().ok()
}

/// leaktrace's "in use at exit" line (in `stdout`) says what valgrind's heap summary says.
pub fn assert_same_as_valgrind(stdout: &[String], binary: &Path, args: &[&str], options: &[&str]) {
    let traced = in_use_at_exit(stdout).expect("an in-use-at-exit line");
    assert_eq!(traced, valgrind_in_use_at_exit(binary, args, options));
}

/// valgrind's "in use at exit" for `binary args`.
fn valgrind_in_use_at_exit(binary: &Path, args: &[&str], options: &[&str]) -> (u64, u64) {
    let lines = valgrind(binary, args, options);
    in_use_at_exit(&lines).unwrap_or_else(|| panic!("no heap summary from valgrind: {lines:#?}"))
}

/// What valgrind (memcheck) says of `binary args` on stderr, each line without its "==PID== ".
/// valgrind frees glibc's and libstdc++'s own buffers at exit unless told not to; leaktrace
/// sees the program as it really ends.
fn valgrind(binary: &Path, args: &[&str], options: &[&str]) -> Vec<String> {
    let output = Command::new("valgrind")
        .args(["--run-libc-freeres=no", "--run-cxx-freeres=no"])
        .args(options)
        .arg(binary)
        .args(args)
        .output()
        .expect("run valgrind (`cargo xtask test` installs it)");
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(|line| {
            let unprefixed = line
                .strip_prefix("==")
                .and_then(|rest| rest.split_once("== "))
                .map(|(_, rest)| rest);
            unprefixed.unwrap_or(line).to_owned()
        })
        .collect()
}

/// Valgrind's leak kinds, in the order its LEAK SUMMARY lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakKind {
    DefinitelyLost,
    IndirectlyLost,
    PossiblyLost,
    StillReachable,
}

impl LeakKind {
    pub const ALL: [LeakKind; 4] = [
        LeakKind::DefinitelyLost,
        LeakKind::IndirectlyLost,
        LeakKind::PossiblyLost,
        LeakKind::StillReachable,
    ];

    /// The kind as valgrind's report and leaktrace's text report write it.
    pub fn words(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely lost",
            LeakKind::IndirectlyLost => "indirectly lost",
            LeakKind::PossiblyLost => "possibly lost",
            LeakKind::StillReachable => "still reachable",
        }
    }

    /// The kind's key in leaktrace's JSON `scan` objects.
    pub fn key(self) -> &'static str {
        match self {
            LeakKind::DefinitelyLost => "definitely_lost",
            LeakKind::IndirectlyLost => "indirectly_lost",
            LeakKind::PossiblyLost => "possibly_lost",
            LeakKind::StillReachable => "still_reachable",
        }
    }
}

/// Bytes and blocks of each leak kind, the sizes as the program asked for them.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct LeakKinds {
    /// (bytes, blocks), indexed as [`LeakKind::ALL`].
    amounts: [(u64, u64); 4],
}

impl LeakKinds {
    /// `bytes` in `blocks` of `kind` added.
    pub fn with(mut self, kind: LeakKind, bytes: u64, blocks: u64) -> LeakKinds {
        let amount = &mut self.amounts[kind as usize];
        *amount = (amount.0 + bytes, amount.1 + blocks);
        self
    }

    /// (bytes, blocks) of `kind`.
    pub fn of(&self, kind: LeakKind) -> (u64, u64) {
        self.amounts[kind as usize]
    }

    /// (bytes, blocks) of every kind.
    pub fn total(&self) -> (u64, u64) {
        let sum = |(bytes, blocks), (b, n)| (bytes + b, blocks + n);
        self.amounts.into_iter().fold((0, 0), sum)
    }

    /// The sum of both.
    pub fn plus(self, other: LeakKinds) -> LeakKinds {
        LeakKind::ALL.into_iter().fold(self, |sum, kind| {
            let (bytes, blocks) = other.of(kind);
            sum.with(kind, bytes, blocks)
        })
    }

    /// A JSON `scan` object: `{"definitely_lost": {"bytes": B, "blocks": N}, …}`.
    pub fn from_json(scan: &Value) -> LeakKinds {
        LeakKind::ALL
            .into_iter()
            .fold(LeakKinds::default(), |kinds, kind| {
                let amount = &scan[kind.key()];
                let field = |name: &str| {
                    amount[name]
                        .as_u64()
                        .unwrap_or_else(|| panic!("no {}.{name} in the scan {scan}", kind.key()))
                };
                kinds.with(kind, field("bytes"), field("blocks"))
            })
    }
}

impl std::fmt::Debug for LeakKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let kinds: Vec<String> = LeakKind::ALL
            .into_iter()
            .map(|kind| {
                let (bytes, blocks) = self.of(kind);
                format!("{} {bytes} bytes in {blocks} blocks", kind.words())
            })
            .collect();
        f.write_str(&kinds.join(", "))
    }
}

/// What valgrind's exit-time leak check said: its LEAK SUMMARY and its loss records.
#[derive(Debug)]
pub struct ValgrindLeaks {
    pub summary: LeakKinds,
    /// (bytes, blocks) that suppressions hid: in no kind above.
    pub suppressed: (u64, u64),
    pub records: Vec<LossRecord>,
}

/// One loss record: blocks of one kind allocated by one stack.
#[derive(Debug)]
pub struct LossRecord {
    pub kind: LeakKind,
    /// The blocks' own bytes: a definitely lost record's "(N direct, M indirect)" counts the
    /// indirect ones again, in records of their own.
    pub bytes: u64,
    pub blocks: u64,
    /// The allocation's stack, innermost first, inlined frames included: (function, the
    /// source file's name where valgrind knows it).
    pub frames: Vec<(String, Option<String>)>,
}

/// valgrind's exit-time leak check of `binary args` with `options` on top of
/// `--leak-check=full --show-leak-kinds=all`: a leak check run before (a client request)
/// is not taken.
pub fn valgrind_leaks(binary: &Path, args: &[&str], options: &[&str]) -> ValgrindLeaks {
    let full = ["--leak-check=full", "--show-leak-kinds=all"];
    let lines = valgrind(binary, args, &[&full[..], options].concat());
    let lines: Vec<&str> = lines.iter().map(|line| line.trim()).collect();
    let start = lines
        .iter()
        .rposition(|&line| line == "HEAP SUMMARY:")
        .unwrap_or_else(|| panic!("no heap summary from valgrind: {lines:#?}"));
    let lines = &lines[start..];
    let mut leaks = ValgrindLeaks {
        summary: LeakKinds::default(),
        suppressed: (0, 0),
        records: Vec::new(),
    };
    if lines
        .iter()
        .any(|line| line.starts_with("All heap blocks were freed"))
    {
        return leaks;
    }
    let summary = lines
        .iter()
        .position(|&line| line == "LEAK SUMMARY:")
        .unwrap_or_else(|| panic!("no leak summary from valgrind: {lines:#?}"));
    let amount = |words: &str| -> (u64, u64) {
        lines[summary..]
            .iter()
            .find_map(|line| {
                let rest = line.strip_prefix(words)?.strip_prefix(": ")?;
                bytes_in_blocks(rest.strip_suffix(" blocks")?)
            })
            .unwrap_or_else(|| panic!("no {words:?} in valgrind's {lines:#?}"))
    };
    for kind in LeakKind::ALL {
        let (bytes, blocks) = amount(kind.words());
        leaks.summary = leaks.summary.with(kind, bytes, blocks);
    }
    leaks.suppressed = amount("suppressed");
    let mut lines = lines[..summary].iter().peekable();
    while let Some(line) = lines.next() {
        let Some(mut record) = loss_record(line) else {
            continue;
        };
        while let Some(frame) = lines.next_if(|l| l.starts_with("at 0x") || l.starts_with("by 0x"))
        {
            record.frames.push(valgrind_frame(frame));
        }
        leaks.records.push(record);
    }
    leaks
}

/// "96 (48 direct, 48 indirect) bytes in 1 blocks are definitely lost in loss record 2 of 2"
/// or "48 bytes in 1 blocks are still reachable in loss record 1 of 2", without its frames.
fn loss_record(line: &str) -> Option<LossRecord> {
    let (amount, rest) = line.split_once(" blocks are ")?;
    let (words, _) = rest.split_once(" in loss record ")?;
    let kind = LeakKind::ALL.into_iter().find(|k| k.words() == words)?;
    let (bytes, blocks) = amount.split_once(" bytes in ")?;
    let bytes = match bytes.split_once(" (") {
        Some((_, direct)) => direct.split_once(" direct")?.0,
        None => bytes,
    };
    Some(LossRecord {
        kind,
        bytes: number(bytes)?,
        blocks: number(blocks)?,
        frames: Vec::new(),
    })
}

/// "by 0x109225: keep_array() (leak_kinds_cxx.cc:48)" → ("keep_array()", "leak_kinds_cxx.cc");
/// "at 0x48417B4: malloc (in /usr/libexec/…)" → ("malloc", None).
fn valgrind_frame(line: &str) -> (String, Option<String>) {
    let (_, frame) = line.split_once(": ").unwrap_or(("", line));
    let Some((function, place)) = frame.rsplit_once(" (") else {
        return (frame.to_owned(), None);
    };
    let place = place.trim_end_matches(')');
    let file = (!place.starts_with("in ")).then(|| {
        place
            .rsplit_once(':')
            .map_or(place, |(file, _)| file)
            .to_owned()
    });
    (function.to_owned(), file)
}

/// How long a test waits for leaktrace or a fixture.
pub const WAIT: Duration = Duration::from_secs(60);

/// `leaktrace OPTIONS --json … -- BINARY ARGS…`, to the end: its report and its stdout.
pub fn launch_json(
    test: &str,
    options: &[&str],
    binary: &Path,
    args: &[&str],
) -> (Value, Vec<String>) {
    launch_json_env(test, options, binary, args, &[])
}

/// [`launch_json`] with environment variables for leaktrace.
pub fn launch_json_env(
    test: &str,
    options: &[&str],
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Value, Vec<String>) {
    let json = output_path(test, "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .args(options)
            .arg("--json")
            .arg(&json)
            .arg("--")
            .arg(binary)
            .args(args)
            .envs(env.iter().copied()),
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let stdout = leaktrace.stdout.rest();
    (read_json(&json), stdout)
}

/// `leaktrace -i 100ms --json … -- BINARY ARGS…` on a target that waits for SIGUSR1 before it
/// exits, let go once the live view names `site`: then leaktrace has read the site's stack and
/// knows the library the target dlopen'ed, which it may not if the target exits first. The
/// report and leaktrace's stdout.
pub fn launch_until_named(
    test: &str,
    binary: &Path,
    args: &[&str],
    site: &str,
) -> (Value, Vec<String>) {
    launch_until(test, (&[], binary, args), |stdout| {
        stdout.wait_for(|l| l.contains(site), WAIT);
    })
}

/// `leaktrace OPTIONS -i 100ms --json … -- BINARY ARGS…` on a target that waits for SIGUSR1, sent
/// once `ready` has returned, reading leaktrace's stdout; then to the end. The report and
/// leaktrace's stdout.
pub fn launch_until(
    test: &str,
    (options, binary, args): (&[&str], &Path, &[&str]),
    ready: impl FnOnce(&mut Lines),
) -> (Value, Vec<String>) {
    let json = output_path(test, "json");
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .args(options)
            .args(["-i", "100ms", "--json"])
            .arg(&json)
            .arg("--")
            .arg(binary)
            .args(args),
    );
    let attached = leaktrace.stderr.wait_for(is_attached_line, WAIT);
    ready(&mut leaktrace.stdout);
    assert_eq!(
        unsafe { libc::kill(attached_pid(&attached), libc::SIGUSR1) },
        0
    );
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    (read_json(&json), leaktrace.stdout.rest())
}

/// `leaktrace -p PID --json JSON ARGS…`, once its probes are in.
pub fn attach_with_json(pid: u32, json: &Path, args: &[&str]) -> Running {
    attach_with_json_env(pid, json, args, &[])
}

/// [`attach_with_json`] with environment variables for leaktrace.
pub fn attach_with_json_env(pid: u32, json: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut leaktrace = Running::start(
        Command::new(LEAKTRACE)
            .args(["-p", &pid.to_string(), "--json"])
            .arg(json)
            .args(args)
            .envs(env.iter().copied()),
    );
    leaktrace.stderr.wait_for(is_attached_line, WAIT);
    leaktrace
}

/// No event was lost. (Stacks that went inline, or were taken by frame pointers instead of a
/// copy, are counted among the drops too, but lose nothing.)
pub fn assert_nothing_lost(report: &Value) {
    for lost in [
        "ring_buffer_full",
        "allocations_skipped",
        "stack_unreadable",
        "pending_map_full",
    ] {
        assert_eq!(report["drops"][lost], 0, "{lost}: {}", report["drops"]);
    }
}

/// What the final report's drops line says of the live figures: by how many blocks at most
/// they may be too high ("up to N frees lost") and too low ("up to N allocations lost"); None
/// for a way it does not say they may be off.
pub fn live_bounds_said(stdout: &[String]) -> (Option<u64>, Option<u64>) {
    let line = stdout
        .iter()
        .find(|l| l.starts_with("drops: "))
        .unwrap_or_else(|| panic!("no drops line: {stdout:#?}"));
    let up_to = |lost: &str| {
        let end = line.find(&format!(" {lost} lost)"))?;
        let start = line[..end].rfind("up to ")? + "up to ".len();
        number(&line[start..end])
    };
    (up_to("frees"), up_to("allocations"))
}

/// Lets a `fixture burst|busy|crash` run its burst and waits until it is done.
pub fn run_burst(fixture: &mut Running) {
    fixture.signal(libc::SIGUSR1);
    fixture.stdout.wait_for(|l| l == "burst done", WAIT);
}

/// What one burst of `fixture` leaves allocated, from its `#define`s: (first frame's function,
/// bytes, blocks) for each function that leaks.
pub fn burst_holdings() -> [(&'static str, u64, u64); 4] {
    let define = |name| fixture_define("fixture", name);
    let name = fixture_define_text("fixture", "NAME");
    [
        (
            "leak_here",
            define("BURST_LEAKS") * define("LEAK_BYTES"),
            define("BURST_LEAKS"),
        ),
        (
            "calloc_table",
            define("CALLOC_TABLES") * define("CALLOC_COUNT") * define("CALLOC_SIZE"),
            define("CALLOC_TABLES"),
        ),
        ("grow_buffer", define("GROW_STEPS") * define("GROW_STEP"), 1),
        ("copy_name", name.trim_matches('"').len() as u64 + 1, 1),
    ]
}

/// How a capture ended, as both reports say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT, SIGTERM or SIGHUP.
    Interrupted,
    /// The `-d` window closed.
    WindowElapsed,
    /// The target exited: with this status when leaktrace started it, `None` when it attached
    /// (only a parent learns a child's status).
    TargetExited(Option<i32>),
    /// leaktrace failed while taking in events.
    Failed,
}

impl Ended {
    /// The JSON report's `ending`.
    fn json(self) -> Value {
        match self {
            Ended::Interrupted => "interrupted".into(),
            Ended::WindowElapsed => "duration_elapsed".into(),
            Ended::TargetExited(status) => {
                serde_json::json!({ "target_exited": { "status": status } })
            }
            Ended::Failed => "failed".into(),
        }
    }

    /// The text report's line that says how the capture ended. An interrupted capture and an
    /// elapsed window have none: only the JSON tells them apart.
    fn text_line(self) -> Option<String> {
        match self {
            Ended::Interrupted | Ended::WindowElapsed => None,
            Ended::TargetExited(status) => Some(format!(
                "target exited with status {}",
                status.map_or("unknown".to_owned(), |s| s.to_string())
            )),
            Ended::Failed => Some(FAILED_LINE.to_owned()),
        }
    }

    /// Both reports say this ending, and the text says no other.
    pub fn assert_said(self, context: &str, text: &TextReport, json: &Value) {
        assert_eq!(json["ending"], self.json(), "{context}: the JSON's ending");
        let said: Vec<&str> = text
            .lines
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with(EXITED_LINE) || l.starts_with(FAILED_LINE))
            .collect();
        let expected = self.text_line();
        assert_eq!(
            said,
            Vec::from_iter(expected.as_deref()),
            "{context}: {text}"
        );
    }
}

const EXITED_LINE: &str = "target exited with status ";
const FAILED_LINE: &str = "leaktrace failed while taking in events (a bug; the panic is above): \
                           this report holds what it took in before";

/// The final text report, as leaktrace prints it on stdout after the live views: the lead
/// process's, then each earlier image's or followed child's, each from its header line.
#[derive(Debug)]
pub struct TextReport {
    pub lines: Vec<String>,
}

impl std::fmt::Display for TextReport {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

/// One ranked site of the text report: "#1 leak_here: 40,000 bytes in 40 blocks (allocs 40,
/// frees 0), leaking (floor …), growth …" and its first frame, "leak_here at /…/fixture.c:52".
#[derive(Debug)]
pub struct TextSite {
    pub rank: usize,
    /// How the report names the site: "leak_here", "parse_config ← xmalloc".
    pub label: String,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub allocs: u64,
    pub frees: u64,
    /// One of [`VERDICTS`].
    pub verdict: String,
    pub first_frame: String,
}

/// Every verdict, as the text, JSON, pprof and HTML reports spell it.
pub const VERDICTS: [&str; 8] = [
    "leaking",
    "grew then flat",
    "fluctuating",
    "stable",
    "shrinking",
    "too early",
    "replacing",
    "frees lost",
];

/// One live view, printed at the end of an interval: its first line ("[    3.0s] live …")
/// and its rows.
#[derive(Debug)]
pub struct LiveView {
    pub heading: String,
    pub rows: Vec<LiveRow>,
}

/// A row of a live view: the verdict it shows (one of [`VERDICTS`]) and the whole line.
#[derive(Debug)]
pub struct LiveRow {
    pub verdict: String,
    pub line: String,
}

impl LiveView {
    /// The row whose site is `function`'s: the row's last column is the site's label,
    /// "FUNCTION", "FUNCTION ← WRAPPER", or with what tells it from another of its name.
    pub fn row(&self, function: &str) -> Option<&LiveRow> {
        self.rows.iter().find(|row| {
            let site = row.line.split("  ").last().unwrap_or_default().trim();
            site == function || site.starts_with(&format!("{function} "))
        })
    }
}

/// The live views in leaktrace's stdout (piped: one block per interval), in order. Each
/// block is its heading, the column names, then a row per site, each row indented.
pub fn live_views(stdout: &[String]) -> Vec<LiveView> {
    let mut views: Vec<LiveView> = Vec::new();
    let mut lines = stdout.iter().peekable();
    while let Some(line) = lines.next() {
        if !line.starts_with('[') {
            continue;
        }
        let columns = lines.next().expect("the live view's column names");
        assert!(columns.contains("verdict"), "{columns}");
        let mut rows = Vec::new();
        while let Some(row) = lines.next_if(|l| l.starts_with("  ")) {
            let verdict = VERDICTS
                .into_iter()
                .find(|v| row.contains(&format!("  {v}  ")))
                .unwrap_or_else(|| panic!("no verdict in the row {row:?}"));
            rows.push(LiveRow {
                verdict: verdict.to_owned(),
                line: row.clone(),
            });
        }
        views.push(LiveView {
            heading: line.clone(),
            rows,
        });
    }
    views
}

/// The `verdict` of every JSON site whose first frame is `function`'s.
pub fn verdicts_of(report: &Value, function: &str) -> Vec<String> {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| site["frames"][0]["function"] == function)
        .map(|site| site["verdict"].as_str().unwrap().to_owned())
        .collect()
}

const HEADER: &str = "leaktrace: pid ";

impl TextReport {
    /// The final report in leaktrace's stdout.
    pub fn from_stdout(stdout: &[String]) -> TextReport {
        let start = stdout
            .iter()
            .position(|l| l.starts_with(HEADER))
            .unwrap_or_else(|| panic!("no final report in {stdout:#?}"));
        TextReport {
            lines: stdout[start..].to_vec(),
        }
    }

    /// The report of process `pid` alone, among the processes of this one.
    pub fn process(&self, pid: i64) -> TextReport {
        let header = format!("{HEADER}{pid} ");
        let start = self
            .lines
            .iter()
            .position(|l| l.starts_with(&header))
            .unwrap_or_else(|| panic!("no report of pid {pid} in {self}"));
        let end = self.lines[start + 1..]
            .iter()
            .position(|l| l.starts_with(HEADER))
            .map_or(self.lines.len(), |n| start + 1 + n);
        TextReport {
            lines: self.lines[start..end].to_vec(),
        }
    }

    /// The in-use figure, (bytes, blocks), of the first report: its "live: …", "in use at
    /// exit: …" or "in use when it exec'd …" line.
    pub fn held(&self) -> (u64, u64) {
        self.lines
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .find_map(|line| {
                let rest = ["live: ", "in use at exit: ", "in use when it exec'd "]
                    .iter()
                    .find_map(|prefix| line.strip_prefix(prefix))?;
                let rest = rest.rsplit(": ").next()?;
                bytes_in_blocks(rest.split(" blocks").next()?)
            })
            .unwrap_or_else(|| panic!("no in-use figure in {self}"))
    }

    /// The ranked sites, best first.
    pub fn sites(&self) -> Vec<TextSite> {
        self.lines
            .windows(2)
            .filter_map(|pair| {
                let (rank, rest) = pair[0].strip_prefix('#')?.split_once(' ')?;
                let (held, rest) = rest.split_once(" blocks (allocs ")?;
                let (label, held) = held.rsplit_once(": ")?;
                let (live_bytes, live_allocations) = bytes_in_blocks(held)?;
                let (allocs, rest) = rest.split_once(", frees ")?;
                let (frees, rest) = rest.split_once("), ")?;
                let verdict = VERDICTS.into_iter().find(|v| rest.starts_with(v))?;
                Some(TextSite {
                    rank: rank.parse().ok()?,
                    label: label.to_owned(),
                    live_bytes,
                    live_allocations,
                    allocs: number(allocs)?,
                    frees: number(frees)?,
                    verdict: verdict.to_owned(),
                    first_frame: pair[1].trim().to_owned(),
                })
            })
            .collect()
    }

    /// The ranked sites whose first frame is `function`'s, summed as [`sites_of`] sums them.
    pub fn sites_of(&self, function: &str) -> SiteSum {
        let mut sum = SiteSum::default();
        for site in self.sites() {
            if frame_function(&site.first_frame) == function {
                sum.sites += 1;
                sum.live_bytes += site.live_bytes;
                sum.live_allocations += site.live_allocations;
                sum.allocs += site.allocs;
                sum.frees += site.frees;
            }
        }
        sum
    }
}

/// "leak_here at /src/fixture.c:52" → "leak_here"; "strdup (inlined)" → "strdup".
fn frame_function(frame: &str) -> &str {
    let frame = frame.strip_suffix(" (inlined)").unwrap_or(frame);
    frame
        .rsplit_once(" at ")
        .map_or(frame, |(function, _)| function)
}

/// A capture of whole bursts of `fixture` (burst, busy or crash mode), as both reports tell
/// it: each leaking function holds exactly what the fixture's `#define`s say, leak_here
/// leads at the line of its malloc, the text's in-use figure is the JSON's, and nothing but
/// churn's balanced traffic (a block in flight as the window closed) holds anything else.
pub fn assert_burst_reported(context: &str, stdout: &[String], json: &Value, ended: Ended) {
    let text = TextReport::from_stdout(stdout);
    ended.assert_said(context, &text, json);
    let totals = &json["totals"];
    let totals = (
        totals["live_bytes"].as_u64().unwrap(),
        totals["live_allocations"].as_u64().unwrap(),
    );
    assert_eq!(text.held(), totals, "{context}: the text's in-use figure");
    let mut held = (0, 0);
    for (function, bytes, blocks) in burst_holdings() {
        let traced = sites_of(json, function);
        let traced = (traced.live_bytes, traced.live_allocations);
        assert_eq!(traced, (bytes, blocks), "{context}: {function} in the JSON");
        let shown = text.sites_of(function);
        let shown = (shown.live_bytes, shown.live_allocations);
        assert_eq!(shown, (bytes, blocks), "{context}: {function} in {text}");
        held = (held.0 + bytes, held.1 + blocks);
    }
    let churn = sites_of(json, "churn");
    assert!(churn.live_allocations <= 1, "{context}: churn {churn:?}");
    assert_eq!(
        (
            totals.0 - churn.live_bytes,
            totals.1 - churn.live_allocations
        ),
        held,
        "{context}: what the burst holds is all that is held"
    );
    let first = &text.sites()[0];
    let line = fixture_line("fixture", "/* the leak */");
    assert!(
        first.first_frame.starts_with("leak_here at ")
            && first.first_frame.ends_with(&format!("fixture.c:{line}")),
        "{context}: leak_here leads at fixture.c:{line}: {text}"
    );
}

/// The CLOCK_MONOTONIC times a fixture that logs its leaks ("leak SEQ NS") logged inside the
/// capture window of `report`. The fixture logs on: once a leak after the window shows, every
/// one in it has been read.
pub fn leaks_logged_in_window(fixture: &mut Running, report: &Value) -> Vec<u64> {
    let start = report["window_start_ns"].as_u64().unwrap();
    let end = report["window_end_ns"].as_u64().unwrap();
    let logged_ns =
        |line: &str| -> Option<u64> { line.strip_prefix("leak ")?.split(' ').nth(1)?.parse().ok() };
    fixture
        .stdout
        .wait_for(|line| logged_ns(line).is_some_and(|ns| ns >= end), WAIT);
    fixture
        .stdout
        .seen
        .iter()
        .filter_map(|line| logged_ns(line))
        .filter(|&ns| (start..end).contains(&ns))
        .collect()
}

/// Starts a fixture and waits until it prints "ready".
pub fn start_ready(binary: &Path, args: &[&str]) -> Running {
    let mut fixture = Running::start(Command::new(binary).args(args));
    fixture.stdout.wait_for(|l| l == "ready", WAIT);
    fixture
}
