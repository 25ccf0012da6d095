//! Compiles the C shim against oneDNN's headers when they are installed (Debian:
//! `libdnnl-dev`). Without them the crate still builds and says at run time that bf16
//! is unavailable. CI cannot quietly test such a build: on a CPU with AVX512-BF16, the
//! test `a_bf16_capable_cpu_gets_native_products` fails unless oneDNN is in.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(onednn)");
    println!("cargo::rerun-if-changed=src/shim.c");
    for var in ["ONEDNN_INCLUDE_DIR", "ONEDNN_LIB_DIR"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let Some(include) = headers() else {
        // Build again once they are installed: a directory counts as changed when
        // anything under it does.
        for dir in candidates().filter(|dir| dir.is_dir()) {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
        println!(
            "cargo::warning=oneDNN headers (oneapi/dnnl/dnnl.h) not found: building without \
             the bf16 path; install libdnnl-dev (scripts/install-onednn.sh) or set \
             ONEDNN_INCLUDE_DIR"
        );
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

fn candidates() -> impl Iterator<Item = PathBuf> {
    std::env::var_os("ONEDNN_INCLUDE_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/include", "/usr/local/include"].map(PathBuf::from))
}

fn headers() -> Option<PathBuf> {
    candidates().find(|dir| dir.join("oneapi/dnnl/dnnl.h").is_file())
}
