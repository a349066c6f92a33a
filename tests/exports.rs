//! The report in the formats other tools read, checked by those tools.

mod support;

use std::process::Command;

use support::*;

#[test]
fn go_tool_pprof_lists_the_leaking_function_first() {
    if !bpf_available() {
        return;
    }
    let binary = build_fixture("fixture");
    let profile = output_path("pprof", "pb.gz");
    let profile_arg = profile.to_str().unwrap();
    launch_json("pprof", &["--pprof", profile_arg], &binary, &["exit"]);
    for (index, leak_here_value) in [("inuse_space", "39.06kB"), ("inuse_objects", "40")] {
        let output = Command::new("go")
            .args(["tool", "pprof", "-top", &format!("-sample_index={index}")])
            .arg(&profile)
            .env("HOME", env!("CARGO_TARGET_TMPDIR"))
            .output()
            .expect("run go tool pprof (`cargo xtask test` installs golang-go)");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The rows follow the "flat  flat%  sum%  cum  cum%" header; the first is the top.
        let top = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("flat"))
            .nth(1)
            .unwrap_or_default();
        assert!(top.ends_with(" leak_here"), "{index}: {text}");
        assert!(
            top.trim_start().starts_with(leak_here_value),
            "{index}: {text}"
        );
    }
}

#[test]
fn the_flamegraph_is_well_formed_svg_with_the_leaking_function() {
    if !bpf_available() {
        return;
    }
    let binary = build_fixture("fixture");
    let svg = output_path("flamegraph", "svg");
    launch_json(
        "flamegraph",
        &["--flamegraph", svg.to_str().unwrap()],
        &binary,
        &["exit"],
    );
    let status = Command::new("xmllint")
        .arg("--noout")
        .arg(&svg)
        .status()
        .expect("run xmllint (`cargo xtask test` installs libxml2-utils)");
    assert!(status.success(), "xmllint rejects {}", svg.display());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("leak_here"));
}
