//! A crossenc server started for a sweep point, stopped when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A `crossenc serve` child on free loopback ports.
pub struct SpawnedServer {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl SpawnedServer {
    /// Starts `exe serve` with `args` and waits (up to `patience`) until /ready says 200.
    pub fn start(exe: &Path, args: &[String], patience: Duration) -> Result<Self, String> {
        let grpc_addr = free_addr().map_err(|e| e.to_string())?;
        // A port just released can be handed out again at once: insist on two.
        let http_addr = loop {
            let addr = free_addr().map_err(|e| e.to_string())?;
            if addr != grpc_addr {
                break addr;
            }
        };
        let mut command = Command::new(exe);
        // Each point is its flags over the defaults: no configuration file or
        // CROSSENC_SECTION__KEY variable of the caller's blurs the grid.
        command.env_remove("CROSSENC_CONFIG");
        for (name, _) in std::env::vars() {
            if name.starts_with("CROSSENC_") && name.contains("__") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("serve")
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--http-addr", &http_addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let mut server = Self {
            child,
            grpc_addr,
            http_addr,
        };
        let started = Instant::now();
        while started.elapsed() < patience {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "it exited ({status}); run `crossenc serve` with these flags to see why: {}",
                    args.join(" ")
                ));
            }
            if ready(http_addr) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.stop();
        Err(format!("not ready within {patience:?}"))
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
