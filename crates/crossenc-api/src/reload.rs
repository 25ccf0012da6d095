//! Files read again while serving: on SIGHUP, and when a file's modification time
//! changes (checked every two seconds, so that a Kubernetes secret update or a
//! certificate renewer needs no signal). Each reader keeps what it has when a new
//! reading fails, and logs the file and the reason.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// How often the files are checked for a change.
const FILE_CHECK: Duration = Duration::from_secs(2);

/// Something served from files that can be read again.
pub trait Reload: Send + Sync + 'static {
    /// Reads the files again if they changed since the last reading, or if `asked`.
    fn refresh(&self, asked: bool);
}

/// Files named by one setting, with when each last changed.
#[derive(Debug)]
pub struct WatchedFiles {
    /// The setting that names them, for log lines.
    pub key: &'static str,
    paths: Vec<PathBuf>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl WatchedFiles {
    pub fn new(key: &'static str, paths: Vec<PathBuf>) -> Self {
        let stamps = Mutex::new(stamps(&paths));
        Self { key, paths, stamps }
    }

    pub fn first(&self) -> &Path {
        self.paths.first().map_or(Path::new(""), PathBuf::as_path)
    }

    /// Whether the files are to be read again: `asked`, or one changed since this was
    /// last asked. A half-written pair is read again when its second file lands.
    pub fn changed(&self, asked: bool) -> bool {
        let now = stamps(&self.paths);
        let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *seen != now;
        *seen = now;
        asked || changed
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    paths.iter().map(modified).collect()
}

/// Refreshes `readers` on SIGHUP and on every file check, until `stop`. SIGHUP is
/// taken even with nothing to read, so that it never stops the server.
pub async fn watch(readers: Vec<Arc<dyn Reload>>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut ticker = tokio::time::interval(FILE_CHECK);
    loop {
        let asked = tokio::select! {
            _ = ticker.tick() => false,
            Some(()) = recv(&mut hangup) => true,
            _ = stop.wait_for(|&s| s) => return,
        };
        if asked {
            tracing::info!(
                files = readers.len(),
                "SIGHUP: reading the TLS and key files again"
            );
        }
        let readers = readers.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for reader in readers {
                reader.refresh(asked);
            }
        })
        .await;
    }
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
