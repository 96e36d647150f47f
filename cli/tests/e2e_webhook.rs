//! From admission to `getenv`. The `envproxy-agent webhook` binary mutates a pod over real TLS,
//! and the kube API test server serves the patched pod. The container's command then runs with
//! the container's patched env in that pod's cgroup, under the read-only mounts the patch
//! names, and reads its secret from the Vault test server through the node-mode agent.
//!
//! It runs as root, like the other node-mode end-to-end tests, and fails saying why otherwise.

mod e2e_node_support;
mod e2e_support;

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e_node_support::*;
use e2e_support::*;
use k8s_openapi::api::core::v1::Pod;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use serde_json::{json, Value};

/// The webhook binary, stopped with SIGTERM on drop.
struct WebhookProcess {
    child: Child,
    address: SocketAddr,
    ca_pem: String,
}

impl WebhookProcess {
    /// Starts `envproxy-agent webhook` with the agent's own config file plus a `[webhook]`
    /// table, so the webhook reads the socket and token settings the agent uses.
    fn start(cluster: &Cluster, library_dir: &Path) -> WebhookProcess {
        let dir = cluster.dir.path();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &ca).unwrap();
        let (cert_path, key_path) = (dir.join("webhook.crt"), dir.join("webhook.key"));
        fs::write(&cert_path, certificate.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();

        let config = dir.join("agent.toml");
        let mut text = fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[webhook]\nlisten = \"127.0.0.1:0\"\ntls_cert = {cert_path:?}\n\
             tls_key = {key_path:?}\nlibrary_dir = {library_dir:?}\n"
        ));
        fs::write(&config, text).unwrap();

        let mut child = Command::new(agent_binary())
            .arg("webhook")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let address = listen_address(&mut child);
        WebhookProcess {
            child,
            address,
            ca_pem: ca.pem(),
        }
    }

    /// Posts `review` to `/mutate` and returns the AdmissionReview response.
    fn review(&self, review: &Value) -> Value {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve("localhost", self.address)
            .timeout(LIMIT)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/mutate", self.address.port());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer: Value = runtime.block_on(async {
            let response = client.post(url).json(review).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.json().await.unwrap()
        });
        answer["response"].clone()
    }
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of the webhook this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Reads the webhook's log until it reports its listen address, then forwards the rest of its
/// log to the test's stderr.
fn listen_address(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sender = Some(sender);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("webhook: {line}");
            if line.contains("webhook listening") {
                let address = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("address="))
                    .map(str::to_string);
                if let (Some(sender), Some(address)) = (sender.take(), address) {
                    let _ = sender.send(address);
                }
            }
        }
    });
    let address = receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("the webhook did not report its listen address within 10 s; see its log above");
    address.parse().unwrap()
}

/// Makes a node directory in the layout the agent installs: `lib/libenvproxy.so` and `hooks/`.
fn install_library(dir: &Path) -> PathBuf {
    let library_dir = dir.join("opt-envproxy");
    fs::create_dir_all(library_dir.join("lib")).unwrap();
    fs::copy(library(), library_dir.join("lib/libenvproxy.so")).unwrap();
    std::os::unix::fs::symlink(source_hooks_dir(), library_dir.join("hooks")).unwrap();
    library_dir
}

/// Returns the AdmissionReview the API server sends when `pod` is created: before scheduling,
/// so without a node, a UID or a status.
fn create_review(pod: &Pod) -> Value {
    let mut object = serde_json::to_value(pod).unwrap();
    let metadata = object["metadata"].as_object_mut().unwrap();
    metadata.remove("uid");
    object["spec"].as_object_mut().unwrap().remove("nodeName");
    object.as_object_mut().unwrap().remove("status");
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": random_uid(),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod.metadata.namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        },
    })
}

/// Applies the response's patch to the pod of `review`.
fn apply_patch(review: &Value, response: &Value) -> Value {
    use base64::Engine as _;
    assert_eq!(response["allowed"], true, "{response}");
    let encoded = response["patch"]
        .as_str()
        .expect("the response has a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// Builds the container's process as the runtime would start it: its command and args, and
/// only the env the patched spec gives it.
fn container_command(container: &Value) -> Command {
    let argv: Vec<String> = ["command", "args"]
        .iter()
        .flat_map(|field| container[field].as_array().cloned().unwrap_or_default())
        .map(|item| item.as_str().unwrap().to_string())
        .collect();
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).env_clear();
    for entry in container["env"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let value = entry["value"].as_str().expect("a literal env value");
        command.env(name, value);
    }
    command
}

/// Makes the directories read-only in the process's mount namespace, as the patch's
/// `readOnly: true` mounts are in the container. Runs after [`Cluster::enter`] gave the process
/// its own mount namespace.
fn mount_read_only(command: &mut Command, dirs: &[&Path]) {
    let dirs: Vec<CString> = dirs
        .iter()
        .map(|dir| CString::new(dir.as_os_str().as_encoded_bytes()).unwrap())
        .collect();
    // SAFETY: the closure runs between fork and exec and makes only system calls, on strings
    // built before the fork.
    unsafe {
        command.pre_exec(move || {
            for dir in &dirs {
                let bind = libc::mount(
                    dir.as_ptr(),
                    dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                let read_only = libc::mount(
                    std::ptr::null(),
                    dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                );
                if bind != 0 || read_only != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn find<'v>(items: &'v Value, name: &str) -> &'v Value {
    items
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name} in {items:#}"))
}

#[test]
fn admitted_pod_reads_vault_secret() {
    let mut cluster = Cluster::start();
    let library_dir = install_library(cluster.dir.path());
    let webhook = WebhookProcess::start(&cluster, &library_dir);
    let secret = put_secret(&cluster, "a");
    let mut pod = cluster.prepare_pod(
        "a",
        "checkout-a",
        json!({"envproxy.dev/inject": "true", "envproxy.dev/cache-ttl": "0"}),
        &[("DB_PASSWORD", &reference("a"))],
    );
    let spec = pod.object.spec.as_mut().unwrap();
    spec.containers[0].command = Some(vec![probe().display().to_string()]);
    spec.containers[0].args = Some(vec!["get".to_string(), "DB_PASSWORD".to_string()]);

    let review = create_review(&pod.object);
    let response = webhook.review(&review);
    assert!(response.get("warnings").is_none(), "{response}");
    let mut patched = apply_patch(&review, &response);

    // The projected token is where the agent reads it, with the audience it checks.
    let token_volume = find(&patched["spec"]["volumes"], "envproxy-token");
    let projection = &token_volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projection["audience"], AUDIENCE);
    assert_eq!(projection["path"], "token");
    let app = find(&patched["spec"]["containers"], "app");
    let token_mount = find(&app["volumeMounts"], "envproxy-token");
    assert_eq!(
        token_mount["mountPath"].as_str(),
        cluster.token_mount.to_str()
    );
    let socket_dir = cluster.socket.parent().unwrap().to_path_buf();
    let socket_mount = find(&app["volumeMounts"], "envproxy-socket");
    assert_eq!(socket_mount["mountPath"].as_str(), socket_dir.to_str());
    assert_eq!(socket_mount["readOnly"], true);

    // The API server stores the pod, the scheduler binds it to this node and the kubelet
    // starts it and projects its token.
    patched["metadata"]["uid"] = json!(pod.object.metadata.uid);
    patched["spec"]["nodeName"] = json!(NODE);
    patched["status"] = serde_json::to_value(&pod.object.status).unwrap();
    pod.object = serde_json::from_value(patched.clone()).unwrap();
    cluster.apply(&pod);
    cluster.write_token(&pod);

    let app = find(&patched["spec"]["containers"], "app");
    let mut command = container_command(app);
    cluster.enter(&pod, &mut command);
    mount_read_only(&mut command, &[&socket_dir, &library_dir]);
    let (value, stderr) = probe_get_running(command);
    assert_eq!(value.as_deref(), Some(secret.as_str()), "{stderr}");
    assert_eq!(
        cluster.vault.request_count("POST", "auth/kubernetes/login"),
        1
    );
}

/// Runs a container command whose args are `get DB_PASSWORD` and returns the value it printed
/// and its stderr.
fn probe_get_running(mut command: Command) -> (Option<String>, String) {
    let output = run_with_limit(&mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{output:?}");
    let value = value_of(&output.stdout, "DB_PASSWORD").filter(|value| value != "(null)");
    (value, stderr)
}
