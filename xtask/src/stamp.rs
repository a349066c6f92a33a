//! The eBPF object's source stamp: one hash over every file that goes into the object.
//!
//! `cargo xtask build-ebpf` writes it beside the committed object, and leaktrace's build.rs
//! (which includes this file by path) recomputes it, so a stale object is caught at build time
//! instead of surprising someone at attach time.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The crates whose sources are compiled into the eBPF object, relative to the workspace root.
pub const EBPF_SOURCE_DIRS: [&str; 2] = ["leaktrace-ebpf", "leaktrace-common"];

/// Hex FNV-1a hash over the relative path and contents of every file in [`EBPF_SOURCE_DIRS`].
/// Not cryptographic: it guards against forgetting a rebuild, not against an adversary.
pub fn ebpf_source_stamp(workspace: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    for dir in EBPF_SOURCE_DIRS {
        collect_files(&workspace.join(dir), &mut files)?;
    }
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in &files {
        let relative = file.strip_prefix(workspace).unwrap_or(file);
        let contents = fs::read(file)?;
        for chunk in [
            relative.as_os_str().as_encoded_bytes(),
            &[0],
            &contents,
            &[0],
        ] {
            for byte in chunk {
                hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(format!("{hash:016x}"))
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "target") {
                collect_files(&path, files)?;
            }
        } else {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_with(files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("stamp-test-{}-{}", std::process::id(), files.len()));
        let _ = fs::remove_dir_all(&root);
        for (path, contents) in files {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }
        root
    }

    #[test]
    fn the_stamp_changes_with_any_source_and_ignores_target() {
        let root = workspace_with(&[
            ("leaktrace-ebpf/src/main.rs", "fn main() {}"),
            ("leaktrace-common/src/lib.rs", "pub struct A;"),
        ]);
        let before = ebpf_source_stamp(&root).unwrap();
        assert_eq!(ebpf_source_stamp(&root).unwrap(), before, "deterministic");

        fs::create_dir_all(root.join("leaktrace-ebpf/target")).unwrap();
        fs::write(root.join("leaktrace-ebpf/target/junk"), "x").unwrap();
        assert_eq!(
            ebpf_source_stamp(&root).unwrap(),
            before,
            "build output is not source"
        );

        fs::write(root.join("leaktrace-common/src/lib.rs"), "pub struct B;").unwrap();
        assert_ne!(
            ebpf_source_stamp(&root).unwrap(),
            before,
            "an edit is noticed"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
