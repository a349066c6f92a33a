//! The service's report files: a report per process at each window's end and at its
//! capture's end, in --out-dir, rotated so that the directory never grows without bound.
//!
//! A report is two files with one stem, `COMM-PID-KIND-TIME`: `.json` (the JSON report) and
//! `.pb.gz` (pprof, with inuse and alloc sample types). Past `--keep-windows` reports or
//! `--max-out-bytes` bytes, the oldest reports go, whole.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result};

use crate::{
    error::{Failure, OutputPath},
    report::{
        Report,
        output::{Format, invoking_user, write_atomically},
    },
};

/// The file endings of one report.
const ENDINGS: [(&str, Format); 2] = [(".json", Format::Json), (".pb.gz", Format::Pprof)];

/// Why a report was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    Window,
    Final,
}

/// The out-dir and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowStore {
    pub dir: PathBuf,
    pub keep: usize,
    pub max_bytes: u64,
}

impl WindowStore {
    /// Creates the directory if need be: a service that cannot write its reports says so at
    /// start, not at the first window's end.
    pub fn open(dir: &Path, keep: usize, max_bytes: u64) -> Result<WindowStore> {
        fs::create_dir_all(dir).with_context(|| {
            format!("create the report directory {} (--out-dir)", dir.display())
        })?;
        Ok(WindowStore {
            dir: dir.to_path_buf(),
            keep,
            max_bytes,
        })
    }

    /// Writes `report`, after the oldest reports made room for it: the directory never holds
    /// more than the limits allow, but for a newest report larger than them all. The stem of
    /// the files written.
    pub fn write(&self, report: &Report, kind: ReportKind) -> Result<PathBuf> {
        let stem = self.dir.join(stem(report, kind, SystemTime::now()));
        let files = ENDINGS
            .iter()
            .map(|(ending, format)| {
                let mut path = stem.clone().into_os_string();
                path.push(ending);
                Ok((PathBuf::from(path), report.render(*format, 0)?))
            })
            .collect::<Result<Vec<_>>>()?;
        self.rotate(
            files
                .iter()
                .map(|(_, contents)| contents.len() as u64)
                .sum(),
        );
        let failed: Vec<OutputPath> = files
            .iter()
            .filter_map(|(path, contents)| write_atomically(path, contents, invoking_user()).err())
            .collect();
        if !failed.is_empty() {
            return Err(Failure::OutputPaths(failed).into());
        }
        Ok(stem)
    }

    /// Removes the oldest reports until one more, of `incoming` bytes, fits the limits. A
    /// file that cannot be removed is logged: the next rotation tries again.
    fn rotate(&self, incoming: u64) {
        let reports = self.reports();
        let mut count = reports.len() + 1;
        let mut bytes: u64 = reports.iter().map(|r| r.bytes).sum::<u64>() + incoming;
        for report in reports {
            if count <= self.keep && bytes <= self.max_bytes {
                break;
            }
            for path in &report.files {
                if let Err(error) = fs::remove_file(path) {
                    log::warn!("cannot remove {} to rotate: {error}", path.display());
                }
            }
            count -= 1;
            bytes -= report.bytes;
        }
    }

    /// The reports in the directory, oldest first.
    fn reports(&self) -> Vec<StoredReport> {
        let mut by_stem: BTreeMap<String, StoredReport> = BTreeMap::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = ENDINGS.iter().find_map(|(e, _)| name.strip_suffix(e)) else {
                continue;
            };
            if !is_ours(stem) {
                continue;
            }
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            let report = by_stem
                .entry(stem.to_owned())
                .or_insert_with(|| StoredReport {
                    stem: stem.to_owned(),
                    modified: SystemTime::UNIX_EPOCH,
                    bytes: 0,
                    files: Vec::new(),
                });
            report.bytes += metadata.len();
            report.modified = report
                .modified
                .max(metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            report.files.push(entry.path());
        }
        let mut reports: Vec<StoredReport> = by_stem.into_values().collect();
        // Stems end in their time: they order reports written within a clock tick.
        reports.sort_by(|a, b| (a.modified, &a.stem).cmp(&(b.modified, &b.stem)));
        reports
    }
}

struct StoredReport {
    stem: String,
    modified: SystemTime,
    bytes: u64,
    files: Vec<PathBuf>,
}

/// `COMM-PID-KIND-TIME`, the name in safe characters, the time in UTC to the millisecond.
fn stem(report: &Report, kind: ReportKind, now: SystemTime) -> String {
    let name: String = report
        .header
        .command
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kind = match kind {
        ReportKind::Window => "window",
        ReportKind::Final => "final",
    };
    let time = humantime::format_rfc3339_millis(now)
        .to_string()
        .replace(':', "");
    format!("{name}-{}-{kind}-{time}", report.header.pid)
}

/// A stem this store wrote: `…-PID-window-…` or `…-PID-final-…`. Other files are left alone.
fn is_ours(stem: &str) -> bool {
    ["-window-", "-final-"].iter().any(|kind| {
        stem.split_once(kind).is_some_and(|(before, after)| {
            before
                .rsplit_once('-')
                .is_some_and(|(_, pid)| pid.parse::<u32>().is_ok())
                && after.ends_with('Z')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_own_reports_are_rotated() {
        assert!(is_ours("redis-server-42-window-2026-12-01T020304.123Z"));
        assert!(is_ours("a-b-7-final-2026-12-01T020304.123Z"));
        assert!(!is_ours("notes"));
        assert!(!is_ours("x-window-2026-12-01T020304.123Z"));
    }

    #[test]
    fn the_oldest_reports_go_first_by_count_and_by_bytes() {
        let dir = std::env::temp_dir().join(format!("leaktrace-windows-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut store = WindowStore::open(&dir, 3, u64::MAX).unwrap();
        let start = SystemTime::now() - std::time::Duration::from_secs(100);
        let write = |minute: u64, bytes: usize| {
            let stem = format!("srv-1-window-2026-12-01T02{minute:02}00.000Z");
            for (ending, _) in ENDINGS {
                let path = dir.join(format!("{stem}{ending}"));
                fs::write(&path, vec![0u8; bytes]).unwrap();
                let file = fs::File::options().write(true).open(&path).unwrap();
                file.set_modified(start + std::time::Duration::from_secs(minute))
                    .unwrap();
            }
        };
        fs::write(dir.join("operator-notes.txt"), "kept").unwrap();
        for minute in 0..5 {
            write(minute, 100);
        }
        store.rotate(0);
        let left = |store: &WindowStore| -> Vec<String> {
            store.reports().into_iter().map(|r| r.stem).collect()
        };
        assert_eq!(
            left(&store),
            ["03", "04"].map(|m| format!("srv-1-window-2026-12-01T02{m}00.000Z")),
            "two kept, and room for the one about to be written: three"
        );
        store.max_bytes = 400;
        store.rotate(200);
        assert_eq!(
            left(&store),
            ["srv-1-window-2026-12-01T020400.000Z"],
            "one report of 200 bytes, and room for 200 more, in 400"
        );
        assert!(dir.join("operator-notes.txt").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
