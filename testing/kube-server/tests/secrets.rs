//! Secrets: get, list and watch, `data` and `stringData`, validation, and RBAC checks of
//! service account tokens the server issued.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{pod, start, Api, WatchReader};
use envproxy_kube_test_server::{KubeTestServer, Rule};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

fn secret(
    namespace: &str,
    name: &str,
    data: &[(&str, &str)],
    string_data: &[(&str, &str)],
) -> Secret {
    let bytes = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect::<BTreeMap<_, _>>()
    };
    let strings = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        data: (!data.is_empty()).then(|| bytes(data)),
        string_data: (!string_data.is_empty()).then(|| strings(string_data)),
        ..Secret::default()
    }
}

/// Mints the token the kubelet projects at the default service account token path: bound to
/// the pod, for the API server's audience.
fn pod_token(server: &KubeTestServer, namespace: &str, pod_name: &str) -> String {
    server
        .mint_projected_token(
            namespace,
            pod_name,
            &server.api_audience(),
            Duration::from_secs(3600),
        )
        .unwrap()
}

fn decoded(body: &serde_json::Value, key: &str) -> String {
    let text = body["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("data.{key} in {body}"));
    String::from_utf8(STANDARD.decode(text).unwrap()).unwrap()
}

#[tokio::test]
async fn string_data_merges_into_base64_data() {
    let server = start().await;
    let stored = server
        .apply_secret(secret(
            "shop",
            "db",
            &[("user", "from-data"), ("password", "old")],
            &[("password", "from-string-data")],
        ))
        .unwrap();
    assert_eq!(stored.string_data, None, "stringData is write-only");
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    assert!(stored.metadata.uid.is_some());

    let api = Api::new(&server, Some(server.admin_token()));
    let reply = api.get("/api/v1/namespaces/shop/secrets/db").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["kind"], "Secret");
    assert_eq!(reply.body["apiVersion"], "v1");
    assert!(reply.body.get("stringData").is_none(), "{}", reply.body);
    assert_eq!(decoded(&reply.body, "user"), "from-data");
    assert_eq!(decoded(&reply.body, "password"), "from-string-data");
    assert_eq!(
        reply.body["metadata"]["resourceVersion"],
        stored.metadata.resource_version.unwrap()
    );
}

#[tokio::test]
async fn invalid_secrets_are_rejected() {
    let server = start().await;
    let error = server
        .apply_secret(secret("shop", "db", &[("bad/key", "x")], &[]))
        .unwrap_err();
    assert_eq!(error.code, 422);
    assert_eq!(error.reason, "Invalid");
    assert!(error.message.contains("data[bad/key]"), "{}", error.message);

    let mut immutable = secret("shop", "fixed", &[("k", "v1")], &[]);
    immutable.immutable = Some(true);
    server.apply_secret(immutable.clone()).unwrap();
    immutable.data = Some(BTreeMap::from([(
        "k".to_owned(),
        ByteString(b"v2".to_vec()),
    )]));
    let error = server.apply_secret(immutable).unwrap_err();
    assert_eq!(error.code, 422);
    assert!(error.message.contains("immutable"), "{}", error.message);
}

#[tokio::test]
async fn missing_secret_is_404_status() {
    let server = start().await;
    let api = Api::new(&server, Some(server.admin_token()));
    let reply = api.get("/api/v1/namespaces/shop/secrets/nope").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body["kind"], "Status");
    assert_eq!(reply.body["reason"], "NotFound");
    assert_eq!(reply.body["message"], "secrets \"nope\" not found");
    assert_eq!(reply.body["details"]["kind"], "secrets");
    assert_eq!(reply.body["details"]["name"], "nope");
}

#[tokio::test]
async fn list_filters_by_namespace_and_field() {
    let server = start().await;
    server
        .apply_secret(secret("shop", "db", &[("k", "1")], &[]))
        .unwrap();
    server
        .apply_secret(secret("shop", "api", &[("k", "2")], &[]))
        .unwrap();
    server
        .apply_secret(secret("dev", "db", &[("k", "3")], &[]))
        .unwrap();
    let api = Api::new(&server, Some(server.admin_token()));

    let reply = api.get("/api/v1/namespaces/shop/secrets").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["kind"], "SecretList");
    assert_eq!(reply.body["items"].as_array().unwrap().len(), 2);

    let reply = api
        .get("/api/v1/secrets?fieldSelector=metadata.name%3Ddb")
        .await;
    assert_eq!(reply.body["items"].as_array().unwrap().len(), 2);

    let reply = api
        .get("/api/v1/secrets?fieldSelector=spec.nodeName%3Da")
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.body["message"],
        "field label not supported: spec.nodeName"
    );
}

#[tokio::test]
async fn watch_streams_secret_changes() {
    let server = start().await;
    server
        .apply_secret(secret("shop", "db", &[("k", "v1")], &[]))
        .unwrap();
    server
        .apply_secret(secret("shop", "other", &[("k", "x")], &[]))
        .unwrap();
    server.apply_pod(pod("shop", "web-0", "node-a")).unwrap();
    let api = Api::new(&server, Some(server.admin_token()));
    let path = "/api/v1/namespaces/shop/secrets?watch=true&fieldSelector=metadata.name%3Ddb";
    let mut events = WatchReader::new(api.watch(path).await);

    let added = events.next().await.unwrap();
    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["kind"], "Secret");
    assert_eq!(decoded(&added["object"], "k"), "v1");

    let edited = server
        .apply_secret(secret("shop", "db", &[], &[("k", "v2")]))
        .unwrap();
    let modified = events.next().await.unwrap();
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(decoded(&modified["object"], "k"), "v2");
    assert_eq!(
        modified["object"]["metadata"]["resourceVersion"],
        edited.metadata.resource_version.unwrap()
    );

    server.delete_secret("shop", "db").unwrap();
    let deleted = events.next().await.unwrap();
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(deleted["object"]["metadata"]["name"], "db");
}

#[tokio::test]
async fn pod_token_reads_granted_namespace_only() {
    let server = start().await;
    server.apply_pod(pod("shop", "web-0", "node-a")).unwrap();
    server
        .apply_secret(secret("shop", "db", &[("k", "v")], &[]))
        .unwrap();
    server
        .apply_secret(secret("billing", "db", &[("k", "w")], &[]))
        .unwrap();
    server.grant_service_account(
        "shop",
        "app",
        vec![Rule::new(&["get", "list", "watch"], &["secrets"]).in_namespaces(&["shop"])],
    );
    let token = pod_token(&server, "shop", "web-0");
    let api = Api::new(&server, Some(&token));

    let reply = api.get("/api/v1/namespaces/shop/secrets/db").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(decoded(&reply.body, "k"), "v");

    let reply = api.get("/api/v1/namespaces/billing/secrets/db").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.body["reason"], "Forbidden");
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.contains(
            "User \"system:serviceaccount:shop:app\" cannot get resource \"secrets\" in API \
             group \"\" in the namespace \"billing\""
        ),
        "{message}"
    );

    let reply = api.get("/api/v1/namespaces/shop/pods/web-0").await;
    assert_eq!(reply.status, 403, "pods were not granted: {}", reply.body);
}

#[tokio::test]
async fn service_account_without_grant_is_forbidden() {
    let server = start().await;
    server.apply_pod(pod("shop", "web-0", "node-a")).unwrap();
    server
        .apply_secret(secret("shop", "db", &[("k", "v")], &[]))
        .unwrap();
    let token = pod_token(&server, "shop", "web-0");
    let reply = Api::new(&server, Some(&token))
        .get("/api/v1/namespaces/shop/secrets/db")
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.body["reason"], "Forbidden");
}

#[tokio::test]
async fn invalid_service_account_tokens_are_401() {
    let server = start().await;
    server.apply_pod(pod("shop", "web-0", "node-a")).unwrap();
    server
        .apply_secret(secret("shop", "db", &[("k", "v")], &[]))
        .unwrap();
    server.grant_service_account("shop", "app", vec![Rule::new(&["get"], &["secrets"])]);
    let path = "/api/v1/namespaces/shop/secrets/db";

    let vault_audience = server
        .mint_projected_token("shop", "web-0", "vault", Duration::from_secs(3600))
        .unwrap();
    let reply = Api::new(&server, Some(&vault_audience)).get(path).await;
    assert_eq!(
        reply.status, 401,
        "a token for another audience: {}",
        reply.body
    );

    let expired = server
        .mint_projected_token("shop", "web-0", &server.api_audience(), Duration::ZERO)
        .unwrap();
    let reply = Api::new(&server, Some(&expired)).get(path).await;
    assert_eq!(reply.status, 401, "an expired token: {}", reply.body);

    let token = pod_token(&server, "shop", "web-0");
    let (signing_input, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{signing_input}.AAAA");
    let reply = Api::new(&server, Some(&forged)).get(path).await;
    assert_eq!(reply.status, 401, "a forged signature: {}", reply.body);

    let reply = Api::new(&server, Some(&token)).get(path).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    server.delete_pod("shop", "web-0").unwrap();
    let reply = Api::new(&server, Some(&token)).get(path).await;
    assert_eq!(
        reply.status, 401,
        "a token of a deleted pod: {}",
        reply.body
    );
    assert_eq!(reply.body["reason"], "Unauthorized");
}
