//! A worker that fails to start, however it fails, is killed and reaped by
//! `WorkerLauncher::spawn`: none is left running, none is left a zombie (only a started
//! `WorkerProcess` has a thread that reaps its child).
//!
//! The fake worker is this test binary run again: the launcher starts a shell script
//! (libtest would not parse a worker's command line), which notes its pid and then
//! either exits or `exec`s this binary's ignored `fake_worker` test, which connects to
//! the supervisor as a worker does and misbehaves as the script says.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossenc_config::{Dtype, LogFormat};
use crossenc_ipc::{WorkerEvent, WorkerKind};
use crossenc_metrics::Metrics;
use crossenc_pool::WorkerLauncher;

const SERVER: &str = "CROSSENC_FAKE_WORKER_SERVER";
const BEHAVIOUR: &str = "CROSSENC_FAKE_WORKER_BEHAVIOUR";

/// Not a test on its own: the fake worker's body, run when a script execs this binary
/// with the supervisor's IPC server name in `CROSSENC_FAKE_WORKER_SERVER`.
#[test]
#[ignore = "the fake worker of the other tests, which run it through a script"]
fn fake_worker() {
    let Ok(server) = std::env::var(SERVER) else {
        return;
    };
    let link = crossenc_ipc::connect_to_supervisor(&server).expect("connects");
    let say = |event| link.events.send(event).expect("the supervisor listens");
    match std::env::var(BEHAVIOUR).as_deref() {
        // A real worker that cannot load says so and exits.
        Ok("start-failed") => say(WorkerEvent::StartFailed {
            message: "cannot load the model".into(),
        }),
        Ok("unexpected") => {
            say(WorkerEvent::JobFailed {
                job: 0,
                message: "no job was asked".into(),
            });
            std::thread::sleep(Duration::from_secs(120));
        }
        Ok("silent") => std::thread::sleep(Duration::from_secs(120)),
        other => panic!("unknown behaviour {other:?}"),
    }
}

/// A directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "crossenc-pool-start-failure-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A worker executable that writes its pid to `pid_file`, then runs `body` (shell).
fn script(dir: &Path, pid_file: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-worker");
    let text = format!("#!/bin/sh\necho $$ > '{}'\n{body}\n", pid_file.display());
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A script body that runs [`fake_worker`] as `behaviour` (the launcher passes the
/// server name as the fourth argument: `worker KIND --ipc-server NAME ...`).
fn exec_fake(behaviour: &str) -> String {
    let me = std::env::current_exe().unwrap();
    format!(
        "export {SERVER}=\"$4\" {BEHAVIOUR}={behaviour}\n\
         exec '{}' fake_worker --exact --ignored --test-threads 1 >/dev/null",
        me.display()
    )
}

fn launcher(exe: PathBuf, startup_timeout: Duration) -> WorkerLauncher {
    WorkerLauncher {
        gpu_exe: exe.clone(),
        exe,
        model: "no-model".into(),
        served_as: "m".into(),
        max_length: None,
        template: None,
        prefix_cache_bytes: 0,
        devices: vec!["cpu".into()],
        dtype: Dtype::F32,
        model_threads: 1,
        startup_timeout,
        log_format: LogFormat::Text,
        log_filter: "info".into(),
        warm_up: true,
    }
}

/// Starts the fake worker `body` describes, expects the start to fail with a reason
/// containing `reason`, and checks that the child is neither running nor a zombie.
fn fails_and_leaves_nothing(name: &str, body: &str, reason: &str) {
    let scratch = Scratch::new(name);
    let pid_file = scratch.0.join("pid");
    let exe = script(&scratch.0, &pid_file, body);
    let metrics = Arc::new(Metrics::new(false).model("m"));
    let started = launcher(exe, Duration::from_secs(10)).spawn(WorkerKind::Tokenizer, 0, &metrics);
    let failure = match started {
        Ok(_) => panic!("{name}: the fake worker started"),
        Err(failure) => failure.to_string(),
    };
    assert!(failure.contains(reason), "{name}: {failure}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the fake worker ran")
        .trim()
        .parse()
        .unwrap();
    assert_not_left(name, pid);
}

/// `pid` is no longer a child of this process: killed and reaped, not running on and
/// not a zombie. A child left behind is cleaned up before the test fails.
fn assert_not_left(name: &str, pid: i32) {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(") ")?.1.chars().next()?.to_string()));
    let mut status = 0;
    // SAFETY: waitpid on one pid, with a valid pointer to an int for its status.
    let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if waited != -1 {
        // Still our child (0: running; its pid: a zombie, now reaped): clean up, then fail.
        // SAFETY: signals and waits for a child of this process only.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        panic!("{name}: worker {pid} was left behind (state {state:?})");
    }
    assert_eq!(errno, Some(libc::ECHILD), "{name}: waitpid({pid})");
}

#[test]
fn a_worker_that_exits_before_connecting_is_reaped() {
    fails_and_leaves_nothing("exits", "exit 3", "before connecting");
}

#[test]
fn a_worker_that_says_start_failed_is_reaped_not_left_a_zombie() {
    fails_and_leaves_nothing(
        "start-failed",
        &exec_fake("start-failed"),
        "cannot load the model",
    );
}

#[test]
fn a_worker_that_sends_something_else_before_ready_is_killed_and_reaped() {
    fails_and_leaves_nothing("unexpected", &exec_fake("unexpected"), "before Ready");
}

#[test]
fn a_worker_that_never_says_ready_is_killed_and_reaped() {
    fails_and_leaves_nothing("silent", &exec_fake("silent"), "no Ready within");
}
