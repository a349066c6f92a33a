//! `cargo xtask setup-peers`: the tools the bench compares leaktrace with, installed from
//! Debian, so that a clone of the project needs nothing from beside it.
//!
//! bcc memleak (`memleak-bpfcc`, in bpfcc-tools) compiles its BPF program at start with the
//! running kernel's headers (`/lib/modules/$(uname -r)/build`). A kernel with no headers
//! package (this one) gets Debian's 6.1 headers in their place: memleak uses uprobes alone,
//! whose layouts those headers describe as well. The bench runs memleak with a fix of its own
//! (see `bench::BCC_REF_CTR_FIX`); nothing installed is changed.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{install_missing, process::which};

/// Installs bcc memleak and gives it kernel headers where the kernel has none; does nothing
/// where it runs already. Returns memleak's path.
pub fn setup_bcc() -> Result<std::path::PathBuf> {
    install_missing(&["bpfcc-tools"])?;
    let release = String::from_utf8(Command::new("uname").arg("-r").output()?.stdout)?;
    let modules = Path::new("/lib/modules").join(release.trim());
    if !modules.join("build").exists() {
        let headers = debian_headers()?;
        install_missing(&[&headers])?;
        let version = headers.trim_start_matches("linux-headers-");
        let common = version.trim_end_matches("-amd64");
        fs::create_dir_all(&modules)?;
        for (link, target) in [
            ("build", format!("/usr/src/linux-headers-{version}")),
            ("source", format!("/usr/src/linux-headers-{common}-common")),
        ] {
            let link = modules.join(link);
            let _ = fs::remove_file(&link);
            symlink(&target, &link)
                .with_context(|| format!("link {} to {target}", link.display()))?;
        }
    }
    which("memleak-bpfcc").context("bpfcc-tools is installed but memleak-bpfcc is not in PATH")
}

/// The newest Debian 6.1 headers package for amd64, from apt's lists.
fn debian_headers() -> Result<String> {
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let found = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-headers-6\.1\.0-[0-9]+-amd64$",
        ])
        .output()
        .context("apt-cache")?;
    match newest_headers(&String::from_utf8_lossy(&found.stdout)) {
        Some(name) => Ok(name),
        None => bail!("no linux-headers-6.1.0-N-amd64 package in apt's lists"),
    }
}

/// Of `apt-cache search` lines, the `linux-headers-6.1.0-N-amd64` package of the highest N
/// (numerically: 57 is newer than 9).
fn newest_headers(search: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let abi: u32 = name
                .strip_prefix("linux-headers-6.1.0-")?
                .strip_suffix("-amd64")?
                .parse()
                .ok()?;
            Some((abi, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_headers_are_chosen_by_number() {
        let search = "linux-headers-6.1.0-9-amd64 - Header files for Linux 6.1.0-9-amd64\n\
                      linux-headers-6.1.0-57-amd64 - Header files for Linux 6.1.0-57-amd64\n\
                      linux-headers-6.1.0-57-rt-amd64 - Header files (rt)\n";
        assert_eq!(
            newest_headers(search).as_deref(),
            Some("linux-headers-6.1.0-57-amd64")
        );
        assert_eq!(newest_headers(""), None);
    }
}
