//! Listening beyond loopback safely, against the real binary: TLS (checked by curl and by
//! Python's grpcio, as clients would), mutual TLS, a certificate rotated on disk, API keys
//! on every route and method but the probes, keys kept out of every output, the admin
//! routes on a port of their own, the configured model name, and the start-up errors
//! and warnings an operator needs.

mod access;
mod rotation;
#[path = "../support/mod.rs"]
mod support;
mod tls;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::{InferRequest, Pair, RerankRequest};
use nix::sys::signal::Signal;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use support::{http_get, model_dir, TempDir, TestServer, BINARY};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const KEY: &str = "test-key-0123456789abcdef";
const WRONG_KEY: &str = "test-key-0123456789abcdeX";

/// A certificate authority of the test's own.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `localhost` and 127.0.0.1 (server), or for a client: (cert, key) PEM.
    fn leaf(&self, client: bool) -> (String, String) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A folder of PEM files for one test, removed when dropped.
struct Files(TempDir);

impl Files {
    fn new(test: &str) -> Self {
        Self(TempDir::new(&format!("crossenc-{test}")))
    }

    /// Writes `text` to `name` by rename, as a rotation tool would.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        let staged = self.0.join(format!(".{name}.new"));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        path.display().to_string()
    }

    /// Writes `text` to `name` by rename, its modification time set to `stamp` before it
    /// lands (so that a watcher of stamps never sees it change).
    fn write_stamped(&self, name: &str, text: &str, stamp: std::time::SystemTime) {
        let staged = self.0.join(format!(".{name}.new"));
        std::fs::write(&staged, text).unwrap();
        let file = std::fs::File::options().write(true).open(&staged).unwrap();
        file.set_modified(stamp).unwrap();
        drop(file);
        std::fs::rename(&staged, self.0.join(name)).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

/// Server certificate files signed by `ca`, and the flags that serve them (the admin
/// routes apart, in plain HTTP, for the readiness probe).
fn tls_flags(files: &Files, ca: &Authority) -> Vec<String> {
    let (cert, key) = ca.leaf(false);
    files.write("ca.pem", &ca.pem);
    vec![
        "--tls-cert-file".into(),
        files.write("server.pem", &cert),
        "--tls-key-file".into(),
        files.write("server.key", &key),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
    ]
}

fn start(flags: &[String]) -> TestServer {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start(&flags)
}

/// curl's exit code, the HTTP status and the body. `args` come before the URL.
fn curl(url: &str, args: &[&str]) -> (i32, u16, String) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs (scripts/install-test-clients.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let status = status.trim().parse().unwrap_or(0);
    (output.status.code().unwrap_or(-1), status, body.to_string())
}

/// `https://localhost:PORT{path}`, with localhost resolved to the server.
fn https(server_port: u16, path: &str) -> (String, String) {
    let url = format!("https://localhost:{server_port}{path}");
    let resolve = format!("localhost:{server_port}:127.0.0.1");
    (url, resolve)
}

const RERANK: &str =
    r#"{"query":"what is a cat","texts":["a cat is a small feline","stock prices fell"]}"#;

/// Python's grpcio asking the health service over TLS: its exit code and output.
fn python_probe(addr: std::net::SocketAddr, args: &[&str]) -> (i32, String) {
    let python = std::env::var("CROSSENC_TEST_PYTHON").expect(
        "CROSSENC_TEST_PYTHON names a python with grpcio (scripts/test.sh sets it from scripts/install-test-clients.sh)",
    );
    let script = support::workspace().join("tests/support/grpc_health_probe.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("localhost:{}", addr.port()))
        .args(args)
        .output()
        .expect("python runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), said)
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<Identity>,
) -> Result<CrossEncoderClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(CrossEncoderClient::new(channel))
}

fn rerank() -> RerankRequest {
    RerankRequest {
        query: "what is a cat".into(),
        documents: vec!["a cat is a small feline".into(), "stock prices fell".into()],
        ..Default::default()
    }
}

/// The key's flags: a key file, and the admin routes on the API port (so that they need
/// the key too).
fn key_flags(files: &Files) -> Vec<String> {
    let file = files.write("keys", &format!("# the API's key\n{KEY}\n"));
    vec!["--api-key-file".into(), file]
}

fn post(addr: std::net::SocketAddr, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let auth = key.map(|k| format!("authorization: Bearer {k}"));
    let mut args = vec!["-H", "content-type: application/json", "-d", body];
    if let Some(auth) = &auth {
        args.extend(["-H", auth]);
    }
    let (_, status, body) = curl(&url, &args);
    (status, body)
}

fn get(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let auth = key.map(|k| format!("authorization: Bearer {k}"));
    let args: Vec<&str> = match &auth {
        Some(auth) => vec!["-H", auth],
        None => vec![],
    };
    let (_, status, body) = curl(&url, &args);
    (status, body)
}
