//! Full stacks without frame pointers, and symbols wherever the debug info lives.

mod support;

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use support::*;

const NO_FRAME_POINTERS: &[&str] = &["-O2", "-fomit-frame-pointer"];

fn launch(test: &str, options: &[&str], binary: &Path, args: &[&str]) -> Value {
    launch_json(test, options, binary, args).0
}

/// The first site whose innermost frame is `function`.
fn site<'a>(report: &'a Value, function: &str) -> &'a Value {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["frames"][0]["function"]
                .as_str()
                .is_some_and(|f| f.starts_with(function))
        })
        .unwrap_or_else(|| panic!("no {function} site in {report:#}"))
}

/// (function, file name, line) of each frame, up to and including `main`.
fn chain(site: &Value) -> Vec<(String, String, u64)> {
    let mut chain = Vec::new();
    for frame in site["frames"].as_array().unwrap() {
        let function = frame["function"].as_str().unwrap_or("?").to_owned();
        let file = frame["file"].as_str().unwrap_or("?");
        let file = file.rsplit('/').next().unwrap().to_owned();
        let line = frame["line"].as_u64().unwrap_or(0);
        let done = function == "main";
        chain.push((function, file, line));
        if done {
            return chain;
        }
    }
    panic!("the stack does not reach main: {chain:?}");
}

#[test]
fn without_frame_pointers_the_stack_is_the_same_as_with_them() {
    let Some(_bpf) = require_bpf() else { return };
    // The frame-pointer build unwound by frame pointers alone: an independent reference.
    let with = build_fixture_with("fixture", &["-O2", "-fno-omit-frame-pointer"]);
    let without = build_fixture_with("fixture", NO_FRAME_POINTERS);
    let with = launch("fp_build", &["--unwind", "fp"], &with, &["exit"]);
    let without = launch("no_fp_build", &[], &without, &["exit"]);
    for function in ["leak_here", "grow_buffer"] {
        let expected = chain(site(&with, function));
        assert!(
            expected
                .iter()
                .all(|(_, file, line)| file == "fixture.c" && *line > 0)
        );
        assert_eq!(chain(site(&without, function)), expected, "{function}");
    }
    // strdup's callers: libc has no frame pointers even in the frame-pointer build.
    let copy = chain(site(&without, "copy_name"));
    assert_eq!(copy.first().map(|f| f.0.as_str()), Some("copy_name"));
}

#[test]
fn frame_pointers_alone_stop_where_they_are_missing() {
    let Some(_bpf) = require_bpf() else { return };
    // The control for the test above: it is the CFI that finds the callers.
    let without = build_fixture_with("fixture", NO_FRAME_POINTERS);
    let report = launch(
        "no_fp_build_fp_unwind",
        &["--unwind", "fp"],
        &without,
        &["exit"],
    );
    let frames = site(&report, "leak_here")["frames"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        !frames.iter().any(|f| f["function"] == "main"),
        "frame pointers reached main in a build without them: {frames:#?}"
    );
}

#[test]
fn cxx_without_frame_pointers_shows_the_three_callers_of_new() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture_with("cxx", NO_FRAME_POINTERS);
    let report = launch("cxx_no_fp", &[], &binary, &["doors"]);
    let functions: Vec<&str> = site(&report, "leak_new_here")["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        functions[..4],
        [
            "leak_new_here()",
            "build_cache()",
            "handle_request()",
            "main"
        ]
    );
}

#[test]
fn frames_inside_glibc_carry_file_and_line_from_libc6_dbg() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture_with("fixture", NO_FRAME_POINTERS);
    let report = launch("libc_frames", &[], &binary, &["exit"]);
    let frames = site(&report, "leak_here")["frames"]
        .as_array()
        .unwrap()
        .clone();
    let libc: Vec<&Value> = frames
        .iter()
        .filter(|f| f["module"].as_str().is_some_and(|m| m.contains("libc.so")))
        .collect();
    assert!(!libc.is_empty(), "the stack goes on into libc: {frames:#?}");
    for frame in libc {
        assert!(
            frame["file"].is_string() && frame["line"].is_u64(),
            "{frame:#}"
        );
        assert!(frame["build_id"].is_string(), "{frame:#}");
    }
}

/// The fixture with its debug info split off: stripped binary, `fixture.debug` beside it.
fn split_debug(test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let built = build_fixture("fixture");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("fixture");
    let debug = dir.join("fixture.debug");
    fs::copy(&built, &binary).unwrap();
    let objcopy = |args: &[&std::ffi::OsStr]| {
        let status = Command::new("objcopy").args(args).status().unwrap();
        assert!(status.success(), "objcopy {args:?}");
    };
    objcopy(&[
        "--only-keep-debug".as_ref(),
        binary.as_os_str(),
        debug.as_os_str(),
    ]);
    objcopy(&["--strip-debug".as_ref(), binary.as_os_str()]);
    let link = format!("--add-gnu-debuglink={}", debug.display());
    objcopy(&[link.as_ref(), binary.as_os_str()]);
    (binary, debug)
}

fn assert_leak_here_has_a_line(report: &Value) {
    let frame = &site(report, "leak_here")["frames"][0];
    assert_eq!(
        frame["line"].as_u64(),
        Some(fixture_line("fixture", "/* the leak */")),
        "{frame:#}"
    );
}

#[test]
fn split_debug_info_is_found_by_debuglink() {
    let Some(_bpf) = require_bpf() else { return };
    let (binary, _) = split_debug("debuglink");
    assert_leak_here_has_a_line(&launch("debuglink", &[], &binary, &["exit"]));
}

#[test]
fn split_debug_info_is_found_by_build_id_under_a_debug_dir() {
    let Some(_bpf) = require_bpf() else { return };
    let (binary, debug) = split_debug("build_id");
    // Only the build-id copy is left to find.
    let root = binary.parent().unwrap().join("debug-root");
    let output = Command::new("readelf")
        .args(["-n"])
        .arg(&binary)
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&output.stdout);
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("gcc gives binaries a build-id")
        .to_owned();
    let by_id = root
        .join(".build-id")
        .join(&build_id[..2])
        .join(format!("{}.debug", &build_id[2..]));
    fs::create_dir_all(by_id.parent().unwrap()).unwrap();
    fs::rename(&debug, &by_id).unwrap();
    let root = root.to_str().unwrap();
    assert_leak_here_has_a_line(&launch(
        "build_id",
        &["--debug-dir", root],
        &binary,
        &["exit"],
    ));
}

#[test]
fn a_target_in_its_own_mount_namespace_is_symbolized() {
    let Some(_bpf) = require_bpf() else { return };
    let built = build_fixture("fixture");
    // Inside the namespace the binary lives on a fresh tmpfs, at a path that does not exist
    // outside it.
    let script = format!(
        "mount -t tmpfs none /mnt && mkdir /mnt/leaktrace-ns && cp {} /mnt/leaktrace-ns/app \
         && exec /mnt/leaktrace-ns/app burst",
        built.display()
    );
    let mut target = Running::start(Command::new("unshare").args(["-m", "sh", "-c", &script]));
    target.stdout.wait_for(|l| l == "ready", WAIT);
    assert!(
        !Path::new("/mnt/leaktrace-ns/app").exists(),
        "the path is the namespace's own"
    );
    let json = output_path("mount_namespace", "json");
    let mut leaktrace = attach_with_json(target.pid(), &json, &[]);
    target.signal(libc::SIGUSR1);
    target.stdout.wait_for(|l| l == "burst done", WAIT);
    leaktrace.signal(libc::SIGINT);
    assert_eq!(leaktrace.wait(WAIT), 0, "{:?}", leaktrace.stderr.rest());
    let report = read_json(&json);
    assert_leak_here_has_a_line(&report);
    let module = site(&report, "leak_here")["frames"][0]["module"].clone();
    assert_eq!(module, "/mnt/leaktrace-ns/app");
}

/// How each frame of the `function` site was found.
fn found_by(report: &Value, function: &str) -> Vec<(String, String)> {
    site(report, function)["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f["function"].as_str().unwrap_or("?").to_owned();
            (name, f["found_by"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn frames_say_whether_cfi_or_frame_pointers_found_them() {
    let Some(_bpf) = require_bpf() else { return };
    // Built with frame pointers, its CFI then removed: the unwinder falls back to the frame
    // pointers for the program's own frames, and takes glibc's CFI again past them.
    let built = build_fixture("fixture");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-without-cfi");
    let status = Command::new("objcopy")
        .args([
            "--remove-section",
            ".eh_frame",
            "--remove-section",
            ".eh_frame_hdr",
        ])
        .arg(&built)
        .arg(&binary)
        .status()
        .unwrap();
    assert!(status.success());
    let report = launch("found_by", &["--unwind", "dwarf"], &binary, &["exit"]);
    let found = found_by(&report, "leak_here");
    let how = |function: &str| {
        found
            .iter()
            .find(|(name, _)| name == function)
            .map(|(_, how)| how.as_str())
            .unwrap_or_else(|| panic!("no {function} in {found:?}"))
    };
    assert_eq!(how("leak_here"), "ip");
    assert_eq!(how("main"), "frame_pointers", "{found:?}");
    assert_eq!(
        found.last().unwrap().1,
        "cfi",
        "glibc's own frames: {found:?}"
    );

    // With the CFI in place, every caller is found through it.
    let without = build_fixture_with("fixture", NO_FRAME_POINTERS);
    let report = launch("found_by_cfi", &[], &without, &["exit"]);
    let found = found_by(&report, "leak_here");
    assert!(found[1..].iter().all(|(_, how)| how == "cfi"), "{found:?}");
}

/// A library dlopen'ed after the launch, at an address where the loader had
/// /etc/ld.so.cache mapped when leaktrace first read the program's maps: its frames are named
/// and unwound like any other.
#[test]
fn code_dlopened_after_launch_has_full_stacks() {
    let Some(_bpf) = require_bpf() else { return };
    let plugin = build_fixture_with("plugin", &["-shared", "-fPIC"]);
    let host = build_fixture_with("dlopen_host", &["-ldl"]);
    let (report, _) =
        launch_until_named("dlopen", &host, &[plugin.to_str().unwrap()], "plugin_leak");
    let leaks = fixture_define("plugin", "PLUGIN_LEAKS");
    let site = sites_of(&report, "plugin_leak");
    assert_eq!(
        (site.live_allocations, site.live_bytes),
        (leaks, leaks * fixture_define("plugin", "PLUGIN_BYTES")),
        "{report:#}"
    );
    let first = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frames"][0]["function"] == "plugin_leak")
        .unwrap();
    let callers: Vec<&str> = first["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .take(3)
        .collect();
    assert_eq!(callers, ["plugin_leak", "plugin_run", "main"], "{first:#}");
}

/// `leaktrace -i 100ms` on the deep_stacks fixture built with `flags`, let go once two live
/// views have come after its "ready" (the second took in every event before it, and so
/// unwound the first stacks: the probe knows every frame of the rest); its report and stdout.
fn trace_deep_stacks(test: &str, flags: &[&str]) -> (Value, Vec<String>) {
    let binary = build_fixture_with("deep_stacks", flags);
    // Every site in the report: more than --max-sites' default.
    launch_until(test, (&["--max-sites", "2000"], &binary, &[]), |stdout| {
        stdout.wait_for(|l| l == "ready", WAIT);
        for _ in 0..2 {
            stdout.wait_for(|l| l.starts_with('['), WAIT);
        }
    })
}

/// Ten leaves at every recursion depth up to 150 make 1,500 stacks, one block each. A site
/// keeps 127 frames: stacks deeper than that, which differ only below, share one site, and
/// that site says where its stack was cut and how many stacks it merged, so that every
/// stack is accounted for; with frame pointers and without.
#[test]
fn deep_stacks_cut_short_say_how_many_stacks_they_merged() {
    let Some(_bpf) = require_bpf() else { return };
    let stacks =
        fixture_define("deep_stacks", "LEAVES") * fixture_define("deep_stacks", "MAX_DEPTH");
    for (test, flags) in [
        ("deep_stacks_fp", &[][..]),
        ("deep_stacks_no_fp", NO_FRAME_POINTERS),
    ] {
        let (report, stdout) = trace_deep_stacks(test, flags);
        let leaves: Vec<&Value> = report["sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["frames"][0]["function"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("leaf_"))
            })
            .collect();
        let merged = |site: &Value| site["stack_cut"]["stacks"].as_u64().unwrap_or(1);
        // The case: some sites stand for many stacks.
        let cut: Vec<&&Value> = leaves.iter().filter(|s| merged(s) > 1).collect();
        assert!(!cut.is_empty(), "{test}: no site merged stacks: {report:#}");
        // Each stack leaked one block: a site holds as many blocks as it merged stacks.
        for site in &leaves {
            assert_eq!(
                site["live_allocations"].as_u64().unwrap(),
                merged(site),
                "{test}: {site:#}"
            );
        }
        assert_eq!(
            leaves.iter().map(|s| merged(s)).sum::<u64>(),
            stacks,
            "{test}"
        );
        for site in &cut {
            assert_eq!(site["stack_cut"]["frames"], 127, "{test}: {site:#}");
            assert_eq!(site["frames"].as_array().unwrap().len(), 127, "{test}");
        }
        // The text report says so under each such site's stack.
        let text = TextReport::from_stdout(&stdout);
        let entries: Vec<&[String]> = text
            .lines
            .split(|l| l.is_empty())
            .filter(|entry| entry.first().is_some_and(|l| l.starts_with('#')))
            .collect();
        let said = text
            .sites()
            .into_iter()
            .zip(&entries)
            .filter(|(site, _)| site.live_allocations > 1)
            .map(|(site, entry)| {
                let line = format!(
                    "    … stack cut at 127 frames: {} distinct deeper stacks merged",
                    site.live_allocations
                );
                assert!(entry.contains(&line), "{test}: {line} in {entry:#?}");
            })
            .count();
        assert!(
            said > 0,
            "{test}: no merged site in the text report: {text}"
        );
    }
}
