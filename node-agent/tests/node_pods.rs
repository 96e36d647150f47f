//! The node's pod watch against the in-repo Kubernetes API test server: initial list, changes,
//! container IDs, bounded waits for late pods, relists after compaction, outages, and the
//! node filter, and the log lines of failed requests.

mod vault_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use envproxy_agent::node::pods::{DeletedPod, PodWatch};
use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vault_support::LogCapture;

const NODE: &str = "node-a";
const AGENT_TOKEN: &str = "agent-token";

/// Maximum wait for the watch to catch up. The watcher's backoff after an
/// outage starts at 800 ms and doubles, so a few retries fit.
const CONVERGE: Duration = Duration::from_secs(20);

async fn start_server() -> KubeTestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = KubeTestServer::start(ServerOptions::default())
        .await
        .unwrap();
    server.register_token(
        AGENT_TOKEN,
        "system:serviceaccount:envproxy:agent",
        vec![Rule::new(&["list", "watch"], &["pods"])],
    );
    server
}

async fn client(server: &KubeTestServer, token: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig(token)).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn start_watch(server: &KubeTestServer) -> PodWatch {
    let watch = PodWatch::start(client(server, AGENT_TOKEN).await, NODE, &server.url());
    assert!(watch.wait_synced(CONVERGE).await, "pod watch synced");
    watch
}

fn pod(namespace: &str, name: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            service_account_name: Some("app".to_owned()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn container_status(name: &str, id: &str) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        container_id: Some(id.to_owned()),
        ..ContainerStatus::default()
    }
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap()
}

/// Polls `condition` every 20 ms until it is true or `CONVERGE` has passed.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + CONVERGE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_deletion(receiver: &mut tokio::sync::broadcast::Receiver<DeletedPod>) -> DeletedPod {
    tokio::time::timeout(CONVERGE, receiver.recv())
        .await
        .expect("a deletion within the bound")
        .expect("the deletion channel is open")
}

#[tokio::test]
async fn initial_list_holds_node_pods() {
    let server = start_server().await;
    let web = server.apply_pod(pod("prod", "web-0", NODE)).unwrap();
    server.apply_pod(pod("prod", "web-1", "node-b")).unwrap();

    let watch = start_watch(&server).await;
    assert!(watch.is_synced());
    let pods = watch.pods();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].name(), "web-0");
    let entry = watch
        .pod_by_uid(&uid_of(&web), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(entry.namespace(), "prod");
    assert_eq!(entry.service_account(), "app");
    assert_eq!(server.request_count("list", "pods"), 1);
}

#[tokio::test]
async fn watch_sees_add_modify_delete() {
    let server = start_server().await;
    let watch = start_watch(&server).await;
    let mut deletions = watch.deletions();

    let added = server.apply_pod(pod("prod", "web-0", NODE)).unwrap();
    let uid = uid_of(&added);
    let entry = watch
        .pod_by_uid(&uid, CONVERGE)
        .await
        .expect("added pod seen");
    assert_eq!(entry.name(), "web-0");

    server
        .modify_pod("prod", "web-0", |pod| {
            pod.metadata.labels = Some(BTreeMap::from([("v".to_owned(), "2".to_owned())]));
        })
        .unwrap();
    eventually("the label change is seen", || {
        watch.pods().iter().any(|entry| {
            let labels = entry.pod.metadata.labels.as_ref();
            labels.and_then(|l| l.get("v")).map(String::as_str) == Some("2")
        })
    })
    .await;

    server.delete_pod("prod", "web-0").unwrap();
    let deleted = next_deletion(&mut deletions).await;
    assert_eq!(
        deleted,
        DeletedPod {
            uid: uid.clone(),
            namespace: "prod".to_owned(),
            name: "web-0".to_owned(),
            service_account: "app".to_owned(),
        }
    );
    assert!(watch.pod_by_uid(&uid, Duration::ZERO).await.is_none());
}

#[tokio::test]
async fn container_ids_map_from_all_status_lists() {
    let server = start_server().await;
    let mut with_statuses = pod("prod", "web-0", NODE);
    with_statuses.status = Some(PodStatus {
        container_statuses: Some(vec![container_status("app", "containerd://aaa111")]),
        init_container_statuses: Some(vec![container_status("setup", "cri-o://bbb222")]),
        ephemeral_container_statuses: Some(vec![container_status("debugger", "docker://ccc333")]),
        ..PodStatus::default()
    });
    let uid = uid_of(&server.apply_pod(with_statuses).unwrap());
    let watch = start_watch(&server).await;

    let cases = [
        ("aaa111", "app"),
        ("containerd://aaa111", "app"),
        ("bbb222", "setup"),
        ("ccc333", "debugger"),
    ];
    for (id, expected) in cases {
        let (entry, name) = watch.container(&uid, id, Duration::ZERO).await.unwrap();
        assert_eq!(name, expected, "container ID {id}");
        assert_eq!(entry.uid(), uid);
    }
    assert!(watch
        .container(&uid, "ddd444", Duration::ZERO)
        .await
        .is_none());
}

#[tokio::test]
async fn late_pod_found_within_bound() {
    let server = start_server().await;
    let watch = start_watch(&server).await;
    let uid = "0b1c2d3e-0000-4000-8000-000000000001";

    let waiter = {
        let watch = watch.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let entry = watch.pod_by_uid(uid, Duration::from_secs(5)).await;
            (entry, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = pod("prod", "late-0", NODE);
    late.metadata.uid = Some(uid.to_owned());
    server.apply_pod(late).unwrap();

    let (entry, elapsed) = waiter.await.unwrap();
    assert_eq!(entry.expect("late pod found").name(), "late-0");
    assert!(
        elapsed >= Duration::from_millis(300),
        "returned after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "returned after {elapsed:?}"
    );
}

#[tokio::test]
async fn missing_pod_waits_about_the_bound() {
    let server = start_server().await;
    let watch = start_watch(&server).await;
    let bound = Duration::from_millis(500);

    let started = Instant::now();
    let entry = watch.pod_by_uid("no-such-uid", bound).await;
    let elapsed = started.elapsed();
    assert!(entry.is_none());
    assert!(elapsed >= bound, "returned after {elapsed:?}");
    assert!(
        elapsed < bound + Duration::from_millis(300),
        "returned after {elapsed:?}"
    );
}

#[tokio::test]
async fn late_container_id_found_within_bound() {
    let server = start_server().await;
    let uid = uid_of(&server.apply_pod(pod("prod", "web-0", NODE)).unwrap());
    let watch = start_watch(&server).await;

    let waiter = {
        let watch = watch.clone();
        let uid = uid.clone();
        tokio::spawn(async move {
            watch
                .container(&uid, "abc123", Duration::from_secs(5))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .modify_pod("prod", "web-0", |pod| {
            pod.status = Some(PodStatus {
                container_statuses: Some(vec![container_status("app", "containerd://abc123")]),
                ..PodStatus::default()
            });
        })
        .unwrap();

    let (_, name) = waiter
        .await
        .unwrap()
        .expect("container found after its status");
    assert_eq!(name, "app");
}

#[tokio::test]
async fn compacted_history_forces_relist() {
    let server = start_server().await;
    let kept = server.apply_pod(pod("prod", "kept", NODE)).unwrap();
    let gone = server.apply_pod(pod("prod", "gone", NODE)).unwrap();
    let watch = start_watch(&server).await;
    let mut deletions = watch.deletions();
    assert_eq!(server.request_count("list", "pods"), 1);

    // While the server is unavailable the watch misses these changes, and compaction drops
    // them from the history, so resuming the watch gets 410 Expired.
    server.set_unavailable(true);
    let added = server.apply_pod(pod("prod", "added", NODE)).unwrap();
    server.delete_pod("prod", "gone").unwrap();
    server.compact();
    server.set_unavailable(false);

    let added_entry = watch.pod_by_uid(&uid_of(&added), CONVERGE).await;
    assert!(added_entry.is_some(), "pod added during the outage is seen");
    let deleted = next_deletion(&mut deletions).await;
    assert_eq!(deleted.uid, uid_of(&gone));
    assert_eq!(deleted.name, "gone");
    assert!(watch
        .pod_by_uid(&uid_of(&kept), Duration::ZERO)
        .await
        .is_some());
    assert!(watch
        .pod_by_uid(&uid_of(&gone), Duration::ZERO)
        .await
        .is_none());
    assert!(
        server.request_count("list", "pods") >= 2,
        "the watcher relisted"
    );
}

#[tokio::test]
async fn other_nodes_pods_never_seen() {
    let server = start_server().await;
    server
        .apply_pod(pod("prod", "elsewhere-0", "node-b"))
        .unwrap();
    let watch = start_watch(&server).await;

    server
        .apply_pod(pod("prod", "elsewhere-1", "node-b"))
        .unwrap();
    server
        .modify_pod("prod", "elsewhere-0", |pod| {
            pod.metadata.labels = Some(BTreeMap::from([("x".to_owned(), "y".to_owned())]));
        })
        .unwrap();
    let marker = server.apply_pod(pod("prod", "marker", NODE)).unwrap();
    // Events arrive in resource-version order, so once the marker is seen the others were
    // delivered or filtered.
    assert!(watch.pod_by_uid(&uid_of(&marker), CONVERGE).await.is_some());

    let names: Vec<String> = watch.pods().iter().map(|e| e.name().to_owned()).collect();
    assert_eq!(names, ["marker"]);
    for request in server.requests() {
        assert!(
            request
                .query
                .contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "request without the node selector: {request:?}"
        );
    }
}

#[tokio::test]
async fn server_down_then_up_recovers() {
    let server = start_server().await;
    let before = server.apply_pod(pod("prod", "before", NODE)).unwrap();
    let watch = start_watch(&server).await;
    let mut deletions = watch.deletions();

    server.stop_listening().await;
    let during = server.apply_pod(pod("prod", "during", NODE)).unwrap();
    server.delete_pod("prod", "before").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.start_listening().await.unwrap();

    assert!(watch.pod_by_uid(&uid_of(&during), CONVERGE).await.is_some());
    assert_eq!(next_deletion(&mut deletions).await.uid, uid_of(&before));
    // A failed watch is not resumed: the watch lists again, which also confirms the API server
    // is back, and the new list reports the deletion.
    assert_eq!(server.request_count("list", "pods"), 2);
}

#[tokio::test]
async fn unsynced_until_server_available() {
    let server = start_server().await;
    server.set_unavailable(true);
    let watch = PodWatch::start(client(&server, AGENT_TOKEN).await, NODE, &server.url());
    assert!(!watch.wait_synced(Duration::from_millis(300)).await);
    assert!(!watch.is_synced());

    server.set_unavailable(false);
    assert!(watch.wait_synced(CONVERGE).await);
}

#[tokio::test]
async fn forbidden_token_never_syncs() {
    let server = start_server().await;
    server.register_token("no-pods", "nobody", vec![Rule::new(&["get"], &["secrets"])]);
    let watch = PodWatch::start(client(&server, "no-pods").await, NODE, &server.url());
    assert!(!watch.wait_synced(Duration::from_millis(500)).await);
    let denied = server.requests().iter().filter(|r| r.status == 403).count();
    assert!(denied >= 1, "the list was rejected with 403");
}

/// Starts a watch with `token` against `url` and waits until the captured log contains
/// `expected`. Returns the log.
async fn watch_log_until(
    server: &KubeTestServer,
    token: &str,
    url: &str,
    expected: &str,
) -> String {
    let (capture, _guard) = LogCapture::install();
    let yaml = server.kubeconfig(token).replace(&server.url(), url);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    let watch = PodWatch::start(kube::Client::try_from(config).unwrap(), NODE, url);
    let deadline = Instant::now() + CONVERGE;
    while !capture.text().contains(expected) {
        assert!(
            Instant::now() < deadline,
            "no log line with {expected:?}; log:\n{}",
            capture.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(watch);
    capture.text()
}

#[tokio::test(flavor = "current_thread")]
async fn watch_log_explains_unauthorized() {
    let server = start_server().await;
    let log = watch_log_until(&server, "unknown-token", &server.url(), "HTTP 401").await;
    let line = log.lines().find(|line| line.contains("HTTP 401")).unwrap();
    assert!(line.contains("the first list of pods failed"), "{line}");
    assert!(line.contains(&server.url()), "{line}");
    assert!(line.contains("credentials of the kubeconfig"), "{line}");
    assert!(!line.contains("Status {"), "{line}");
}

#[tokio::test(flavor = "current_thread")]
async fn watch_log_explains_forbidden() {
    let server = start_server().await;
    server.register_token("no-pods", "nobody", vec![Rule::new(&["get"], &["secrets"])]);
    let log = watch_log_until(&server, "no-pods", &server.url(), "HTTP 403").await;
    let line = log.lines().find(|line| line.contains("HTTP 403")).unwrap();
    assert!(line.contains(&server.url()), "{line}");
    assert!(line.contains("list and watch pods"), "{line}");
    assert!(!line.contains("Status {"), "{line}");
}

#[tokio::test(flavor = "current_thread")]
async fn watch_log_explains_refused_connection() {
    let server = start_server().await;
    // A port that was bound and released has no listener, so connecting is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let scheme = server.url().split("://").next().unwrap().to_string();
    let url = format!("{scheme}://127.0.0.1:{port}");
    let log = watch_log_until(&server, AGENT_TOKEN, &url, "connection refused").await;
    let line = log
        .lines()
        .find(|line| line.contains("connection refused"))
        .unwrap();
    assert!(line.contains(&url), "{line}");
    assert!(line.contains("the address is wrong"), "{line}");
    assert!(!line.contains("ServiceError"), "{line}");
}
