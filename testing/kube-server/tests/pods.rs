//! Pod list, get and watch over plain HTTP, checked against the API server's shapes.

mod common;

use std::time::Duration;

use common::{pod, start, start_with, Api, WatchReader};
use envproxy_kube_test_server::{Rule, ServerOptions};

const NODE_A_PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a";

#[tokio::test]
async fn list_filters_by_node_and_namespace() {
    let server = start().await;
    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    server.apply_pod(pod("prod", "web-1", "node-b")).unwrap();
    server.apply_pod(pod("dev", "web-2", "node-a")).unwrap();
    let api = Api::new(&server, Some(server.admin_token()));

    let reply = api.get(NODE_A_PODS).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["kind"], "PodList");
    assert_eq!(reply.body["apiVersion"], "v1");
    let version = server.resource_version().to_string();
    assert_eq!(reply.body["metadata"]["resourceVersion"], version.as_str());
    let names: Vec<&str> = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-2", "web-0"]);

    let namespaced = api
        .get("/api/v1/namespaces/prod/pods?fieldSelector=spec.nodeName%3Dnode-a")
        .await;
    assert_eq!(namespaced.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(namespaced.body["items"][0]["metadata"]["name"], "web-0");
}

#[tokio::test]
async fn list_rejects_unsupported_field() {
    let server = start().await;
    let api = Api::new(&server, Some(server.admin_token()));
    let reply = api
        .get("/api/v1/pods?fieldSelector=spec.containers%3Dx")
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["kind"], "Status");
    assert_eq!(reply.body["reason"], "BadRequest");
    assert_eq!(
        reply.body["message"],
        "field label not supported: spec.containers"
    );
}

#[tokio::test]
async fn list_filters_by_label() {
    let server = start().await;
    let mut labelled = pod("prod", "web-0", "node-a");
    labelled.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    server.apply_pod(labelled).unwrap();
    server.apply_pod(pod("prod", "db-0", "node-a")).unwrap();
    let api = Api::new(&server, Some(server.admin_token()));
    let reply = api.get("/api/v1/pods?labelSelector=app%3Dweb").await;
    let items = reply.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "web-0");
}

#[tokio::test]
async fn applied_pod_gets_server_fields() {
    let server = start().await;
    let mut bare = pod("prod", "web-0", "node-a");
    bare.spec.as_mut().unwrap().service_account_name = None;
    let stored = server.apply_pod(bare).unwrap();
    let metadata = &stored.metadata;
    assert_eq!(metadata.uid.as_ref().unwrap().len(), 36);
    assert!(metadata.creation_timestamp.is_some());
    let version = server.resource_version().to_string();
    assert_eq!(metadata.resource_version.as_deref(), Some(version.as_str()));
    let account = stored.spec.unwrap().service_account_name;
    assert_eq!(account.as_deref(), Some("default"));

    let replaced = server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    assert_eq!(replaced.metadata.uid, stored.metadata.uid);
}

#[tokio::test]
async fn get_returns_pod_or_not_found() {
    let server = start().await;
    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let api = Api::new(&server, Some(server.admin_token()));

    let found = api.get("/api/v1/namespaces/prod/pods/web-0").await;
    assert_eq!(found.status, 200);
    assert_eq!(found.body["kind"], "Pod");
    assert_eq!(found.body["spec"]["nodeName"], "node-a");

    let missing = api.get("/api/v1/namespaces/prod/pods/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["reason"], "NotFound");
    assert_eq!(missing.body["message"], "pods \"nope\" not found");
    assert_eq!(missing.body["details"]["name"], "nope");
    assert_eq!(missing.body["details"]["kind"], "pods");
}

#[tokio::test]
async fn unknown_token_is_unauthorized() {
    let server = start().await;
    for token in [None, Some("not-registered")] {
        let api = Api::new(&server, token);
        let reply = api.get("/api/v1/pods").await;
        assert_eq!(reply.status, 401, "token {token:?}");
        assert_eq!(reply.body["reason"], "Unauthorized");
    }
}

#[tokio::test]
async fn token_without_permission_is_forbidden() {
    let server = start().await;
    server.register_token(
        "agent-token",
        "system:serviceaccount:envproxy:agent",
        vec![Rule::new(&["list", "watch"], &["pods"])],
    );
    let api = Api::new(&server, Some("agent-token"));
    assert_eq!(api.get("/api/v1/pods").await.status, 200);

    let reply = api.get("/api/v1/namespaces/prod/pods/web-0").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body["reason"], "Forbidden");
    assert_eq!(
        reply.body["message"],
        "pods is forbidden: User \"system:serviceaccount:envproxy:agent\" cannot get resource \
         \"pods\" in API group \"\" in the namespace \"prod\""
    );

    assert!(server.revoke_token("agent-token"));
    assert_eq!(api.get("/api/v1/pods").await.status, 401);
}

#[tokio::test]
async fn watch_replays_history_and_streams_changes() {
    let server = start().await;
    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let from = server.resource_version();
    server.apply_pod(pod("prod", "web-1", "node-a")).unwrap();
    server.apply_pod(pod("prod", "other", "node-b")).unwrap();
    let api = Api::new(&server, Some(server.admin_token()));

    let path = format!("{NODE_A_PODS}&watch=true&resourceVersion={from}");
    let response = api.watch(&path).await;
    assert_eq!(response.status(), 200);
    let mut events = WatchReader::new(response);
    let replayed = events.next().await.unwrap();
    assert_eq!(replayed["type"], "ADDED");
    assert_eq!(replayed["object"]["metadata"]["name"], "web-1");

    server
        .modify_pod("prod", "web-0", |pod| {
            pod.metadata.labels = Some([("v".to_owned(), "2".to_owned())].into());
        })
        .unwrap();
    let modified = events.next().await.unwrap();
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["metadata"]["labels"]["v"], "2");
    let version = server.resource_version().to_string();
    assert_eq!(
        modified["object"]["metadata"]["resourceVersion"],
        version.as_str()
    );

    server.delete_pod("prod", "web-1").unwrap();
    let deleted = events.next().await.unwrap();
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(deleted["object"]["metadata"]["name"], "web-1");
    let version = server.resource_version().to_string();
    assert_eq!(
        deleted["object"]["metadata"]["resourceVersion"],
        version.as_str()
    );
}

#[tokio::test]
async fn watch_without_version_starts_with_current_pods() {
    let server = start().await;
    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let api = Api::new(&server, Some(server.admin_token()));
    let response = api.watch(&format!("{NODE_A_PODS}&watch=true")).await;
    let mut events = WatchReader::new(response);
    let first = events.next().await.unwrap();
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["metadata"]["name"], "web-0");
}

#[tokio::test]
async fn pod_moving_off_node_is_deleted_for_watcher() {
    let server = start().await;
    server.apply_pod(pod("prod", "web-0", "node-b")).unwrap();
    let from = server.resource_version();
    let api = Api::new(&server, Some(server.admin_token()));
    let path = format!("{NODE_A_PODS}&watch=true&resourceVersion={from}");
    let mut events = WatchReader::new(api.watch(&path).await);

    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    assert_eq!(events.next().await.unwrap()["type"], "ADDED");
    server.apply_pod(pod("prod", "web-0", "node-b")).unwrap();
    assert_eq!(events.next().await.unwrap()["type"], "DELETED");
}

#[tokio::test]
async fn watch_from_compacted_version_is_expired() {
    let server = start().await;
    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let old = server.resource_version();
    server.apply_pod(pod("prod", "web-1", "node-a")).unwrap();
    server.compact();
    let api = Api::new(&server, Some(server.admin_token()));

    let path = format!("{NODE_A_PODS}&watch=true&resourceVersion={old}");
    let response = api.watch(&path).await;
    assert_eq!(response.status(), 200);
    let mut events = WatchReader::new(response);
    let error = events.next().await.unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(
        events.next().await.is_none(),
        "the stream ends after the error"
    );

    let current = server.resource_version();
    let path = format!("{NODE_A_PODS}&watch=true&resourceVersion={current}");
    let mut events = WatchReader::new(api.watch(&path).await);
    server.delete_pod("prod", "web-0").unwrap();
    assert_eq!(events.next().await.unwrap()["type"], "DELETED");
}

#[tokio::test]
async fn too_large_version_times_out_with_cause() {
    let server = start().await;
    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let future = server.resource_version() + 100;
    let api = Api::new(&server, Some(server.admin_token()));

    let started = std::time::Instant::now();
    let path = format!("{NODE_A_PODS}&watch=true&resourceVersion={future}");
    let response = api.watch(&path).await;
    assert_eq!(response.status(), 200);
    let mut events = WatchReader::new(response);
    let error = events.next().await.unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "the server waits for the version first"
    );
    assert_eq!(error["type"], "ERROR");
    let status = &error["object"];
    assert_eq!(status["code"], 504);
    assert_eq!(status["reason"], "Timeout");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with("Timeout: Too large resource version"),
        "{message}"
    );
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    assert!(
        events.next().await.is_none(),
        "the stream ends after the error"
    );

    let list = api
        .get(&format!("{NODE_A_PODS}&resourceVersion={future}"))
        .await;
    assert_eq!(list.status, 504);
    assert_eq!(
        list.body["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
}

#[tokio::test]
async fn watch_sends_bookmarks_when_allowed() {
    let options = ServerOptions {
        bookmark_interval: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let server = start_with(options).await;
    server.apply_pod(pod("prod", "web-0", "node-b")).unwrap();
    let from = server.resource_version();
    server.apply_pod(pod("prod", "web-1", "node-b")).unwrap();
    let api = Api::new(&server, Some(server.admin_token()));

    let path = format!("{NODE_A_PODS}&watch=true&resourceVersion={from}&allowWatchBookmarks=true");
    let mut events = WatchReader::new(api.watch(&path).await);
    let bookmark = events.next().await.unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "Pod");
    let version = server.resource_version().to_string();
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        version.as_str()
    );

    let path = format!("{NODE_A_PODS}&watch=true&resourceVersion={from}");
    let mut quiet = WatchReader::new(api.watch(&path).await);
    let silence = quiet.next_within(Duration::from_millis(400)).await;
    assert!(
        silence.is_err(),
        "no bookmark without allowWatchBookmarks: {silence:?}"
    );
}

#[tokio::test]
async fn watch_ends_at_timeout_seconds() {
    let server = start().await;
    let api = Api::new(&server, Some(server.admin_token()));
    let started = std::time::Instant::now();
    let mut events = WatchReader::new(
        api.watch(&format!("{NODE_A_PODS}&watch=true&timeoutSeconds=1"))
            .await,
    );
    assert!(events.next().await.is_none());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "ended after {elapsed:?}"
    );
}

#[tokio::test]
async fn unavailable_server_returns_503_and_closes_watches() {
    let server = start().await;
    let api = Api::new(&server, Some(server.admin_token()));
    let mut events = WatchReader::new(api.watch(&format!("{NODE_A_PODS}&watch=true")).await);

    server.set_unavailable(true);
    // A change made while the server is unavailable must not reach a watch it closed.
    server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let after_close = events.next().await;
    assert!(after_close.is_none(), "open watch ends: {after_close:?}");
    let reply = api.get(NODE_A_PODS).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body["reason"], "ServiceUnavailable");

    server.set_unavailable(false);
    assert_eq!(api.get(NODE_A_PODS).await.status, 200);
}

#[tokio::test]
async fn stopped_listener_refuses_then_resumes() {
    let server = start().await;
    let api = Api::new(&server, Some(server.admin_token()));
    server.stop_listening().await;
    let refused = api
        .client
        .get(format!("{}/version", server.url()))
        .send()
        .await;
    assert!(refused.is_err());
    server.start_listening().await.unwrap();
    assert_eq!(api.get("/version").await.status, 200);
}

#[tokio::test]
async fn requests_are_counted_by_verb() {
    let server = start().await;
    let api = Api::new(&server, Some(server.admin_token()));
    api.get(NODE_A_PODS).await;
    api.get(NODE_A_PODS).await;
    let _watch = api.watch(&format!("{NODE_A_PODS}&watch=true")).await;
    assert_eq!(server.request_count("list", "pods"), 2);
    assert_eq!(server.request_count("watch", "pods"), 1);
    let requests = server.requests();
    assert_eq!(requests[0].query, "fieldSelector=spec.nodeName%3Dnode-a");
    assert_eq!(requests[0].status, 200);
}
