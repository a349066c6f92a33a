//! Sites named by their real caller: the allocator wrappers of each stack folded into the
//! site's label, and kept in its stack.

mod support;

use serde_json::Value;
use support::*;

/// The sites whose label is `label`, in report order.
fn labelled<'a>(report: &'a Value, label: &str) -> Vec<&'a Value> {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| site["label"] == label)
        .collect()
}

/// The one site labelled `label`.
fn the_site<'a>(report: &'a Value, label: &str) -> &'a Value {
    let sites = labelled(report, label);
    assert_eq!(sites.len(), 1, "one site labelled {label}: {report:#}");
    sites[0]
}

/// The names of a site's first `count` frames.
fn functions(site: &Value, count: usize) -> Vec<&str> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .take(count)
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect()
}

fn launch_wrappers(test: &str, options: &[&str]) -> (Value, TextReport) {
    let binary = build_fixture("wrappers");
    let (report, stdout) = launch_json(test, options, &binary, &[]);
    (report, TextReport::from_stdout(&stdout))
}

#[test]
fn a_listed_wrapper_and_a_found_one_name_their_callers_and_stay_in_the_stack() {
    let Some(_bpf) = require_bpf() else { return };
    let (report, text) = launch_wrappers("labels_default", &[]);
    let define = |name| fixture_define("wrappers", name);
    // xmalloc is in the built-in list; make_node is found by the automatic rule.
    for (caller, wrapper, bytes) in [
        ("parse_config", "xmalloc", define("XMALLOC_BYTES")),
        ("load_table", "xmalloc", define("XMALLOC_BYTES")),
        ("add_a", "make_node", define("NODE_BYTES")),
        ("add_b", "make_node", define("NODE_BYTES")),
        ("add_c", "make_node", define("NODE_BYTES")),
    ] {
        let site = the_site(&report, caller);
        assert_eq!(site["wrappers"], serde_json::json!([wrapper]), "{site:#}");
        assert_eq!(
            functions(site, 2),
            [wrapper, caller],
            "the wrapper stays a frame"
        );
        assert_eq!(site["live_bytes"], bytes);
        let shown = format!("{caller} ← {wrapper}");
        assert_eq!(site["site"], shown.as_str());
        assert!(
            text.sites().iter().any(|s| s.label == shown),
            "the text report heads it `{shown}`: {text}"
        );
    }
    // Called from one place, pool_get is no wrapper unless --alloc-fn says so.
    let pool = the_site(&report, "pool_get");
    assert_eq!(pool["wrappers"], serde_json::json!([]));
    assert_eq!(pool["site"], "pool_get");
    // Two sites of one label and one line, told apart by the line of main that calls them.
    let host = labelled(&report, "host_leak");
    let mut shown: Vec<&str> = host.iter().map(|s| s["site"].as_str().unwrap()).collect();
    shown.sort();
    let line = |marker| fixture_line("wrappers", marker);
    assert_eq!(
        shown,
        [
            format!(
                "host_leak (via main at wrappers.c:{})",
                line("the first host_leak")
            ),
            format!(
                "host_leak (via main at wrappers.c:{})",
                line("the second host_leak")
            ),
        ]
    );
}

#[test]
fn alloc_fn_adds_a_wrapper() {
    let Some(_bpf) = require_bpf() else { return };
    let (report, _) = launch_wrappers("labels_alloc_fn", &["--alloc-fn", "pool_.*"]);
    let session = the_site(&report, "new_session");
    assert_eq!(session["wrappers"], serde_json::json!(["pool_get"]));
    assert_eq!(session["site"], "new_session ← pool_get");
    assert_eq!(
        session["live_bytes"],
        fixture_define("wrappers", "POOL_BYTES")
    );
    assert!(labelled(&report, "pool_get").is_empty());
    // The built-in list is still there.
    assert_eq!(the_site(&report, "parse_config")["wrappers"][0], "xmalloc");
}

#[test]
fn no_default_alloc_fns_drops_the_list_and_no_auto_alloc_fns_the_rule() {
    let Some(_bpf) = require_bpf() else { return };
    let (report, text) = launch_wrappers("labels_no_list", &["--no-default-alloc-fns"]);
    // Two callers are too few for the automatic rule: xmalloc names its sites, which its
    // callers tell apart.
    let xmalloc = labelled(&report, "xmalloc");
    assert_eq!(xmalloc.len(), 2, "{report:#}");
    let line = |marker| fixture_line("wrappers", marker);
    let via_parse = format!(
        "xmalloc (via parse_config at wrappers.c:{})",
        line("void parse_config(")
    );
    assert!(
        xmalloc.iter().any(|s| s["site"] == via_parse.as_str()),
        "{via_parse}: {xmalloc:#?}"
    );
    assert!(text.sites().iter().any(|s| s.label == via_parse), "{text}");
    // make_node is still found by the rule.
    assert_eq!(the_site(&report, "add_a")["wrappers"][0], "make_node");

    let (report, _) = launch_wrappers(
        "labels_none",
        &["--no-default-alloc-fns", "--no-auto-alloc-fns"],
    );
    assert_eq!(labelled(&report, "make_node").len(), 3);
    assert!(
        report["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["wrappers"] == serde_json::json!([])),
        "{report:#}"
    );
}

#[test]
fn cxx_sites_are_named_by_their_callers_and_other_libstdcxx_frames_stay() {
    let Some(_bpf) = require_bpf() else { return };
    let binary = build_fixture("labels");
    let (report, _) = launch_json("labels_cxx", &[], &binary, &[]);
    let define = |name| fixture_define("labels", name);

    // The exception's block: libstdc++'s __cxa_allocate_exception is its first frame, no
    // wrapper, and the thrower is next.
    let exception = the_site(&report, "__cxa_allocate_exception");
    assert_eq!(
        functions(exception, 3),
        ["__cxa_allocate_exception", "fail()", "keep_failure()"]
    );
    assert!(
        exception["frames"][0]["module"]
            .as_str()
            .is_some_and(|m| m.contains("libstdc++")),
        "{exception:#}"
    );
    assert_eq!(exception["wrappers"], serde_json::json!([]));

    // Plain new: its caller is the first frame and the label.
    let plain = the_site(&report, "leak_new()");
    assert_eq!(functions(plain, 1), ["leak_new()"]);
    assert_eq!(plain["live_bytes"], define("NEW_BYTES"));
    assert_eq!(plain["site"], "leak_new");

    // The vector's buffer: named past the allocator and the vector's members, which stay.
    let vector: Vec<&Value> = labelled(&report, "fill_vector()")
        .into_iter()
        .filter(|s| s["wrappers"] != serde_json::json!([]))
        .collect();
    assert_eq!(vector.len(), 1, "{report:#}");
    let vector = vector[0];
    assert_eq!(vector["live_bytes"], define("VECTOR_BYTES"));
    assert_eq!(vector["site"], "fill_vector ← std::vector::push_back");
    let wrappers: Vec<&str> = vector["wrappers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        wrappers.last().unwrap().contains("push_back"),
        "{wrappers:?}"
    );
    assert_eq!(functions(vector, wrappers.len()), wrappers);
}
