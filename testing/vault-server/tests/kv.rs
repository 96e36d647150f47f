//! KV v2 and KV v1 endpoints against the shapes and status codes of Vault's API pages.

mod common;

use common::{keys, start_default, Api};
use serde_json::json;

const ENVELOPE_KEYS: [&str; 9] = [
    "auth",
    "data",
    "lease_duration",
    "lease_id",
    "mount_type",
    "renewable",
    "request_id",
    "warnings",
    "wrap_info",
];

#[tokio::test]
async fn kv2_read_has_documented_shape() {
    let server = start_default().await;
    server
        .root()
        .kv2_put(
            "secret",
            "myapp/config",
            json!({ "db_url": "postgres://x" }),
        )
        .unwrap();
    let api = Api::new(&server);

    let reply = api
        .get("secret/data/myapp/config", server.root_token())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(keys(&reply.body), ENVELOPE_KEYS);
    assert_eq!(reply.body["lease_id"], "");
    assert_eq!(reply.body["renewable"], false);
    assert_eq!(reply.body["lease_duration"], 0);
    assert_eq!(reply.body["wrap_info"], json!(null));
    assert_eq!(reply.body["warnings"], json!(null));
    assert_eq!(reply.body["auth"], json!(null));
    assert_eq!(
        reply.body["data"]["data"],
        json!({ "db_url": "postgres://x" })
    );
    let metadata = &reply.body["data"]["metadata"];
    assert_eq!(
        keys(metadata),
        [
            "created_time",
            "custom_metadata",
            "deletion_time",
            "destroyed",
            "version"
        ]
    );
    assert_eq!(metadata["custom_metadata"], json!(null));
    assert_eq!(metadata["deletion_time"], "");
    assert_eq!(metadata["destroyed"], false);
    assert_eq!(metadata["version"], 1);
    assert!(metadata["created_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(reply.headers["content-type"], "application/json");
}

#[tokio::test]
async fn kv2_reads_requested_version() {
    let server = start_default().await;
    let ns = server.root();
    ns.kv2_put("secret", "app", json!({ "v": "one" })).unwrap();
    ns.kv2_put("secret", "app", json!({ "v": "two" })).unwrap();
    let api = Api::new(&server);

    let first = api
        .get("secret/data/app?version=1", server.root_token())
        .await;
    assert_eq!(first.body["data"]["data"]["v"], "one");
    assert_eq!(first.body["data"]["metadata"]["version"], 1);
    let latest = api.get("secret/data/app", server.root_token()).await;
    assert_eq!(latest.body["data"]["data"]["v"], "two");
    let missing = api
        .get("secret/data/app?version=7", server.root_token())
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, json!({ "errors": [] }));
    let bad = api
        .get("secret/data/app?version=x", server.root_token())
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn kv2_missing_secret_is_404_with_empty_errors() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api
        .get("secret/data/nothing/here", server.root_token())
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, json!({ "errors": [] }));
}

#[tokio::test]
async fn kv2_write_returns_version_metadata() {
    let server = start_default().await;
    let api = Api::new(&server);
    let token = server.root_token();

    let reply = api
        .put("secret/data/new", token, json!({ "data": { "k": "v" } }))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        keys(&reply.body["data"]),
        [
            "created_time",
            "custom_metadata",
            "deletion_time",
            "destroyed",
            "version"
        ]
    );
    assert_eq!(reply.body["data"]["version"], 1);
    let post = api.call(
        "POST",
        "secret/data/new",
        Some(token),
        None,
        Some(json!({ "data": { "k": "w" } })),
    );
    assert_eq!(post.await.body["data"]["version"], 2);
    assert_eq!(
        server.root().kv2_get("secret", "new", None).unwrap(),
        Some(json!({ "k": "w" }))
    );
}

#[tokio::test]
async fn kv2_write_without_data_is_400() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api
        .put(
            "secret/data/x",
            server.root_token(),
            json!({ "options": {} }),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.errors(), ["no data provided"]);
    let reply = api
        .call(
            "PUT",
            "secret/data/x",
            Some(server.root_token()),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn kv2_invalid_json_is_400() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api
        .client
        .put(format!("{}/v1/secret/data/x", api.base))
        .header("X-Vault-Token", server.root_token())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert!(body["errors"][0]
        .as_str()
        .unwrap()
        .starts_with("failed to parse JSON input"));
}

#[tokio::test]
async fn kv2_cas_mismatch_is_400() {
    let server = start_default().await;
    let api = Api::new(&server);
    let token = server.root_token();
    let first = api.put(
        "secret/data/c",
        token,
        json!({ "options": { "cas": 0 }, "data": { "a": 1 } }),
    );
    assert_eq!(first.await.status, 200);
    let again = api.put(
        "secret/data/c",
        token,
        json!({ "options": { "cas": 0 }, "data": { "a": 2 } }),
    );
    let again = again.await;
    assert_eq!(again.status, 400);
    assert_eq!(
        again.errors(),
        ["check-and-set parameter did not match the current version"]
    );
    let right = api.put(
        "secret/data/c",
        token,
        json!({ "options": { "cas": 1 }, "data": { "a": 3 } }),
    );
    assert_eq!(right.await.body["data"]["version"], 2);
}

#[tokio::test]
async fn kv2_cas_required_rejects_plain_write() {
    let server = start_default().await;
    server.root().kv2_require_cas("secret", true).unwrap();
    let api = Api::new(&server);
    let reply = api
        .put(
            "secret/data/c",
            server.root_token(),
            json!({ "data": { "a": 1 } }),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.errors(),
        ["check-and-set parameter required for this call"]
    );
}

#[tokio::test]
async fn kv2_soft_delete_read_is_404_with_metadata() {
    let server = start_default().await;
    server
        .root()
        .kv2_put("secret", "gone", json!({ "a": "b" }))
        .unwrap();
    let api = Api::new(&server);
    let token = server.root_token();

    let delete = api.call(
        "POST",
        "secret/delete/gone",
        Some(token),
        None,
        Some(json!({ "versions": [1] })),
    );
    assert_eq!(delete.await.status, 204);

    let reply = api.get("secret/data/gone", token).await;
    assert_eq!(reply.status, 404);
    assert_eq!(keys(&reply.body), ENVELOPE_KEYS);
    assert_eq!(reply.body["data"]["data"], json!(null));
    let metadata = &reply.body["data"]["metadata"];
    assert_ne!(metadata["deletion_time"], "");
    assert_eq!(metadata["destroyed"], false);
    assert_eq!(metadata["version"], 1);

    let undelete = api.call(
        "POST",
        "secret/undelete/gone",
        Some(token),
        None,
        Some(json!({ "versions": [1] })),
    );
    assert_eq!(undelete.await.status, 204);
    assert_eq!(api.get("secret/data/gone", token).await.status, 200);
}

#[tokio::test]
async fn kv2_delete_latest_hides_latest_only() {
    let server = start_default().await;
    let ns = server.root();
    ns.kv2_put("secret", "two", json!({ "v": 1 })).unwrap();
    ns.kv2_put("secret", "two", json!({ "v": 2 })).unwrap();
    let api = Api::new(&server);
    let token = server.root_token();

    let delete = api
        .call("DELETE", "secret/data/two", Some(token), None, None)
        .await;
    assert_eq!(delete.status, 204);
    assert_eq!(api.get("secret/data/two", token).await.status, 404);
    assert_eq!(
        api.get("secret/data/two?version=1", token).await.status,
        200
    );
}

#[tokio::test]
async fn kv2_destroy_marks_destroyed() {
    let server = start_default().await;
    server
        .root()
        .kv2_put("secret", "burn", json!({ "a": "b" }))
        .unwrap();
    let api = Api::new(&server);
    let token = server.root_token();

    let destroy = api
        .put("secret/destroy/burn", token, json!({ "versions": [1] }))
        .await;
    assert_eq!(destroy.status, 204);
    let reply = api.get("secret/data/burn", token).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body["data"]["data"], json!(null));
    assert_eq!(reply.body["data"]["metadata"]["destroyed"], true);
    assert_eq!(reply.body["data"]["metadata"]["deletion_time"], "");

    let no_versions = api.put("secret/destroy/burn", token, json!({})).await;
    assert_eq!(no_versions.status, 400);
    assert_eq!(no_versions.errors(), ["no version number provided"]);
}

#[tokio::test]
async fn kv2_metadata_lists_versions() {
    let server = start_default().await;
    let ns = server.root();
    ns.kv2_put("secret", "meta", json!({ "v": 1 })).unwrap();
    ns.kv2_put("secret", "meta", json!({ "v": 2 })).unwrap();
    let api = Api::new(&server);

    let reply = api.get("secret/metadata/meta", server.root_token()).await;
    assert_eq!(reply.status, 200);
    let data = &reply.body["data"];
    assert_eq!(
        keys(data),
        [
            "cas_required",
            "created_time",
            "current_version",
            "custom_metadata",
            "delete_version_after",
            "max_versions",
            "oldest_version",
            "updated_time",
            "versions"
        ]
    );
    assert_eq!(data["current_version"], 2);
    assert_eq!(keys(&data["versions"]), ["1", "2"]);
    assert_eq!(
        keys(&data["versions"]["1"]),
        ["created_time", "deletion_time", "destroyed"]
    );
    assert_eq!(
        api.get("secret/metadata/none", server.root_token())
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn kv2_list_returns_keys_and_folders() {
    let server = start_default().await;
    let ns = server.root();
    ns.kv2_put("secret", "foo", json!({ "v": 1 })).unwrap();
    ns.kv2_put("secret", "foo/bar", json!({ "v": 1 })).unwrap();
    let api = Api::new(&server);
    let token = server.root_token();

    let listed = api
        .call("LIST", "secret/metadata/", Some(token), None, None)
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["data"]["keys"], json!(["foo", "foo/"]));
    let by_query = api.get("secret/metadata/foo/?list=true", token).await;
    assert_eq!(by_query.body["data"]["keys"], json!(["bar"]));
}

#[tokio::test]
async fn kv2_patch_is_unsupported_operation() {
    let server = start_default().await;
    server
        .root()
        .kv2_put("secret", "p", json!({ "v": 1 }))
        .unwrap();
    let api = Api::new(&server);
    let reply = api
        .call(
            "PATCH",
            "secret/data/p",
            Some(server.root_token()),
            None,
            Some(json!({ "data": {} })),
        )
        .await;
    assert_eq!(reply.status, 405);
    assert_eq!(
        reply.errors(),
        ["1 error occurred:\n\t* unsupported operation\n\n"]
    );
}

#[tokio::test]
async fn kv1_read_uses_configured_lease_duration() {
    let server = start_default().await;
    let ns = server.root();
    ns.kv1_put("kv", "legacy", json!({ "password": "p" }))
        .unwrap();
    ns.kv1_put("kv", "short", json!({ "password": "p", "ttl": "1h" }))
        .unwrap();
    let api = Api::new(&server);

    let reply = api.get("kv/legacy", server.root_token()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"], json!({ "password": "p" }));
    assert_eq!(reply.body["lease_duration"], 2_764_800);
    assert_eq!(reply.body["lease_id"], "");
    assert_eq!(reply.body["renewable"], false);
    let short = api.get("kv/short", server.root_token()).await;
    assert_eq!(short.body["lease_duration"], 3600);
}

#[tokio::test]
async fn kv1_lease_duration_follows_options() {
    let options = envproxy_vault_test_server::ServerOptions {
        kv1_lease_duration: 120,
        ..Default::default()
    };
    let server = envproxy_vault_test_server::VaultTestServer::start(options)
        .await
        .unwrap();
    server
        .root()
        .kv1_put("kv", "a", json!({ "x": "y" }))
        .unwrap();
    let api = Api::new(&server);
    assert_eq!(
        api.get("kv/a", server.root_token()).await.body["lease_duration"],
        120
    );
}

#[tokio::test]
async fn kv1_write_delete_round_trip() {
    let server = start_default().await;
    let api = Api::new(&server);
    let token = server.root_token();

    assert_eq!(
        api.put("kv/app", token, json!({ "k": "v" })).await.status,
        204
    );
    assert_eq!(api.get("kv/app", token).await.body["data"]["k"], "v");
    assert_eq!(
        api.put("kv/app", token, json!({})).await.errors(),
        ["missing data fields"]
    );
    let delete = api.call("DELETE", "kv/app", Some(token), None, None).await;
    assert_eq!(delete.status, 204);
    let reply = api.get("kv/app", token).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, json!({ "errors": [] }));
}

#[tokio::test]
async fn unmounted_path_has_no_handler() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api.get("nomount/data/x", server.root_token()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.errors(),
        ["no handler for route \"nomount/data/x\". route entry not found."]
    );
}

#[tokio::test]
async fn path_outside_v1_is_plain_404() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api
        .client
        .get(format!("{}/v2/secret", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 404);
    assert_eq!(reply.text().await.unwrap(), "404 page not found\n");
}
