//! A local stand-in for the Hugging Face hub (no hub is reachable from test machines):
//! a std `TcpListener` on 127.0.0.1:0 answering, one connection at a time, the requests
//! hf-hub's blocking client makes, the way huggingface.co answers them:
//!
//! - `GET /ORG/NAME/resolve/REV/FILE` with `Range: bytes=0-0` (hf-hub's metadata probe)
//!   or `bytes=N-` (the download). A small file is answered in place: 206, `etag`,
//!   `x-repo-commit`, `content-range: bytes A-B/SIZE`. A weight file (`*.safetensors`,
//!   `*.bin`) is an LFS file: 302 to `/lfs/SHA256` with `x-linked-etag`, `x-repo-commit`,
//!   `x-linked-size`, as the hub redirects to its CDN.
//! - `GET /lfs/SHA256`: the bytes, honouring the range.
//! - anything else: 404 with `x-error-code` (`RepositoryNotFound` or `EntryNotFound`).
//!
//! Every request's path and `Authorization` header is recorded for the tests to check.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::sha256_hex;

/// A repo the stand-in serves: its id, its `main` commit, its files.
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl FakeRepo {
    pub fn new(id: &str, commit: &str, files: &[(&str, &[u8])]) -> FakeRepo {
        FakeRepo {
            id: id.to_owned(),
            commit: commit.to_owned(),
            files: files
                .iter()
                .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
                .collect(),
        }
    }
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

pub struct StandIn {
    /// `http://127.0.0.1:PORT`, what HF_ENDPOINT would be.
    pub endpoint: String,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    pub fn start(repos: Vec<FakeRepo>) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = format!("http://{addr}");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let hub = Hub {
            repos,
            endpoint: endpoint.clone(),
        };
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = hub.serve(stream, &seen2);
                }
            }
        });
        StandIn {
            endpoint,
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Hub {
    repos: Vec<FakeRepo>,
    endpoint: String,
}

/// An answer: status, headers, body.
struct Reply(u16, Vec<(&'static str, String)>, Vec<u8>);

impl Hub {
    fn serve(&self, stream: TcpStream, seen: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
        let request = read_request(&stream)?;
        seen.lock().unwrap().push(request.clone());
        let Reply(status, headers, body) = self.answer(&request);
        let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        let mut stream = stream;
        stream.write_all(out.as_bytes())?;
        stream.write_all(&body)?;
        stream.flush()
    }

    fn answer(&self, request: &Seen) -> Reply {
        if request.method != "GET" {
            return Reply(405, vec![], vec![]);
        }
        if let Some(sha) = request.path.strip_prefix("/lfs/") {
            return match self.lfs_blob(sha) {
                Some(bytes) => ranged(bytes, request.range.as_deref(), vec![]),
                None => not_found("EntryNotFound"),
            };
        }
        self.resolve(&request.path, request.range.as_deref())
    }

    /// `/ORG/NAME/resolve/REV/FILE`.
    fn resolve(&self, path: &str, range: Option<&str>) -> Reply {
        let Some((id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
            return not_found("RepositoryNotFound");
        };
        let Some(repo) = self.repos.iter().find(|r| r.id == id) else {
            return not_found("RepositoryNotFound");
        };
        let Some((revision, file)) = rest.split_once('/') else {
            return not_found("EntryNotFound");
        };
        if revision != "main" && revision != repo.commit {
            return not_found("RevisionNotFound");
        }
        let Some(bytes) = repo.files.get(file) else {
            return not_found("EntryNotFound");
        };
        let commit = ("x-repo-commit", repo.commit.clone());
        let sha = sha256_hex(bytes);
        if file.ends_with(".safetensors") || file.ends_with(".bin") {
            let location = format!("{}/lfs/{sha}", self.endpoint);
            let headers = vec![
                commit,
                ("x-linked-etag", format!("\"{sha}\"")),
                ("x-linked-size", bytes.len().to_string()),
                ("etag", "\"not-the-blob-name\"".to_owned()),
                ("location", location),
            ];
            return Reply(302, headers, vec![]);
        }
        let etag = ("etag", format!("\"{}\"", &sha[..40]));
        ranged(bytes, range, vec![commit, etag])
    }

    fn lfs_blob(&self, sha: &str) -> Option<&[u8]> {
        self.repos
            .iter()
            .flat_map(|r| r.files.values())
            .find(|bytes| sha256_hex(bytes) == sha)
            .map(Vec::as_slice)
    }
}

/// 206 with the part `range` asks for (`bytes=A-` or `bytes=A-B`), or 200 with all.
fn ranged(bytes: &[u8], range: Option<&str>, mut headers: Vec<(&'static str, String)>) -> Reply {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Reply(200, headers, bytes.to_vec());
    };
    let (start, end) = spec.split_once('-').unwrap();
    let start: usize = start.parse().unwrap();
    let last = bytes.len() - 1;
    let end = end.parse().map_or(last, |e: usize| e.min(last));
    headers.push((
        "content-range",
        format!("bytes {start}-{end}/{}", bytes.len()),
    ));
    Reply(206, headers, bytes[start..=end].to_vec())
}

fn not_found(code: &str) -> Reply {
    Reply(404, vec![("x-error-code", code.to_owned())], vec![])
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        404 => "Not Found",
        _ => "Method Not Allowed",
    }
}

/// The request line and the headers we look at; GETs have no body.
fn read_request(stream: &TcpStream) -> std::io::Result<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut range, mut authorization) = (None, None);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = Some(value.trim().to_owned());
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => range = value,
            "authorization" => authorization = value,
            _ => {}
        }
    }
    Ok(Seen {
        method,
        path,
        range,
        authorization,
    })
}
