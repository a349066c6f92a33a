//! The probes' own log (aya-log): what they have to say that is rare, such as the first drop
//! of each kind, under `--verbose` only.

use std::{
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;

/// The probes' log (aya-log), forwarded to leaktrace's own by a thread of its own. Dropping it
/// forwards what is left, and ends the thread.
pub struct ProbeLog {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl ProbeLog {
    /// How often the thread looks: the messages are rare, and none is urgent.
    const POLL: Duration = Duration::from_millis(100);

    pub fn forward(ebpf: &mut Ebpf) -> Result<ProbeLog> {
        let mut logger = EbpfLogger::init(ebpf).context("open the probes' log")?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(ProbeLog::POLL) {
                logger.flush();
            }
            logger.flush();
        });
        Ok(ProbeLog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ProbeLog {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
