//! `cargo xtask fuzz [--seconds S]`: each cargo-fuzz target in fuzz/ for S seconds (default
//! 60), seeded from this machine's own /proc files and binaries. Not part of the tests; a
//! crash stops it, and its input (fuzz/artifacts/TARGET/) becomes a regression test.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{run, workspace};

const TARGETS: [&str; 4] = ["proc_maps", "smaps", "elf_symbols", "prologue"];

pub fn fuzz(args: &[String]) -> Result<()> {
    let seconds: u64 = match args {
        [flag, value] if flag == "--seconds" => value.parse().context("--seconds")?,
        [] => 60,
        _ => bail!("usage: cargo xtask fuzz [--seconds S]"),
    };
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let root = workspace().join("fuzz");
    for target in TARGETS {
        let corpus = root.join("corpus").join(target);
        fs::create_dir_all(&corpus)?;
        seed(target, &corpus)?;
        run(Command::new("rustup")
            .current_dir(&root)
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))
        .with_context(|| format!("fuzz target {target} failed: see fuzz/artifacts/{target}"))?;
    }
    Ok(())
}

/// A first input or two that the parser accepts, so the fuzzer starts from real files.
fn seed(target: &str, corpus: &Path) -> Result<()> {
    let me = std::process::id();
    match target {
        "proc_maps" => {
            fs::write(corpus.join("self"), fs::read(format!("/proc/{me}/maps"))?)?;
        }
        "smaps" => {
            let mut text = fs::read(format!("/proc/{me}/status"))?;
            for part in ["smaps_rollup", "smaps"] {
                text.push(0);
                text.extend(fs::read(format!("/proc/{me}/{part}"))?);
            }
            fs::write(corpus.join("self"), text)?;
        }
        "elf_symbols" => {
            // An address inside, then the module: this very program, with its debug info.
            let mut input = 0x1000u64.to_le_bytes().to_vec();
            input.extend(fs::read(std::env::current_exe()?)?);
            fs::write(corpus.join("xtask"), input)?;
        }
        _ => {
            // free's prologue: test %rdi,%rdi; je; push %rbp; …
            let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55, 0xc3];
            fs::write(corpus.join("free"), free)?;
        }
    }
    Ok(())
}
