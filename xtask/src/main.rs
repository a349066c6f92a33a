//! `cargo xtask <task>`: the project's chores that plain cargo cannot do.

mod bench;
mod forks_bench;
mod fuzz;
mod peers;
mod process;
mod scan_bench;
mod soak;
mod stamp;
mod traps;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  build-ebpf   build the eBPF object (nightly + rust-src + bpf-linker) and its source stamp
  setup-ebpf   install what build-ebpf needs (LLVM 22, bpf-linker, rust-src)
  setup-peers  install the tools bench compares with (bcc memleak, with kernel headers)
  test         install what the tests need, then run every test
  bench        what tracing costs a target (on four allocators, and redis): leaktrace against
               untraced and bcc memleak; leaktrace's attach and detach times; the pause
               of a reachability scan
  soak         trace a busy target for --minutes M: leaktrace's memory stays flat, nothing dropped;
               --serve: `leaktrace serve` on 2^15 sites, memory and out-dir bounded
  fuzz         run each cargo-fuzz target for --seconds S (nightly; installs cargo-fuzz)";

/// Debian packages the tests use: fixtures are built with gcc and g++ (linked with jemalloc,
/// tcmalloc and mimalloc too, whose code the probe-point tests also read) and split with
/// binutils, launch mode is checked against valgrind, glibc's frames
/// are named from libc6-dbg, the pprof output is read by `go tool pprof` (golang-go) and the
/// SVG checked by xmllint (libxml2-utils), the HTML opened in chromium, and bpftool shows what
/// stays attached, and man renders the manual page.
const TEST_PACKAGES: [&str; 18] = [
    "gcc",
    "g++",
    "binutils",
    "valgrind",
    "bpftool",
    "libjemalloc-dev",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
    "man-db",
    "libc6-dbg",
    "golang-go",
    "libxml2-utils",
    "chromium",
    // tests/servers.rs: real programs (redis-server brings redis-cli and redis-benchmark).
    "redis-server",
    "python3",
    // tests/deploy.rs: promtool checks the deployed rules and Debian's Prometheus scrapes
    // leaktrace; systemd-analyze verifies the unit; strace lists the calls its filter must allow.
    "prometheus",
    "systemd",
    "strace",
];

fn main() -> Result<()> {
    let task = env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "build-ebpf" => build_ebpf(),
        "setup-ebpf" => setup_ebpf(),
        "setup-peers" => peers::setup_bcc().map(|memleak| println!("{}", memleak.display())),
        "test" => test(),
        "bench" => bench::bench(&env::args().skip(2).collect::<Vec<_>>()),
        "soak" => soak::soak(&env::args().skip(2).collect::<Vec<_>>()),
        "fuzz" => fuzz::fuzz(&env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the workspace")
        .to_path_buf()
}

/// tests/fixtures/NAME.c built with gcc and `flags` as `out`/NAME (the bench installs gcc).
fn build_c_fixture(out: &Path, name: &str, flags: &[&str]) -> Result<PathBuf> {
    let path = out.join(name);
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&path)
        .arg(workspace().join(format!("tests/fixtures/{name}.c"))))
    .with_context(|| format!("build the {name} fixture (`cargo xtask bench` installs gcc)"))?;
    Ok(path)
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    let root = workspace();
    run(Command::new("rustup")
        .current_dir(root.join("leaktrace-ebpf"))
        .env(
            "RUSTFLAGS",
            r#"--cfg bpf_target_arch="x86_64" -Cdebuginfo=2 -Clink-arg=--btf"#,
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "leaktrace-ebpf",
            "--bins",
        ])
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]))
    .context("eBPF build failed (is the toolchain there? run `cargo xtask setup-ebpf`)")?;

    let built = root.join("target/bpfel-unknown-none/release/leaktrace");
    let object = root.join("leaktrace/bpf/leaktrace.bpf.o");
    fs::copy(&built, &object).with_context(|| format!("copy {}", built.display()))?;
    let stamp = stamp::ebpf_source_stamp(&root)?;
    fs::write(
        root.join("leaktrace/bpf/leaktrace.bpf.stamp"),
        format!("{stamp}\n"),
    )?;
    println!("wrote {} (stamp {stamp})", object.display());
    Ok(())
}

fn setup_ebpf() -> Result<()> {
    apt_install(&[
        "llvm-22-dev",
        "libpolly-22-dev",
        "libzstd-dev",
        "zlib1g-dev",
    ])?;
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        env::var("PATH").unwrap_or_default()
    );
    run(Command::new("cargo")
        .env("PATH", path)
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
        .args(["install", "bpf-linker", "--version", "0.13.0", "--locked"])
        .args(["--no-default-features", "--features", "llvm-22"]))?;
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn test() -> Result<()> {
    install_missing(&TEST_PACKAGES)?;
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace())
            .arg("test"),
    )
}

/// Installs those of `packages` that are not installed yet (apt-get update only then).
fn install_missing(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "--showformat=${db:Status-Status}", package])
        .output()
        .is_ok_and(|out| out.stdout == b"installed")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Another apt may be running (a bench installing its own): wait for it.
        .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"])
        .args(packages))
}
