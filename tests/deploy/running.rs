//! The manifests' arguments run: the secure overlay's with a rotated Secret, the
//! Deployment's own probes and ports, and a fleet that loses a replica.

use super::*;
use crate::manifests::{port_names, secret_mounts};

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
