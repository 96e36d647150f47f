//! The admission webhook over real TLS: AdmissionReview v1 bodies as the API server sends them,
//! posted to the webhook on a loopback port. Each returned JSON patch is applied to the pod and
//! the result is validated against the Kubernetes schemas with `kubernetes-validate` (from PyPI,
//! which `.ci/run` installs), as the API server would validate it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use envproxy_agent::webhook::{Webhook, WebhookSettings};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use serde_json::{json, Value};

/// Kubernetes releases whose schemas the patched pods must satisfy.
const KUBERNETES_VERSIONS: [&str; 3] = ["1.35.0", "1.36.0", "1.37.0"];
const LIBRARY: &str = "/opt/envproxy/lib/libenvproxy.so";
const TOKEN_DIR: &str = "/var/run/secrets/envproxy.dev/serviceaccount";

/// A certificate authority and a server certificate for `localhost` it signed, as PEM files.
struct Certificates {
    ca: CertifiedIssuer<'static, KeyPair>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Certificates {
    fn generate(dir: &Path) -> Certificates {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let certificates = Certificates {
            ca,
            cert_path: dir.join("tls.crt"),
            key_path: dir.join("tls.key"),
        };
        certificates.issue_server_certificate();
        certificates
    }

    /// Writes a new server certificate and key, replacing the files the way the kubelet
    /// updates a mounted Secret: new files renamed over the old names.
    fn issue_server_certificate(&self) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        for (path, pem) in [
            (&self.key_path, key.serialize_pem()),
            (&self.cert_path, certificate.pem()),
        ] {
            let staged = path.with_extension("new");
            fs::write(&staged, pem).unwrap();
            fs::rename(&staged, path).unwrap();
        }
    }
}

/// A webhook served on a loopback port by an in-process Tokio runtime.
struct TestWebhook {
    runtime: tokio::runtime::Runtime,
    address: SocketAddr,
    certificates: Certificates,
    _dir: tempfile::TempDir,
}

impl TestWebhook {
    fn start() -> TestWebhook {
        TestWebhook::start_with(|_| {})
    }

    fn start_with(configure: impl FnOnce(&mut WebhookSettings)) -> TestWebhook {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let certificates = Certificates::generate(dir.path());
        let mut settings = WebhookSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: certificates.cert_path.clone(),
            tls_key: certificates.key_path.clone(),
            vault_addr_allowlist: vec!["https://vault.shop.svc:8200".to_string()],
            ..WebhookSettings::default()
        };
        configure(&mut settings);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let webhook = runtime.block_on(Webhook::bind(settings)).unwrap();
        let address = webhook.local_addr();
        runtime.spawn(webhook.serve(std::future::pending()));
        TestWebhook {
            runtime,
            address,
            certificates,
            _dir: dir,
        }
    }

    /// Returns a client that trusts only the test CA, on a fresh connection pool.
    fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.certificates.ca.pem().as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve("localhost", self.address)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.post_with(&self.client(), path, body)
    }

    fn post_with(&self, client: &reqwest::Client, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let url = format!("https://localhost:{}{path}", self.address.port());
        self.runtime.block_on(async {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap().to_vec())
        })
    }

    /// Sends `review` to `path` and returns the response of the returned AdmissionReview.
    fn review_at(&self, path: &str, review: &Value) -> Value {
        let (status, body) = self.post(path, &serde_json::to_vec(review).unwrap());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"], "{response}");
        response
    }

    fn review(&self, review: &Value) -> Value {
        self.review_at("/mutate", review)
    }
}

/// Returns the AdmissionReview of a Deployment's pod at creation, with `annotations` in place
/// of the fixture's.
fn create_review(annotations: Value) -> Value {
    let text = include_str!("webhook_fixtures/create-pod.json");
    let mut review: Value = serde_json::from_str(text).unwrap();
    review["request"]["object"]["metadata"]["annotations"] = annotations;
    review
}

fn opted_in() -> Value {
    json!({"envproxy.dev/inject": "true"})
}

fn pod_of(review: &Value) -> &Value {
    &review["request"]["object"]
}

/// Applies the response's patch to the pod of `review` and returns the patched pod.
fn patched_pod(review: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let encoded = response["patch"].as_str().expect("a base64 patch");
    let bytes = base64_decode(encoded);
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = pod_of(review).clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Validates `pod` against the Kubernetes schemas with `kubernetes-validate --strict`, which
/// also rejects fields the schema does not define.
fn validate_with_schema(pod: &Value) {
    let mut pod = pod.clone();
    // The API server names a pod from its generateName after the mutating webhooks.
    if pod["metadata"]["name"].is_null() {
        let generate_name = pod["metadata"]["generateName"].as_str().unwrap_or("pod-");
        pod["metadata"]["name"] = json!(format!("{generate_name}x7k2q"));
    }
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    fs::write(file.path(), serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
    for version in KUBERNETES_VERSIONS {
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .arg(file.path())
            .output()
            .expect(
                "kubernetes-validate is missing: install it with `pip install kubernetes-validate` \
                 (.ci/run does)",
            );
        assert!(
            output.status.success(),
            "the patched pod does not validate against Kubernetes {version}: {}{}\n{pod:#}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}

fn container<'p>(pod: &'p Value, list: &str, name: &str) -> &'p Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|container| container["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry named {name}: {pod:#}"))
}

fn env_value<'c>(container: &'c Value, name: &str) -> Option<&'c str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == name)
        .and_then(|entry| entry["value"].as_str())
}

fn mount_paths(container: &Value) -> Vec<(String, String, bool)> {
    container["volumeMounts"]
        .as_array()
        .map(|mounts| {
            mounts
                .iter()
                .map(|mount| {
                    (
                        mount["name"].as_str().unwrap().to_string(),
                        mount["mountPath"].as_str().unwrap().to_string(),
                        mount["readOnly"] == true,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_injected(container: &Value) {
    let mounts = mount_paths(container);
    for (volume, path) in [
        ("envproxy-socket", "/run/envproxy"),
        ("envproxy-lib", "/opt/envproxy"),
        ("envproxy-token", TOKEN_DIR),
    ] {
        assert!(
            mounts.contains(&(volume.to_string(), path.to_string(), true)),
            "read-only mount of {volume} at {path} missing: {container:#}"
        );
    }
    assert_eq!(env_value(container, "LD_PRELOAD"), Some(LIBRARY));
    assert_eq!(
        env_value(container, "ENVPROXY_SOCKET"),
        Some("/run/envproxy/agent.sock")
    );
}

fn assert_not_injected(container: &Value) {
    let mounts = mount_paths(container);
    assert!(
        mounts
            .iter()
            .all(|(name, _, _)| !name.starts_with("envproxy-")),
        "{container:#}"
    );
    assert_eq!(env_value(container, "LD_PRELOAD"), None, "{container:#}");
    assert_eq!(
        env_value(container, "ENVPROXY_SOCKET"),
        None,
        "{container:#}"
    );
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pod_without_annotation_is_unchanged() {
    let webhook = TestWebhook::start();
    for annotations in [
        json!(null),
        json!({}),
        json!({"envproxy.dev/inject": "false"}),
    ] {
        let review = create_review(annotations.clone());
        let response = webhook.review(&review);
        assert_eq!(response["allowed"], true, "{annotations}: {response}");
        assert!(response.get("patch").is_none(), "{annotations}: {response}");
        assert!(
            response.get("warnings").is_none(),
            "{annotations}: {response}"
        );
    }
}

#[test]
fn opted_in_pod_is_injected() {
    let webhook = TestWebhook::start();
    let review = create_review(opted_in());
    let response = webhook.review(&review);
    assert!(response.get("warnings").is_none(), "{response}");
    let pod = patched_pod(&review, &response);
    validate_with_schema(&pod);

    let app = container(&pod, "containers", "app");
    assert_injected(app);
    assert_eq!(
        env_value(app, "DB_PASSWORD"),
        Some("vault:secret/data/shop/checkout#db_password")
    );
    assert_eq!(env_value(app, "ENVPROXY_CACHE_TTL"), None);
    assert_eq!(env_value(app, "ENVPROXY_NO_PYTHON"), None);
    // The service account token mount the API server added stays in place.
    assert!(mount_paths(app).contains(&(
        "kube-api-access-9xk2p".to_string(),
        "/var/run/secrets/kubernetes.io/serviceaccount".to_string(),
        true
    )));
    assert_eq!(
        pod["metadata"]["annotations"]["envproxy.dev/injected"],
        "true"
    );

    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|volume| volume["name"] == name)
            .unwrap_or_else(|| panic!("volume {name} missing: {volumes:#?}"))
            .clone()
    };
    assert_eq!(
        volume("envproxy-socket")["hostPath"],
        json!({"path": "/run/envproxy", "type": "Directory"})
    );
    assert_eq!(
        volume("envproxy-lib")["hostPath"],
        json!({"path": "/opt/envproxy", "type": "Directory"})
    );
    assert_eq!(
        volume("envproxy-token")["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "vault", "expirationSeconds": 3600, "path": "token"})
    );
    assert_eq!(volumes.len(), 4);
}

#[test]
fn hook_annotations_set_library_env() {
    let webhook = TestWebhook::start();
    let review = create_review(json!({
        "envproxy.dev/inject": "true",
        "envproxy.dev/no-python": "true",
        "envproxy.dev/no-java": "false",
    }));
    let pod = patched_pod(&review, &webhook.review(&review));

    let app = container(&pod, "containers", "app");
    assert_eq!(env_value(app, "ENVPROXY_NO_PYTHON"), Some("1"));
    assert_eq!(env_value(app, "ENVPROXY_NO_JAVA"), None);
    assert_eq!(env_value(app, "ENVPROXY_CACHE_TTL"), None);
}

#[test]
fn second_admission_changes_nothing() {
    let webhook = TestWebhook::start();
    let review = create_review(json!({
        "envproxy.dev/inject": "true",
        "envproxy.dev/cache-ttl": "10",
        "envproxy.dev/no-java": "true",
    }));
    let pod = patched_pod(&review, &webhook.review(&review));

    let mut again = review.clone();
    again["request"]["object"] = pod.clone();
    let response = webhook.review(&again);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");

    let app = container(&pod, "containers", "app");
    assert_eq!(env_value(app, "ENVPROXY_CACHE_TTL"), Some("10"));
    assert_eq!(env_value(app, "ENVPROXY_NO_JAVA"), Some("1"));
    let names: Vec<&str> = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "DB_PASSWORD",
            "LOG_LEVEL",
            "LD_PRELOAD",
            "ENVPROXY_SOCKET",
            "ENVPROXY_CACHE_TTL",
            "ENVPROXY_NO_JAVA"
        ]
    );
}

#[test]
fn existing_ld_preload_is_extended() {
    let webhook = TestWebhook::start();
    let mut review = create_review(opted_in());
    let env = &mut review["request"]["object"]["spec"]["containers"][0]["env"];
    env.as_array_mut().unwrap().push(json!({
        "name": "LD_PRELOAD",
        "value": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    }));
    let pod = patched_pod(&review, &webhook.review(&review));
    validate_with_schema(&pod);
    let app = container(&pod, "containers", "app");
    assert_eq!(
        env_value(app, "LD_PRELOAD"),
        Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2:/opt/envproxy/lib/libenvproxy.so")
    );
    let count = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["name"] == "LD_PRELOAD")
        .count();
    assert_eq!(count, 1);
}

#[test]
fn ld_preload_naming_musl_build_is_kept() {
    let webhook = TestWebhook::start();
    let mut review = create_review(opted_in());
    let env = &mut review["request"]["object"]["spec"]["containers"][0]["env"];
    env.as_array_mut().unwrap().push(json!({
        "name": "LD_PRELOAD",
        "value": "/opt/envproxy/lib/musl/libenvproxy.so",
    }));
    let pod = patched_pod(&review, &webhook.review(&review));
    let app = container(&pod, "containers", "app");
    assert_eq!(
        env_value(app, "LD_PRELOAD"),
        Some("/opt/envproxy/lib/musl/libenvproxy.so")
    );
    assert_eq!(
        env_value(app, "ENVPROXY_SOCKET"),
        Some("/run/envproxy/agent.sock")
    );
}

#[test]
fn ld_preload_from_value_from_is_warned() {
    let webhook = TestWebhook::start();
    let mut review = create_review(opted_in());
    let env = &mut review["request"]["object"]["spec"]["containers"][0]["env"];
    env.as_array_mut().unwrap().push(json!({
        "name": "LD_PRELOAD",
        "valueFrom": {"configMapKeyRef": {"name": "preload", "key": "libraries"}},
    }));
    let response = webhook.review(&review);
    let pod = patched_pod(&review, &response);
    validate_with_schema(&pod);
    let warnings = warnings(&response);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("sets LD_PRELOAD with valueFrom"),
        "{warnings:?}"
    );
    let app = container(&pod, "containers", "app");
    let entry = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == "LD_PRELOAD")
        .unwrap();
    assert!(entry.get("value").is_none(), "{entry}");
}

/// Builds the review of a pod with the containers app, worker and log-shipper and the init
/// containers wait-for-db and migrate, with `envproxy.dev/containers: <selection>`.
fn multi_container_review(selection: &str) -> Value {
    let mut review = create_review(json!({
        "envproxy.dev/inject": "true",
        "envproxy.dev/containers": selection,
    }));
    let spec = &mut review["request"]["object"]["spec"];
    let app = spec["containers"][0].clone();
    let mut worker = app.clone();
    worker["name"] = json!("worker");
    let mut sidecar = app.clone();
    sidecar["name"] = json!("log-shipper");
    sidecar["env"] = json!([{"name": "TARGET", "value": "loki:3100"}]);
    spec["containers"] = json!([app, worker, sidecar]);
    let mut migrate = spec["containers"][0].clone();
    migrate["name"] = json!("migrate");
    let mut wait = spec["containers"][2].clone();
    wait["name"] = json!("wait-for-db");
    spec["initContainers"] = json!([wait, migrate]);
    review
}

#[test]
fn selection_picks_containers() {
    let webhook = TestWebhook::start();
    let review = multi_container_review("app,migrate");
    let response = webhook.review(&review);
    assert!(response.get("warnings").is_none(), "{response}");
    let pod = patched_pod(&review, &response);
    validate_with_schema(&pod);

    assert_injected(container(&pod, "containers", "app"));
    assert_injected(container(&pod, "initContainers", "migrate"));
    assert_not_injected(container(&pod, "containers", "worker"));
    assert_not_injected(container(&pod, "containers", "log-shipper"));
    assert_not_injected(container(&pod, "initContainers", "wait-for-db"));
}

#[test]
fn all_containers_without_selection() {
    let webhook = TestWebhook::start();
    let mut review = multi_container_review("app");
    review["request"]["object"]["metadata"]["annotations"] = opted_in();
    let pod = patched_pod(&review, &webhook.review(&review));
    validate_with_schema(&pod);
    for (list, name) in [
        ("containers", "app"),
        ("containers", "worker"),
        ("containers", "log-shipper"),
        ("initContainers", "wait-for-db"),
        ("initContainers", "migrate"),
    ] {
        assert_injected(container(&pod, list, name));
    }
}

#[test]
fn selection_of_missing_container_is_warned() {
    let webhook = TestWebhook::start();
    let review = multi_container_review("app,api");
    let response = webhook.review(&review);
    let warnings = warnings(&response);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("\"api\""), "{warnings:?}");
    assert!(
        warnings[0].contains("envproxy.dev/containers"),
        "{warnings:?}"
    );
    patched_pod(&review, &response);
}

/// Builds the AdmissionReview that `kubectl debug` causes: an update of the `ephemeralcontainers`
/// subresource of the running `pod`, which gains an ephemeral container `name`.
fn ephemeral_review(pod: &Value, name: &str) -> Value {
    let mut old = pod.clone();
    old["metadata"]["name"] = json!("checkout-7c9f8d6b5-x7k2q");
    old["metadata"]["uid"] = json!("b1f0e0a2-6c3d-4f5e-8a7b-9c0d1e2f3a4b");
    let mut new = old.clone();
    let debug = json!({
        "name": name,
        "image": "busybox:1.36",
        "command": ["sh"],
        "stdin": true,
        "tty": true,
        "targetContainerName": "app",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    });
    let list = new["spec"]["ephemeralContainers"].as_array().cloned();
    let mut list = list.unwrap_or_default();
    list.push(debug);
    new["spec"]["ephemeralContainers"] = json!(list);
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "0f3c9e51-7d2a-4b8e-a6c1-5e4f3d2c1b0a",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "ephemeralcontainers",
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "requestSubResource": "ephemeralcontainers",
            "name": "checkout-7c9f8d6b5-x7k2q",
            "namespace": "shop",
            "operation": "UPDATE",
            "userInfo": {"username": "alice@example.com", "groups": ["system:authenticated"]},
            "object": new,
            "oldObject": old,
            "dryRun": false,
            "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

#[test]
fn ephemeral_containers_follow_selection() {
    let webhook = TestWebhook::start();
    let review = create_review(json!({
        "envproxy.dev/inject": "true",
        "envproxy.dev/containers": "app,debugger",
    }));
    let created = patched_pod(&review, &webhook.review(&review));

    let selected = ephemeral_review(&created, "debugger");
    let response = webhook.review(&selected);
    assert!(response.get("warnings").is_none(), "{response}");
    let pod = patched_pod(&selected, &response);
    validate_with_schema(&pod);
    assert_injected(container(&pod, "ephemeralContainers", "debugger"));
    // Only the ephemeral container changed: the pod's volumes and other containers did not.
    assert_eq!(pod["spec"]["volumes"], created["spec"]["volumes"]);
    assert_eq!(pod["spec"]["containers"], created["spec"]["containers"]);

    let unselected = ephemeral_review(&created, "shell");
    let response = webhook.review(&unselected);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
}

#[test]
fn ephemeral_container_of_uninjected_pod_is_warned() {
    let webhook = TestWebhook::start();
    let review = create_review(opted_in());
    // The pod was created before its namespace was labelled, so it has none of the volumes.
    let review = ephemeral_review(pod_of(&review), "debugger");
    let response = webhook.review(&review);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
    let warnings = warnings(&response);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("recreate the pod"), "{warnings:?}");
}

#[test]
fn each_bad_annotation_is_rejected() {
    let webhook = TestWebhook::start();
    let cases = [
        ("envproxy.dev/inject", "yes"),
        ("envproxy.dev/vault-role", "team/reader"),
        ("envproxy.dev/vault-auth-mount", "auth/kubernetes"),
        ("envproxy.dev/vault-addr", "https://vault.attacker.example"),
        ("envproxy.dev/vault-cache-ttl", "5 minutes"),
        ("envproxy.dev/cache-ttl", "30s"),
        ("envproxy.dev/containers", "App"),
        ("envproxy.dev/no-python", "TRUE"),
        ("envproxy.dev/no-java", "1"),
        ("envproxy.dev/allow-unlisted-refs", "on"),
    ];
    for (annotation, value) in cases {
        let mut annotations = json!({"envproxy.dev/inject": "true"});
        annotations[annotation] = json!(value);
        let response = webhook.review(&create_review(annotations));
        assert_eq!(response["allowed"], false, "{annotation}: {response}");
        assert!(response.get("patch").is_none(), "{annotation}: {response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("for annotation {annotation}:")),
            "{annotation}: {message}"
        );
        assert!(message.contains(&format!("{value:?}")), "{message}");
        assert!(
            message.starts_with("the pod has an invalid EnvProxy annotation"),
            "{message}"
        );
    }
}

#[test]
fn all_bad_annotations_are_named() {
    let webhook = TestWebhook::start();
    let response = webhook.review(&create_review(json!({
        "envproxy.dev/inject": "True",
        "envproxy.dev/cache-ttl": "-1",
        "envproxy.dev/no-java": "yes",
        "envproxy.dev/vault-role": "checkout",
    })));
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the pod has 3 invalid EnvProxy annotations"),
        "{message}"
    );
    for annotation in [
        "envproxy.dev/inject",
        "envproxy.dev/cache-ttl",
        "envproxy.dev/no-java",
    ] {
        assert!(
            message.contains(&format!("for annotation {annotation}:")),
            "{message}"
        );
    }
    assert!(!message.contains("vault-role"), "{message}");
}

#[test]
fn pod_without_references_is_warned() {
    let webhook = TestWebhook::start();
    let mut review = create_review(json!({
        "envproxy.dev/inject": "true",
        "envproxy.dev/typo-annotation": "x",
    }));
    review["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "LOG_LEVEL", "value": "info"}]);
    let response = webhook.review(&review);
    let warnings = warnings(&response);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("envproxy.dev/typo-annotation"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains(
            "no selected container has an env value starting with vault: or \
         envproxy:"
        ),
        "{warnings:?}"
    );
    let pod = patched_pod(&review, &response);
    assert_injected(container(&pod, "containers", "app"));
}

#[test]
fn conflicting_mount_is_rejected() {
    let webhook = TestWebhook::start();
    let mut review = create_review(opted_in());
    let app = &mut review["request"]["object"]["spec"]["containers"][0];
    app["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cache", "mountPath": "/opt/envproxy"}));
    let response = webhook.review(&review);
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("container \"app\" already mounts volume \"cache\" at /opt/envproxy"),
        "{message}"
    );
}

#[test]
fn overlapping_mounts_are_rejected() {
    let webhook = TestWebhook::start();
    // Each path equals, contains or lies inside a directory EnvProxy mounts, written differently.
    let cases = [
        ("/opt/envproxy/", "at /opt/envproxy/, where"),
        ("/run//envproxy", "at /run//envproxy, where"),
        ("/opt/envproxy/lib", "at /opt/envproxy/lib, inside /opt/envproxy, where"),
        ("/run", "at /run, around /run/envproxy, where"),
        (
            "/var/run/secrets/envproxy.dev/",
            "at /var/run/secrets/envproxy.dev/, around /var/run/secrets/envproxy.dev/serviceaccount",
        ),
    ];
    for (mount_path, expected) in cases {
        let mut review = create_review(opted_in());
        let app = &mut review["request"]["object"]["spec"]["containers"][0];
        app["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "cache", "mountPath": mount_path}));
        let response = webhook.review(&review);
        assert_eq!(response["allowed"], false, "{mount_path}: {response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains("volume \"cache\""), "{message}");
        assert!(message.contains(expected), "{mount_path}: {message}");
    }

    // A sibling whose name starts like a mounted directory does not overlap.
    let mut review = create_review(opted_in());
    let app = &mut review["request"]["object"]["spec"]["containers"][0];
    app["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cache", "mountPath": "/opt/envproxy-cache"}));
    let response = webhook.review(&review);
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn pod_volume_with_envproxy_name_is_rejected() {
    let webhook = TestWebhook::start();
    for name in ["envproxy-socket", "envproxy-lib", "envproxy-token"] {
        let mut review = create_review(opted_in());
        let spec = &mut review["request"]["object"]["spec"];
        spec["volumes"] = json!([{"name": name, "emptyDir": {}}]);
        let response = webhook.review(&review);
        assert_eq!(response["allowed"], false, "{name}: {response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("volume named \"{name}\"")),
            "{message}"
        );
        assert!(message.contains("rename that volume"), "{message}");
    }

    // A hostPath of the same name at another directory is not EnvProxy's either.
    let mut review = create_review(opted_in());
    review["request"]["object"]["spec"]["volumes"] =
        json!([{"name": "envproxy-lib", "hostPath": {"path": "/srv/other"}}]);
    let response = webhook.review(&review);
    assert_eq!(response["allowed"], false, "{response}");
}

#[test]
fn defaulted_envproxy_volumes_are_accepted() {
    let webhook = TestWebhook::start();
    let review = create_review(opted_in());
    let response = webhook.review(&review);
    let mut pod = patched_pod(&review, &response);
    // The API server fills in defaults before a reinvocation, and paths may end in a slash.
    for volume in pod["spec"]["volumes"].as_array_mut().unwrap() {
        if let Some(projected) = volume.get_mut("projected") {
            projected["defaultMode"] = json!(420);
        }
        if let Some(path) = volume.pointer_mut("/hostPath/path") {
            *path = json!(format!("{}/", path.as_str().unwrap()));
        }
    }
    let mut second = create_review(opted_in());
    second["request"]["object"] = pod;
    let response = webhook.review(&second);
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn pod_security_namespaces_reject_opted_in_pods() {
    let webhook = TestWebhook::start();
    for level in ["baseline", "restricted"] {
        let path = format!("/pod-security/{level}");
        let response = webhook.review_at(&path, &create_review(opted_in()));
        assert_eq!(response["allowed"], false, "{response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "namespace \"shop\" enforces Pod Security level \"{level}\""
            )),
            "{message}"
        );
        assert!(message.contains("hostPath"), "{message}");

        let response = webhook.review_at(&path, &create_review(json!({})));
        assert_eq!(response["allowed"], true, "{response}");
        assert!(response.get("patch").is_none(), "{response}");
    }
    let (status, _) = webhook.post("/pod-security/privileged", b"{}");
    assert_eq!(status, 404);
}

#[test]
fn configured_paths_are_used() {
    let webhook = TestWebhook::start_with(|settings| {
        settings.socket = "/var/run/ep/agent.sock".into();
        settings.library_dir = "/usr/local/envproxy".into();
        settings.token_path = "/run/secrets/vault-jwt/jwt".into();
        settings.token_audience = "https://vault.example".into();
        settings.token_expiration = Duration::from_secs(900);
    });
    let review = create_review(opted_in());
    let pod = patched_pod(&review, &webhook.review(&review));
    validate_with_schema(&pod);
    let app = container(&pod, "containers", "app");
    assert_eq!(
        env_value(app, "LD_PRELOAD"),
        Some("/usr/local/envproxy/lib/libenvproxy.so")
    );
    assert_eq!(
        env_value(app, "ENVPROXY_SOCKET"),
        Some("/var/run/ep/agent.sock")
    );
    let mounts = mount_paths(app);
    assert!(mounts.contains(&("envproxy-socket".into(), "/var/run/ep".into(), true)));
    assert!(mounts.contains(&("envproxy-lib".into(), "/usr/local/envproxy".into(), true)));
    assert!(mounts.contains(&(
        "envproxy-token".into(),
        "/run/secrets/vault-jwt".into(),
        true
    )));
    let token = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "envproxy-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "https://vault.example", "expirationSeconds": 900, "path": "jwt"})
    );
}

#[test]
fn invalid_requests_get_http_errors() {
    let webhook = TestWebhook::start();
    let (status, body) = webhook.post("/mutate", b"not json");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("AdmissionReview"));
    let (status, _) = webhook.post(
        "/mutate",
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
    );
    assert_eq!(status, 400);
    let (status, _) = webhook.post("/validate", b"{}");
    assert_eq!(status, 404);
    let oversized = vec![b' '; 9 * 1024 * 1024];
    let (status, _) = webhook.post("/mutate", &oversized);
    assert_eq!(status, 413);

    let url = format!("https://localhost:{}/healthz", webhook.address.port());
    let client = webhook.client();
    let (status, body) = webhook.runtime.block_on(async {
        let response = client.get(url).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn other_requests_are_admitted_unchanged() {
    let webhook = TestWebhook::start();
    let mut update = create_review(opted_in());
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let response = webhook.review(&update);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
}

#[test]
fn certificate_is_reloaded_when_files_change() {
    let webhook = TestWebhook::start();
    let serial = |webhook: &TestWebhook| -> Vec<u8> {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                roots.add(webhook.certificates.ca.der().clone()).unwrap();
                roots
            })
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        webhook.runtime.block_on(async {
            let stream = tokio::net::TcpStream::connect(webhook.address)
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, stream).await.unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        })
    };
    let first = serial(&webhook);
    assert_eq!(serial(&webhook), first);

    webhook.certificates.issue_server_certificate();
    let second = serial(&webhook);
    assert_ne!(second, first, "the new certificate was not served");

    // A key that does not match the certificate keeps the last good pair in service.
    fs::write(
        &webhook.certificates.key_path,
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    assert_eq!(serial(&webhook), second);
    let response = webhook.review(&create_review(json!({})));
    assert_eq!(response["allowed"], true);
}

/// Connection limit of the flood tests, small so the tests open few sockets.
const FLOOD_LIMIT: usize = 32;

/// Opens `count` TCP connections to the webhook that send nothing, and waits until the webhook
/// has had time to accept them.
fn open_idle_connections(webhook: &TestWebhook, count: usize) -> Vec<std::net::TcpStream> {
    let connections: Vec<_> = (0..count)
        .map(|_| std::net::TcpStream::connect(webhook.address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    connections
}

/// Returns whether the webhook has closed `connection`, waiting at most `wait` for the close.
fn is_closed_by_peer(connection: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    connection.set_read_timeout(Some(wait)).unwrap();
    let mut buffer = [0u8; 1];
    match connection.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn admission_succeeds_under_idle_flood() {
    let webhook = TestWebhook::start_with(|settings| settings.max_connections = FLOOD_LIMIT);
    let mut flood = open_idle_connections(&webhook, FLOOD_LIMIT);

    // The clients stay open, so each admission needs a new place in the full table.
    let mut clients = Vec::new();
    let body = serde_json::to_vec(&create_review(opted_in())).unwrap();
    for attempt in 0..3 {
        let client = webhook.client();
        let started = std::time::Instant::now();
        let (status, response) = webhook.post_with(&client, "/mutate", &body);
        let elapsed = started.elapsed();
        assert_eq!(
            status,
            200,
            "attempt {attempt}: {}",
            String::from_utf8_lossy(&response)
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "attempt {attempt}: the admission took {elapsed:?} with {FLOOD_LIMIT} idle \
             connections open"
        );
        clients.push(client);
    }

    // Each admission's connection closed the oldest idle connection to make room.
    for (index, connection) in flood.iter_mut().take(3).enumerate() {
        assert!(
            is_closed_by_peer(connection, Duration::from_secs(2)),
            "idle connection {index} is still open"
        );
    }
    assert!(
        !is_closed_by_peer(&mut flood[FLOOD_LIMIT - 1], Duration::from_millis(200)),
        "the newest idle connection was closed although older ones were open"
    );
}

#[test]
fn keep_alive_connection_survives_idle_flood() {
    let webhook = TestWebhook::start_with(|settings| settings.max_connections = FLOOD_LIMIT);
    // One client, so its second request reuses the pooled connection as the API server does.
    let client = webhook.client();
    let body = serde_json::to_vec(&create_review(opted_in())).unwrap();
    let (status, _) = webhook.post_with(&client, "/mutate", &body);
    assert_eq!(status, 200);

    let mut flood = open_idle_connections(&webhook, FLOOD_LIMIT);
    let started = std::time::Instant::now();
    let (status, _) = webhook.post_with(&client, "/mutate", &body);
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    // The flood's first connection made no request, so it was closed before the keep-alive one.
    assert!(
        is_closed_by_peer(&mut flood[0], Duration::from_secs(2)),
        "the oldest idle connection that never sent a request is still open"
    );
    assert!(
        !is_closed_by_peer(&mut flood[1], Duration::from_millis(200)),
        "a second idle connection was closed although one place was enough"
    );
}
