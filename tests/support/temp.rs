//! Temporary folders that go away with the value that holds them, and copies of model
//! folders for a test to break. Only the standard library and serde_json: the tests of
//! crates/crossenc-model include this file too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh, empty folder under the system's temporary folder, removed with everything in
/// it when dropped. Hold it for as long as anything (a server, a tool) uses the folder.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<temp>/<prefix>-<pid>-<n>-<nanos>`: unique across this process's tests (the
    /// counter) and across runs that get the same pid again (the clock).
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Removes links, never what they point to.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A model folder for a test to break: a [`TempDir`] of symbolic links to every file of
/// a source folder, so that nothing large is copied. A file is changed by replacing its
/// link with a file of its own: the source is never written.
#[derive(Debug)]
pub struct ModelCopy {
    dir: TempDir,
}

impl ModelCopy {
    /// Links to every entry of the folder `source`.
    pub fn of(source: &Path) -> Self {
        let source = source
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let name = source
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy());
        let dir = TempDir::new(&format!("crossenc-model-{name}"));
        let entries =
            std::fs::read_dir(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        for entry in entries {
            let file = entry.unwrap().file_name();
            std::os::unix::fs::symlink(source.join(&file), dir.join(&file)).unwrap();
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes `file` a file of its own holding `contents` (its link, if any, removed
    /// first: writing through it would change the source).
    pub fn replace(&self, file: &str, contents: impl AsRef<[u8]>) -> &Self {
        let path = self.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", path.display()),
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self
    }

    /// Replaces the JSON file `file` by what `edit` makes of it.
    pub fn edit_json(&self, file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> &Self {
        let path = self.join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        edit(&mut json);
        self.replace(file, json.to_string())
    }

    /// Removes `file` (its link) from the copy.
    pub fn remove(&self, file: &str) -> &Self {
        let path = self.join(file);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self
    }
}

impl AsRef<Path> for ModelCopy {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}
