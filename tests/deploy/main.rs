//! Beyond one machine: the Kubernetes manifests render and validate against the
//! Kubernetes schemas, the NetworkPolicy admits the API from the namespace and the admin
//! port from monitoring only, the Deployment's own arguments serve its probes where they
//! point, the secure overlay's arguments serve TLS and keys from its Secret mounts and take
//! a rotated Secret without a restart, and a fleet of replicas behind a client-side
//! balancer loses no request when one dies.

mod manifests;
mod running;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::RerankRequest;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use support::{free_addr, http_get, model_dir, wait_exit, workspace, TestServer, BINARY};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// The python of scripts/install-test-clients.sh's venv, which also holds PyYAML and
/// kubernetes-validate.
fn venv_bin(name: &str) -> PathBuf {
    let python = std::env::var("CROSSENC_TEST_PYTHON").expect(
        "CROSSENC_TEST_PYTHON names the test clients' venv (scripts/test.sh sets it from scripts/install-test-clients.sh)",
    );
    PathBuf::from(python).with_file_name(name)
}

/// `kubectl kustomize DIR`: the rendered YAML.
fn render(dir: &str) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(workspace().join(dir))
        .output()
        .expect("kubectl runs (scripts/install-test-clients.sh installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kubectl kustomize {dir}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// The rendered objects as JSON (PyYAML does the YAML).
fn objects(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let mut python = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    python
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The base and every overlay.
const DIRS: [&str; 3] = [
    "deploy/kubernetes",
    "deploy/overlays/gpu",
    "deploy/overlays/secure",
];
