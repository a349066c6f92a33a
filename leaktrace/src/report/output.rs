//! The report files asked for, and writing them safely: leaktrace runs as root, often in a
//! directory others can write.
//!
//! Every path is checked before the capture starts, so that a capture is never lost to a
//! path that could not have been written.
//!
//! A report appears whole or not at all (written to a temporary file beside it, then renamed),
//! a symbolic link at its path is refused rather than followed, the temporary file is created
//! exclusively and without following links, and the file belongs to the user who ran sudo.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::Report;
use crate::error::{Failure, OutputPath};

/// The formats a report is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Folded,
    Flamegraph,
    Html,
    Pprof,
}

/// Where one report goes: a file, or standard output (`-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    File(PathBuf),
    Stdout,
}

impl Destination {
    /// `-` is standard output; anything else a file.
    pub fn from_arg(path: &Path) -> Destination {
        if path == Path::new("-") {
            Destination::Stdout
        } else {
            Destination::File(path.to_path_buf())
        }
    }
}

/// The report files the command line asks for (`--json`, `--folded`, …).
#[derive(Clone, Debug, Default)]
pub struct ReportFiles {
    pub outputs: Vec<(Format, Destination)>,
    /// Sites the HTML page shows.
    pub top: usize,
}

impl ReportFiles {
    /// Fails before the capture, not after it, when a report could not be written: a path
    /// that cannot take a file, two reports to one path, two to standard output. Every such
    /// path is named.
    pub fn check(&self) -> Result<()> {
        let mut refused = Vec::new();
        let mut files: Vec<PathBuf> = Vec::new();
        let mut to_stdout = 0;
        for (_, destination) in &self.outputs {
            match destination {
                Destination::Stdout => to_stdout += 1,
                Destination::File(path) => {
                    let same = comparable(path);
                    if files.contains(&same) {
                        refused.push(output_path(path, "another report goes there too"));
                    } else if let Err(why) = check_path(path) {
                        refused.push(why);
                    }
                    files.push(same);
                }
            }
        }
        if to_stdout > 1 {
            refused.push(output_path(
                Path::new("-"),
                "only one report can go to standard output",
            ));
        }
        refusal(refused)
    }

    /// Whether a report goes to standard output: the text report then goes to stderr.
    pub fn takes_stdout(&self) -> bool {
        self.outputs
            .iter()
            .any(|(_, destination)| *destination == Destination::Stdout)
    }

    /// Writes every report, whether or not the others could be; names every one that could
    /// not (a full disk fails them all, and each is a capture's worth of work lost).
    pub fn write(&self, report: &Report) -> Result<()> {
        let mut failed = Vec::new();
        for (format, destination) in &self.outputs {
            let path = match destination {
                Destination::File(path) => path.as_path(),
                Destination::Stdout => Path::new("-"),
            };
            let contents = match report.render(*format, self.top) {
                Ok(contents) => contents,
                Err(error) => {
                    failed.push(output_path(path, &format!("{error:#}")));
                    continue;
                }
            };
            let written = match destination {
                Destination::File(path) => write_atomically(path, &contents, invoking_user()),
                Destination::Stdout => {
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&contents)
                        .and_then(|()| stdout.flush())
                        .map_err(|error| output_path(path, &format!("standard output: {error}")))
                }
            };
            failed.extend(written.err());
        }
        refusal(failed)
    }
}

/// Ok when no path was refused; else the failure that names them all.
fn refusal(refused: Vec<OutputPath>) -> Result<()> {
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Failure::OutputPaths(refused).into())
    }
}

/// `path` as a file the system would open: its directory resolved, for telling two spellings
/// of one path apart.
fn comparable(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default();
    fs::canonicalize(parent).map_or_else(|_| path.to_path_buf(), |dir| dir.join(name))
}

fn output_path(path: &Path, reason: &str) -> OutputPath {
    OutputPath {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

/// Why `path` could not take a report, found before the capture: the directory is missing
/// or takes no new file, the path is a directory or a symbolic link.
fn check_path(path: &Path) -> Result<(), OutputPath> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let metadata = fs::symlink_metadata(path);
    if !parent.is_dir() {
        return Err(output_path(
            path,
            &format!("directory {} does not exist", parent.display()),
        ));
    }
    if metadata.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(output_path(
            path,
            "it is a symbolic link, which leaktrace does not follow",
        ));
    }
    if metadata.as_ref().is_ok_and(|m| m.is_dir()) {
        return Err(output_path(path, "it is a directory"));
    }
    // The file is written beside itself first, then renamed: try that now.
    let temporary = temporary_path(path);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
    {
        Ok(_) => {
            let _ = fs::remove_file(&temporary);
            Ok(())
        }
        Err(error) => Err(output_path(
            path,
            &format!("cannot create a file in {}: {error}", parent.display()),
        )),
    }
}

/// Who should own the files: the invoking user under sudo (SUDO_UID/SUDO_GID), else nobody
/// in particular (they stay the writer's).
pub fn invoking_user() -> Option<(u32, u32)> {
    let id = |name| std::env::var(name).ok()?.parse::<u32>().ok();
    Some((id("SUDO_UID")?, id("SUDO_GID")?))
}

/// Writes `contents` to `path` atomically, mode 0644, owned by `owner` when given.
pub fn write_atomically(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), OutputPath> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(output_path(
            path,
            "it is a symbolic link, which leaktrace does not follow",
        ));
    }
    let temporary = temporary_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(|error| {
            output_path(
                path,
                &format!("cannot create {}: {error}", temporary.display()),
            )
        })?;
    let written = (|| -> std::io::Result<()> {
        file.write_all(contents)?;
        // The umask may have taken bits away: 0644 is what readers expect.
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map_err(|error| output_path(path, &error.to_string()))
}

/// `dir/.name.leaktrace-PID.tmp`: beside the target, so that the rename stays on one file
/// system, and unique to this process.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "report".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.leaktrace-{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("leaktrace-output-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_whole_with_mode_0644_and_leaves_no_temporary_file() {
        let dir = scratch("whole");
        let path = dir.join("r.json");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new", None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "only the report is left"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_a_symbolic_link_and_leaves_its_target_alone() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        fs::write(&victim, "precious").unwrap();
        let path = dir.join("r.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let error = write_atomically(&path, b"report", None).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_sudo_user_owns_the_file() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = scratch("owner");
        let path = dir.join("r.json");
        write_atomically(&path, b"x", Some((65534, 65534))).unwrap();
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (65534, 65534));
        fs::remove_dir_all(dir).unwrap();
    }
}
