//! Beyond one machine: the Kubernetes manifests render and validate against the
//! Kubernetes schemas, the NetworkPolicy admits the API from the namespace and the admin
//! port from monitoring only, the Deployment's own arguments serve its probes where they
//! point, the secure overlay's arguments serve TLS and keys from its Secret mounts and take
//! a rotated Secret without a restart, and a fleet of replicas behind a client-side
//! balancer loses no request when one dies.

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

#[test]
fn the_manifests_render_and_every_object_validates() {
    for dir in DIRS {
        let yaml = render(dir);
        let file = std::env::temp_dir().join(format!(
            "crossenc-{}-{}.yaml",
            dir.replace('/', "-"),
            std::process::id()
        ));
        std::fs::write(&file, &yaml).unwrap();
        let output = Command::new(venv_bin("kubernetes-validate"))
            .arg("--strict")
            .arg(&file)
            .output()
            .expect("kubernetes-validate runs");
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let _ = std::fs::remove_file(&file);
        assert!(output.status.success(), "{dir}: {said}");
        for object in [
            "deployment/crossenc",
            "service/crossenc",
            "service/crossenc-headless",
            "poddisruptionbudget/crossenc",
            "horizontalpodautoscaler/crossenc",
            "configmap/crossenc-prometheus-adapter",
            "networkpolicy/crossenc",
        ] {
            assert!(
                said.contains(&format!("passed for resource {object}")),
                "{dir}: {said}"
            );
        }
        // Only the Prometheus Operator's PodMonitor (a CRD) has no schema offline.
        for line in said.lines().filter(|l| l.contains("Couldn't find schema")) {
            assert!(line.contains("kind PodMonitor"), "{dir}: {line}");
        }
    }
    let gpu = objects(&render("deploy/overlays/gpu"));
    let container =
        &find(&gpu, "Deployment", "crossenc")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--device", "cuda:0"]),
        "{args:?}"
    );
}

/// The container's port names by number, and its names.
fn port_names(container: &Value) -> HashMap<u64, String> {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["containerPort"].as_u64().unwrap(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Who a NetworkPolicy admits on each of the container's named ports: the `from` peers of
/// every rule that covers the port (a rule without ports covers them all; a rule without
/// `from` admits anyone, written here as `"anyone"`).
fn admitted(policy: &Value, container: &Value) -> HashMap<String, Vec<Value>> {
    let names = port_names(container);
    let mut admitted: HashMap<String, Vec<Value>> = HashMap::new();
    for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
        let ports: Vec<String> = match rule["ports"].as_array() {
            None => names.values().cloned().collect(),
            Some(ports) => ports
                .iter()
                .map(|p| match &p["port"] {
                    Value::String(name) => name.clone(),
                    number => names[&number.as_u64().unwrap()].clone(),
                })
                .collect(),
        };
        let peers = match rule["from"].as_array() {
            None => vec![json!("anyone")],
            Some(peers) => peers.clone(),
        };
        for port in ports {
            admitted
                .entry(port)
                .or_default()
                .extend(peers.iter().cloned());
        }
    }
    admitted
}

#[test]
fn the_network_policy_admits_the_api_from_the_namespace_and_the_admin_port_from_monitoring() {
    for dir in DIRS {
        let objects = objects(&render(dir));
        let policy = find(&objects, "NetworkPolicy", "crossenc");
        let pod = &find(&objects, "Deployment", "crossenc")["spec"]["template"];
        // It selects the Deployment's pods.
        let labels = pod["metadata"]["labels"].as_object().unwrap();
        let selector = policy["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .unwrap();
        assert!(!selector.is_empty(), "{dir}: the policy selects every pod");
        for (key, value) in selector {
            assert_eq!(labels.get(key), Some(value), "{dir}: selector {key}");
        }
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]), "{dir}");
        let container = &pod["spec"]["containers"][0];
        let admitted = admitted(policy, container);
        let namespace = json!([{"podSelector": {}}]);
        for api in ["grpc", "http"] {
            assert_eq!(
                json!(admitted.get(api)),
                namespace,
                "{dir}: the {api} port admits this namespace's pods and no one else"
            );
        }
        assert_eq!(
            json!(admitted.get("admin")),
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
            "{dir}: the admin port admits the monitoring namespace only"
        );
        assert_eq!(
            admitted.len(),
            port_names(container).len(),
            "{dir}: every rule names the container's ports: {admitted:?}"
        );
        // The probes stay on the admin port, in plain HTTP (the kubelet is not subject to
        // the policy, and the admin port takes no key).
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["port"], "admin", "{dir}: {probe}");
            assert!(
                get["scheme"].is_null() || get["scheme"] == "HTTP",
                "{dir}: {probe}"
            );
        }
    }
}

/// The secure overlay's Secret mounts: mount path by Secret name.
fn secret_mounts(pod: &Value) -> HashMap<String, String> {
    let container = &pod["containers"][0];
    let mut mounts = HashMap::new();
    for volume in pod["volumes"].as_array().unwrap() {
        let Some(secret) = volume["secret"]["secretName"].as_str() else {
            continue;
        };
        // Every key of the Secret, under its own name.
        assert!(volume["secret"]["items"].is_null(), "{volume}");
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("secret {secret} is not mounted"));
        assert_eq!(mount["readOnly"], true, "{secret} is mounted read-only");
        // Files under a subPath are never updated: a rotation would not reach them.
        assert!(mount["subPath"].is_null(), "{secret} is mounted whole");
        mounts.insert(
            secret.to_string(),
            mount["mountPath"].as_str().unwrap().to_string(),
        );
    }
    mounts
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [Value], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[at + 1].as_str().unwrap()
}

#[test]
fn the_secure_overlay_mounts_both_secrets_read_only_and_names_their_files() {
    let secure = objects(&render("deploy/overlays/secure"));
    // The operator creates the Secrets: none is shipped.
    assert!(
        secure.iter().all(|o| o["kind"] != "Secret"),
        "no Secret values in the manifests"
    );
    let pod = &find(&secure, "Deployment", "crossenc")["spec"]["template"]["spec"];
    let mounts = secret_mounts(pod);
    assert_eq!(mounts["crossenc-tls"], "/etc/crossenc/tls");
    assert_eq!(mounts["crossenc-api-keys"], "/etc/crossenc/keys");
    let args = pod["containers"][0]["args"].as_array().unwrap();
    // The files are the Secrets' keys: a kubernetes.io/tls Secret's tls.crt and tls.key,
    // and `keys`.
    assert_eq!(flag(args, "--tls-cert-file"), "/etc/crossenc/tls/tls.crt");
    assert_eq!(flag(args, "--tls-key-file"), "/etc/crossenc/tls/tls.key");
    assert_eq!(flag(args, "--api-key-file"), "/etc/crossenc/keys/keys");
    // The API ports now speak TLS, and the Services say so to meshes and gateways.
    for service in ["crossenc", "crossenc-headless"] {
        for port in find(&secure, "Service", service)["spec"]["ports"]
            .as_array()
            .unwrap()
        {
            assert_eq!(port["appProtocol"], "https", "{service} {port}");
        }
    }
}

/// A Secret volume as the kubelet writes it: the files in a timestamped folder, `..data`
/// a link to it, and each key a link through `..data`; an update writes a new folder and
/// swaps `..data` by rename.
struct SecretVolume(PathBuf);

impl SecretVolume {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let volume = Self(dir);
        volume.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.0.join(name)).unwrap();
        }
        volume
    }

    fn update(&self, files: &[(&str, &str)]) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let version = format!("..{stamp}");
        std::fs::create_dir(self.0.join(&version)).unwrap();
        for (name, text) in files {
            std::fs::write(self.0.join(&version).join(name), text).unwrap();
        }
        let old = std::fs::read_link(self.0.join("..data")).ok();
        std::os::unix::fs::symlink(&version, self.0.join("..data_tmp")).unwrap();
        std::fs::rename(self.0.join("..data_tmp"), self.0.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.0.join(old)).unwrap();
        }
    }
}

/// A CA of the test's own: its PEM, and a server certificate and key for `localhost`.
fn authority(name: &str) -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(params, key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

const KEY: &str = "deploy-test-key-0123456789";
const NEW_KEY: &str = "deploy-test-key-rotated-0123456789";

/// Waits until `check` holds: the kubelet's swap is seen within the server's 2 s check.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Rerank over TLS trusting `ca`, with `key`: Ok, or the status code (Unavailable when
/// the handshake fails).
async fn rerank_over_tls(addr: SocketAddr, ca: &str, key: &str) -> Result<(), Code> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|_| Code::Unavailable)?;
    let mut request = tonic::Request::new(RerankRequest {
        query: "what is a cat".into(),
        documents: vec!["a cat is a small feline".into(), "stock prices fell".into()],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    match CrossEncoderClient::new(channel).rerank(request).await {
        Ok(_) => Ok(()),
        Err(status) => Err(status.code()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secure_overlays_arguments_serve_its_secrets_and_take_a_rotation_live() {
    let secure = objects(&render("deploy/overlays/secure"));
    let pod = &find(&secure, "Deployment", "crossenc")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts = secret_mounts(pod);
    // The Secrets' mounts, kubelet-style, in a folder of the test's own.
    let root = std::env::temp_dir().join(format!("crossenc-secure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (ca, cert, key) = authority("crossenc deploy test CA");
    let tls = SecretVolume::new(root.join("tls"), &[("tls.crt", &cert), ("tls.key", &key)]);
    let keys = SecretVolume::new(root.join("keys"), &[("keys", &format!("{KEY}\n"))]);
    let local = |arg: String| {
        for (secret, volume) in [("crossenc-tls", &tls), ("crossenc-api-keys", &keys)] {
            if let Some(file) = arg.strip_prefix(&format!("{}/", mounts[secret])) {
                return volume.0.join(file).display().to_string();
            }
        }
        arg
    };
    let (args, moved) = local_arguments(container);
    let args: Vec<String> = args.into_iter().map(local).collect();
    let ports: HashMap<String, u64> = port_names(container)
        .into_iter()
        .map(|(port, name)| (name, port))
        .collect();
    let (grpc, admin) = (moved[&ports["grpc"]], moved[&ports["admin"]]);
    let mut command = Command::new(BINARY);
    crossenc_bench::without_caller_settings(&mut command);
    let mut child = command
        .args(&args)
        .envs(container_env(container))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crossenc starts with the secure overlay's arguments");
    let stop = StopOnDrop(&mut child);
    // The probes' port stays plain HTTP without a key.
    let started = Instant::now();
    while !matches!(http_get(admin, "/ready"), Ok((200, _))) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "/ready on the admin port never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(http_get(admin, "/metrics"), Ok((200, _))));
    // The API: TLS with the Secret's certificate, and the Secret's key.
    assert_eq!(rerank_over_tls(grpc, &ca, KEY).await, Ok(()));
    assert_eq!(
        rerank_over_tls(grpc, &ca, NEW_KEY).await,
        Err(Code::Unauthenticated)
    );

    // Both Secrets updated, as the kubelet lands them: no signal, no restart.
    let (new_ca, new_cert, new_key) = authority("crossenc deploy test CA, renewed");
    tls.update(&[("tls.crt", &new_cert), ("tls.key", &new_key)]);
    keys.update(&[("keys", &format!("{NEW_KEY}\n"))]);
    eventually("the new key and certificate are served", || {
        let new_ca = new_ca.clone();
        async move { rerank_over_tls(grpc, &new_ca, NEW_KEY).await.is_ok() }
    })
    .await;
    assert_eq!(
        rerank_over_tls(grpc, &new_ca, KEY).await,
        Err(Code::Unauthenticated),
        "the old key is out"
    );
    assert_eq!(
        rerank_over_tls(grpc, &ca, NEW_KEY).await,
        Err(Code::Unavailable),
        "the old certificate is no longer served"
    );
    assert!(
        stop.0.try_wait().unwrap().is_none(),
        "the same process serves on"
    );
    drop(stop);
    let _ = std::fs::remove_dir_all(&root);
}

/// The container's arguments with every `0.0.0.0:PORT` moved to a free loopback port, and
/// the model folder to this checkout's: the arguments, and each container port's new
/// address.
fn local_arguments(container: &Value) -> (Vec<String>, HashMap<u64, SocketAddr>) {
    let mut moved = HashMap::new();
    let args = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| {
            let arg = arg.as_str().unwrap();
            if let Some(port) = arg.strip_prefix("0.0.0.0:") {
                let local = free_addr();
                moved.insert(port.parse().unwrap(), local);
                local.to_string()
            } else if arg.starts_with("/models/") {
                model_dir().display().to_string()
            } else {
                arg.to_string()
            }
        })
        .collect();
    (args, moved)
}

/// The container's environment (plain values).
fn container_env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn the_deployments_own_arguments_serve_its_probes_and_ports() {
    let base = objects(&render("deploy/kubernetes"));
    let deployment = find(&base, "Deployment", "crossenc");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let (args, moved) = local_arguments(container);
    let ports: HashMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let env = container_env(container);
    let mut command = Command::new(BINARY);
    crossenc_bench::without_caller_settings(&mut command);
    let mut child = command
        .args(&args)
        .envs(env)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crossenc starts with the Deployment's arguments");
    let _stop = StopOnDrop(&mut child);
    let probe_addr = |probe: &Value| -> (SocketAddr, String) {
        let get = &probe["httpGet"];
        let port = match &get["port"] {
            Value::String(name) => ports[name.as_str()],
            number => number.as_u64().unwrap(),
        };
        (moved[&port], get["path"].as_str().unwrap().to_string())
    };
    // The startup probe's patience covers a model load; here it is a few seconds.
    let (addr, path) = probe_addr(&container["startupProbe"]);
    let started = Instant::now();
    while !matches!(http_get(addr, &path), Ok((200, _))) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{path} on {addr} never answered 200"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let (addr, path) = probe_addr(&container[probe]);
        assert!(
            matches!(http_get(addr, &path), Ok((200, _))),
            "{probe} {path} on {addr}"
        );
    }
    // What scrapes and routes points at ports the container names, where they serve.
    let admin = moved[&ports["admin"]];
    let (status, metrics) = http_get(admin, "/metrics").unwrap();
    assert!(
        status == 200 && metrics.contains("queued_pairs_limit"),
        "{status}"
    );
    let monitor = find(&base, "PodMonitor", "crossenc");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    for service in ["crossenc", "crossenc-headless"] {
        for port in find(&base, "Service", service)["spec"]["ports"]
            .as_array()
            .unwrap()
        {
            let target = port["targetPort"].as_str().unwrap();
            assert!(ports.contains_key(target), "{service} targets {target}");
            assert_eq!(port["name"], target, "ports named for protocol detection");
        }
    }
    let grpc = moved[&ports["grpc"]];
    assert!(std::net::TcpStream::connect(grpc).is_ok());
    // Time to drain: the preStop pause and the default shutdown grace (30 s) fit.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(grace >= pause + 30, "grace {grace} s, preStop {pause} s");
}

struct StopOnDrop<'a>(&'a mut Child);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_exit(self.0, Duration::from_secs(20)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One client's requests: each retried on another replica while the answer says the
/// replica is gone (UNAVAILABLE, a reset connection), as a client of a fleet should.
async fn rerank_until_answered(
    client: &mut CrossEncoderClient<Channel>,
    documents: usize,
) -> usize {
    let request = RerankRequest {
        query: "what is a cat".into(),
        documents: (0..documents)
            .map(|i| format!("a cat, document {i}"))
            .collect(),
        ..Default::default()
    };
    for _ in 0..50 {
        match client.rerank(request.clone()).await {
            Ok(answer) => return answer.into_inner().results.len(),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("a request failed for good: {status:?}"),
        }
    }
    panic!("no replica answered in 50 tries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_loses_no_request_when_a_replica_dies() {
    let replicas: Vec<TestServer> = (0..2)
        .map(|_| TestServer::start(&["--model-threads", "1"]))
        .collect();
    let endpoints = replicas
        .iter()
        .map(|r| Endpoint::from_shared(format!("http://{}", r.grpc_addr)).unwrap());
    // Client-side balancing, as over a headless Service.
    let channel = Channel::balance_list(endpoints);
    let (clients, per_client, documents) = (6, 8, 8);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mut client = CrossEncoderClient::new(channel.clone());
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for _ in 0..per_client {
                    answered.push(rerank_until_answered(&mut client, documents).await);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                answered
            })
        })
        .collect();
    // Mid-load, one replica dies outright (its workers follow it).
    while done.load(std::sync::atomic::Ordering::Relaxed) < clients * per_client / 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both replicas took a share before one dies.
    for replica in &replicas {
        let served = support::metric(
            &replica.metrics(),
            r#"request_count_total{method="grpc_rerank"}"#,
        );
        assert!(served > 0.0, "the balancer used every replica");
    }
    let victim = replicas[0].pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut answered = 0;
    for task in tasks {
        let results = task.await.expect("a client task");
        assert!(results.iter().all(|&n| n == documents), "{results:?}");
        answered += results.len();
    }
    assert_eq!(answered, clients * per_client, "every request answered");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "fleet: {answered} requests ({} pairs) in {seconds:.1} s with a replica killed after a quarter",
        answered * documents
    );
}
