//! The end-to-end tests live in the workspace's `tests/`, which is no package: each
//! binary there runs only if this crate's Cargo.toml declares it as a `[[test]]`, so a
//! new `tests/foo.rs` nobody lists would never be compiled, let alone fail. This test
//! names any that is missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The paths of the `[[test]]` targets in `manifest`, as written (`../../tests/x.rs`).
fn declared_tests(manifest: &str) -> BTreeSet<String> {
    let mut in_test = false;
    let mut paths = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_test = line == "[[test]]";
            continue;
        }
        let Some(value) = line.strip_prefix("path") else {
            continue;
        };
        let Some(value) = value.trim_start().strip_prefix('=') else {
            continue;
        };
        if in_test {
            paths.insert(value.trim().trim_matches('"').to_string());
        }
    }
    paths
}

/// What could be a test binary under `tests`: each `*.rs` file, and each folder's
/// `main.rs` (a folder without one, such as `support/`, is a module the binaries share).
fn test_binaries(tests: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(tests).expect("the workspace has tests/") {
        let path = entry.expect("tests/ is readable").path();
        if path.is_dir() {
            let main = path.join("main.rs");
            if main.is_file() {
                found.push(main);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn every_test_binary_under_tests_is_declared_in_cargo_toml() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let declared = declared_tests(&manifest);
    let workspace = crate_dir.join("../..");
    let missing: Vec<String> = test_binaries(&workspace.join("tests"))
        .iter()
        .map(|path| {
            let relative = path.strip_prefix(&workspace).unwrap();
            format!("../../{}", relative.display())
        })
        .filter(|path| !declared.contains(path))
        .collect();
    assert!(
        missing.is_empty(),
        "never compiled: declare each as a [[test]] in crates/crossenc/Cargo.toml: {missing:?}"
    );
}

#[test]
fn only_test_sections_declare_test_paths() {
    let manifest = "[[bin]]\npath = \"src/other.rs\"\n\n[[test]]\nname = \"a\"\npath = \"../../tests/a.rs\"\n\n[dependencies]\npath_dep = { path = \"x\" }\n";
    let declared: Vec<String> = declared_tests(manifest).into_iter().collect();
    assert_eq!(declared, ["../../tests/a.rs"]);
}
