//! Child processes of the benchmark and the soak: a tracer read line by line and reaped with
//! its resource usage, the workload's lines.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A tracer process, killed and reaped however the run ends.
pub struct Traced {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Reaped by [`Traced::finish`]: its pid is no longer its own to signal.
    reaped: bool,
}

/// A tracer's own cost.
pub struct Usage {
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

/// How long a tracer may take to attach (bcc compiles its programs first) or to finish.
pub const TRACER_WAIT: Duration = Duration::from_secs(120);

impl Traced {
    /// Starts `command`, reading whichever of its stdout and stderr is piped.
    pub fn start(command: &mut Command) -> Result<Traced> {
        let mut child = command
            .stdin(Stdio::null())
            .spawn()
            .context("start the tracer")?;
        let (sender, lines) = mpsc::channel();
        let pipes: Vec<Box<dyn std::io::Read + Send>> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for pipe in pipes {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = sender.send(line);
                }
            });
        }
        Ok(Traced {
            child,
            lines,
            reaped: false,
        })
    }

    pub fn wait_for_line(&mut self, prefix: &str) -> Result<()> {
        let deadline = Instant::now() + TRACER_WAIT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(()),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        bail!("the tracer never said {prefix:?}: {}", seen.join(" | "))
    }

    pub fn interrupt(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// Waits for the tracer to end, and takes its resource usage.
    pub fn finish(mut self) -> Result<Usage> {
        let deadline = Instant::now() + TRACER_WAIT;
        loop {
            let mut status = 0;
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let pid = self.child.id() as i32;
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                self.reaped = true;
                let status = std::process::ExitStatus::from_raw(status);
                if !status.success() && status.signal() != Some(libc::SIGINT) {
                    bail!("the tracer failed: {status}");
                }
                let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                return Ok(Usage {
                    cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
                    peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
                });
            }
            if Instant::now() > deadline {
                bail!("the tracer did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

impl Traced {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}
