//! Refuses to build leaktrace around an eBPF object older than its sources.

#[path = "../xtask/src/stamp.rs"]
mod stamp;

use std::{fs, path::Path};

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("leaktrace/ sits in the workspace");
    for dir in stamp::EBPF_SOURCE_DIRS {
        println!("cargo::rerun-if-changed={}", workspace.join(dir).display());
    }
    let stamp_path = manifest.join("bpf/leaktrace.bpf.stamp");
    println!("cargo::rerun-if-changed={}", stamp_path.display());
    println!(
        "cargo::rerun-if-changed={}",
        manifest.join("bpf/leaktrace.bpf.o").display()
    );

    let committed = fs::read_to_string(&stamp_path).unwrap_or_default();
    let current = stamp::ebpf_source_stamp(workspace).expect("read the eBPF sources");
    if committed.trim() != current {
        eprintln!("eBPF object is stale: run `cargo xtask build-ebpf`");
        std::process::exit(1);
    }
}
