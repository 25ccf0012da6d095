//! A crossenc server started for a sweep point, stopped when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A `crossenc serve` child on free loopback ports.
pub struct SpawnedServer {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

impl SpawnedServer {
    /// Starts `exe serve` with `args` on ports it picks itself (port 0, read back from
    /// its "listening" log line) and waits (up to `patience`) until /ready says 200.
    pub fn start(exe: &Path, args: &[String], patience: Duration) -> Result<Self, String> {
        let mut command = Command::new(exe);
        // Each point is its flags over the defaults.
        without_caller_settings(&mut command);
        let mut child = command
            .arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let log = ServerLog::follow(&mut child);
        let started = Instant::now();
        let addrs = log.addrs.recv_timeout(patience);
        let (grpc_addr, http_addr) = match addrs {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it never said where it listens; its log ends:\n{}",
                    log.tail()
                ));
            }
        };
        let mut server = Self {
            child,
            grpc_addr,
            http_addr,
        };
        while started.elapsed() < patience {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "it exited ({status}); its log ends:\n{}",
                    log.tail()
                ));
            }
            if ready(http_addr) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.stop();
        Err(format!(
            "not ready within {patience:?}; its log ends:\n{}",
            log.tail()
        ))
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub fn stop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        stream,
        "GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// A server's stderr, read on a thread: where it listens, and its last lines for errors.
struct ServerLog {
    addrs: mpsc::Receiver<(SocketAddr, SocketAddr)>,
    last: Arc<Mutex<VecDeque<String>>>,
}

impl ServerLog {
    const KEPT: usize = 20;

    fn follow(child: &mut Child) -> Self {
        let stderr = child.stderr.take().expect("stderr is piped");
        let (found, addrs) = mpsc::channel();
        let last = Arc::new(Mutex::new(VecDeque::new()));
        let keep = Arc::clone(&last);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(pair) = listening(&line) {
                    let _ = found.send(pair);
                }
                let mut kept = keep.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == Self::KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Self { addrs, last }
    }

    fn tail(&self) -> String {
        let kept = self.last.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Keeps the caller's configuration file and CROSSENC_SECTION__KEY variables from a
/// server `command` will start, so that only its flags and the defaults count.
pub fn without_caller_settings(command: &mut Command) {
    command.env_remove("CROSSENC_CONFIG");
    for (name, _) in std::env::vars() {
        if name.starts_with("CROSSENC_") && name.contains("__") {
            command.env_remove(name);
        }
    }
}

/// The addresses of the server's "listening ... grpc=ADDR http=ADDR" log line.
pub fn listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    // `--log-format json`: the addresses are fields of the line.
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        let addr = |key: &str| json["fields"][key].as_str()?.parse().ok();
        return Some((addr("grpc")?, addr("http")?));
    }
    let addr = |key: &str| -> Option<SocketAddr> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))?
            .parse()
            .ok()
    };
    Some((addr("grpc=")?, addr("http=")?))
}
