//! Starting the real `crossenc` binary for a test and talking to it.
#![allow(dead_code)] // each test file uses its own part of this

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Channel;

mod temp;
#[allow(unused_imports)] // as the rest: each test file uses its own part
pub use temp::{ModelCopy, TempDir};

/// Plain HTTP/2 under a gRPC client, with no deadline handling of its own.
pub type RawHttp2 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

pub const BINARY: &str = env!("CARGO_BIN_EXE_crossenc");
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of a server's stderr that [`TestServer::log`] keeps (its latest part).
const LOG_CAP: usize = 4 << 20;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model the tests run: `CROSSENC_TEST_MODEL`, or the default folder built by
/// scripts/fetch-model.sh.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("CROSSENC_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/default"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model at {}: run scripts/fetch-model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// The small checkpoint `name` of tests/fixtures/models.
pub fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/models").join(name)
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
}

/// A running `crossenc serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct TestServer {
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Where /metrics and the probes are served in plain HTTP: `http_addr` unless the
    /// server was given `--admin-addr`.
    pub admin_addr: SocketAddr,
    /// What the server has written on stderr so far (also forwarded to the test's).
    pub log: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts the server with `extra` flags and waits until /ready says so.
    pub fn start(extra: &[&str]) -> Self {
        let server = Self::spawn(extra);
        server.wait_ready();
        server
    }

    /// Starts the server with `extra` flags and environment, and waits until it is ready.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let server = Self::spawn_with_env(extra, env);
        server.wait_ready();
        server
    }

    /// Starts the server on the model folder `model` and waits until it is ready.
    pub fn start_on(model: &Path, extra: &[&str]) -> Self {
        let server = Self::spawn_on(model, extra, &[]);
        server.wait_ready();
        server
    }

    /// Starts the server without waiting.
    pub fn spawn(extra: &[&str]) -> Self {
        Self::spawn_with_env(extra, &[])
    }

    fn spawn_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_on(&model_dir(), extra, env)
    }

    /// Starts the server on the model folder `model` with `extra` flags and environment,
    /// without waiting for it to be ready (it may never be).
    pub fn spawn_on(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let model = model.to_string_lossy();
        let args: Vec<&str> = ["--model", model.as_ref()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::spawn_serving(&args, env)
    }

    /// Starts `crossenc serve` with exactly `args` (and loopback ports of its choosing)
    /// and waits until it is ready: for a server whose models a config file names.
    pub fn start_serving(args: &[&str], env: &[(&str, &str)]) -> Self {
        let server = Self::spawn_serving(args, env);
        server.wait_ready();
        server
    }

    /// [`TestServer::start_serving`] without waiting.
    pub fn spawn_serving(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BINARY);
        // The test says every setting that matters: none comes from the caller's shell.
        crossenc_bench::without_caller_settings(&mut command);
        // Port 0: the server binds free ports itself and says which (no port picked here
        // can be taken by another test before the server binds it).
        let mut child = command
            .envs(env.iter().copied())
            .arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start crossenc");
        let log = Arc::new(Mutex::new(String::new()));
        let (grpc_addr, http_addr, admin_addr) = listening_addrs(&mut child, Arc::clone(&log));
        Self {
            child,
            grpc_addr,
            http_addr,
            admin_addr,
            log,
        }
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Polls the server's stderr until `found` says yes or `timeout` passes; returns it.
    pub fn wait_for_log(&self, found: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if found(&log) || start.elapsed() > timeout {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if let Ok((200, _)) = http_get(self.admin_addr, "/ready") {
                return;
            }
            assert!(
                is_running(self.pid()),
                "crossenc exited before it was ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("crossenc was not ready within {READY_TIMEOUT:?}");
    }

    pub async fn client(&self) -> CrossEncoderClient<Channel> {
        CrossEncoderClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("cannot connect to the gRPC address")
            .max_decoding_message_size(64 << 20)
    }

    /// A client that leaves `grpc-timeout` to the server: tonic's own client enforces the
    /// header too, and answers CANCELLED before the server's answer can arrive.
    pub fn client_without_local_deadline(&self) -> CrossEncoderClient<RawHttp2> {
        let http2 =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let origin = format!("http://{}", self.grpc_addr)
            .parse()
            .expect("a socket address makes a URI");
        CrossEncoderClient::with_origin(http2, origin)
    }

    /// Pids of the server's `kind` workers (`tokenizer` or `model`).
    pub fn worker_pids(&self, kind: &str) -> Vec<i32> {
        let marker = format!(" worker {kind} ");
        children_of(self.pid())
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains(&marker))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The text of GET /metrics.
    pub fn metrics(&self) -> String {
        let (status, text) = http_get(self.admin_addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// Polls /metrics until `series` reaches `expected` (or 20 s pass); returns its
    /// value then, for the caller to assert.
    pub fn metric_reaching(&self, series: &str, expected: f64) -> f64 {
        let start = Instant::now();
        loop {
            let text = self.metrics();
            let value = metric_sum(&text, series).unwrap_or(0.0);
            if value >= expected || start.elapsed() > Duration::from_secs(20) {
                return value;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        wait_exit(&mut self.child, Duration::from_secs(40))
            .expect("crossenc did not exit after SIGTERM")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGTERM);
            if wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A bare HTTP/1.0 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(status_and_body(&response))
}

/// An HTTP response's status code and body.
fn status_and_body(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Forwards the server's log to the test's (and keeps it in `log`) and returns the
/// addresses its "listening" line names; a server that exits before saying them is
/// reported on port 0.
fn listening_addrs(
    child: &mut Child,
    log: Arc<Mutex<String>>,
) -> (SocketAddr, SocketAddr, SocketAddr) {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (found, addrs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if let Ok(mut log) = log.lock() {
                if log.len() > LOG_CAP {
                    let mut cut = log.len() - LOG_CAP / 2;
                    while !log.is_char_boundary(cut) {
                        cut += 1;
                    }
                    log.replace_range(..cut, "");
                }
                log.push_str(&line);
                log.push('\n');
            }
            if let Some((grpc, http)) = crossenc_bench::listening(&line) {
                let json = serde_json::from_str::<serde_json::Value>(&line).ok();
                let from_json = json.and_then(|j| j["fields"]["admin"].as_str()?.parse().ok());
                let admin = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("admin=")?.parse().ok())
                    .or(from_json)
                    .unwrap_or(http);
                let _ = found.send((grpc, http, admin));
            }
        }
    });
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 0));
    addrs
        .recv_timeout(READY_TIMEOUT)
        .unwrap_or((nowhere, nowhere, nowhere))
}

/// A series' value in the Prometheus text format: `series` is a name and some of its
/// labels, e.g. `worker_restarts_total{worker_type="model"}`; the samples of that name
/// carrying those labels (whatever else they carry, such as `model`) are summed.
pub fn metric(text: &str, series: &str) -> f64 {
    metric_sum(text, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// [`metric`], or `None` where no sample matches.
pub fn metric_sum(text: &str, series: &str) -> Option<f64> {
    let (name, wanted) = split_series(series);
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((sample, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (sample_name, labels) = split_series(sample);
        if sample_name == name && wanted.iter().all(|l| labels.contains(l)) {
            let value: f64 = value.trim().parse().expect("a number");
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// `name{a="x",b="y"}` as its name and its `a="x"` label pairs.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let labels = rest.trim_end_matches('}');
    // Label values in these tests hold no `",`: splitting there is exact enough.
    let pairs = labels.split("\",").map(|p| p.trim_end_matches('"'));
    (name, pairs.filter(|p| !p.is_empty()).collect())
}

/// A bare HTTP/1.1 POST of `body` with `content_type`: status code and body.
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    // The server may answer (413) and close before it has read the whole body.
    let _ = stream.read_to_string(&mut response);
    Ok(status_and_body(&response))
}

/// A bare HTTP/1.1 POST of any bytes: status code (0 when no status line came back) and
/// body. A server may answer and close before it has read the whole body: what it
/// answered counts, and a failed write is an error only when nothing came back.
pub fn http_post_bytes(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    if response.is_empty() {
        sent?;
        read?;
    }
    Ok(status_and_body(&String::from_utf8_lossy(&response)))
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`), if the process is there.
pub fn proc_status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// POSTs JSON and parses the JSON answer.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let (status, text) =
        http_post(addr, path, "application/json", &body.to_string()).expect("POST");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON ({e}): {text}"));
    (status, value)
}

/// Pids whose parent is `parent`, with their command lines.
pub fn children_of(parent: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces; the fields after its closing ')' do not.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, r)| r.split_whitespace().collect());
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            found.push((pid, cmdline));
        }
    }
    found
}

/// Alive and not a zombie.
pub fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}

/// One row of a goldens.jsonl: a pair, transformers' fp32 logits for it, and its tokens
/// after truncation. The default model's (tests/fixtures/goldens.jsonl) name its one
/// logit `score`; the fixtures' (tests/fixtures/models/*/goldens.jsonl) give every
/// label's as `logits`, and a decoder's its instruction.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "GoldenRow")]
pub struct Golden {
    pub query: String,
    pub document: String,
    /// The raw score crossenc answers: the logit, or for two labels the second's less
    /// the first's.
    pub score: f64,
    /// Every label's logit.
    pub logits: Vec<f64>,
    pub tokens: u64,
    /// A decoder's instruction (`None`: the template's default).
    pub instruction: Option<String>,
}

/// A goldens.jsonl row as written.
#[derive(serde::Deserialize)]
struct GoldenRow {
    query: String,
    document: String,
    score: Option<f64>,
    logits: Option<Vec<f64>>,
    tokens: u64,
    instruction: Option<String>,
}

impl TryFrom<GoldenRow> for Golden {
    type Error = String;

    fn try_from(row: GoldenRow) -> Result<Self, String> {
        let logits = match (row.logits, row.score) {
            (Some(logits), _) => logits,
            (None, Some(score)) => vec![score],
            (None, None) => return Err("a golden row has neither `score` nor `logits`".into()),
        };
        let score = match logits[..] {
            [logit] => logit,
            [negative, positive] => positive - negative,
            _ => return Err(format!("a golden row with {} labels", logits.len())),
        };
        Ok(Self {
            query: row.query,
            document: row.document,
            score,
            logits,
            tokens: row.tokens,
            instruction: row.instruction,
        })
    }
}

/// tests/fixtures/goldens.jsonl: the default model's goldens.
pub fn default_goldens_path() -> PathBuf {
    workspace().join("tests/fixtures/goldens.jsonl")
}

/// The (query, document) pairs of golden rows, for an Infer.
pub fn pairs(rows: &[Golden]) -> Vec<crossenc_proto::v1::Pair> {
    rows.iter()
        .map(|g| crossenc_proto::v1::Pair {
            query: g.query.clone(),
            document: g.document.clone(),
        })
        .collect()
}

/// A small Rerank of `model` (`""`: the server's first), as a normal client sends.
pub fn small_rerank(model: &str, round: usize) -> crossenc_proto::v1::RerankRequest {
    crossenc_proto::v1::RerankRequest {
        model: model.into(),
        query: format!("what is a cat {}", round % 7),
        documents: vec![
            "a cat is a small feline".into(),
            "stock prices fell".into(),
            "cats purr when content".into(),
            "the train was late".into(),
        ],
        ..Default::default()
    }
}

/// The rows of the goldens.jsonl at `path`.
pub fn goldens(path: &Path) -> Vec<Golden> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: a golden row: {e}", path.display()))
        })
        .collect()
}

/// Runs `crossenc serve` on `model` with `args` until it exits or `patience` passes: its
/// exit code (`None`: still running, then killed) and its log.
pub fn serve_until_exit(model: &Path, args: &[&str], patience: Duration) -> (Option<i32>, String) {
    serve_until_exit_with_env(model, args, &[], patience)
}

/// [`serve_until_exit`] with `env` set for the server.
pub fn serve_until_exit_with_env(
    model: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    patience: Duration,
) -> (Option<i32>, String) {
    let mut command = Command::new(BINARY);
    crossenc_bench::without_caller_settings(&mut command);
    let mut child = command
        .envs(env.iter().copied())
        .args(["serve", "--model"])
        .arg(model)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes: a full pipe would stop the server.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let exited = wait_exit(&mut child, patience);
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = reader.join().unwrap_or_default();
    (exited.and_then(|s| s.code()), log)
}
