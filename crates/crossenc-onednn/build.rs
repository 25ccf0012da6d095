//! Compiles the C shim against oneDNN's headers when they are installed (Debian:
//! `libdnnl-dev`). Without them the crate still builds and says at run time that bf16
//! is unavailable; `CROSSENC_REQUIRE_ONEDNN=1` (the test script sets it) makes that a
//! build error instead, so CI cannot quietly test without it.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(onednn)");
    println!("cargo::rerun-if-changed=src/shim.c");
    for var in [
        "ONEDNN_INCLUDE_DIR",
        "ONEDNN_LIB_DIR",
        "CROSSENC_REQUIRE_ONEDNN",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let include = headers();
    let Some(include) = include else {
        let why = "oneDNN headers (oneapi/dnnl/dnnl.h) not found: install libdnnl-dev \
                   (or set ONEDNN_INCLUDE_DIR) for the bf16 path";
        if std::env::var_os("CROSSENC_REQUIRE_ONEDNN").is_some_and(|v| v != "0") {
            panic!("{why}; CROSSENC_REQUIRE_ONEDNN is set");
        }
        println!("cargo::warning={why}; building without it");
        return;
    };
    println!(
        "cargo::rerun-if-changed={}",
        include.join("oneapi/dnnl/dnnl.h").display()
    );
    cc::Build::new()
        .file("src/shim.c")
        .include(&include)
        .warnings(true)
        .extra_warnings(true)
        .compile("crossenc_onednn_shim");
    if let Some(lib) = std::env::var_os("ONEDNN_LIB_DIR") {
        println!(
            "cargo::rustc-link-search=native={}",
            PathBuf::from(lib).display()
        );
    }
    println!("cargo::rustc-link-lib=dylib=dnnl");
    // Debian's oneDNN threads with OpenMP; the shim sets its thread count.
    println!("cargo::rustc-link-lib=dylib=gomp");
    println!("cargo::rustc-cfg=onednn");
}

fn headers() -> Option<PathBuf> {
    let candidates = std::env::var_os("ONEDNN_INCLUDE_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/include", "/usr/local/include"].map(PathBuf::from));
    candidates
        .into_iter()
        .find(|dir| dir.join("oneapi/dnnl/dnnl.h").is_file())
}
