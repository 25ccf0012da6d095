//! Beyond one machine: the Kubernetes manifests render and validate against the
//! Kubernetes schemas, the Deployment's own arguments serve its probes where they point,
//! and a fleet of replicas behind a client-side balancer loses no request when one dies.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::RerankRequest;
use serde_json::Value;
use support::{free_addr, http_get, model_dir, wait_exit, workspace, TestServer, BINARY};
use tonic::transport::{Channel, Endpoint};
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

#[test]
fn the_manifests_render_and_every_object_validates() {
    for dir in ["deploy/kubernetes", "deploy/overlays/gpu"] {
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
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
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
