//! Token auth, ACL policies, namespaces and Kubernetes login.

mod common;

use std::time::Duration;

use common::{keys, start_default, start_frozen, Api};
use envproxy_vault_test_server::{
    service_account_jwt, Capability, KubernetesRole, Policy, ServerOptions, TokenSpec,
    VaultTestServer,
};
use serde_json::json;

const INVALID_TOKEN: &str = "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n";
const DENIED: &str = "1 error occurred:\n\t* permission denied\n\n";

#[tokio::test]
async fn lookup_self_has_documented_fields() {
    let server = start_frozen().await;
    let issued = server
        .create_token(TokenSpec::new(&["app"]).ttl(Duration::from_secs(600)))
        .unwrap();
    let api = Api::new(&server);

    let reply = api.get("auth/token/lookup-self", &issued.token).await;
    assert_eq!(reply.status, 200);
    let data = &reply.body["data"];
    for field in [
        "accessor",
        "creation_time",
        "creation_ttl",
        "display_name",
        "entity_id",
        "expire_time",
        "explicit_max_ttl",
        "id",
        "issue_time",
        "meta",
        "num_uses",
        "orphan",
        "path",
        "policies",
        "renewable",
        "ttl",
    ] {
        assert!(data.get(field).is_some(), "lookup-self lacks {field}");
    }
    assert_eq!(data["id"], issued.token.as_str());
    assert_eq!(data["accessor"], issued.accessor.as_str());
    assert_eq!(data["policies"], json!(["app", "default"]));
    assert_eq!(data["creation_ttl"], 600);
    assert_eq!(data["ttl"], 600);
    assert_eq!(data["renewable"], true);
    assert!(data["expire_time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn root_token_lookup_never_expires() {
    let server = start_default().await;
    let api = Api::new(&server);
    let data = api
        .get("auth/token/lookup-self", server.root_token())
        .await
        .body["data"]
        .clone();
    assert_eq!(data["policies"], json!(["root"]));
    assert_eq!(data["ttl"], 0);
    assert_eq!(data["expire_time"], json!(null));
    assert_eq!(data["path"], "auth/token/root");
}

#[tokio::test]
async fn renew_self_returns_auth_block() {
    let server = start_frozen().await;
    let issued = server
        .create_token(TokenSpec::new(&["app"]).ttl(Duration::from_secs(60)))
        .unwrap();
    let api = Api::new(&server);
    server.advance_clock(Duration::from_secs(50));

    let reply = api
        .call(
            "POST",
            "auth/token/renew-self",
            Some(&issued.token),
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let auth = &reply.body["auth"];
    assert_eq!(auth["client_token"], issued.token.as_str());
    assert_eq!(auth["lease_duration"], 60);
    assert_eq!(auth["renewable"], true);
    assert_eq!(auth["policies"], json!(["app", "default"]));
    assert_eq!(reply.body["data"], json!(null));

    let longer = api
        .put(
            "auth/token/renew-self",
            &issued.token,
            json!({ "increment": "2m" }),
        )
        .await;
    assert_eq!(longer.body["auth"]["lease_duration"], 120);
}

#[tokio::test]
async fn renew_self_is_capped_by_explicit_max_ttl() {
    let server = start_frozen().await;
    let spec = TokenSpec::new(&[])
        .ttl(Duration::from_secs(60))
        .explicit_max_ttl(Duration::from_secs(90));
    let issued = server.create_token(spec).unwrap();
    let api = Api::new(&server);
    server.advance_clock(Duration::from_secs(40));

    let reply = api
        .put(
            "auth/token/renew-self",
            &issued.token,
            json!({ "increment": 3600 }),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["auth"]["lease_duration"], 50);
    let warning = reply.body["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("exceeded the effective max_ttl"),
        "{warning}"
    );
}

#[tokio::test]
async fn non_renewable_token_renewal_is_400() {
    let server = start_default().await;
    let issued = server
        .create_token(TokenSpec::new(&[]).renewable(false))
        .unwrap();
    let api = Api::new(&server);
    let reply = api
        .put("auth/token/renew-self", &issued.token, json!({}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.errors(), ["lease is not renewable"]);
}

#[tokio::test]
async fn expired_token_is_denied() {
    let server = start_frozen().await;
    let issued = server
        .create_token(TokenSpec::new(&["default"]).ttl(Duration::from_secs(30)))
        .unwrap();
    let api = Api::new(&server);
    assert_eq!(
        api.get("auth/token/lookup-self", &issued.token)
            .await
            .status,
        200
    );

    server.advance_clock(Duration::from_secs(31));
    let reply = api.get("auth/token/lookup-self", &issued.token).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.errors(), [INVALID_TOKEN]);
    assert!(!server.token_is_live(&issued.token));
}

#[tokio::test]
async fn missing_and_unknown_tokens_are_denied() {
    let server = start_default().await;
    let api = Api::new(&server);
    let none = api.call("GET", "secret/data/x", None, None, None).await;
    assert_eq!(none.status, 403);
    assert_eq!(none.errors(), [INVALID_TOKEN]);
    let unknown = api.get("secret/data/x", "hvs.unknown").await;
    assert_eq!(unknown.errors(), [INVALID_TOKEN]);
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api
        .client
        .get(format!("{}/v1/auth/token/lookup-self", api.base))
        .bearer_auth(server.root_token())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
}

#[tokio::test]
async fn revoke_self_ends_token() {
    let server = start_default().await;
    let issued = server.create_token(TokenSpec::new(&[])).unwrap();
    let api = Api::new(&server);
    let reply = api
        .call(
            "POST",
            "auth/token/revoke-self",
            Some(&issued.token),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        api.get("auth/token/lookup-self", &issued.token)
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn token_create_limits_child_policies() {
    let server = start_default().await;
    server.root().set_policy(
        "app",
        Policy::new().allow("auth/token/create", &[Capability::Update]),
    );
    let parent = server.create_token(TokenSpec::new(&["app"])).unwrap();
    let api = Api::new(&server);

    let child = api
        .put("auth/token/create", &parent.token, json!({ "ttl": "10m" }))
        .await;
    assert_eq!(child.status, 200);
    assert_eq!(child.body["auth"]["lease_duration"], 600);
    assert_eq!(child.body["auth"]["policies"], json!(["app", "default"]));
    let wider = api
        .put(
            "auth/token/create",
            &parent.token,
            json!({ "policies": ["admin"] }),
        )
        .await;
    assert_eq!(wider.status, 400);
    assert_eq!(wider.errors(), ["child policies must be subset of parent"]);
}

#[tokio::test]
async fn lookup_self_rejects_post() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api
        .put("auth/token/lookup-self", server.root_token(), json!({}))
        .await;
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn policy_allows_only_listed_paths() {
    let server = start_default().await;
    let ns = server.root();
    ns.kv2_put("secret", "app/config", json!({ "k": "v" }))
        .unwrap();
    ns.kv2_put("secret", "other/config", json!({ "k": "v" }))
        .unwrap();
    ns.set_policy(
        "app",
        Policy::new().allow("secret/data/app/*", &[Capability::Read]),
    );
    let issued = server.create_token(TokenSpec::new(&["app"])).unwrap();
    let api = Api::new(&server);

    assert_eq!(
        api.get("secret/data/app/config", &issued.token)
            .await
            .status,
        200
    );
    let other = api.get("secret/data/other/config", &issued.token).await;
    assert_eq!(other.status, 403);
    assert_eq!(other.errors(), [DENIED]);
    let write = api
        .put(
            "secret/data/app/config",
            &issued.token,
            json!({ "data": {} }),
        )
        .await;
    assert_eq!(write.status, 403);
    // The default policy still allows the self-service token paths.
    assert_eq!(
        api.get("auth/token/lookup-self", &issued.token)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn policy_separates_create_from_update() {
    let server = start_default().await;
    let ns = server.root();
    ns.kv2_put("secret", "exists", json!({ "k": "v" })).unwrap();
    ns.set_policy(
        "creator",
        Policy::new().allow("secret/data/*", &[Capability::Create]),
    );
    let issued = server.create_token(TokenSpec::new(&["creator"])).unwrap();
    let api = Api::new(&server);
    let body = json!({ "data": { "k": "w" } });
    assert_eq!(
        api.put("secret/data/fresh", &issued.token, body.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        api.put("secret/data/exists", &issued.token, body)
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn namespaces_are_isolated() {
    let server = VaultTestServer::start(ServerOptions::default().with_namespace("team-a"))
        .await
        .unwrap();
    let team = server.namespace("team-a").unwrap();
    team.kv2_put("secret", "app", json!({ "owner": "team-a" }))
        .unwrap();
    server
        .root()
        .kv2_put("secret", "app", json!({ "owner": "root" }))
        .unwrap();
    team.set_policy(
        "reader",
        Policy::new().allow("secret/data/*", &[Capability::Read]),
    );
    let team_token = server
        .create_token(TokenSpec::new(&["reader"]).namespace("team-a"))
        .unwrap();
    assert!(team_token.token.starts_with("hvs."));
    let api = Api::new(&server);

    let in_team = api.call(
        "GET",
        "secret/data/app",
        Some(&team_token.token),
        Some("team-a"),
        None,
    );
    assert_eq!(in_team.await.body["data"]["data"]["owner"], "team-a");
    // The same path in the root namespace: the team token is not valid there.
    let in_root = api.get("secret/data/app", &team_token.token).await;
    assert_eq!(in_root.status, 403);
    assert_eq!(in_root.errors(), [INVALID_TOKEN]);
    // A root token works in a child namespace, and the namespace can sit in the path.
    let by_path = api.get("team-a/secret/data/app", server.root_token()).await;
    assert_eq!(by_path.body["data"]["data"]["owner"], "team-a");
    let root_view = api.get("secret/data/app", server.root_token()).await;
    assert_eq!(root_view.body["data"]["data"]["owner"], "root");
}

#[tokio::test]
async fn unknown_namespace_has_no_handler() {
    let server = start_default().await;
    let api = Api::new(&server);
    let reply = api
        .call(
            "GET",
            "secret/data/app",
            Some(server.root_token()),
            Some("nope"),
            None,
        )
        .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn parent_namespace_policy_names_child_paths() {
    let server = VaultTestServer::start(ServerOptions::default().with_namespace("team-a"))
        .await
        .unwrap();
    server
        .namespace("team-a")
        .unwrap()
        .kv2_put("secret", "x", json!({ "k": 1 }))
        .unwrap();
    server.root().set_policy(
        "ops",
        Policy::new().allow("team-a/secret/data/*", &[Capability::Read]),
    );
    let ops = server.create_token(TokenSpec::new(&["ops"])).unwrap();
    let api = Api::new(&server);
    let reply = api
        .call(
            "GET",
            "secret/data/x",
            Some(&ops.token),
            Some("team-a/"),
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
}

fn kubernetes_server_role() -> KubernetesRole {
    KubernetesRole::new(&["app"], &["prod"], &["app-read"])
        .with_ttl(Duration::from_secs(900), Duration::from_secs(3600))
}

#[tokio::test]
async fn kubernetes_login_returns_auth_block() {
    let server = start_frozen().await;
    server
        .root()
        .add_kubernetes_role("kubernetes", "app", kubernetes_server_role())
        .unwrap();
    let api = Api::new(&server);
    let jwt = service_account_jwt("prod", "app", server.now() + Duration::from_secs(600));

    let reply = api
        .call(
            "POST",
            "auth/kubernetes/login",
            None,
            None,
            Some(json!({ "role": "app", "jwt": jwt })),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"], json!(null));
    let auth = &reply.body["auth"];
    for field in [
        "client_token",
        "accessor",
        "policies",
        "metadata",
        "lease_duration",
        "renewable",
    ] {
        assert!(auth.get(field).is_some(), "auth block lacks {field}");
    }
    assert_eq!(auth["policies"], json!(["app-read", "default"]));
    assert_eq!(auth["lease_duration"], 900);
    assert_eq!(auth["renewable"], true);
    assert_eq!(
        keys(&auth["metadata"]),
        [
            "role",
            "service_account_name",
            "service_account_namespace",
            "service_account_secret_name",
            "service_account_uid"
        ]
    );
    assert_eq!(auth["metadata"]["service_account_namespace"], "prod");

    let token = auth["client_token"].as_str().unwrap();
    let lookup = api.get("auth/token/lookup-self", token).await;
    assert_eq!(lookup.body["data"]["path"], "auth/kubernetes/login");
    assert_eq!(lookup.body["data"]["display_name"], "kubernetes-prod-app");
}

#[tokio::test]
async fn kubernetes_login_rejections_match_vault() {
    let server = start_frozen().await;
    server
        .root()
        .add_kubernetes_role("kubernetes", "app", kubernetes_server_role())
        .unwrap();
    let api = Api::new(&server);
    let later = server.now() + Duration::from_secs(600);
    let login =
        |body: serde_json::Value| api.call("POST", "auth/kubernetes/login", None, None, Some(body));

    let no_role = login(json!({ "jwt": "x" })).await;
    assert_eq!(
        (no_role.status, no_role.errors()),
        (400, vec!["missing role".to_owned()])
    );
    let no_jwt = login(json!({ "role": "app" })).await;
    assert_eq!(
        (no_jwt.status, no_jwt.errors()),
        (400, vec!["missing jwt".to_owned()])
    );
    let wrong_role =
        login(json!({ "role": "db", "jwt": service_account_jwt("prod", "app", later) })).await;
    assert_eq!(wrong_role.status, 400);
    assert_eq!(wrong_role.errors(), ["invalid role name \"db\""]);
    let wrong_sa =
        login(json!({ "role": "app", "jwt": service_account_jwt("prod", "web", later) })).await;
    assert_eq!(wrong_sa.status, 403);
    assert_eq!(wrong_sa.errors(), ["service account name not authorized"]);
    let wrong_ns =
        login(json!({ "role": "app", "jwt": service_account_jwt("dev", "app", later) })).await;
    assert_eq!(wrong_ns.status, 403);
    assert_eq!(wrong_ns.errors(), ["namespace not authorized"]);
    let garbage = login(json!({ "role": "app", "jwt": "not-a-jwt" })).await;
    assert_eq!(garbage.status, 403);
    assert_eq!(garbage.errors(), ["permission denied"]);
    let earlier = server.now() - Duration::from_secs(300);
    let expired =
        login(json!({ "role": "app", "jwt": service_account_jwt("prod", "app", earlier) })).await;
    assert_eq!(expired.status, 403);
    assert_eq!(
        expired.errors(),
        ["invalid expiration time (exp) claim: token is expired"]
    );
}

#[tokio::test]
async fn kubernetes_token_expires_with_role_ttl() {
    let server = start_frozen().await;
    server
        .root()
        .add_kubernetes_role("kubernetes", "app", kubernetes_server_role())
        .unwrap();
    let api = Api::new(&server);
    let jwt = service_account_jwt("prod", "app", server.now() + Duration::from_secs(600));
    let reply = api
        .call(
            "POST",
            "auth/kubernetes/login",
            None,
            None,
            Some(json!({ "role": "app", "jwt": jwt })),
        )
        .await;
    let token = reply.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();

    server.advance_clock(Duration::from_secs(901));
    assert_eq!(api.get("auth/token/lookup-self", &token).await.status, 403);
}

#[tokio::test]
async fn kubernetes_login_in_namespace() {
    let server = VaultTestServer::start(ServerOptions::default().with_namespace("team-a"))
        .await
        .unwrap();
    let team = server.namespace("team-a").unwrap();
    team.add_kubernetes_role("kubernetes", "app", kubernetes_server_role())
        .unwrap();
    let api = Api::new(&server);
    let jwt = service_account_jwt("prod", "app", server.now() + Duration::from_secs(600));
    let body = json!({ "role": "app", "jwt": jwt });

    let root_login = api
        .call(
            "POST",
            "auth/kubernetes/login",
            None,
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        root_login.status, 400,
        "the root namespace has no such role"
    );
    let team_login = api
        .call(
            "POST",
            "auth/kubernetes/login",
            None,
            Some("team-a"),
            Some(body),
        )
        .await;
    assert_eq!(team_login.status, 200);
    let token = team_login.body["auth"]["client_token"].as_str().unwrap();
    assert!(
        token.contains('.'),
        "namespace tokens carry the namespace id suffix"
    );
}
