//! The manifests as rendered: every object validates, the NetworkPolicy admits what it
//! should, the secure overlay mounts its secrets.

use super::*;

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
pub(crate) fn port_names(container: &Value) -> HashMap<u64, String> {
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
pub(crate) fn secret_mounts(pod: &Value) -> HashMap<String, String> {
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
