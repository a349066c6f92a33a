fn main() {
    // aya-ebpf's code is gated on `bpf_target_arch`; xtask passes it, nightly wants it declared.
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\"))");
}
