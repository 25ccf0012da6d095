//! Starting a worker process: the command line it is re-executed with, the fork from a
//! thread that outlives it, the pidfd taken before anyone can reap it, and the handshake
//! up to its Ready.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossenc_config::{Dtype, LogFormat};
use crossenc_ipc::{WorkerEvent, WorkerKind, WorkerListener};
use crossenc_metrics::ModelMetrics;

use crate::process::{spawn_named, WorkerProcess};

/// How to start a worker: the binary to re-execute and what every worker is told.
#[derive(Debug, Clone)]
pub struct WorkerLauncher {
    /// The binary of tokenizer workers and of model workers on the CPU.
    pub exe: PathBuf,
    /// The binary of model workers on GPUs, built with CUDA (`crossenc-cuda-worker`).
    pub gpu_exe: PathBuf,
    pub model: PathBuf,
    /// The name the model is served by, for the workers' log lines.
    pub served_as: String,
    pub max_length: Option<usize>,
    /// A decoder reranker's prompt template (`model.template`).
    pub template: Option<String>,
    /// Bytes of prompt prefixes a model worker keeps (`model.prefix_cache_bytes`).
    pub prefix_cache_bytes: u64,
    /// Where model workers run, in turn: model worker `i` on `devices[i % len]`.
    pub devices: Vec<String>,
    pub dtype: Dtype,
    pub model_threads: usize,
    pub startup_timeout: Duration,
    /// How workers log: their lines reach the supervisor's stderr through it.
    pub log_format: LogFormat,
    /// The filter workers log with (RUST_LOG syntax).
    pub log_filter: String,
    /// Whether model workers score a warm-up batch at start: the first ones do (it is
    /// admission's first throughput figure), restarted ones do not.
    pub warm_up: bool,
}

/// A worker that could not be started, and why.
#[derive(Debug, thiserror::Error)]
#[error("{kind} worker {id} failed to start: {reason}")]
pub struct SpawnError {
    pub kind: WorkerKind,
    pub id: u32,
    pub reason: String,
}

impl WorkerLauncher {
    /// Starts one worker and waits until it is loaded (blocking: call from a blocking
    /// thread). A worker that exits, fails to load or takes longer than
    /// `startup_timeout` is reported with its reason.
    pub fn spawn(
        &self,
        kind: WorkerKind,
        id: u32,
        metrics: &Arc<ModelMetrics>,
    ) -> Result<WorkerProcess, SpawnError> {
        let fail = |reason: String| SpawnError { kind, id, reason };
        let listener = WorkerListener::new().map_err(|e| fail(e.to_string()))?;
        let name = listener.name().to_string();
        let (exe, device) = self.placement(kind, id);
        let mut child = spawn_from_forker(self.command((kind, id), exe, device, &name))
            .map_err(|e| fail(format!("cannot execute {}: {e}", exe.display())))?;
        let pidfd = open_pidfd(&child);
        // From here every way out but the last kills and reaps the child.
        let unstarted = ReapUnlessStarted(&mut child);
        if let Some(stderr) = unstarted.0.stderr.take() {
            let json = self.log_format == LogFormat::Json;
            spawn_named(format!("{kind}-{id}-log"), move || {
                forward_log(stderr, (kind, id), json)
            });
        }
        let link = self
            .await_hello(listener, &name, unstarted.0)
            .and_then(|link| match link.pid == unstarted.0.id() {
                true => Ok(link),
                false => Err(format!(
                    "said it was pid {} but was started as pid {}",
                    link.pid,
                    unstarted.0.id()
                )),
            })
            .map_err(fail)?;
        let info = match link.events.try_recv_timeout(self.startup_timeout) {
            Ok(WorkerEvent::Ready(info)) => info,
            Ok(WorkerEvent::StartFailed { message }) => return Err(fail(message)),
            Ok(other) => return Err(fail(format!("sent {other:?} before Ready"))),
            Err(e) => {
                return Err(fail(format!(
                    "no Ready within {:?} ({e:?})",
                    self.startup_timeout
                )))
            }
        };
        unstarted.started();
        tracing::info!(%kind, id, pid = link.pid, "worker ready");
        Ok(WorkerProcess::start(
            kind,
            id,
            link,
            info,
            (child, pidfd),
            metrics,
        ))
    }

    /// The binary a worker runs and its device: tokenizers on the CPU, model worker `id`
    /// on the devices in turn, from the CUDA build where that device is a GPU. A
    /// respawned worker keeps its id, so it comes back on the same device.
    pub fn placement(&self, kind: WorkerKind, id: u32) -> (&PathBuf, &str) {
        if kind == WorkerKind::Tokenizer || self.devices.is_empty() {
            return (&self.exe, "cpu");
        }
        let device = &self.devices[id as usize % self.devices.len()];
        match device.starts_with("cuda:") {
            true => (&self.gpu_exe, device),
            false => (&self.exe, device),
        }
    }

    fn command(
        &self,
        (kind, id): (WorkerKind, u32),
        exe: &PathBuf,
        device: &str,
        server_name: &str,
    ) -> Command {
        let mut command = Command::new(exe);
        command
            .args(["worker", kind.as_str(), "--ipc-server", server_name])
            .arg("--worker-id")
            .arg(id.to_string())
            .arg("--supervisor-pid")
            .arg(std::process::id().to_string())
            .arg("--model")
            .arg(&self.model)
            .args(["--served-as", &self.served_as])
            .args(["--device", device])
            .args(["--dtype", self.dtype.as_str()])
            .stdin(Stdio::null())
            // Its lines come through the supervisor, whole (see `forward_log`).
            .stderr(Stdio::piped())
            .env("CROSSENC_LOG", &self.log_filter)
            .env("CROSSENC_LOG_FORMAT", self.log_format.as_str())
            // Its own process group: a terminal's Ctrl-C reaches the supervisor alone,
            // which then stops the workers in order.
            .process_group(0);
        if let Some(max_length) = self.max_length {
            command.arg("--max-length").arg(max_length.to_string());
        }
        if let Some(template) = &self.template {
            command.arg("--template").arg(template);
        }
        if kind == WorkerKind::Model {
            let bytes = self.prefix_cache_bytes.to_string();
            command.arg("--prefix-cache-bytes").arg(bytes);
        }
        if kind == WorkerKind::Model && !self.warm_up {
            command.arg("--no-warm-up");
        }
        let threads = match kind {
            WorkerKind::Model => self.model_threads,
            WorkerKind::Tokenizer => 1,
        };
        // rayon runs the CPU pass; OpenMP runs oneDNN's bf16 products. OpenMP threads that
        // spin after a product would take the cores from the rayon work between products.
        command.env("RAYON_NUM_THREADS", threads.to_string());
        command.env("OMP_NUM_THREADS", threads.to_string());
        // CUDA numbers GPUs fastest first unless told otherwise; NVML, whose indices label
        // the GPU metrics, by PCI bus. Bus order makes `cuda:N` and `gpu="N"` one GPU.
        if std::env::var_os("CUDA_DEVICE_ORDER").is_none() {
            command.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        }
        if std::env::var_os("OMP_WAIT_POLICY").is_none() {
            command.env("OMP_WAIT_POLICY", "passive");
        }
        command
    }

    /// Waits for the worker's Hello; gives up if the process exits first.
    fn await_hello(
        &self,
        listener: WorkerListener,
        name: &str,
        child: &mut Child,
    ) -> Result<crossenc_ipc::SupervisorLink, String> {
        let accept = std::thread::spawn(move || listener.accept());
        let deadline = Instant::now() + self.startup_timeout;
        while !accept.is_finished() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                WorkerListener::abandon(name);
                let _ = accept.join();
                return Err(match exited {
                    Some(status) => format!("exited ({status}) before connecting"),
                    None => "did not connect in time".to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let link = accept
            .join()
            .map_err(|_| "the accept thread panicked".to_string())?;
        link.map_err(|e| e.to_string())
    }
}

/// A worker child that has not started: dropped, it is killed and reaped, so that a
/// start that fails in any way (it exits, says StartFailed, sends something else before
/// Ready, or times out) leaves neither a running worker nor a zombie. Only a started
/// [`WorkerProcess`], whose event thread reaps it, takes the child over ([`Self::started`]).
struct ReapUnlessStarted<'a>(&'a mut Child);

impl ReapUnlessStarted<'_> {
    /// The worker is Ready: its [`WorkerProcess`] owns the child from now on.
    fn started(self) {
        std::mem::forget(self);
    }
}

impl Drop for ReapUnlessStarted<'_> {
    fn drop(&mut self) {
        // Already exited (and perhaps reaped by `try_wait`): both calls still succeed.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type ForkRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `command` from one thread that lives as long as the supervisor.
///
/// Workers ask for SIGKILL when their parent dies (PR_SET_PDEATHSIG), and Linux sends it
/// when the *thread* that forked them exits, not the process: a worker forked from a
/// short-lived thread (such as tokio's blocking pool) would be killed when that thread is
/// retired.
fn spawn_from_forker(command: Command) -> std::io::Result<Child> {
    static FORKER: OnceLock<Mutex<mpsc::Sender<ForkRequest>>> = OnceLock::new();
    let forker = FORKER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<ForkRequest>();
        spawn_named("worker-forker".into(), move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    let sent = forker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply));
    let gone = || std::io::Error::other("the worker-forker thread is gone");
    sent.map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// Opens a pidfd on a child that no one has reaped yet (so the pid is still its own).
fn open_pidfd(child: &Child) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a descriptor this process now owns alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Copies a worker's log lines to the supervisor's stderr, each in one write, so that no
/// two processes' lines mix mid-line. In JSON, a line that is not JSON (a panic message,
/// a library writing to stderr) is logged as an error of this worker instead, so that
/// every line stays one JSON object.
fn forward_log(stderr: std::process::ChildStderr, (kind, id): (WorkerKind, u32), json: bool) {
    use std::io::{BufRead, Write};
    for line in std::io::BufReader::new(stderr).split(b'\n') {
        let Ok(mut line) = line else { return };
        if json && line.first() != Some(&b'{') {
            let text = String::from_utf8_lossy(&line);
            tracing::error!(target: "crossenc::worker", worker_kind = %kind, worker_id = id, "{text}");
            continue;
        }
        line.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher(devices: &[&str]) -> WorkerLauncher {
        WorkerLauncher {
            exe: "crossenc".into(),
            gpu_exe: "crossenc-cuda-worker".into(),
            model: "model".into(),
            served_as: "model".into(),
            max_length: None,
            template: None,
            prefix_cache_bytes: 0,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            dtype: Dtype::F32,
            model_threads: 1,
            startup_timeout: Duration::from_secs(1),
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            warm_up: true,
        }
    }

    fn placed(launcher: &WorkerLauncher, kind: WorkerKind, id: u32) -> (String, String) {
        let (exe, device) = launcher.placement(kind, id);
        (exe.display().to_string(), device.to_string())
    }

    #[test]
    fn model_workers_take_the_gpus_in_turn_from_the_cuda_binary() {
        let gpus = launcher(&["cuda:0", "cuda:1"]);
        let on = |id| placed(&gpus, WorkerKind::Model, id);
        assert_eq!(on(0), ("crossenc-cuda-worker".into(), "cuda:0".into()));
        assert_eq!(on(1), ("crossenc-cuda-worker".into(), "cuda:1".into()));
        assert_eq!(on(2), ("crossenc-cuda-worker".into(), "cuda:0".into()));
        let tokenizer = placed(&gpus, WorkerKind::Tokenizer, 1);
        assert_eq!(tokenizer, ("crossenc".into(), "cpu".into()));
    }

    #[test]
    fn cpu_model_workers_run_from_the_cpu_binary() {
        let cpu = launcher(&["cpu"]);
        let model = placed(&cpu, WorkerKind::Model, 3);
        assert_eq!(model, ("crossenc".into(), "cpu".into()));
    }

    #[test]
    fn only_a_restarted_model_worker_skips_the_warm_up() {
        let args = |launcher: &WorkerLauncher, kind| -> Vec<String> {
            let exe = PathBuf::from("crossenc");
            let command = launcher.command((kind, 0), &exe, "cpu", "ipc");
            command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let first = launcher(&["cpu"]);
        let restarted = WorkerLauncher {
            warm_up: false,
            ..first.clone()
        };
        let skips = |args: Vec<String>| args.iter().any(|a| a == "--no-warm-up");
        assert!(!skips(args(&first, WorkerKind::Model)));
        assert!(skips(args(&restarted, WorkerKind::Model)));
        assert!(!skips(args(&restarted, WorkerKind::Tokenizer)));
    }
}
