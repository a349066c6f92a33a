//! Child processes of the benchmark and the soak: a tracer read line by line (each line timed
//! as it arrives) and reaped with its resource usage, the workload's lines.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A tracer process, killed and reaped however the run ends.
pub struct Traced {
    child: Child,
    lines: mpsc::Receiver<Line>,
    /// Every line taken from `lines` so far.
    seen: Vec<Line>,
    /// Reaped by [`Traced::finish`]: its pid is no longer its own to signal.
    reaped: bool,
}

/// One line a tracer wrote, and when it arrived.
pub struct Line {
    pub at: Instant,
    pub text: String,
    pub stdout: bool,
}

/// How a tracer ended, and what it cost.
pub struct Usage {
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
    /// When it was reaped.
    pub ended: Instant,
    /// Everything it wrote.
    pub lines: Vec<Line>,
}

/// How long a tracer may take to attach (bcc compiles its programs first) or to finish.
pub const TRACER_WAIT: Duration = Duration::from_secs(120);

impl Traced {
    /// Starts `command`, reading whichever of its stdout and stderr is piped. SIGINT ends
    /// the tracer even where the bench runs with SIGINT ignored (a background job of a shell
    /// ignores it): Python, for one, leaves an ignored SIGINT ignored.
    pub fn start(command: &mut Command) -> Result<Traced> {
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            })
        };
        let mut child = command
            .stdin(Stdio::null())
            .spawn()
            .context("start the tracer")?;
        let (sender, lines) = mpsc::channel();
        let pipes: Vec<(Box<dyn std::io::Read + Send>, bool)> = [
            child
                .stdout
                .take()
                .map(|p| (Box::new(p) as Box<dyn std::io::Read + Send>, true)),
            child
                .stderr
                .take()
                .map(|p| (Box::new(p) as Box<dyn std::io::Read + Send>, false)),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (pipe, stdout) in pipes {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for text in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let at = Instant::now();
                    let _ = sender.send(Line { at, text, stdout });
                }
            });
        }
        Ok(Traced {
            child,
            lines,
            seen: Vec::new(),
            reaped: false,
        })
    }

    /// Waits for a line starting with `prefix`, and says when it came.
    pub fn wait_for_line(&mut self, prefix: &str) -> Result<Instant> {
        let deadline = Instant::now() + TRACER_WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.text.starts_with(prefix).then_some(line.at);
                    self.seen.push(line);
                    if let Some(at) = found {
                        return Ok(at);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{}", self.last_words())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        bail!(
            "the tracer never said {prefix:?} in {} s: {}",
            TRACER_WAIT.as_secs(),
            self.last_words()
        )
    }

    /// Whether the tracer has ended (it is left to be reaped by [`Traced::finish`]).
    pub fn exited(&self) -> bool {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        let id = self.child.id() as libc::id_t;
        unsafe { libc::waitid(libc::P_PID, id, &mut info, flags) == 0 && info.si_pid() != 0 }
    }

    /// What the tracer said of its failure: the first Python exception (bcc's cause, before
    /// its cleanup's complaints), else its last line.
    pub fn last_words(&mut self) -> String {
        self.drain(Duration::from_secs(1));
        let texts = || {
            self.seen
                .iter()
                .map(|l| l.text.trim())
                .filter(|t| !t.is_empty())
        };
        texts()
            .find(|t| t.starts_with("Exception: "))
            .or_else(|| texts().next_back())
            .unwrap_or("(said nothing)")
            .to_owned()
    }

    /// Takes in what is left to read, until both pipes close or `wait` passes.
    fn drain(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
    }

    /// Sends SIGINT, and says when.
    pub fn interrupt(&self) -> Instant {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        Instant::now()
    }

    /// Waits for the tracer to end, and takes its resource usage and everything it wrote.
    pub fn finish(mut self) -> Result<Usage> {
        let deadline = Instant::now() + TRACER_WAIT;
        loop {
            let mut status = 0;
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let pid = self.child.id() as i32;
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                let ended = Instant::now();
                self.reaped = true;
                let status = std::process::ExitStatus::from_raw(status);
                if !status.success() && status.signal() != Some(libc::SIGINT) {
                    bail!("the tracer failed ({status}): {}", self.last_words());
                }
                self.drain(Duration::from_secs(5));
                let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                return Ok(Usage {
                    cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
                    peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
                    ended,
                    lines: std::mem::take(&mut self.seen),
                });
            }
            if Instant::now() > deadline {
                bail!("the tracer did not end in {} s", TRACER_WAIT.as_secs());
            }
            // Fine enough to time a detach.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn expect_line(output: &mut BufReader<ChildStdout>, prefix: &str) -> Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if output.read_line(&mut line)? == 0 {
            bail!("the workload ended before printing {prefix:?}");
        }
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return Ok(rest.to_owned());
        }
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}
