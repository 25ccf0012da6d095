//! The GPU path where no GPU is: `crossenc serve --device cuda:N` refuses clearly, before
//! anything listens or any worker starts, whether the GPU model worker
//! `crossenc-cuda-worker` is missing or the driver is; and that worker (built by
//! scripts/test.sh through scripts/build-cuda.sh, its path in CROSSENC_TEST_CUDA_WORKER)
//! links nothing but CUDA 13's libraries. What a GPU proves is scripts/gpu-check.sh's.
//!
//! The tests ending in `_without_a_gpu` assume no NVIDIA driver; scripts/test.sh filters
//! them out on a machine that has one.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use support::{free_addr, model_dir, workspace, TempDir, BINARY};

/// The GPU worker scripts/test.sh built, and the CUDA folder it was built against.
fn cuda_build() -> (PathBuf, PathBuf) {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!("{name} is not set: run scripts/test.sh, which builds crossenc-cuda-worker")
            })
    };
    (
        var("CROSSENC_TEST_CUDA_WORKER"),
        var("CROSSENC_TEST_CUDA_ROOT"),
    )
}

/// `crossenc serve --device cuda:0` on free ports; it must exit by itself.
fn serve_on_gpu(env: &[(&str, String)]) -> Output {
    let output = Command::new(BINARY)
        .current_dir(workspace())
        .arg("serve")
        .arg("--model")
        .arg(model_dir())
        .args(["--device", "cuda:0"])
        .args(["--grpc-addr", &free_addr().to_string()])
        .args(["--http-addr", &free_addr().to_string()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("CROSSENC_CONFIG")
        .output()
        .expect("cannot run the server");
    assert!(
        !output.status.success(),
        "it served on a GPU that is not there"
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serving_on_a_gpu_without_the_gpu_worker_says_how_to_build_it() {
    let missing = workspace().join("target/no-such-crossenc-cuda-worker");
    let env = [("CROSSENC_CUDA_WORKER", missing.display().to_string())];
    let said = stderr(&serve_on_gpu(&env));
    assert!(said.contains("GPU model worker"), "{said}");
    assert!(said.contains("scripts/build-cuda.sh"), "{said}");
    assert!(said.contains(&missing.display().to_string()), "{said}");
}

#[test]
fn serving_on_a_gpu_names_the_missing_driver_without_a_gpu() {
    let (cuda, _) = cuda_build();
    let env = [("CROSSENC_CUDA_WORKER", cuda.display().to_string())];
    let said = stderr(&serve_on_gpu(&env));
    assert!(said.contains("no NVIDIA driver"), "{said}");
    assert!(said.contains("cuda:0"), "{said}");
    assert!(!said.contains("listening"), "it listened first: {said}");
}

/// The GPU worker needs CUDA's libraries and the driver's libcuda.so.1 to start at all;
/// with CUDA 13's libraries from the build's toolkit and the link stub in its path it
/// starts (so every library it links is one of CUDA 13's).
#[test]
fn the_gpu_worker_starts_on_cuda_13_libraries_alone() {
    let (cuda, root) = cuda_build();
    let bare = Command::new(&cuda).arg("--version").output().unwrap();
    assert!(
        !bare.status.success(),
        "it started without CUDA's libraries"
    );
    assert!(stderr(&bare).contains("libcu"), "{}", stderr(&bare));

    let libraries = format!(
        "{}:{}",
        root.join("lib").display(),
        root.join("lib/stubs").display()
    );
    let linked = Command::new(&cuda)
        .arg("--version")
        .env("LD_LIBRARY_PATH", libraries)
        .output()
        .unwrap();
    assert!(linked.status.success(), "{}", stderr(&linked));
    let said = String::from_utf8_lossy(&linked.stdout);
    assert!(said.starts_with("crossenc-cuda-worker "), "{said}");
}

/// The device check's script, on a machine with no GPU: it stops at the first step a
/// GPU machine would pass, says which in its report, and exits non-zero.
#[test]
fn the_gpu_check_reports_the_step_it_stopped_at_without_a_gpu() {
    let (cuda, _) = cuda_build();
    let bundle = TempDir::new("crossenc-gpu-check");
    std::fs::create_dir_all(bundle.join("model")).unwrap();
    std::fs::create_dir_all(bundle.join("bin")).unwrap();
    std::fs::copy(BINARY, bundle.join("bin/crossenc")).unwrap();
    std::fs::copy(&cuda, bundle.join("bin/crossenc-cuda-worker")).unwrap();
    let out = bundle.join("out");
    let python = std::env::var("CROSSENC_TEST_PYTHON").unwrap_or("python3".into());
    let run = Command::new(workspace().join("scripts/gpu-check.sh"))
        .arg(bundle.path())
        .env("OUT", &out)
        .env("PYTHON", python)
        .output()
        .unwrap();
    assert!(!run.status.success(), "{}", stderr(&run));
    let report = std::fs::read_to_string(out.join("gpu-check.md")).unwrap();
    assert!(report.contains("PROBLEM"), "{report}");
    let stopped = report.contains("torch") || report.contains("libraries missing");
    assert!(stopped, "{report}");
}
